"""
Sample rationales, read their final answers, check them. Two jobs share this one path:

  collect   SML steps 1-2 on the train split. For each question, sample rationales given
            the correct answer and given wrong answers (and, optionally, with no answer
            given); keep a rationale only if its final answer agrees with the answer it was
            given. Writes rationales.jsonl, sft.jsonl, pairs.jsonl, stats.json.
  eval      Accuracy of any checkpoint on any split, greedy or sampled (majority vote over
            k), with a 95% Wilson interval and per-question predictions.
  bench     Sampling tokens/s with the KV-cache fan-out engine vs a naive loop.

    python generate.py eval --ckpt runs/default/base.pt --data_dir runs/default/data
    python generate.py collect --ckpt runs/default/base.pt --data_dir runs/default/data \\
        --out_dir runs/default/collect
"""

import argparse
import hashlib
import json
import math
import os
import time
from collections import Counter

import torch
from tqdm import tqdm

import common
from data import load_world
from data.jsonl import DataError, load_dataset, read_jsonl, write_jsonl
from data.tokenizer import EOT, tokenizer_to_str
from model import CheckpointError, load_checkpoint, sample


def derive_seed(*parts):
    """A 62-bit seed from any parts: the sample for (request i, draw j) gets the same
    random stream whatever the batch it lands in, so results do not depend on batching."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 2


# -----------------------------------------------------------------------------
# The one engine: sample rationales for (question, hint) requests and read the answers


def sample_rationales(model, tok, task, requests, k, temperature, seed, max_new_tokens=64,
                      batch_prompts=64, top_k=None, top_p=None, complete_missing=False,
                      desc="sampling", quiet=False):
    """requests: list of (question, hint or None). Returns one list per request of k dicts
    {"text", "final_answer", "tokens", "logprobs", "finished"}.

    SML step 1 (rationale generation): the prompt carries the hint when one is given.
    Reading the final answer back: the task's extractor (None if the rationale states no
    answer, or two). complete_missing=True (evaluation only) fills such a None by letting
    the model complete the answer line ("So the answer is") greedily after the rationale.
    That is only done on a prompt that gives no answer: with a hint in the prompt the
    model would copy it, and SML step 2 would take the copy for a consistent rationale.
    """
    if complete_missing and any(h is not None for _, h in requests):
        raise ValueError("the answer-line completion is for prompts without a given answer only")
    eot_id = tok.token_to_id(EOT)
    prompts = [tok.encode(task.prompt(q, h)).ids for q, h in requests]
    block = model.config.block_size
    for (q, h), p in zip(requests, prompts):
        if len(p) >= block:
            raise ValueError(f"prompt of {len(p)} tokens does not fit the model's context of "
                             f"{block}: {q[:60]!r}")
    results = []
    n_tok, t0 = 0, time.time()
    bar = tqdm(total=len(requests) * k, desc=desc, disable=quiet, dynamic_ncols=True, leave=False)
    for start in range(0, len(requests), batch_prompts):
        chunk = list(range(start, min(start + batch_prompts, len(requests))))
        seeds = [derive_seed(seed, i, j) for i in chunk for j in range(k)]
        out = sample(model, [prompts[i] for i in chunk], num_samples=k, max_new_tokens=max_new_tokens,
                     temperature=temperature, top_k=top_k, top_p=top_p, eot_id=eot_id,
                     pad_id=eot_id, seeds=seeds)
        n_tok += int(out.lengths.sum())
        for r, ids in enumerate(out.token_lists()):
            if r % k == 0:
                results.append([])
            text_ids = ids[:-1] if ids and ids[-1] == eot_id else ids
            text = tok.decode(text_ids).strip()
            results[-1].append({"text": text, "final_answer": task.extract_answer(text), "tokens": ids,
                                "logprobs": out.logprobs[r, :len(ids)].tolist(),
                                "finished": bool(out.finished[r])})
        bar.update(len(chunk) * k)
    bar.close()
    if complete_missing:
        complete_answer_lines(model, tok, task, prompts, results, batch_prompts)
    return results, {"tokens": n_tok, "seconds": time.time() - t0}


def complete_answer_lines(model, tok, task, prompts, results, batch_prompts=64):
    """Evaluation's fallback for a rationale that states no final answer: append the answer
    line ("So the answer is") and read what the model writes after it, greedily."""
    eot_id = tok.token_to_id(EOT)
    block = model.config.block_size
    missing = [(i, s) for i, samples in enumerate(results) for s in samples if s["final_answer"] is None]
    for start in range(0, len(missing), batch_prompts):
        chunk = missing[start:start + batch_prompts]
        answer_prompts = []
        for i, s in chunk:
            ids = prompts[i] + tok.encode(" " + s["text"] + task.ANSWER_PREFIX).ids
            answer_prompts.append(ids[-(block - 8):])  # keep the tail if it is too long
        out = sample(model, answer_prompts, max_new_tokens=8, temperature=0,
                     eot_id=eot_id, pad_id=eot_id)
        for (i, s), ids in zip(chunk, out.token_lists()):
            ids = ids[:-1] if ids and ids[-1] == eot_id else ids
            s["final_answer"] = task.extract_answer(task.ANSWER_PREFIX.strip() + " " + tok.decode(ids))
            s["answer_completed"] = True


# -----------------------------------------------------------------------------
# Evaluation


def wilson_interval(successes, n, z=1.959964):
    """95% Wilson score interval for a proportion (better than p +- z*se near 0 and 1)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def majority(answers):
    """Most common non-None answer (ties: the first seen); None if there is none."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    best = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == best)


def evaluate(model, tok, task, rows, temperature=0.0, k=1, seed=0, quiet=False, **kw):
    """Accuracy on rows (the task's answer check on each prediction). With k > 1 the
    prediction is the majority vote over k samples. Returns (summary, per-question rows)."""
    results, speed = sample_rationales(model, tok, task, [(r["question"], None) for r in rows],
                                       k, temperature, seed, complete_missing=True, desc="eval",
                                       quiet=quiet, **kw)
    preds = []
    for row, samples in zip(rows, results):
        answers = [task.normalize(s["final_answer"]) if s["final_answer"] is not None else None
                   for s in samples]
        pred = majority(answers)
        preds.append({"id": row["id"], "answer": row["answer"], "prediction": pred,
                      "correct": task.answers_match(pred, row["answer"]),
                      "sample_correct": [task.answers_match(a, row["answer"]) for a in answers],
                      "rationale": samples[0]["text"],
                      # the built-in tasks' step checker, for measuring rationale quality only
                      "step_errors": task.step_errors(row["question"], samples[0]["text"])})
    return summarize(preds, temperature, k, speed), preds


def summarize(preds, temperature, k, speed=None):
    n = len(preds)
    c = sum(p["correct"] for p in preds)
    lo, hi = wilson_interval(c, n)
    out = {"n": n, "correct": c, "accuracy": c / max(1, n), "ci95": [lo, hi],
           "temperature": temperature, "k": k}
    checked = [p.get("step_errors") for p in preds]
    if any(e is not None for e in checked):  # the share whose every step is right (unreadable: not)
        out["faithful"] = sum(e == 0 for e in checked) / max(1, n)
    if k > 1:  # accuracy of single samples, alongside the vote
        flat = [x for p in preds for x in p["sample_correct"]]
        out["sample_accuracy"] = sum(flat) / max(1, len(flat))
    if speed:
        out["tokens_per_s"] = speed["tokens"] / max(1e-9, speed["seconds"])
    return out


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


def load_predictions(path):
    """{id: prediction row} from an eval --out file."""
    return {r["id"]: r for r in read_jsonl(path, {"id": str, "correct": bool}, {"step_errors": int},
                                            unique="id")}


def format_accuracy(s):
    return (f"{100 * s['accuracy']:.1f}% ({s['correct']}/{s['n']}, 95% CI "
            f"{100 * s['ci95'][0]:.1f}-{100 * s['ci95'][1]:.1f})"
            + (f", every step right in {100 * s['faithful']:.1f}%" if "faithful" in s else ""))


# -----------------------------------------------------------------------------
# SML steps 1-2: rationale generation and collection


DISCARD_REASONS = ("unfinished", "no_answer", "two_answers", "inconsistent", "wrong")


def label_rationale(task, gold, hint, text, finished):
    """SML step 2, the answer-consistency check. Returns (final_answer, correct, label,
    discard_reason); final_answer is the one answer the rationale *states*, or None.

    A rationale counts only if it ended (end-of-text) and states exactly one final answer;
    otherwise it is discarded ("unfinished", "no_answer", "two_answers"). Given an answer
    (hint): kept if its final answer agrees with the hint, as "high" quality for the correct
    answer and "low" for a wrong one; otherwise discarded ("inconsistent"). No answer given
    (the STaR baseline's samples, never SML's): kept as "star" if the answer is correct,
    else discarded ("wrong").
    """
    stated = task.stated_answers(text)
    final = next(iter(stated)) if len(stated) == 1 else None
    correct = task.answers_match(final, gold)
    if not finished:
        return final, correct, "discarded", "unfinished"
    if not stated:
        return final, correct, "discarded", "no_answer"
    if len(stated) > 1:
        return final, correct, "discarded", "two_answers"
    if hint is None:
        return (final, correct, "star", None) if correct else (final, correct, "discarded", "wrong")
    if not task.answers_match(final, hint):
        return final, correct, "discarded", "inconsistent"
    return final, correct, "high" if task.answers_match(hint, gold) else "low", None


def build_sft_rows(task, records, label="high"):
    """SFT rows from the kept rationales with this label ("high": SML; "star": the STaR
    baseline), deduplicated per question. The prompt carries no hint: SFT teaches the
    model to reach the answer from the question alone."""
    seen, rows = set(), []
    for r in records:
        if r["label"] != label:
            continue
        key = (r["question"], r["rationale"])
        if key not in seen:
            seen.add(key)
            rows.append({"id": r["id"], "prompt": task.prompt(r["question"]),
                         "completion": " " + r["rationale"]})
    return rows


def build_pairs(task, records, max_per_question, rng):
    """Reward-model pairs, as in the paper: a rationale kept for the correct answer (chosen,
    "high") above one kept for a wrong answer (rejected, "low") of the same question. Both
    sides come from hinted samples only; unhinted samples belong to the STaR baseline.
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


def collect(model, tok, task, rows, k, m, k_unhinted, temperature, seed, quiet=False, **kw):
    """SML steps 1-2 over the train split. Returns (records, stats)."""
    import random
    # SML step 1: hints are the correct answer and m wrong answers per question.
    requests, meta = [], []
    for row in rows:
        rng = random.Random(derive_seed(seed, "wrong", row["id"]))
        for hint in [row["answer"]] + task.wrong_answers(row, m, rng):
            kind = "correct" if hint == row["answer"] else "wrong"
            requests.append((row["question"], hint))
            meta.append((row, hint, kind))
    results, speed = sample_rationales(model, tok, task, requests, k, temperature, seed,
                                       desc="collect", quiet=quiet, **kw)
    if k_unhinted:  # the STaR baseline's samples: no answer given
        res_u, sp_u = sample_rationales(model, tok, task, [(r["question"], None) for r in rows],
                                        k_unhinted, temperature, derive_seed(seed, "unhinted"),
                                        desc="collect (no hint)", quiet=quiet, **kw)
        results += res_u
        meta += [(r, None, "none") for r in rows]
        speed = {key: speed[key] + sp_u[key] for key in speed}

    # SML step 2: keep the rationales that state an answer consistent with the hint.
    records = []
    for (row, hint, kind), samples in zip(meta, results):
        for s in samples:
            final, correct, label, reason = label_rationale(task, row["answer"], hint, s["text"],
                                                            s["finished"])
            records.append({"id": row["id"], "question": row["question"], "answer": row["answer"],
                            "hint": hint, "hint_type": kind, "rationale": s["text"],
                            "final_answer": final, "finished": s["finished"],
                            "consistent": hint is not None and label in ("high", "low"),
                            "correct": correct, "label": label, "discard_reason": reason})

    stats = {"questions": len(rows), "samples": len(records), "tokens": speed["tokens"],
             "seconds": speed["seconds"], "tokens_per_s": speed["tokens"] / max(1e-9, speed["seconds"]),
             "by_hint_type": {}}
    for kind in ("correct", "wrong", "none"):
        sub = [r for r in records if r["hint_type"] == kind]
        if sub:
            kept = sum(r["label"] != "discarded" for r in sub)
            stats["by_hint_type"][kind] = {
                "samples": len(sub), "kept": kept,
                # yield: the share kept (consistent with the hint; unhinted: correct, as STaR keeps)
                "yield": kept / len(sub), "correct": sum(r["correct"] for r in sub),
                "discarded": {why: n for why in DISCARD_REASONS
                              if (n := sum(r["discard_reason"] == why for r in sub))}}
    hinted = [r for r in records if r["hint"] is not None]
    for label in ("high", "low"):  # hinted samples only: SML's data
        stats[label] = sum(r["label"] == label for r in hinted)
    stats["discarded_hinted"] = sum(r["label"] == "discarded" for r in hinted)
    stats["star"] = sum(r["label"] == "star" for r in records)
    stats["questions_with_high"] = len({r["id"] for r in records if r["label"] == "high"})
    return records, stats


# -----------------------------------------------------------------------------
# Speed: the KV-cache fan-out engine vs recomputing the whole sequence for every token


@torch.no_grad()
def naive_sample(model, prompt, max_new_tokens, temperature, eot_id, generator):
    """The textbook loop: one sequence, the full forward pass again for every new token."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        logits, _ = model(torch.tensor([ids], device=next(model.parameters()).device))
        probs = (logits[0, -1].float() / temperature).softmax(-1)
        tok_id = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        ids.append(tok_id)
        if tok_id == eot_id:
            break
    return ids[len(prompt):]


def bench(model, tok, task, rows, k, temperature, seed, n_questions):
    rows = rows[:n_questions]
    requests = [(r["question"], r["answer"]) for r in rows]
    _, speed = sample_rationales(model, tok, task, requests, k, temperature, seed, quiet=True)
    engine = speed["tokens"] / speed["seconds"]
    g = torch.Generator().manual_seed(seed)
    t0, n = time.time(), 0
    for q, h in requests[: max(1, len(requests) // 4)]:  # a quarter of the work is plenty to time
        p = tok.encode(task.prompt(q, h)).ids
        for _ in range(k):
            n += len(naive_sample(model, p, 64, temperature, tok.token_to_id(EOT), g))
    naive = n / (time.time() - t0)
    return {"engine_tokens_per_s": engine, "naive_tokens_per_s": naive, "speedup": engine / naive,
            "questions": len(rows), "k": k}


# -----------------------------------------------------------------------------


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    cmds = {"eval": "accuracy of a checkpoint on a split",
            "collect": "SML steps 1-2: generate and collect rationales on the train split",
            "bench": "sampling speed: KV-cache engine vs naive loop"}
    c = sub.add_parser("compare", help="two eval --out files, question by question (McNemar)")
    c.add_argument("before", help="predictions JSONL of the first checkpoint (generate.py eval --out)")
    c.add_argument("after", help="predictions JSONL of the second, on the same questions")
    c.add_argument("--json", default=None, help="write the result here")
    for name, help_text in cmds.items():
        s = sub.add_parser(name, help=help_text, description=help_text)
        g = s.add_argument_group("input / output")
        g.add_argument("--ckpt", required=True, help="language-model checkpoint")
        g.add_argument("--data_dir", required=True, help="folder with train/test.jsonl, tokenizer.json")
        g.add_argument("--task", default=None, help="task (default: the one in data_dir/meta.json)")
        g.add_argument("--split", default="test" if name == "eval" else "train")
        g.add_argument("--limit", type=int, default=None, help="use only the first N questions")
        g = s.add_argument_group("sampling")
        g.add_argument("--temperature", type=float, default=0.0 if name == "eval" else 1.0,
                       help="0 = greedy")
        g.add_argument("--top_k", type=int, default=None)
        g.add_argument("--top_p", type=float, default=None)
        g.add_argument("--max_new_tokens", type=int, default=64)
        g.add_argument("--batch_prompts", type=int, default=64, help="prompts per batch (x k samples)")
        common.add_runtime_args(s)
        if name == "eval":
            g.add_argument("--k", type=int, default=1, help="samples per question (majority vote)")
            s.add_argument("--out", default=None, help="write per-question predictions JSONL here")
            s.add_argument("--summary", default=None, help="write the summary JSON here")
        elif name == "collect":
            g.add_argument("--k", type=int, default=4, help="samples per (question, hint)")
            g.add_argument("--m", type=int, default=2, help="wrong answers per question")
            g.add_argument("--k_unhinted", type=int, default=0,
                           help="also sample k with no hint (rejection-sampling / STaR baseline)")
            g.add_argument("--max_pairs_per_question", type=int, default=8, help="0 = all pairs")
            s.add_argument("--out_dir", required=True)
            s.add_argument("--overwrite", action="store_true", help="replace results in --out_dir")
        else:
            g.add_argument("--k", type=int, default=4)
            g.add_argument("--questions", type=int, default=64)
    args = p.parse_args(argv)
    if args.command != "compare":
        from model import check_sampling_args
        try:
            check_sampling_args(args.top_k, args.top_p)
        except ValueError as e:
            p.error(str(e))
        for name, low in (("k", 1), ("max_new_tokens", 1), ("batch_prompts", 1)):
            if getattr(args, name) < low:
                p.error(f"--{name} must be at least {low}, got {getattr(args, name)}")
        if args.temperature < 0:
            p.error(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
        if args.limit is not None and args.limit < 1:
            p.error(f"--limit must be at least 1, got {args.limit}")
    return args


def load_everything(args, script):
    """Task, rows of the split, tokenizer, model: every mismatch is one clear error."""
    try:
        tok, task = load_world(args.data_dir, args.task)
        rows = load_dataset(os.path.join(args.data_dir, f"{args.split}.jsonl"))
        model, ckpt = load_checkpoint(args.ckpt, kind="lm", tokenizer_json=tokenizer_to_str(tok))
    except (DataError, CheckpointError, ValueError) as e:
        common.die(script, str(e))
    if args.limit:
        rows = rows[:args.limit]
    return task, rows, tok, model, ckpt


def compare_main(args):
    try:
        before, after = load_predictions(args.before), load_predictions(args.after)
        if set(before) != set(after):
            raise DataError(f"{args.before} and {args.after} are not on the same questions")
    except DataError as e:
        common.die("generate.py", str(e))
    ids = sorted(before)
    res = mcnemar([before[i]["correct"] for i in ids], [after[i]["correct"] for i in ids])
    res.update(before_accuracy=sum(before[i]["correct"] for i in ids) / len(ids),
               after_accuracy=sum(after[i]["correct"] for i in ids) / len(ids))
    print(f"{len(ids)} questions: {100 * res['before_accuracy']:.1f}% -> {100 * res['after_accuracy']:.1f}%; "
          f"wrong->right {res['wrong_to_right']}, right->wrong {res['right_to_wrong']}, "
          f"McNemar p = {res['p_value']:.3g}")
    # Rationale quality, where the task has a step checker: a right answer reached through
    # slips that cancel is not a good rationale, and RL may repair it without moving accuracy.
    rows = [*before.values(), *after.values()]
    if any(r.get("step_errors") is not None for r in rows):
        faithful = [[preds[i].get("step_errors") == 0 for i in ids] for preds in (before, after)]
        f = mcnemar(*faithful)
        res["faithful"] = {"before": sum(faithful[0]) / len(ids), "after": sum(faithful[1]) / len(ids),
                           "flawed_to_faithful": f["wrong_to_right"],
                           "faithful_to_flawed": f["right_to_wrong"], "p_value": f["p_value"]}
        print(f"every step right: {100 * res['faithful']['before']:.1f}% -> "
              f"{100 * res['faithful']['after']:.1f}%; flawed->faithful {f['wrong_to_right']}, "
              f"faithful->flawed {f['right_to_wrong']}, McNemar p = {f['p_value']:.3g}")
    if args.json:
        common.atomic_write_json(args.json, res)


def main(argv=None):
    args = get_args(argv)
    if args.command == "compare":
        return compare_main(args)
    rt = common.setup_runtime(args.device, args.dtype)
    common.seed_everything(args.seed)
    task, rows, tok, model, _ = load_everything(args, "generate.py")
    model.to(rt.device)
    kw = dict(max_new_tokens=args.max_new_tokens, batch_prompts=args.batch_prompts,
              top_k=args.top_k, top_p=args.top_p)
    with rt.autocast:  # bf16 on CUDA (or as --dtype says); the sampler keeps its cache in it
        try:
            if args.command == "eval":
                summary, preds = evaluate(model, tok, task, rows, args.temperature, args.k, args.seed, **kw)
                print(f"{args.split} accuracy of {args.ckpt}: {format_accuracy(summary)} "
                      f"(temperature {args.temperature}, k {args.k})")
                if args.out:
                    write_jsonl(args.out, preds)
                if args.summary:
                    common.atomic_write_json(args.summary, summary)
            elif args.command == "collect":
                run_collect(args, task, rows, tok, model, kw)
            else:
                print(json.dumps(bench(model, tok, task, rows, args.k, args.temperature, args.seed,
                                       args.questions), indent=2))
        except ValueError as e:
            common.die("generate.py", str(e))


def run_collect(args, task, rows, tok, model, kw):
    import random
    import shutil
    if os.path.exists(args.out_dir) and os.listdir(args.out_dir) and not args.overwrite:
        common.die("generate.py", f"{args.out_dir} already holds results; pass --overwrite to replace them")
    t0 = time.time()
    records, stats = collect(model, tok, task, rows, args.k, args.m, args.k_unhinted,
                             args.temperature, args.seed, **kw)
    sft = build_sft_rows(task, records, "high")
    pairs = build_pairs(task, records, args.max_pairs_per_question, random.Random(args.seed))
    stats.update({"sft_rows": len(sft), "pairs": len(pairs), "wall_seconds": time.time() - t0,
                  "args": vars(args)})
    # Write everything into a temporary folder, then swap it in: nothing half-written.
    tmp = args.out_dir.rstrip("/") + f".tmp{os.getpid()}"
    os.makedirs(tmp)
    write_jsonl(os.path.join(tmp, "rationales.jsonl"), records)
    write_jsonl(os.path.join(tmp, "sft.jsonl"), sft)
    write_jsonl(os.path.join(tmp, "pairs.jsonl"), pairs)
    if args.k_unhinted:
        write_jsonl(os.path.join(tmp, "sft_unhinted.jsonl"), build_sft_rows(task, records, "star"))
    common.atomic_write_json(os.path.join(tmp, "stats.json"), stats)
    if os.path.exists(args.out_dir):
        shutil.rmtree(args.out_dir)
    os.rename(tmp, args.out_dir)
    for kind, s in stats["by_hint_type"].items():
        kept = "consistent" if kind != "none" else "correct"
        why = ", ".join(f"{n} {r}" for r, n in s["discarded"].items()) or "none"
        print(f"hint {kind:7s}: {s['kept']}/{s['samples']} {kept} ({100 * s['yield']:.1f}%); "
              f"discarded: {why}")
    print(f"{len(sft)} SFT rows, {len(pairs)} pairs, {stats['questions_with_high']}/{len(rows)} "
          f"questions with a high-quality rationale, {stats['wall_seconds']:.0f}s, "
          f"{stats['tokens_per_s']:.0f} tok/s -> {args.out_dir}")


if __name__ == "__main__":
    main()
