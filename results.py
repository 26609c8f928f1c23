"""
The results of a run.sh run: the paper-style table on the test split, the three findings,
and where the time went. Reads the run folder (or its seed*/ folders) and writes
results.md and results.json there; with matplotlib installed, also ppo_curves.png.

    python results.py runs/default
"""

import glob
import os
import statistics

import common
from data.jsonl import iter_jsonl

# (key, row name, what it is) in table order; the key names the eval_<key>.json file
ROWS = [
    ("base", "Base model", "the pretrained model, no fine-tuning"),
    ("sft", "SFT (self-generated)", "SML steps 1-3a: SFT on its own high-quality rationales"),
    ("sml", "SML (SFT + PPO, RM reward)", "the full method"),
    ("star", "STaR / rejection sampling", "SFT on its own unhinted correct samples"),
    ("gold", "SFT on gold rationales", "the annotation upper bound"),
    ("ppo_exact", "SFT + PPO, exact-match reward", "RL on a verifiable reward"),
]


def load(path):
    return common.read_json(path)  # a truncated file: one line naming it


def load_jsonl(path):
    return [row for _, row in iter_jsonl(path)]


def one_seed(run):
    """Everything we report, from one seed's folder."""
    out = {"rows": {}, "findings": {}, "stages": {}}
    for key, _, _ in ROWS:
        p = os.path.join(run, f"eval_{key}.json")
        if os.path.exists(p):
            out["rows"][key] = load(p)
    rm = os.path.join(run, "rm_report.json")
    if os.path.exists(rm):
        r = load(rm)
        out["findings"]["rm_pair_accuracy"] = r.get("val_pair_accuracy")
        out["findings"]["rm_auc_correctness"] = r.get("auc_correctness")
    cmp = os.path.join(run, "compare_sft_sml.json")
    if os.path.exists(cmp):
        c = load(cmp)
        out["findings"].update(ppo_wrong_to_right=c["wrong_to_right"], ppo_right_to_wrong=c["right_to_wrong"],
                               ppo_mcnemar_p=c["p_value"])
        if "every_step_right" in c:  # rationale quality by the task's step checker
            f = c["every_step_right"]
            out["findings"].update(every_step_right_sft=f["before"], every_step_right_sml=f["after"],
                                   ppo_flawed_to_right=f["flawed_to_right"],
                                   ppo_right_to_flawed=f["right_to_flawed"], ppo_every_step_right_p=f["p_value"])
    timings = os.path.join(run, "timings.jsonl")
    if os.path.exists(timings):
        for t in load_jsonl(timings):
            out["stages"][t["stage"]] = {"seconds": t["seconds"]}
    # tokens/s where a stage measures it
    for stage, ckpt in (("pretrain", "base"), ("sft", "sft"), ("star", "star"), ("gold", "gold")):
        for path in (os.path.join(run, f"{ckpt}.log.jsonl"),):
            if os.path.exists(path) and stage in out["stages"]:
                rates = [r["tokens_per_s"] for r in load_jsonl(path) if "tokens_per_s" in r]
                if rates:
                    out["stages"][stage]["tokens_per_s"] = rates[-1]
    for key, _, _ in ROWS[3:]:  # SML against each baseline, question by question
        p = os.path.join(run, f"compare_{key}_sml.json")
        if os.path.exists(p):
            out.setdefault("vs_baselines", {})[key] = load(p)
    summary = os.path.join(run, "ppo", "summary.json")
    if os.path.exists(summary):
        out["findings"]["ppo_best_update"] = load(summary).get("best_update")
    stats = os.path.join(run, "collect", "stats.json")
    if os.path.exists(stats) and "collect" in out["stages"]:
        s = load(stats)
        out["stages"]["collect"]["tokens_per_s"] = s["tokens_per_s"]
        out["collect"] = {k: s[k] for k in ("sft_rows", "pairs", "questions", "questions_with_high") if k in s}
        out["collect"]["yield"] = {k: v["yield"] for k, v in s["by_hint_type"].items()}
        out["collect"]["discarded"] = {k: v.get("discarded", {}) for k, v in s["by_hint_type"].items()}
    for stage, folder in (("ppo", "ppo"), ("ppo exact", "ppo_exact")):
        ppo_log = os.path.join(run, folder, "ppo_log.jsonl")
        if os.path.exists(ppo_log) and stage in out["stages"]:
            out["stages"][stage]["tokens_per_s"] = statistics.mean(r["tok/s"] for r in load_jsonl(ppo_log)
                                                                   if "tok/s" in r)
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


def render(seeds, run):
    n = len(seeds)
    rows = [row for s in seeds for row in s["rows"].values()]
    checked = any("every_step_right" in row for row in rows)
    check = step_check_name(seeds)
    lines = [f"# Results: {run}", "",
             "Test accuracy, one sample per question at temperature 1"
             + (f", mean ± std over {n} seeds" if n > 1 else ", with its 95% Wilson interval")
             + (f"; and the share of rationales with {check} (the task's step checker)" if checked else "") + ".", "",
             f"| | accuracy (%) | 95% CI |{f' {check} (%) |' if checked else ''} what it is |",
             "|---|---|---|" + ("---|" if checked else "") + "---|"]
    table = {}
    for key, name, what in ROWS:
        accs = [s["rows"][key]["accuracy"] for s in seeds if key in s["rows"]]
        if not accs:
            continue
        m, sd = mean_std(accs)
        ci = seeds[0]["rows"][key]["ci95"] if n == 1 else None
        table[key] = {"name": name, "accuracy_mean": m, "accuracy_std": sd, "seeds": len(accs),
                      "ci95": ci, "n_questions": seeds[0]["rows"][key]["n"]}
        ci_text = f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}" if ci else "-"
        quality = ""
        if checked:
            esr, esr_sd = mean_std([s["rows"][key].get("every_step_right") for s in seeds if key in s["rows"]])
            table[key]["every_step_right_mean"] = esr
            quality = f" {pct(esr, esr_sd, n)} |"
        shots = seeds[0]["rows"][key].get("shots")  # a pretrained base model answers behind exemplars
        lines.append(f"| {name} | {pct(m, sd, n)} | {ci_text} |{quality} {what}"
                     f"{f', {shots}-shot prompt' if shots else ''} |")
    majority = {}
    # a choice or yes/no task: the accuracy of answering the test split's majority class everywhere
    shares = [next((row["majority_class_accuracy"] for row in s["rows"].values() if "majority_class" in row), None)
              for s in seeds]
    if any(x is not None for x in shares):
        m, sd = mean_std(shares)
        answer = next(row["majority_class"] for row in rows if "majority_class" in row)
        majority = {"answer": answer, "accuracy_mean": m, "accuracy_std": sd}
        lines.append(f"| Majority class | {pct(m, sd, n)} | - |{' - |' if checked else ''} always "
                     f"'{answer}'{' (first seed)' if n > 1 else ''}: the floor every accuracy above is read against |")
    findings = {}
    lines += ["", "## Findings", ""]
    for key, text, is_pct in [("rm_auc_correctness", "Reward model: AUC of its score for correctness "
                               "(fresh SFT samples, test questions)", False),
                              ("rm_pair_accuracy", "Reward model: pair accuracy (high above low) on collection "
                               "questions held out of its training; SFT trained on their rationales", True),
                              ("ppo_wrong_to_right", "PPO vs SFT, same test questions: wrong -> right", False),
                              ("ppo_right_to_wrong", "PPO vs SFT, same test questions: right -> wrong", False),
                              ("ppo_mcnemar_p", "PPO vs SFT: McNemar p-value", False),
                              ("every_step_right_sft", f"Rationales with {check} (step checker): SFT", True),
                              ("every_step_right_sml", f"Rationales with {check} (step checker): SML", True),
                              ("ppo_flawed_to_right", f"PPO vs SFT, same test questions: flawed -> {check}", False),
                              ("ppo_right_to_flawed", f"PPO vs SFT, same test questions: {check} -> flawed", False),
                              ("ppo_every_step_right_p", "PPO vs SFT, rationale quality: McNemar p-value", False),
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
                           ("none", "no answer given (STaR's samples)")):
            ys = [c["yield"][kind] for c in collected if kind in c["yield"]]
            if ys:
                m, sd = mean_std(ys)
                why = collected[0]["discarded"].get(kind) or {}
                lines.append(f"- {what}: {pct(m, sd, n)}% kept"
                             + (f"; discarded (first seed): {', '.join(f'{v} {k}' for k, v in why.items())}"
                                if why else ""))
        m, _ = mean_std([c.get("sft_rows") for c in collected])
        p, _ = mean_std([c.get("pairs") for c in collected])
        lines.append(f"- SFT rows {m:.0f}, reward-model pairs {p:.0f}" + (" (mean over seeds)" if n > 1 else ""))
    names = {key: name for key, name, _ in ROWS}
    vs = [(key, [s.get("vs_baselines", {}).get(key) for s in seeds]) for key, _, _ in ROWS[3:]]
    vs = [(key, cmps) for key, cmps in vs if all(cmps)]
    if vs:
        lines += ["", "## SML against the baselines, same test questions"
                  + (" (each seed)" if n > 1 else ""), "",
                  "| baseline | accuracy: baseline -> SML | only SML right / only baseline right | p "
                  f"| {check}: baseline -> SML | p |", "|---|---|---|---|---|---|"]
        for key, cmps in vs:
            for c in cmps:
                f = c.get("every_step_right")
                quality = (f"{100 * f['before']:.1f} -> {100 * f['after']:.1f} | {f['p_value']:.2g}"
                           if f else "- | -")
                lines.append(f"| {names[key]} | {100 * c['before_accuracy']:.1f} -> {100 * c['after_accuracy']:.1f} "
                             f"| {c['wrong_to_right']} / {c['right_to_wrong']} | {c['p_value']:.2g} | {quality} |")
    stages = {}
    lines += ["", "## Time", "", "| stage | seconds | tokens/s |", "|---|---|---|"]
    for stage in seeds[0]["stages"]:
        sec, _ = mean_std([s["stages"].get(stage, {}).get("seconds") for s in seeds])
        tps, _ = mean_std([s["stages"].get(stage, {}).get("tokens_per_s") for s in seeds])
        stages[stage] = {"seconds": sec, "tokens_per_s": tps}
        lines.append(f"| {stage} | {sec:.0f} | {f'{tps:.0f}' if tps else '-'} |")
    total = sum(v["seconds"] for v in stages.values())
    lines.append(f"| total | {total:.0f} | |")
    return "\n".join(lines) + "\n", {"table": table, "majority_class": majority, "findings": findings,
                                     "stages": stages, "seeds": n, "per_seed": seeds}


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
    log = [r for r in load_jsonl(log_path) if "rm_score" in r]  # update 0 is the SFT model's evaluation
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
