"""
Evaluation, for every stage: the accuracy of any checkpoint on any split, and two
checkpoints compared question by question.

  eval     accuracy at a temperature (greedy by default) over k samples per question: their
           mean, with its standard error, pass@k (any of the k right) and their majority vote
           (maj@k), with a 95% Wilson interval; --out keeps per-question predictions (with the
           step checker's count of wrong steps for each sample, where the task has one). With
           --choose_temperature, the temperature is first chosen on the validation split.
  compare  two --out files of the same questions: the per-question means over the k samples
           compared pairwise (difference, paired SE, p), for accuracy and for "every step
           right" where steps were checked; and the predictions (one sample or maj@k): wrong
           -> right, right -> wrong, and the exact McNemar test (for one sample per question,
           also on "every step right")

    python evaluate.py eval --ckpt runs/default/sft.pt --data_dir runs/default/data --temperature 1 --k 8 \\
        --out runs/default/preds_sft.jsonl --summary runs/default/eval_sft.json
    python evaluate.py compare runs/default/preds_sft.jsonl runs/default/preds_sml.jsonl

  world    the properties the built-in world's base model must have (docs/world.md), each with
           its bound, PASS or FAIL: wrong at greedy on many questions, for reasons it repeats,
           that no temperature fixes, while given the correct answer it can argue it soundly

    python evaluate.py world --data_dir runs/default/data --base runs/default/base.pt
"""

import math
import os
from collections import Counter

from sml import common
from sml import rationales
from data import fewshot, load_val_split, load_world
from data.jsonl import DataError, load_dataset, read_jsonl, write_jsonl
from sml.checkpoint import load_checkpoint
from sml.rationales import label_rationale  # SML step 2, as collection runs it


PRESETS = rationales.SAMPLING_PRESETS


def get_args(argv=None):
    p = common.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="two eval --out files, question by question (McNemar)")
    c.add_argument("before", help="predictions JSONL of the first checkpoint (evaluate.py eval --out)")
    c.add_argument("after", help="predictions JSONL of the second, on the same questions")
    c.add_argument("--json", default=None, help="write the result here")
    s = sub.add_parser("eval", help="accuracy of a checkpoint on a split")
    g = s.add_argument_group("input / output")
    g.add_argument("--ckpt", required=True, help="language-model checkpoint")
    g.add_argument("--data_dir", required=True, help="folder with the split, tokenizer.json, meta.json")
    g.add_argument("--task", default=None, help="task (default: the one in data_dir/meta.json)")
    g.add_argument("--split", default="test")
    g.add_argument("--limit", type=common.NONNEG, default=0, help="use the first N questions (0: all)")
    g.add_argument("--out", default=None, help="write per-question predictions JSONL here")
    g.add_argument("--summary", default=None, help="write the summary JSON here")
    g.add_argument("--overwrite", action="store_true", help="replace existing --out / --summary files")
    g.add_argument("--preset", default="default", choices=sorted(PRESETS), help=common.preset_help(PRESETS))
    g = s.add_argument_group("sampling")
    g.add_argument("--temperature", type=common.NONNEG_FLOAT, default=0.0, help="0 = greedy")
    g.add_argument("--choose_temperature", type=common.NONNEG_FLOAT, nargs="+", default=None, metavar="T",
                   help="first sample data_dir/val.jsonl k times per question at each of these temperatures, "
                        "then evaluate --split at the one with the best mean accuracy (ties: the first "
                        "listed): a control for what sharpening alone gives")
    g.add_argument("--k", type=common.SAMPLES, default=1,
                   help="samples per question (their mean, and their majority vote)")
    common.add_filter_args(g)
    common.add_budget_args(g)
    g.add_argument("--shots", type=common.NONNEG, default=0,
                   help="solved exemplars (from data_dir's train split) before each question: a "
                        "pretrained base model's few-shot chain of thought; 0: the zero-shot format SFT teaches")
    common.add_runtime_args(s, compile=False)
    add_world_args(sub)
    args = p.parse_args(argv)
    if args.command == "eval":
        common.apply_preset(p, args, argv, PRESETS)
    return args


def mcnemar(before, after):
    """Paired comparison of two checkpoints on the same questions (lists of bools):
    how many went wrong -> right and right -> wrong, and the exact McNemar p-value
    (two-sided binomial test on the discordant pairs)."""
    if len(before) != len(after):
        raise ValueError(f"paired test needs the same questions: {len(before)} vs {len(after)}")
    fixed = sum(1 for a, b in zip(before, after) if not a and b)
    broken = sum(1 for a, b in zip(before, after) if a and not b)
    n = fixed + broken
    tail = sum(math.comb(n, i) for i in range(min(fixed, broken) + 1)) / 2 ** n if n else 1.0
    return {"n": len(before), "wrong_to_right": fixed, "right_to_wrong": broken,
            "p_value": min(1.0, 2 * tail)}


def paired_test(before, after):
    """Paired comparison of per-question values (e.g. each question's mean over k samples):
    the mean of the differences after - before, its standard error over questions, and the
    two-sided p-value of the normal approximation (a paired t-test at the hundreds of
    questions a test split has)."""
    if len(before) != len(after):
        raise ValueError(f"paired test needs the same questions: {len(before)} vs {len(after)}")
    diff, se = rationales.mean_and_se([b - a for a, b in zip(before, after)])
    p = math.erfc(abs(diff / se) / math.sqrt(2)) if se > 0 else float(diff == 0)
    return {"before": sum(before) / max(1, len(before)), "after": sum(after) / max(1, len(after)),
            "difference": diff, "se": se, "p_value": p}


def load_predictions(path):
    """{id: prediction row} from an eval --out file."""
    optional = {"step_errors": int, "sample_correct": list[bool], "sample_step_errors": list}
    return {r["id"]: r for r in read_jsonl(path, {"id": str, "correct": bool}, optional, unique="id")}


def eval_main(args):
    common.refuse_torchrun()
    rt = common.setup_runtime(args.device, args.dtype)
    common.seed_everything(args.seed)
    split = os.path.join(args.data_dir, f"{args.split}.jsonl")
    common.check_outputs({"--out": args.out, "--summary": args.summary}, args.overwrite,
                         [split, args.ckpt, args.data_dir])
    tok, task = load_world(args.data_dir, args.task)
    rows = load_dataset(split)
    rows = rows[:args.limit] if args.limit else rows
    train_path = os.path.join(args.data_dir, "train.jsonl")  # a test-only conversion has none: written exemplars
    exemplars = fewshot.exemplars(task, load_dataset(train_path) if os.path.exists(train_path) else [],
                                  args.shots) if args.shots else None
    model, _ = load_checkpoint(args.ckpt, kind="lm", tokenizer_json=tok.to_str(), device=rt.device)
    sweep = choose_temperature(args, rt, model, tok, task, exemplars) if args.choose_temperature else None
    with rt.autocast:
        summary, preds = rationales.evaluate(model, tok, task, rows, args.temperature, args.k, args.seed,
                                             max_new_tokens=args.max_new_tokens, batch_prompts=args.batch_prompts,
                                             top_k=args.top_k, top_p=args.top_p, exemplars=exemplars)
    print(f"{args.split} accuracy of {args.ckpt}: {rationales.format_accuracy(summary)} "
          f"(temperature {args.temperature}, k {args.k}{f', {args.shots}-shot' if args.shots else ''})")
    if args.shots:
        summary["shots"] = args.shots
    if args.k > 1:  # does any of the k samples reach the answer (what RL may narrow)
        summary["pass_at_k"] = sum(any(p["sample_correct"]) for p in preds) / max(1, len(preds))
    if sweep:
        summary["temperature_sweep"] = sweep
    if args.summary and os.path.exists(args.summary):
        os.remove(args.summary)  # an earlier run's, and the summary says "done": it is written last
    if args.out:
        write_jsonl(args.out, preds)
    if args.summary:
        common.write_json(args.summary, summary)


def choose_temperature(args, rt, model, tok, task, exemplars):
    """Sets args.temperature to the one of args.choose_temperature with the best mean accuracy
    over k samples per question of the validation split (its first --limit questions); returns
    the sweep for the summary."""
    rows = load_val_split(args.data_dir, args.limit, "--choose_temperature")
    accuracy = {}
    for t in args.choose_temperature:
        with rt.autocast:
            s, _ = rationales.evaluate(model, tok, task, rows, t, args.k, args.seed, quiet=True,
                                       max_new_tokens=args.max_new_tokens, batch_prompts=args.batch_prompts,
                                       top_k=args.top_k, top_p=args.top_p, exemplars=exemplars)
        accuracy[t] = s["sample_accuracy"]
        print(f"val accuracy at temperature {t}: {100 * s['sample_accuracy']:.1f}% (mean of {args.k})", flush=True)
    args.temperature = max(accuracy, key=accuracy.get)  # the first of equals
    print(f"temperature {args.temperature}: the best on {len(rows)} validation questions")
    return {"split": "val", "n": len(rows), "k": args.k, "chosen": args.temperature,
            "sample_accuracy": {str(t): a for t, a in accuracy.items()}}


def compare_main(args):
    if args.json:
        common.check_output(args.json, overwrite=True, inputs=[args.before, args.after])
    before, after = load_predictions(args.before), load_predictions(args.after)
    if set(before) != set(after):
        raise DataError(f"{args.before} and {args.after} are not on the same questions")
    ids = sorted(before)
    # each file's prediction ("correct": the one sample, or the majority vote over k): McNemar
    res = mcnemar([before[i]["correct"] for i in ids], [after[i]["correct"] for i in ids])
    res.update(before_accuracy=sum(before[i]["correct"] for i in ids) / len(ids),
               after_accuracy=sum(after[i]["correct"] for i in ids) / len(ids))
    print(f"{len(ids)} questions, the prediction: {100 * res['before_accuracy']:.1f}% -> "
          f"{100 * res['after_accuracy']:.1f}%; wrong->right {res['wrong_to_right']}, "
          f"right->wrong {res['right_to_wrong']}, McNemar p = {res['p_value']:.3g}")
    errors = [[p.get("sample_step_errors") or [p.get("step_errors")] for p in (side[i] for i in ids)]
              for side in (before, after)]
    # one sample per question (greedy), steps checked (an unreadable rationale is not right)
    if all(len(e) == 1 for side in errors for e in side) and any(e[0] is not None for side in errors for e in side):
        m = res["every_step_right_mcnemar"] = mcnemar(*[[e[0] == 0 for e in side] for side in errors])
        print(f"every step right: wrong->right {m['wrong_to_right']}, right->wrong {m['right_to_wrong']}, "
              f"McNemar p = {m['p_value']:.3g}")
    # each question's mean over its k samples, paired: the headline comparison
    means = [[rationales.per_question_means(preds[i]) for i in ids] for preds in (before, after)]
    res["sample_accuracy"] = paired_test(*[[m for m, _ in side] for side in means])
    print(f"mean over the samples of a question: {describe(res['sample_accuracy'])}")
    # Rationale quality, where the task has a step checker: a right answer reached through
    # slips that cancel is not a good rationale, and RL may repair it without moving accuracy.
    if any(sound is not None for side in means for _, sound in side):
        res["every_step_right"] = paired_test(*[[sound or 0.0 for _, sound in side] for side in means])
        print(f"every step right (mean over the samples): {describe(res['every_step_right'])}")
    if args.json:
        common.write_json(args.json, res)


def describe(t):
    return (f"{100 * t['before']:.1f}% -> {100 * t['after']:.1f}%, difference {100 * t['difference']:+.1f} "
            f"points (paired SE {100 * t['se']:.1f}), p = {t['p_value']:.3g}")


# -----------------------------------------------------------------------------
# The world's properties (issue 32; docs/world.md): what a base model must show for SML's
# gains not to be what a lower temperature gives for free

WORLD_TEMPERATURES = (1.0, 0.8, 0.6, 0.4, 0.2)
# name: (what it is, low, high), the bounds the default world is built to meet (issue 32; "a few
# points" of temperature lift taken as 3)
WORLD_BOUNDS = {
    "greedy": ("base greedy accuracy", 0.25, 0.70),
    "temperature_lift": ("most any temperature lifts accuracy above greedy", None, 0.03),
    "systematic": ("greedy-wrong questions with >= 6 of 8 samples at T=0.7 on one wrong answer", 0.5, None),
    "hinted_sound": ("greedy-wrong questions where, given the correct answer, some sample is consistent "
                     "with every step right", 0.3, None),
    "gold_greedy": ("gold-rationale SFT greedy accuracy", 0.95, None),
}


def add_world_args(sub):
    w = sub.add_parser("world", help="the properties of a built-in world's base model, with their bounds")
    w.add_argument("--data_dir", required=True, help="folder made by data/prepare.py")
    w.add_argument("--base", required=True, help="the base model pretrained on its corpus")
    w.add_argument("--gold", default=None, help="optional: the base model after SFT on gold rationales "
                                               "(train_sft.py --gold)")
    w.add_argument("--split", default="test")
    w.add_argument("--limit", type=common.NONNEG, default=0, help="use the first N questions (0: all)")
    w.add_argument("--k", type=common.SAMPLES, default=4,
                   help="samples per question at each temperature of the sweep (their mean)")
    w.add_argument("--k_hinted", type=common.SAMPLES, default=4,
                   help="samples per greedy-wrong question given its correct answer, at T=1 (generate.py's "
                        "--k and --temperature)")
    w.add_argument("--json", default=None, help="write the properties here")
    w.add_argument("--overwrite", action="store_true", help="replace an existing --json")
    common.add_runtime_args(w, compile=False)


def world_properties(model, tok, task, rows, seed, k=4, k_hinted=4, quiet=False):
    """The world's properties, read off its base model on `rows` (fractions): greedy accuracy;
    the mean accuracy of k samples at each of WORLD_TEMPERATURES; among the questions it gets
    wrong greedily, the share where 6 or more of 8 samples at T=0.7 give one wrong answer
    (systematic errors), and the share where, given the correct answer (SML step 1's hint, k_hinted
    samples at T=1), some sample passes SML step 2's consistency check with every step right
    (hinted_sound_any; hinted_sound, the same per sample)."""
    out = {"n": len(rows)}
    greedy, preds = rationales.evaluate(model, tok, task, rows, 0.0, 1, seed, quiet=quiet)
    out["greedy"] = greedy["accuracy"]
    out["greedy_every_step_right"] = greedy.get("every_step_right")
    out["temperatures"] = {}
    for t in WORLD_TEMPERATURES:
        s, _ = rationales.evaluate(model, tok, task, rows, t, k, rationales.derive_seed(seed, "world", t), quiet=quiet)
        out["temperatures"][str(t)] = s["sample_accuracy"]
    out["temperature_lift"] = max(out["temperatures"].values()) - out["greedy"]
    wrong = [r for r, p in zip(rows, preds) if not p["correct"]]
    out["greedy_wrong"] = len(wrong)
    if not wrong:
        return out
    # read as evaluation reads them (an answer line the model leaves out is completed)
    hot, _ = rationales.sample_rationales(model, tok, task, [(r["question"], None) for r in wrong], 8, 0.7,
                                          rationales.derive_seed(seed, "world", "systematic"), complete_missing=True,
                                          desc="T=0.7", quiet=quiet)
    repeated = 0
    for r, samples in zip(wrong, hot):
        answers = [task.normalize(x["final_answer"]) for x in samples
                   if x["final_answer"] is not None and not task.answers_match(x["final_answer"], r["answer"])]
        repeated += bool(answers) and Counter(answers).most_common(1)[0][1] >= 6
    out["systematic"] = repeated / len(wrong)
    results, _ = rationales.sample_rationales(model, tok, task, [(r["question"], r["answer"]) for r in wrong],
                                              k_hinted, 1.0, rationales.derive_seed(seed, "world", "hinted"),
                                              desc="given the answer", quiet=quiet)
    sound = [[label_rationale(task, r["answer"], r["answer"], x["answer_text"], x["finished"])[2] == "high"
              and task.step_errors(r["question"], x["text"]) == 0 for x in samples]
             for r, samples in zip(wrong, results)]
    out["hinted_sound"] = sum(map(sum, sound)) / (len(wrong) * k_hinted)
    out["hinted_sound_any"] = sum(map(any, sound)) / len(wrong)
    return out


def world_main(args):
    common.refuse_torchrun()
    rt = common.setup_runtime(args.device, args.dtype)
    common.seed_everything(args.seed)
    split = os.path.join(args.data_dir, f"{args.split}.jsonl")
    if args.json:
        common.check_output(args.json, args.overwrite, [split, args.base, args.gold, args.data_dir])
    tok, task = load_world(args.data_dir)
    rows = load_dataset(split)
    rows = rows[:args.limit] if args.limit else rows
    model, _ = load_checkpoint(args.base, kind="lm", tokenizer_json=tok.to_str(), device=rt.device)
    with rt.autocast:
        props = world_properties(model, tok, task, rows, args.seed, args.k, args.k_hinted)
        if args.gold:
            gold, _ = load_checkpoint(args.gold, kind="lm", tokenizer_json=tok.to_str(), device=rt.device)
            props["gold_greedy"] = rationales.evaluate(gold, tok, task, rows, 0.0, 1, args.seed)[0]["accuracy"]
    print(f"the world of {args.data_dir}, base model {args.base}, {args.split} split ({len(rows)} questions, "
          f"{props['greedy_wrong']} wrong at greedy):")
    print("  accuracy at T " + ", ".join(f"{t}: {100 * a:.1f}%" for t, a in props["temperatures"].items())
          + f" (mean of {args.k} samples)")
    if "hinted_sound" in props:
        print(f"  given the correct answer, per sample (k {args.k_hinted}, T=1): consistent with every step right "
              f"{100 * props['hinted_sound']:.1f}%")
    props["pass"] = {}
    for key, (what, low, high) in WORLD_BOUNDS.items():
        value = props.get("hinted_sound_any" if key == "hinted_sound" else key)
        if value is None:
            continue
        ok = (low is None or value >= low) and (high is None or value <= high)
        props["pass"][key] = ok
        bound = " - ".join(f"{100 * b:.0f}%" for b in (low, high) if b is not None)
        bound = {(True, False): f">= {bound}", (False, True): f"<= {bound}"}.get((low is not None, high is not None), bound)
        print(f"  {what}: {100 * value:.1f}% (bound {bound}) {'PASS' if ok else 'FAIL'}")
    if args.json:
        common.write_json(args.json, props)


def main(argv=None):
    args = get_args(argv)
    {"compare": compare_main, "eval": eval_main, "world": world_main}[args.command](args)


if __name__ == "__main__":
    common.run(main)
