"""
SML steps 1-2: rationale generation and rationale collection, on the train split.

  1. Generation: for every question, the model writes k rationales given the correct answer
     and k given each of m wrong answers (the answer sits in the prompt as a hint).
  2. Collection: the answer-consistency check keeps a rationale only if it ended and states
     one final answer that agrees with the answer it was given. Kept for the correct answer:
     high quality (sft.jsonl, SML step 3a); high above low of the same question: the reward
     model's pairs (pairs.jsonl, step 3b).

With --k_unhinted the model also writes rationales with no answer given, for two baselines,
never for SML: its correct ones are rejection-sampling fine-tuning's data (RFT, rft.jsonl), and
with the rationalizations of the questions it got wrong they are one STaR iteration's data
(star.jsonl: build_star_rows). --m 0 (a later STaR iteration) gives no wrong answers.

A pretrained model on one of the paper's datasets (--shots, on by default there) is shown
solved exemplars first, and its final answer is read from the question and its explanation
alone (docs/pretrained.md, "The paper's setting").

Writes into --out_dir (all at once: a half-finished collection never has the folder's name):
rationales.jsonl (every sample, labelled), sft.jsonl, pairs.jsonl, rft.jsonl and star.jsonl
(with --k_unhinted), stats.json (kept and discarded, by reason); docs/formats.md has each.

    python generate.py --ckpt runs/default/base.pt --data_dir runs/default/data \\
        --out_dir runs/default/collect
"""

import os
import random
import time

from sml import common
from sml import rationales
from data import fewshot, load_world
from data.jsonl import load_dataset, write_jsonl
from data.tasks import DATASET_TASKS
from sml.checkpoint import load_checkpoint
from sml.collection_report import class_histograms, collection_stats, print_collection
from sml.rationales import label_rationale
from sml.rundir import RunDir

PRESETS = rationales.SAMPLING_PRESETS
OUTPUTS = ["rationales.jsonl", "sft.jsonl", "pairs.jsonl", "rft.jsonl", "star.jsonl", "stats.json"]  # --out_dir's files


def get_args(argv=None):
    p = common.ArgumentParser(description=__doc__)
    g = p.add_argument_group("input / output")
    g.add_argument("--ckpt", required=True, help="language-model checkpoint (the base model)")
    g.add_argument("--data_dir", required=True, help="folder with train.jsonl, tokenizer.json, meta.json")
    g.add_argument("--task", default=None, help="task (default: the one in data_dir/meta.json)")
    g.add_argument("--split", default="train")
    g.add_argument("--limit", type=common.NONNEG, default=2500, help="use the first N questions (0: all)")
    g.add_argument("--out_dir", required=True, help="written as a whole; a folder that holds other files than "
                   "these is refused")
    g.add_argument("--overwrite", action="store_true", help="replace results in --out_dir")
    g.add_argument("--preset", default="default", choices=sorted(PRESETS), help=common.preset_help(PRESETS))
    g = p.add_argument_group("SML step 1: sampling")
    g.add_argument("--shots", type=common.NONNEG, default=None,
                   help="solved exemplars before each question, for a pretrained model (default: 4 for "
                        "the paper's datasets; 0 for the built-in world, whose base model was pretrained "
                        "on the hint template)")
    g.add_argument("--k", type=common.SAMPLES, default=4, help="rationales per (question, given answer)")
    g.add_argument("--m", type=common.NONNEG, default=2,
                   help="wrong answers given per question (0: none, as a STaR iteration needs)")
    g.add_argument("--k_unhinted", type=common.number(int, low=0, high=common.MAX_SAMPLES), default=4,
                   help="rationales with no answer given, for the RFT and STaR baselines (0: none)")
    g.add_argument("--temperature", type=common.POSITIVE, default=1.0)
    common.add_filter_args(g)
    common.add_budget_args(g)
    g = p.add_argument_group("SML step 2: the reward model's pairs")
    g.add_argument("--max_pairs_per_question", type=common.NONNEG, default=8, help="0 = all pairs")
    common.add_runtime_args(p, compile=False)
    args = p.parse_args(argv)
    common.apply_preset(p, args, argv, PRESETS)
    return args


# -----------------------------------------------------------------------------
# SML steps 1-2: sampling given an answer, and the answer-consistency check


def collect(model, tok, task, rows, k, m, k_unhinted, temperature, seed, **kw):
    """SML steps 1-2 over the train split. Returns (records, stats). kw goes to
    rationales.sample_rationales (quiet, the budget, exemplars, top_k / top_p, ...)."""
    # SML step 1: hints are the correct answer and m wrong answers per question.
    requests, meta = [], []
    for row in rows:
        rng = random.Random(rationales.derive_seed(seed, "wrong", row["id"]))
        for hint in [row["answer"]] + (task.wrong_answers(row, m, rng) if m else []):
            kind = "correct" if hint == row["answer"] else "wrong"
            requests.append((row["question"], hint))
            meta.append((row, hint, kind))
    # a choice or yes/no dataset: the few-shot answer line is read among the row's answers
    candidates = rationales.answer_candidates(task, [row for row, _, _ in meta])
    results, speed = rationales.sample_rationales(model, tok, task, requests, k, temperature, seed,
                                                  desc="collect", candidates=candidates, **kw)
    if k_unhinted:  # the RFT and STaR baselines' samples: no answer given
        res_u, sp_u = rationales.sample_rationales(model, tok, task, [(r["question"], None) for r in rows],
                                                   k_unhinted, temperature, rationales.derive_seed(seed, "unhinted"),
                                                   desc="collect (no hint)", **kw)
        results += res_u
        meta += [(r, None, "none") for r in rows]
        speed = {key: speed[key] + sp_u[key] for key in speed}
    records = label_samples(task, meta, results)
    return records, collection_stats(task, rows, records, speed)


def label_samples(task, meta, results):
    """SML step 2: keep the rationales that state an answer consistent with the hint. One
    record per sample, labelled (high, low, rft or discarded, with the reason)."""
    records = []
    for (row, hint, kind), samples in zip(meta, results):
        for s in samples:
            final, correct, label, reason = label_rationale(task, row["answer"], hint, s["answer_text"],
                                                            s["finished"])
            rationale = s["text"]
            if s.get("answer_read") and final is not None:  # few-shot: with the answer line read back
                rationale = task.finish([s["text"]], final)
            records.append({"id": row["id"], "question": row["question"], "answer": row["answer"],
                            "hint": hint, "hint_type": kind, "rationale": rationale,
                            "final_answer": final, "finished": s["finished"],
                            "consistent": hint is not None and label in ("high", "low"),
                            "correct": correct, "label": label, "discard_reason": reason})
    return records


# -----------------------------------------------------------------------------
# What the check feeds: SML's SFT rows (step 3a) and pairs (step 3b), RFT's and STaR's rows


def build_sft_rows(task, records, labels=("high",)):
    """SFT rows from the kept rationales with these labels ("high": SML; "rft": the RFT
    baseline), deduplicated per question. The prompt carries no hint: SFT teaches the
    model to reach the answer from the question alone."""
    seen, rows = set(), []
    for r in records:
        if r["label"] not in labels:
            continue
        key = (r["question"], r["rationale"])
        if key not in seen:
            seen.add(key)
            rows.append({"id": r["id"], "prompt": task.prompt(r["question"]),
                         "completion": " " + r["rationale"]})
    return rows


def build_star_rows(task, records):
    """One STaR iteration's SFT rows (Zelikman et al. 2022): for each question, the correct
    rationales the model wrote with no answer given ("rft"); for a question it got wrong in
    every one of them, its rationalizations instead: rationales written given the correct
    answer that reach it ("high", exactly SML's high-quality rows). The prompt carries no hint
    either way, so a rationalization teaches the model to find that answer on its own."""
    solved = {r["id"] for r in records if r["label"] == "rft"}
    return build_sft_rows(task, [r for r in records if r["label"] == "rft" or r["id"] not in solved],
                          labels=("rft", "high"))


def build_pairs(task, records, max_per_question, rng):
    """Reward-model pairs, as in the paper: a rationale kept for the correct answer (chosen,
    "high") above one kept for a wrong answer (rejected, "low") of the same question. Both
    sides come from hinted samples only; unhinted samples belong to the RFT and STaR baselines.
    All pairs, or a random max_per_question of them."""
    by_q = {}
    for r in records:
        if r["label"] in ("high", "low"):
            assert r["hint"] is not None, "high/low labels are for hinted rationales only"
            d = by_q.setdefault(r["id"], {"question": r["question"], "high": [], "low": []})
            if r["rationale"] not in d[r["label"]]:
                d[r["label"]].append(r["rationale"])
    pairs = []
    for qid, d in by_q.items():
        combos = [(c, j) for c in d["high"] for j in d["low"]]
        if max_per_question and len(combos) > max_per_question:
            combos = rng.sample(combos, max_per_question)
        pairs += [{"id": qid, "prompt": task.prompt(d["question"]), "chosen": " " + c,
                   "rejected": " " + j} for c, j in combos]
    return pairs


# -----------------------------------------------------------------------------


def main(argv=None):
    args = get_args(argv)
    common.refuse_torchrun()
    run = RunDir.whole_folder(args.out_dir, OUTPUTS)
    run.check([args.ckpt, args.data_dir], args.overwrite)
    rt = common.setup_runtime(args.device, args.dtype)
    common.seed_everything(args.seed)
    tok, task = load_world(args.data_dir, args.task)
    rows = load_dataset(os.path.join(args.data_dir, f"{args.split}.jsonl"))
    # a pretrained model's few-shot exemplars; train rows shown as exemplars are not collected
    shots = args.shots if args.shots is not None else (4 if task.name in DATASET_TASKS else 0)
    exemplars = fewshot.exemplars(task, rows, shots)
    exemplar_ids = {e.get("id") for e in exemplars}
    n_split = len(rows)
    rows = [r for r in rows if r["id"] not in exemplar_ids]
    available = len(rows)
    rows = rows[:args.limit] if args.limit else rows
    budget = args.max_new_tokens or task.rationale_tokens
    print(f"collecting on {len(rows)} of the {n_split} {args.split} questions"
          + (f" ({n_split - available} are the exemplars)" if n_split > available else "")
          + f": {args.k} rationales for the correct answer and for each of {args.m} wrong ones, "
          f"{args.k_unhinted} with no answer given; up to {budget} tokens each", flush=True)
    model, _ = load_checkpoint(args.ckpt, kind="lm", tokenizer_json=tok.to_str(), device=rt.device)

    t0 = time.time()
    with rt.autocast:  # bf16 on CUDA (or as --dtype says); the sampler keeps its cache in it
        records, stats = collect(model, tok, task, rows, args.k, args.m, args.k_unhinted, args.temperature,
                                 args.seed, max_new_tokens=budget, batch_prompts=args.batch_prompts,
                                 top_k=args.top_k, top_p=args.top_p, exemplars=exemplars)
    sft = build_sft_rows(task, records)
    pairs = build_pairs(task, records, args.max_pairs_per_question, random.Random(args.seed))
    rft = build_sft_rows(task, records, labels=("rft",)) if args.k_unhinted else []
    star = build_star_rows(task, records) if args.k_unhinted else []
    stats.update({"sft_rows": len(sft), "pairs": len(pairs), "rft_rows": len(rft), "star_rows": len(star),
                  # STaR: the questions it got wrong unhinted, that a rationalization brings in
                  "questions_rationalized": len({r["id"] for r in star}) - stats["questions_with_rft"],
                  "wall_seconds": time.time() - t0,
                  "classes": class_histograms(task, rows, sft, pairs),
                  "exemplars": exemplars, "max_new_tokens": budget,
                  "args": vars(args)})
    with run.write() as tmp:  # the folder appears whole, stats.json in it
        write_jsonl(os.path.join(tmp, "rationales.jsonl"), records)
        write_jsonl(os.path.join(tmp, "sft.jsonl"), sft)
        write_jsonl(os.path.join(tmp, "pairs.jsonl"), pairs)
        if args.k_unhinted:
            write_jsonl(os.path.join(tmp, "rft.jsonl"), rft)
            write_jsonl(os.path.join(tmp, "star.jsonl"), star)
        common.write_json(os.path.join(tmp, "stats.json"), stats)
    print_collection(stats, args.out_dir, args.k_unhinted)


if __name__ == "__main__":
    common.run(main)
