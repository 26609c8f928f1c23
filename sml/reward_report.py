"""
The reward model's quality report (train_rm.py writes it, inside rm.pt and at --report) and
PPO's gate on it (train_ppo.py reads it), side by side: what the report measures is what the
gate decides on.

The report says whether the scores mean anything:
  - held-out pairs (questions held out of the RM's training, not of SFT's): pair accuracy, the
    mean score of high vs low, the spread of the scores (PPO floors its reward scale with it)
  - fresh samples of the SFT model on validation questions (val.jsonl, held out of collection,
    SFT and the RM; the test split is read once, for the final table): the headline, the
    paper's finding that a higher score goes with a better rationale: the AUC of the score for
    a correct answer;
    among correct-answer rationales, the AUC for "every step right" (where the task has a
    step checker: the built-in world, and the numeric datasets' equation checker), which
    tells a reward for sound steps from a reward for right answers; an answer-swap probe
    (the same correct rationale with a wrong final answer must score lower); Spearman's rank
    correlation of the score with length (a reward for length is a hack waiting to happen)
  - fresh samples on the RM's own training questions vs its held-out ones: the correctness
    AUC on each (a gap is the RM remembering questions rather than judging rationales)
With --auc_questions 0 no fresh samples are drawn and their figures are null (not measured).
"""

import os
import random
from contextlib import nullcontext

import torch

from sml import common
from sml import rationales
from data import load_val_split
from data.jsonl import load_dataset
from data.tokenizer import encode_after, eot_id
from model import pad_batch, sequence_scores

MIN_RM_QUALITY = 0.6  # held-out pair accuracy and fresh-sample AUC below this count as near chance


def check_reward_model(report, path, allow_weak):
    """train_rm.py's report on the reward model (kept in rm.pt): refuse one that ranks its
    held-out pairs or fresh samples near chance, unless --allow_weak_rm says it is meant."""
    if allow_weak:
        return
    if not report:
        raise common.UserError(f"{path}: carries no quality report (made by an older train_rm.py?); "
                               f"retrain it, or pass --allow_weak_rm to use it anyway")
    weak = {k: report.get(k) for k in ("val_pair_accuracy", "auc_correctness")}
    weak = {k: v for k, v in weak.items() if v is not None and not v >= MIN_RM_QUALITY}  # NaN is weak too
    if weak:
        said = ", ".join(f"{k} {v:.3f}" for k, v in weak.items())
        raise common.UserError(f"{path}: the reward model is near chance ({said}; below {MIN_RM_QUALITY}): PPO "
                               f"against it would optimise noise; pass --allow_weak_rm if that is meant")


# -----------------------------------------------------------------------------
# A score, read as training reads it (train_rm.py trains on these)


def encode_pair_side(tok, prompt, completion):
    return tok.encode(prompt).ids + encode_after(tok, prompt, completion) + [eot_id(tok)]


def batch_scores(rm, seqs, device, pad_id):
    """Right-pad token lists and read each sequence's score at its last real token."""
    idx, mask = pad_batch(seqs, pad_id)
    scores, _ = rm(idx.to(device))
    return sequence_scores(scores.float(), mask.to(device))


@torch.no_grad()
def score_texts(rm, tok, prompts, completions, device, batch_size=128, amp=nullcontext()):
    """The reward model's score of each (prompt, completion) text, as a float tensor (N,) on the
    CPU. Each is encoded as training encodes a pair's side (encode_pair_side: the prompt, the
    completion as it follows it, the end-of-text), keeps its last block_size tokens, and is
    scored at its end-of-text; batch_size sequences per forward pass, under `amp`. The held-out
    pairs and the report's fresh samples are scored this way."""
    rm.eval()
    # Decoding sampled tokens and encoding the text again can give more tokens than were
    # sampled (a stray byte becomes a replacement character): keep the end, where the score is read.
    block = rm.config.block_size
    seqs = [encode_pair_side(tok, p, c)[-block:] for p, c in zip(prompts, completions)]
    out = []
    for i in range(0, len(seqs), batch_size):
        with amp:
            out.append(batch_scores(rm, seqs[i:i + batch_size], device, eot_id(tok)).cpu())
    return torch.cat(out)


def pair_scores(rm, tok, pairs, device, amp=nullcontext()):
    """(chosen scores, rejected scores) of pairs, on the CPU."""
    prompts = [p["prompt"] for p in pairs]
    return (score_texts(rm, tok, prompts, [p["chosen"] for p in pairs], device, amp=amp),
            score_texts(rm, tok, prompts, [p["rejected"] for p in pairs], device, amp=amp))


# -----------------------------------------------------------------------------
# Rank statistics


def auc(pos, neg):
    """Area under the ROC curve = P(score of a positive > score of a negative), ties half."""
    if not pos or not neg:
        return float("nan")
    pos_t, neg_t = torch.tensor(pos).view(-1, 1), torch.tensor(neg).view(1, -1)
    return float(((pos_t > neg_t).float() + 0.5 * (pos_t == neg_t).float()).mean())


def ranks(x):
    """Ranks 1..n of the values in x, ties given their average rank."""
    x = torch.as_tensor(x, dtype=torch.float64)
    order = torch.argsort(x, stable=True)
    r = torch.empty_like(x)
    r[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    for v in x.unique():  # ties: the mean of the ranks they span
        same = x == v
        r[same] = r[same].mean()
    return r


def spearman(x, y):
    """Spearman's rank correlation (NaN when either side is constant)."""
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.pow(2).sum() * ry.pow(2).sum()).sqrt()
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


# -----------------------------------------------------------------------------
# What the reward model sees, on rationales it never trained on


def val_questions(args):
    """The validation questions the report's fresh samples come from."""
    return load_val_split(args.data_dir, args.auc_questions, "the report (--auc_questions 0: none)")


def swap_final_answer(task, text, answer):
    """The rationale with its final answer line replaced: everything before its last
    "So the answer is", then that line for `answer`. None where there is no such line."""
    cut = text.rfind(task.ANSWER_PREFIX.strip())
    if cut < 0:
        return None
    return text[:cut].rstrip() + task.ANSWER_PREFIX + f" {answer}."


def fresh_samples(sft_model, tok, task, rows, args, rt, name):
    """SFT samples of these questions (args.auc_samples each), read as evaluation reads them:
    [(row, rationale text, final answer)]."""
    with rt.autocast:
        results, _ = rationales.sample_rationales(
            sft_model, tok, task, [(r["question"], None) for r in rows], args.auc_samples, 1.0,
            rationales.derive_seed(args.seed, name), complete_missing=True, desc=f"SFT samples ({name})",
            max_new_tokens=args.max_new_tokens, batch_prompts=args.batch_prompts)
    return [(row, s["text"], s["final_answer"]) for row, samples in zip(rows, results) for s in samples]


def correctness_auc(rm, tok, task, samples, rt):
    """(AUC of the score for a correct answer, the samples' scores, which are correct)."""
    scores = score_texts(rm, tok, [task.prompt(r["question"]) for r, _, _ in samples],
                         [" " + t for _, t, _ in samples], rt.device, amp=rt.autocast).tolist()
    correct = [task.answers_match(a, r["answer"]) for r, _, a in samples]
    return (auc([s for s, c in zip(scores, correct) if c], [s for s, c in zip(scores, correct) if not c]),
            scores, correct)


def report_fresh_samples(rm, sft_model, tok, task, args, rt, train_pairs, val_pairs):
    """The report's fresh-sample figures: on validation questions (PPO's gate decides on them,
    so never the test split), and on the RM's own training questions against its held-out ones."""
    rep = {}
    val_rows = val_questions(args)
    samples = fresh_samples(sft_model, tok, task, val_rows, args, rt, "val")
    rep["auc_correctness"], scores, correct = correctness_auc(rm, tok, task, samples, rt)
    rep["auc_samples"] = len(scores)
    rep["auc_sample_accuracy"] = sum(correct) / max(1, len(correct))
    # among correct answers: does a sound rationale score higher than a flawed one?
    sound = [(s, task.step_errors(r["question"], t)) for s, c, (r, t, _) in zip(scores, correct, samples) if c]
    sound = [(s, e) for s, e in sound if e is not None]
    rep["auc_every_step_right_among_correct"] = auc([s for s, e in sound if e == 0], [s for s, e in sound if e > 0])
    rep["steps_checked_among_correct"] = len(sound)
    # the answer-swap probe: the same correct rationale, a wrong final answer
    rng = random.Random(rationales.derive_seed(args.seed, "swap"))
    probes = []
    for s, c, (r, t, _) in zip(scores, correct, samples):
        wrong = task.wrong_answers(r, 1, rng) if c else []
        swapped = swap_final_answer(task, t, wrong[0]) if wrong else None
        if swapped is not None:
            probes.append((s, r, swapped))
    if probes:
        after = score_texts(rm, tok, [task.prompt(r["question"]) for _, r, _ in probes],
                            [" " + t for _, _, t in probes], rt.device, amp=rt.autocast).tolist()
        drops = [s - a for (s, _, _), a in zip(probes, after)]
        rep["answer_swap"] = {"probes": len(drops), "share_lower": sum(d > 0 for d in drops) / len(drops),
                              "mean_drop": sum(drops) / len(drops)}
    rep["spearman_score_length"] = spearman(scores, [len(tok.encode(t).ids) for _, t, _ in samples])
    # trained-on questions against held-out ones (both from the train split's collection)
    by_id = {r["id"]: r for r in load_dataset(os.path.join(args.data_dir, "train.jsonl"))}
    n = max(1, args.auc_questions // 2)
    for name, pairs in (("trained", train_pairs), ("held_out", val_pairs)):
        qids = sorted({p["id"] for p in pairs if p.get("id") in by_id})[:n]
        if qids:
            rep[f"auc_correctness_{name}_questions"], _, _ = correctness_auc(
                rm, tok, task, fresh_samples(sft_model, tok, task, [by_id[q] for q in qids], args, rt, name), rt)
    return rep


def quality_report(rm, sft_model, tok, task, args, rt, train_pairs, val_pairs):
    """Whether the reward model's scores mean anything, printed and returned: its held-out pairs,
    then fresh SFT samples (report_fresh_samples)."""
    report = {}
    if val_pairs:
        # Held out of the RM's training, but not of SFT's: the trunk was fine-tuned on these
        # questions' high-quality rationales. The fresh-sample AUC below is the headline.
        c, r = pair_scores(rm, tok, val_pairs, rt.device, rt.autocast)
        report.update({"val_pair_accuracy": float((c > r).float().mean()), "val_mean_score_high": float(c.mean()),
                       "val_mean_score_low": float(r.mean()), "val_score_std": float(torch.cat([c, r]).std())})
        print(f"held-out pair accuracy {100 * report['val_pair_accuracy']:.1f}% ({len(val_pairs)} pairs); mean "
              f"score high {report['val_mean_score_high']:.2f} vs low {report['val_mean_score_low']:.2f}")
    if not args.auc_questions:  # not measured: PPO's gate reads None as that, results.py shows nothing
        report["auc_correctness"] = None
        print("no fresh-sample figures (--auc_questions 0): the AUCs are not measured")
        return report
    sft_model.to(rt.device)
    report.update(report_fresh_samples(rm, sft_model, tok, task, args, rt, train_pairs, val_pairs))
    print(f"AUC of the RM score for correctness on {report['auc_samples']} fresh SFT samples of validation questions: "
          f"{report['auc_correctness']:.3f} (their accuracy {100 * report['auc_sample_accuracy']:.1f}%)")
    print(f"  among correct answers, AUC for every step right: {report['auc_every_step_right_among_correct']:.3f} "
          f"({report['steps_checked_among_correct']} checked); Spearman with length "
          f"{report['spearman_score_length']:.3f}"
          + (f"; a wrong final answer scores lower in {100 * report['answer_swap']['share_lower']:.1f}% of "
             f"{report['answer_swap']['probes']} correct rationales" if "answer_swap" in report else ""))
    return report
