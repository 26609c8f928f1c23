"""
The results of a run.sh run: one row per method on the test split, each method against SML
question by question, the findings, and where the time went. Reads the run folder (or its
seed*/ folders) and writes results.md and results.json there; with matplotlib installed,
also ppo_curves.png.

The headline is the greedy answer (temperature 0): its accuracy and its "every step right",
mean and std over the seeds, each method against SML with the exact McNemar test in each
seed. A lower temperature never changes the top token, so a greedy gain is not sharpening.
Beside it, the k samples per question at temperature 1: their mean (with SML - the method
and its paired standard error in each seed), pass@k (any of the k right: does RL narrow what
the model can reach?) and maj@k (their vote). The controls: the base and SFT models at the
temperature chosen on the validation split (what sharpening alone gives at T > 0) and PPO on a
random reward (what RL gives without information).

    python -m tools.results runs/default
"""

import glob
import os
import re
import statistics

from sml import common
from data.jsonl import read_rows

# (key, row name, what it is) in table order. The key names the files of a method's
# evaluations, eval_<key>.json (k samples at temperature 1) and eval_<key>_greedy.json; a key
# with "{}" is numbered (SML's rounds from 2, STaR's iterations from 1).
ROWS = [
    ("base", "Base model", "the pretrained model, no fine-tuning"),
    ("base_tuned", "Base model, temperature chosen on val", "control: sharpening alone"),
    ("sft", "SFT (self-generated)", "SML steps 1-3a: SFT on its own high-quality rationales"),
    ("sft_tuned", "SFT, temperature chosen on val", "control: sharpening alone"),
    ("sml", "SML (SFT + PPO, RM reward)", "the full method: one round, as in the paper"),
    ("sml_round{}", "SML round {}", "collected with the last round's SML model; SFT, RM and PPO from the base "
                                    "model on every round's collection pooled"),
    ("rft", "RFT (rejection-sampling fine-tuning)", "SFT on its own correct samples with no answer given"),
    ("star{}", "STaR iteration {}", "the base model fine-tuned on the last iteration's correct samples "
                                    "and rationalizations"),
    ("gold", "SFT on gold rationales", "the annotation upper bound"),
    ("ppo_exact", "SFT + PPO, exact-match reward", "RL on a verifiable reward"),
    ("ppo_random", "SFT + PPO, random reward", "control: RL without information, a random reward of the same scale"),
    ("rloo", "SFT + RLOO, RM reward", "no critic: each sample against the mean of its question's others"),
    ("grpo", "SFT + GRPO, RM reward", "no critic: each sample against its question's mean, over their std"),
]


def row_of(key):
    """(row name, what it is, position in the table) of an evaluation's key, or None."""
    for pos, (pattern, name, what) in enumerate(ROWS):
        if "{}" not in pattern:
            if key == pattern:
                return name, what, (pos, 0)
        elif m := re.fullmatch(pattern.replace("{}", r"(\d+)"), key):
            return name.format(m[1]), what, (pos, int(m[1]))
    return None


def load(path):
    return common.read_json(path)  # a truncated file: one line naming it


def output_folder(run, stage):
    """Where a run.sh stage wrote its log or collection: "ppo" -> ppo/, "ppo exact" ->
    ppo_exact/, "collect star2" -> star2/collect, "sft round2" -> round2/sft."""
    words = stage.split()
    if len(words) == 2 and re.fullmatch(r"round\d+", words[1]):
        return os.path.join(run, words[1], words[0])
    if words[0] == "collect":
        return os.path.join(run, *words[1:], "collect")
    return os.path.join(run, "_".join(words))


def one_seed(run):
    """Everything we report, from one seed's folder."""
    out = {"folder": os.path.basename(os.path.normpath(run)), "rows": {}, "greedy": {}, "vs_sml": {},
           "findings": {}, "stages": {}}
    meta = os.path.join(run, "data", "meta.json")  # data/prepare.py --allow_modified_source
    if os.path.exists(meta) and (modified := load(meta).get("modified_source_files")):
        out["modified_source_files"] = modified
    for path in sorted(glob.glob(os.path.join(run, "eval_*.json"))):
        name = os.path.basename(path)[len("eval_"):-len(".json")]
        key = name.removesuffix("_greedy")
        if not row_of(key):
            continue  # not a method's evaluation
        greedy = name.endswith("_greedy")
        out["greedy" if greedy else "rows"][key] = load(path)
        cmp = os.path.join(run, f"compare_{key}_sml{'_greedy' if greedy else ''}.json")
        if os.path.exists(cmp) and "sample_accuracy" in (c := load(cmp)):  # (an older run's has none)
            out["vs_sml"].setdefault(key, {})["greedy" if greedy else "sampled"] = c  # run.sh's, question by question
    rm = os.path.join(run, "rm_report.json")
    if os.path.exists(rm):
        r = load(rm)
        out["findings"]["rm_pair_accuracy"] = r.get("val_pair_accuracy")
        out["findings"]["rm_auc_correctness"] = r.get("auc_correctness")
        out["findings"]["rm_auc_sound_among_correct"] = r.get("auc_every_step_right_among_correct")
        out["findings"]["rm_answer_swap_lower"] = (r.get("answer_swap") or {}).get("share_lower")
        out["findings"]["rm_length_spearman"] = r.get("spearman_score_length")
    summary = os.path.join(run, "ppo", "summary.json")
    if os.path.exists(summary):
        out["findings"]["ppo_best_update"] = load(summary).get("best_update")
    timings = os.path.join(run, "timings.jsonl")
    if os.path.exists(timings):
        for t in read_rows(timings):
            if t["stage"].startswith("compare "):  # a second or two each: one row for them all
                out["stages"].setdefault("compare with SML", {"seconds": 0})["seconds"] += t["seconds"]
            else:  # (a stage redone after its output was removed: its last time)
                out["stages"][t["stage"]] = {"seconds": t["seconds"]}
    for stage, timing in out["stages"].items():  # tokens/s where a stage measures it
        folder = output_folder(run, "base" if stage == "pretrain" else stage)
        if os.path.exists(log := folder + ".log.jsonl"):  # pretraining and SFT
            rates = [r["tokens_per_s"] for r in read_rows(log) if "tokens_per_s" in r]
            if rates:
                timing["tokens_per_s"] = rates[-1]
        elif os.path.exists(log := os.path.join(folder, "ppo_log.jsonl")):  # PPO and its variants
            timing["tokens_per_s"] = statistics.mean(r["tok/s"] for r in read_rows(log) if "tok/s" in r)
        elif os.path.exists(stats := os.path.join(folder, "stats.json")):  # collection
            timing["tokens_per_s"] = load(stats)["tokens_per_s"]
    stats = os.path.join(run, "collect", "stats.json")
    if os.path.exists(stats):
        s = load(stats)
        out["collect"] = {k: s[k] for k in ("sft_rows", "pairs", "rft_rows", "star_rows", "questions_rationalized",
                                            "questions", "questions_with_high") if k in s}
        out["collect"]["yield"] = {k: v["yield"] for k, v in s["by_hint_type"].items()}
        out["collect"]["discarded"] = {k: v.get("discarded", {}) for k, v in s["by_hint_type"].items()}
    return out


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pct(m, s=None, n_seeds=1):
    if m is None:
        return "-"
    return f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if n_seeds > 1 else "")


def step_check_name(seeds):
    """What the eval summaries call the task's step checker: "every step right" in the
    built-in world, "every equation right" on the numeric datasets."""
    return next((row["step_check"] for s in seeds for row in s["rows"].values() if "step_check" in row),
                "every step right")


def significance(diff, p):
    """+1 where the second of two methods is ahead at p < 0.05, -1 where behind, else 0."""
    return 0 if p >= 0.05 else (1 if diff > 0 else -1)


def per_seed(seeds, key, cell):
    """One cell for each seed where the method has the comparison, joined: '-' where none."""
    cells = [cell(s["vs_sml"][key]) for s in seeds if key in s["vs_sml"]]
    cells = [c for c in cells if c]
    return "; ".join(cells) if cells else "-"


def mcnemar_cell(test):
    return test and f"{test['wrong_to_right']} / {test['right_to_wrong']} (p {test['p_value']:.2g})"


def render_table(seeds, keys, lines):
    """One row per method: the greedy answer's accuracy and every step right (the headline),
    each against SML (McNemar, per seed); then the k samples at temperature 1: their mean, SML
    - the method paired, pass@k and maj@k. Returns the table as a dict."""
    n = len(seeds)
    evals = [row for s in seeds for row in s["rows"].values()]
    greedy_evals = [row for s in seeds for row in s["greedy"].values()]
    checked = any("every_step_right" in row for row in evals + greedy_evals)
    check = step_check_name(seeds)
    k = max(row.get("k", 1) for row in evals)
    spread = f"mean ± std over {n} seeds" if n > 1 else "± the standard error over the questions"
    lines += [f"Test split, {evals[0]['n']} questions. The headline is the greedy answer (temperature 0): "
              f"accuracy" + (f" and {check} (the share of answers whose every step the task's step checker "
                             "finds right)" if checked else "") + (f", mean ± std over {n} seeds" if n > 1 else "")
              + "; vs SML: questions only SML / only the method gets right greedily, exact McNemar p"
              + (", in each seed" if n > 1 else "") + f". Then {k} samples per question at temperature 1 "
              f"(a control row: at the temperature chosen on the validation split, T in its name): their mean "
              f"accuracy ({spread}), SML - the method paired over the questions (± its standard error; *: p < "
              f"0.05{', in each seed' if n > 1 else ''}), pass@{k} (any of the {k} right) and maj@{k} (their "
              "majority vote).", "",
              "| | greedy accuracy (%) |" + (f" greedy {check} (%) |" if checked else "")
              + " greedy vs SML: only SML / only method |" + (f" greedy {check} vs SML |" if checked else "")
              + f" mean of {k} at T = 1 (%) | SML - method, mean of {k} (points) | pass@{k} (%) | maj@{k} (%) "
              "| what it is |", "|---|---|---|" + ("---|---|" if checked else "") + "---|---|---|---|---|"]
    table = {}
    for key in keys:
        name, what, _ = row_of(key)
        rows = [s["rows"][key] for s in seeds if key in s["rows"]]
        greedy = [s["greedy"][key] for s in seeds if key in s["greedy"]]
        temperatures = [r["temperature_sweep"]["chosen"] for r in rows if "temperature_sweep" in r]
        if temperatures:  # a control at its chosen temperature
            name += f", T = {', '.join(f'{t:g}' for t in temperatures)}"
        if len(rows) < n:  # a mean over fewer seeds is not the others' mean: say so, and no ± of one
            name += f" ({len(rows)} of {n} seeds)"
        # an evaluation of one sample per question (EVAL_K=1, or an older run's file) is its own mean
        m, sd = mean_std([r.get("sample_accuracy", r["accuracy"]) for r in rows])
        se = rows[0].get("sample_accuracy_se") if n == 1 else None
        maj, maj_sd = mean_std([r["accuracy"] for r in rows if r.get("k", 1) > 1])
        pass_k, pass_sd = mean_std([r.get("pass_at_k") for r in rows])
        g, g_sd = mean_std([r["accuracy"] for r in greedy])
        g_esr, g_esr_sd = mean_std([r.get("every_step_right") for r in greedy])
        esr, esr_sd = mean_std([r.get("every_step_right") for r in rows])
        vs_sml = [s["vs_sml"].get(key, {}) for s in seeds if key in s["vs_sml"]]
        table[key] = {"name": name, "greedy_mean": g, "greedy_std": g_sd, "greedy_every_step_right_mean": g_esr,
                      "greedy_every_step_right_std": g_esr_sd, "accuracy_mean": m, "accuracy_std": sd,
                      "accuracy_se": se, f"pass@{k}_mean": pass_k, f"maj@{k}_mean": maj, "every_step_right_mean": esr,
                      "temperatures": temperatures or None, "seeds": len(rows), "k": rows[0].get("k", 1),
                      "n_questions": rows[0]["n"],
                      "vs_sml_greedy": [c.get("greedy") for c in vs_sml] if vs_sml else None}
        acc = pct(m, sd, len(rows)) + (f" ± {100 * se:.1f}" if se is not None else "")
        paired = per_seed(seeds, key, lambda c: (t := c.get("sampled", {}).get("sample_accuracy")) and (
            f"{100 * t['difference']:+.1f} ± {100 * t['se']:.1f}{'*' if t['p_value'] < 0.05 else ''}"))
        shots = rows[0].get("shots")  # a pretrained base model answers behind exemplars
        greedy_vs = per_seed(seeds, key, lambda c: mcnemar_cell(c.get("greedy")))
        greedy_steps_vs = per_seed(seeds, key, lambda c: mcnemar_cell(
            c.get("greedy", {}).get("every_step_right_mcnemar")))
        ng, nr = len(greedy), len(rows)
        lines.append(f"| {name} | {pct(g, g_sd, ng)} |" + (f" {pct(g_esr, g_esr_sd, ng)} |" if checked else "")
                     + f" {greedy_vs} |" + (f" {greedy_steps_vs} |" if checked else "")
                     + f" {acc} | {paired} | {pct(pass_k, pass_sd, nr)} | {pct(maj, maj_sd, nr)} |"
                     + f" {what}{f', {shots}-shot prompt' if shots else ''} |")
    return table


def render_against_sml(seeds, keys, lines):
    """Each method against SML on the same test questions, per seed; with several seeds, what
    holds in every one. Returns {key: [one comparison per seed]}."""
    n = len(seeds)
    check = step_check_name(seeds)
    keys = [key for key in keys if all("sampled" in s["vs_sml"].get(key, {}) for s in seeds)]
    if not keys:
        return {}
    lines += ["", "## Each method against SML, same test questions", "",
              "Paired over the questions: each question's mean over its samples (SML minus the method, with the "
              "paired standard error and the normal test's p), the same for every step right, and the greedy "
              "answers (questions only SML / only the method gets right, exact McNemar p).", "",
              f"| method | accuracy: method -> SML | SML - method | p | {check}: method -> SML | p "
              "| greedy: only SML / only method right | p |", "|---|---|---|---|---|---|---|---|"]
    found, every_seed = {}, []
    for key in keys:
        name = row_of(key)[0]
        found[key] = [s["vs_sml"][key] for s in seeds]
        for s, cmp in zip(seeds, found[key]):
            acc = cmp["sampled"]["sample_accuracy"]
            esr = cmp["sampled"].get("every_step_right")
            greedy = cmp.get("greedy")
            label = f"{name} ({s['folder']})" if n > 1 else name
            lines.append(f"| {label} "
                         f"| {100 * acc['before']:.1f} -> {100 * acc['after']:.1f} "
                         f"| {100 * acc['difference']:+.1f} ± {100 * acc['se']:.1f} | {acc['p_value']:.2g} "
                         + (f"| {100 * esr['before']:.1f} -> {100 * esr['after']:.1f} | {esr['p_value']:.2g} "
                            if esr else "| - | - ")
                         + (f"| {greedy['wrong_to_right']} / {greedy['right_to_wrong']} | {greedy['p_value']:.2g} |"
                            if greedy else "| - | - |"))
        if n > 1:
            verdicts = []
            greedy = [c.get("greedy") or {} for c in found[key]]
            for what, tests in (("greedy accuracy", greedy),
                                (f"greedy {check}", [g.get("every_step_right_mcnemar") for g in greedy]),
                                ("accuracy, mean of the samples", [c["sampled"].get("sample_accuracy")
                                                                   for c in found[key]]),
                                (f"{check}, mean of the samples", [c["sampled"].get("every_step_right")
                                                                   for c in found[key]])):
                if all(tests):  # McNemar's counts (SML right where the method is not) or a paired mean
                    signs = {significance(t["wrong_to_right"] - t["right_to_wrong"] if "wrong_to_right" in t
                                          else t["difference"], t["p_value"]) for t in tests}
                    verdicts.append(f"{what}: " + ({1: "SML ahead", -1: "SML behind", 0: "no difference"}[signs.pop()]
                                                   if len(signs) == 1 else "differs between seeds"))
            every_seed.append(f"- {name}: " + "; ".join(verdicts))
    if every_seed:
        lines += ["", f"In every one of the {n} seeds (p < 0.05; greedy: McNemar, samples: the paired mean):",
                  ""] + every_seed
    return found


def render(seeds, run):
    n = len(seeds)
    keys = sorted({key for s in seeds for key in s["rows"]}, key=lambda key: row_of(key)[2])
    lines = [f"# Results: {run}", ""]
    table = render_table(seeds, keys, lines)
    majority = {}
    # a choice or yes/no task: the accuracy of answering the test split's majority class everywhere
    rows = [row for s in seeds for row in s["rows"].values()]
    shares = [next((row["majority_class_accuracy"] for row in s["rows"].values() if "majority_class" in row), None)
              for s in seeds]
    if any(x is not None for x in shares):
        m, sd = mean_std(shares)
        answer = next(row["majority_class"] for row in rows if "majority_class" in row)
        majority = {"answer": answer, "accuracy_mean": m, "accuracy_std": sd}
        checked = any("every_step_right" in row for s in seeds for part in ("rows", "greedy")
                      for row in s[part].values())
        lines.append(f"| Majority class | {pct(m, sd, n)} |{' - |' if checked else ''} - |{' - |' if checked else ''}"
                     f" {pct(m, sd, n)} | - | - | - | always '{answer}'{' (first seed)' if n > 1 else ''}: the floor "
                     "every accuracy above is read against |")
    modified = {s["folder"]: s["modified_source_files"] for s in seeds if "modified_source_files" in s}
    for folder, names in modified.items():  # not the public dataset: say so where the numbers are
        lines += ["", f"Data{f' ({folder})' if n > 1 else ''}: converted from a modified copy (data/prepare.py "
                      f"--allow_modified_source): {', '.join(names)}; not the public files' recorded hashes."]
    vs_sml = render_against_sml(seeds, [key for key in keys if key not in ("base", "sml")], lines)
    findings = {}
    lines += ["", "## Findings", ""]
    for key, text, is_pct in [("rm_auc_correctness", "Reward model: AUC of its score for correctness "
                               "(fresh SFT samples, validation questions)", False),
                              ("rm_auc_sound_among_correct", "Reward model: AUC of its score for every step "
                               "right, among the correct ones of those samples", False),
                              ("rm_answer_swap_lower", "Reward model: share of those samples scored lower with "
                               "their final answer swapped for a wrong one", True),
                              ("rm_length_spearman", "Reward model: Spearman correlation of score and length",
                               False),
                              ("rm_pair_accuracy", "Reward model: pair accuracy (high above low) on collection "
                               "questions held out of its training; SFT trained on their rationales", True),
                              ("ppo_best_update", "PPO: the update chosen on the validation split "
                               "(0 = the SFT model)", False)]:
        m, sd = mean_std([s["findings"].get(key) for s in seeds])
        if m is None:
            continue
        findings[key] = {"mean": m, "std": sd}
        value = pct(m, sd, n) + "%" if is_pct else (f"{m:.3g}" + (f" ± {sd:.3g}" if n > 1 else ""))
        lines.append(f"- {text}: {value}")
    collected = [s["collect"] for s in seeds if "collect" in s]
    if collected:
        lines += ["", "## Rationale collection (SML steps 1-2)", ""]
        for kind, what in (("correct", "given the correct answer"), ("wrong", "given a wrong answer"),
                           ("none", "no answer given (RFT's and STaR's samples)")):
            ys = [c["yield"][kind] for c in collected if kind in c["yield"]]
            if ys:
                m, sd = mean_std(ys)
                why = collected[0]["discarded"].get(kind) or {}
                lines.append(f"- {what}: {pct(m, sd, n)}% kept"
                             + (f"; discarded (first seed): {', '.join(f'{v} {k}' for k, v in why.items())}"
                                if why else ""))
        counts = {key: mean_std([c.get(key) for c in collected])[0]
                  for key in ("sft_rows", "pairs", "rft_rows", "star_rows", "questions_rationalized")}
        lines.append(f"- SFT rows {counts['sft_rows']:.0f}, reward-model pairs {counts['pairs']:.0f}"
                     + (f"; RFT rows {counts['rft_rows']:.0f}, STaR iteration 1 rows {counts['star_rows']:.0f} "
                        f"({counts['questions_rationalized']:.0f} questions by rationalization)"
                        if counts["star_rows"] is not None else "") + (" (mean over seeds)" if n > 1 else ""))
    stages = {}
    lines += ["", "## Time", "", "| stage | seconds | tokens/s |", "|---|---|---|"]
    for stage in seeds[0]["stages"]:
        sec, _ = mean_std([s["stages"].get(stage, {}).get("seconds") for s in seeds])
        tps, _ = mean_std([s["stages"].get(stage, {}).get("tokens_per_s") for s in seeds])
        stages[stage] = {"seconds": sec, "tokens_per_s": tps}
        lines.append(f"| {stage} | {sec:.0f} | {f'{tps:.0f}' if tps else '-'} |")
    total = sum(v["seconds"] for v in stages.values())
    lines.append(f"| total | {total:.0f} | |")
    return "\n".join(lines) + "\n", {"table": table, "majority_class": majority, "vs_sml": vs_sml,
                                      "modified_source_files": modified,
                                      "findings": findings, "stages": stages, "seeds": n, "per_seed": seeds}


def plot(run):
    log_path = os.path.join(run, "ppo", "ppo_log.jsonl")
    if not os.path.exists(log_path):
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "PPO curves: pip install matplotlib, then run python -m tools.results again"
    log = [r for r in read_rows(log_path) if "rm_score" in r]  # update 0 is the SFT model's evaluation
    x = [r["update"] for r in log]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(x, [r["rm_score"] for r in log], label="RM score")
    a2 = a.twinx()
    a2.plot(x, [r["accuracy"] for r in log], color="tab:orange", label="true accuracy")
    a.set_xlabel("PPO update"); a.set_ylabel("RM score"); a2.set_ylabel("rollout accuracy")
    a.legend(loc="upper left"); a2.legend(loc="lower right")
    b.plot(x, [r["kl_ref"] for r in log])
    b.set_xlabel("PPO update"); b.set_ylabel("KL to the SFT model (per rationale)")
    fig.tight_layout()
    out = os.path.join(run, "ppo_curves.png")
    fig.savefig(out, dpi=100)
    return f"PPO curves: {out}"


def main(argv=None):
    p = common.ArgumentParser(description=__doc__)
    p.add_argument("run", help="the run folder of run.sh")
    args = p.parse_args(argv)
    folders = sorted(glob.glob(os.path.join(args.run, "seed*"))) or [args.run]
    seeds = [one_seed(f) for f in folders]
    if not any(s["rows"] for s in seeds):
        raise common.UserError(f"no eval_*.json in {args.run}; run run.sh first")
    md, js = render(seeds, args.run)
    note = plot(folders[0])
    if note:
        md += f"\n{note}\n"
    common.write_text(os.path.join(args.run, "results.md"), md)
    common.write_json(os.path.join(args.run, "results.json"), js)
    print(md)


if __name__ == "__main__":
    common.run(main)
