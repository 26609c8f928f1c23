"""
The results of a run.sh run: one row per method on the test split, each method against SML
question by question, the findings, and where the time went. Reads the run folder (or its
seed*/ folders) and writes results.md and results.json there; with matplotlib installed,
also ppo_curves.png.

Each method's headline accuracy is the mean over the k samples of every test question at
temperature 1 (evaluate.py eval --k), with its standard error: one sample per question is too
noisy to rank methods a few points apart. The majority vote over the same samples (maj@k) and
the greedy answer (a second evaluation at temperature 0) sit beside it: a method can raise
one and lower another (PPO sharpens the policy, and loses the diversity a vote needs).

    python results.py runs/default
"""

import glob
import os
import re
import statistics

import common
from data.jsonl import read_rows

# (key, row name, what it is) in table order. The key names the files of a method's
# evaluations, eval_<key>.json (k samples at temperature 1) and eval_<key>_greedy.json; a key
# with "{}" is numbered (SML's rounds from 2, STaR's iterations from 1).
ROWS = [
    ("base", "Base model", "the pretrained model, no fine-tuning"),
    ("sft", "SFT (self-generated)", "SML steps 1-3a: SFT on its own high-quality rationales"),
    ("sml", "SML (SFT + PPO, RM reward)", "the full method: one round, as in the paper"),
    ("sml_round{}", "SML round {}", "collected again with the last round's SML model; SFT, RM and PPO from it"),
    ("rft", "RFT (rejection-sampling fine-tuning)", "SFT on its own correct samples with no answer given"),
    ("star{}", "STaR iteration {}", "the base model fine-tuned on the last iteration's correct samples "
                                    "and rationalizations"),
    ("gold", "SFT on gold rationales", "the annotation upper bound"),
    ("ppo_exact", "SFT + PPO, exact-match reward", "RL on a verifiable reward"),
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


def render_table(seeds, keys, lines):
    """One row per method: accuracy as the mean over k samples per question, maj@k, greedy,
    and every step right. Returns the table as a dict."""
    n = len(seeds)
    evals = [row for s in seeds for row in s["rows"].values()]
    checked = any("every_step_right" in row for row in evals)
    check = step_check_name(seeds)
    k = max(row.get("k", 1) for row in evals)
    lines += [f"Test split, {evals[0]['n']} questions. Accuracy: the mean over the {k} samples of each question "
              f"at temperature 1, " + (f"mean ± std over {n} seeds" if n > 1 else "± its standard error over the "
                                       "questions") + f"; maj@{k}: the majority vote over the same samples; greedy: "
              "one answer at temperature 0" + (f"; {check}: the share of the samples whose every step the task's "
                                               "step checker finds right" if checked else "") + ".", "",
              f"| | accuracy (%), mean of {k} | maj@{k} (%) | greedy (%) |{f' {check} (%) |' if checked else ''} "
              "what it is |", "|---|---|---|---|" + ("---|" if checked else "") + "---|"]
    table = {}
    for key in keys:
        name, what, _ = row_of(key)
        rows = [s["rows"][key] for s in seeds if key in s["rows"]]
        # an evaluation of one sample per question (EVAL_K=1, or an older run's file) is its own mean
        m, sd = mean_std([r.get("sample_accuracy", r["accuracy"]) for r in rows])
        se = rows[0].get("sample_accuracy_se") if n == 1 else None
        maj, maj_sd = mean_std([r["accuracy"] for r in rows if r.get("k", 1) > 1])
        greedy, greedy_sd = mean_std([s["greedy"][key]["accuracy"] for s in seeds if key in s["greedy"]])
        esr, esr_sd = mean_std([r.get("every_step_right") for r in rows])
        table[key] = {"name": name, "accuracy_mean": m, "accuracy_std": sd, "accuracy_se": se,
                      f"maj@{k}_mean": maj, "greedy_mean": greedy, "every_step_right_mean": esr,
                      "seeds": len(rows), "k": rows[0].get("k", 1), "n_questions": rows[0]["n"]}
        acc = pct(m, sd, n) + (f" ± {100 * se:.1f}" if se is not None else "")
        shots = rows[0].get("shots")  # a pretrained base model answers behind exemplars
        lines.append(f"| {name} | {acc} | {pct(maj, maj_sd, n)} | {pct(greedy, greedy_sd, n)} |"
                     + (f" {pct(esr, esr_sd, n)} |" if checked else "")
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
            for what, field in (("accuracy", "sample_accuracy"), (check, "every_step_right")):
                tests = [c["sampled"].get(field) for c in found[key]]
                if all(tests):
                    signs = {significance(t["difference"], t["p_value"]) for t in tests}
                    verdicts.append(f"{what}: " + ({1: "SML ahead", -1: "SML behind", 0: "no difference"}[signs.pop()]
                                                   if len(signs) == 1 else "differs between seeds"))
            every_seed.append(f"- {name}: " + "; ".join(verdicts))
    if every_seed:
        lines += ["", f"In every one of the {n} seeds (p < 0.05 on the mean over the samples):", ""] + every_seed
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
        checked = any("every_step_right" in row for row in rows)
        lines.append(f"| Majority class | {pct(m, sd, n)} | - | - |{' - |' if checked else ''} always "
                     f"'{answer}'{' (first seed)' if n > 1 else ''}: the floor every accuracy above is read against |")
    vs_sml = render_against_sml(seeds, [key for key in keys if key not in ("base", "sml")], lines)
    findings = {}
    lines += ["", "## Findings", ""]
    for key, text, is_pct in [("rm_auc_correctness", "Reward model: AUC of its score for correctness "
                               "(fresh SFT samples, test questions)", False),
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
        return "PPO curves: pip install matplotlib, then run python results.py again"
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
