"""
Sampling rationales and reading their answers: the one path that rationale collection (SML
steps 1-2, generate.py), every evaluation (evaluate.py, and the checks inside train_sft.py,
train_rm.py and train_ppo.py) and the benchmark share.

- sample_rationales(): prompts for (question, given answer or none) -> k rationales each,
  through the KV-cache fan-out sampler (sampler.py), with each one's final answer read back.
- read_answers_by_candidates(): a choice or yes/no answer the model has to complete, read as
  the candidate it prefers, calibrated against a content-free prompt.
- label_rationale(): SML step 2's answer-consistency check (collection's labels; evaluate.py
  world counts sound consistent rationales with it).
- evaluate(): accuracy of a model on a split: the mean over k samples per question with its
  standard error, the majority vote over them (maj@k) with a 95% Wilson interval, the step
  checker's share of sound rationales, and per-question predictions.

Seeds are derived from what a sample *is* (request i, draw j), never from the batch it lands
in, so results do not depend on batching.
"""

import hashlib
import math
import re
import time
from collections import Counter

import torch

from sml import common
from data.tasks import CLASS_KINDS, DATASET_TASKS
from data.tokenizer import decode_sampled, encode_after, eot_id, newline_ids, stop_ids
from model import pad_batch
from sml.sampler import prompts_per_batch, sample

# The presets of the two scripts that sample rationales, generate.py and evaluate.py eval:
# tiny looks at 100 questions; pretrained (run.sh with INIT: a pretrained model on one of the
# paper's datasets) collects the whole train split. The rationale budget is the task's own
# (Task.rationale_tokens: GSM8K's gold rationales need 256 tokens); batches are as large as
# the device's memory holds (sampler.prompts_per_batch).
SAMPLING_PRESETS = {"default": {}, "tiny": dict(limit=100), "pretrained": dict(limit=0)}


def derive_seed(*parts):
    """A 62-bit seed from any parts: the sample for (request i, draw j) gets the same
    random stream whatever the batch it lands in, so results do not depend on batching."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 2


def encode_prompt(tok, task, question, hint, exemplars, room, block):
    """The prompt's token ids. With exemplars, as many of them as leave `room` tokens of the
    context for the rationale (the last ones are dropped first)."""
    for n in range(len(exemplars or ()), -1, -1):
        text = task.fewshot_prompt(question, exemplars[:n], hint) if exemplars else task.prompt(question, hint)
        ids = tok.encode(text).ids
        if len(ids) + (room if exemplars else 1) <= block:
            return ids
    raise ValueError(f"prompt of {len(ids)} tokens does not fit the model's context of {block}: "
                     f"{question[:60]!r}")


def sample_rationales(model, tok, task, requests, k, temperature, seed, max_new_tokens=None,
                      batch_prompts=None, top_k=None, top_p=None, complete_missing=False,
                      exemplars=None, candidates=None, desc="sampling", quiet=False):
    """requests: list of (question, hint or None). Returns one list per request of k dicts
    {"text", "answer_text", "final_answer", "tokens", "logprobs", "finished"}.

    SML step 1 (rationale generation): the prompt carries the hint when one is given.
    Reading the final answer back: the task's extractor on answer_text (None if it states
    no answer, or two). complete_missing=True (evaluation only) fills such a None by letting
    the model complete the answer line ("So the answer is") greedily after the rationale.
    That is only done on a prompt that gives no answer: with a hint in the prompt the
    model would copy it, and SML step 2 would take the copy for a consistent rationale.

    exemplars (a pretrained model, which has never seen the hint template): a few-shot
    prompt (task.fewshot_prompt), one rationale per line, so a row is finished when it
    writes a line break. A rationale written for a given answer then states no answer of
    its own: the answer line is completed on the prompt WITHOUT the given answer, from the
    question and the rationale alone, as the paper reads it (answer_text = rationale + that
    line).

    candidates (a choice or yes/no dataset: answer_candidates()): per request, the answers
    its answer line is read among. Both readings above then pick the candidate the model
    prefers after "So the answer is", calibrated (read_answers_by_candidates), instead of
    letting it write the line greedily.

    batch_prompts: prompts per batch (x k samples); None: as many as the device's memory
    holds. The answer-reading passes sample one row per rationale, as many rows per batch.
    """
    if complete_missing and any(h is not None for _, h in requests):
        raise ValueError("the answer-line completion is for prompts without a given answer only")
    eot, ends = eot_id(tok), stop_ids(tok, model.config)
    stops = ends + (newline_ids(tok) if exemplars else [])
    block = model.config.block_size
    max_new_tokens = max_new_tokens or task.rationale_tokens
    prompts = [encode_prompt(tok, task, q, h, exemplars, max_new_tokens, block) for q, h in requests]
    if batch_prompts is None:
        batch_prompts = prompts_per_batch(model, max(map(len, prompts), default=0) + max_new_tokens, k)
    results = []
    n_tok, t0 = 0, time.time()
    bar = common.progress(total=len(requests) * k, desc=desc, disable=quiet, leave=False)
    for start in range(0, len(requests), batch_prompts):
        chunk = list(range(start, min(start + batch_prompts, len(requests))))
        seeds = [derive_seed(seed, i, j) for i in chunk for j in range(k)]
        out = sample(model, [prompts[i] for i in chunk], num_samples=k, max_new_tokens=max_new_tokens,
                     temperature=temperature, top_k=top_k, top_p=top_p, stop_ids=stops, pad_id=eot,
                     seeds=seeds, share_prefix=bool(exemplars), n_vocab=tok.get_vocab_size())
        n_tok += int(out.lengths.sum())
        logprobs, finished = out.logprobs.cpu(), out.finished.tolist()  # one copy per batch, not per row
        for r, ids in enumerate(out.token_lists()):
            if r % k == 0:
                results.append([])
            text = decode_sampled(tok, ids, ends)
            text = (text.split("\n")[0] if exemplars else text).strip()  # a few-shot row: its line
            results[-1].append({"text": text, "answer_text": text, "final_answer": task.extract_answer(text),
                                "tokens": ids,
                                "logprobs": logprobs[r, :len(ids)].tolist(),
                                "finished": finished[r]})
        bar.update(len(chunk) * k)
    bar.close()
    if exemplars and any(h is not None for _, h in requests):
        read_hinted_answers(model, tok, task, requests, results, candidates, exemplars, max_new_tokens,
                            batch_prompts * k, stops, desc, quiet)
    if complete_missing:
        complete_answer_lines(model, tok, task, requests, results, prompts, candidates, exemplars,
                              batch_prompts * k, stops, desc, quiet)
    return results, {"tokens": n_tok, "seconds": time.time() - t0}


def read_hinted_answers(model, tok, task, requests, results, candidates, exemplars, max_new_tokens,
                        rows_per_batch, stops, desc, quiet):
    """SML step 2 with a few-shot prompt: the answer of each finished rationale written for a
    given answer is read on the prompt without it, from the question and the rationale alone
    (sets its answer_text and final_answer, and answer_read)."""
    block = model.config.block_size
    unhinted = [encode_prompt(tok, task, q, None, exemplars, max_new_tokens + 16, block) for q, _ in requests]
    todo = [(i, s) for i, ((_, h), samples) in enumerate(zip(requests, results)) if h is not None
            for s in samples if s["finished"] and s["text"]]
    lines = read_answers(model, tok, task, unhinted, [q for q, _ in requests], todo, candidates, exemplars,
                         rows_per_batch, stops, True, f"{desc}: reading answers", quiet)
    for (i, s), line in zip(todo, lines):
        s["answer_text"] = s["text"] + task.ANSWER_PREFIX + " " + line
        s["final_answer"] = task.extract_answer(s["answer_text"])
        s["answer_read"] = True


def complete_answer_lines(model, tok, task, requests, results, prompts, candidates, exemplars, rows_per_batch,
                          stops, desc, quiet):
    """Evaluation's reading of a rationale that states no final answer: the answer line the model
    completes after it, on its own prompt (sets answer_text, final_answer and answer_completed)."""
    missing = [(i, s) for i, samples in enumerate(results) for s in samples if s["final_answer"] is None]
    lines = read_answers(model, tok, task, prompts, [q for q, _ in requests], missing, candidates, exemplars,
                         rows_per_batch, stops, bool(exemplars), f"{desc}: answer lines", quiet)
    for (i, s), line in zip(missing, lines):
        s["answer_text"] = task.ANSWER_PREFIX.strip() + " " + line  # what is read
        s["final_answer"] = task.extract_answer(s["answer_text"])
        s["answer_completed"] = True


def read_answers(model, tok, task, prompts, questions, todo, candidates, exemplars, rows_per_batch, stops,
                 one_line, desc, quiet):
    """The answer line of each (i, sample) in todo, after prompts[i] + its rationale: the
    calibrated candidate the model prefers where the task has candidates (choice, yes/no),
    else what the model writes greedily."""
    if candidates is not None:
        return read_answers_by_candidates(model, tok, task, prompts, questions, todo, candidates, exemplars,
                                          rows_per_batch, desc=desc, quiet=quiet)
    return read_answer_lines(model, tok, task, prompts, questions, todo, rows_per_batch, stops,
                             one_line=one_line, desc=desc, quiet=quiet)


def read_answer_lines(model, tok, task, prompts, questions, todo, batch_prompts, stops, one_line,
                      desc="reading answers", quiet=False):
    """Evaluation's fallback for a rationale that states no final answer (and, with a few-shot
    prompt, how SML step 2 reads any answer): for each (i, sample) in todo, append the answer
    line ("So the answer is") to prompts[i] + the rationale and return what the model writes
    after it, greedily, up to a stop id. prompts[i] is an unhinted prompt for questions[i],
    so its text ends with task.prompt(questions[i]). one_line (a few-shot prompt, whose stop
    ids include the line breaks): the prompts share the exemplars as a prefix, and what is
    read is the first line."""
    eot, ends = eot_id(tok), stop_ids(tok, model.config)
    block = model.config.block_size
    lines = []
    bar = common.progress(total=len(todo), desc=desc, disable=quiet or not todo, leave=False)
    for start in range(0, len(todo), batch_prompts):
        chunk = todo[start:start + batch_prompts]
        answer_prompts = []
        for i, s in chunk:
            ids = prompts[i] + encode_after(tok, task.prompt(questions[i]), " " + s["text"] + task.ANSWER_PREFIX)
            answer_prompts.append(ids[-(block - 8):])  # keep the tail if it is too long
        out = sample(model, answer_prompts, max_new_tokens=8, temperature=0, stop_ids=stops, pad_id=eot,
                     share_prefix=one_line, n_vocab=tok.get_vocab_size())
        for ids in out.token_lists():
            text = decode_sampled(tok, ids, ends)
            lines.append(text.split("\n")[0] if one_line else text)
        bar.update(len(chunk))
    bar.close()
    return lines


# -----------------------------------------------------------------------------
# Reading a choice or yes/no answer: the candidate the model prefers, calibrated

CONTENT_FREE = "N/A"  # the question of the content-free prompt (Zhao et al. 2021)


def answer_candidates(task, rows):
    """Per row, the answers its answer line is read among (Task.answer_candidates: yes/no, or
    the row's choices, on the paper's datasets), or None where the task's answers are read as
    free text (numbers, letters, and every task of the built-in world)."""
    found = [task.answer_candidates(r) for r in rows]
    return found if found and all(c is not None for c in found) else None


def candidate_logprobs(model, contexts, candidates):
    """log P(candidate | context) for each context (token ids) and each of its candidates
    (token-id lists), summed over the candidate's tokens, in one batched forward pass: every
    distinct context + candidate[:j] whose next token is needed is one left-padded row, read
    at its last position, so one-token candidates (" yes", " B") cost one row per context."""
    rows = {}  # (context, candidate prefix) -> row of the batch
    for c, cands in enumerate(candidates):
        for cand in cands:
            for j in range(len(cand)):
                rows.setdefault((c, tuple(cand[:j])), len(rows))
    idx, real = pad_batch([contexts[c] + list(prefix) for c, prefix in rows], 0, left=True)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        logits, _ = model(idx.to(device), pad_mask=real.to(device), last_only=True)
    next_token = logits[:, -1].float().log_softmax(-1).cpu()
    return [[sum(next_token[rows[c, tuple(cand[:j])], cand[j]].item() for j in range(len(cand)))
             for cand in cands] for c, cands in enumerate(candidates)]


def read_answers_by_candidates(model, tok, task, prompts, questions, todo, candidates, exemplars,
                               batch_prompts, desc="reading answers", quiet=False):
    """How SML step 2 and evaluation read the answer of a choice or yes/no question: for each
    (i, sample) in todo, the one of candidates[i] the model finds most likely after prompts[i]
    + the rationale + the answer line ("So the answer is"), each candidate spelled as
    Task.finish writes answers (" yes", " B"). The candidates are scored against a content-free
    context too, the same prompt with the question "N/A" and no rationale, and the one whose
    log-probability rises most over it wins (contextual calibration, Zhao et al. 2021). A
    greedy answer line copies a model's lean instead: a model that leans to "no" reads most
    explanations written for "yes" as "no". prompts[i] is an unhinted prompt for questions[i] (with `exemplars`, few-shot),
    as in read_answer_lines. Returns one candidate per todo item."""
    block = model.config.block_size
    spelled = {c: encode_after(tok, task.ANSWER_PREFIX, " " + c) for i, _ in todo for c in candidates[i]}
    if not spelled:
        return []
    longest = max(len(ids) for ids in spelled.values())
    content_free = (encode_prompt(tok, task, CONTENT_FREE, None, exemplars, longest, block)
                    + encode_after(tok, task.prompt(CONTENT_FREE), task.ANSWER_PREFIX))
    prior = dict(zip(spelled, candidate_logprobs(model, [content_free], [list(spelled.values())])[0]))
    answers = []
    bar = common.progress(total=len(todo), desc=desc, disable=quiet, leave=False)
    for start in range(0, len(todo), batch_prompts):
        chunk = todo[start:start + batch_prompts]
        contexts = [(prompts[i] + encode_after(tok, task.prompt(questions[i]), " " + s["text"] + task.ANSWER_PREFIX))
                    [-(block - longest):] for i, s in chunk]  # keep the tail if it is too long
        scores = candidate_logprobs(model, contexts, [[spelled[c] for c in candidates[i]] for i, _ in chunk])
        for (i, _), row in zip(chunk, scores):
            calibrated = [lp - prior[c] for c, lp in zip(candidates[i], row)]
            answers.append(candidates[i][calibrated.index(max(calibrated))])
        bar.update(len(chunk))
    bar.close()
    return answers


# -----------------------------------------------------------------------------
# SML step 2: the answer-consistency check (collection labels with it; evaluate.py world
# counts sound consistent rationales with it)


DISCARD_REASONS = ("unfinished", "no_answer", "two_answers", "mentions_hint", "inconsistent", "wrong")
# An explanation on one of the paper's datasets that leans on the given answer itself ("as
# given", "the hint says") argues nothing: a base model behind "Given answer: X" writes these,
# and the consistency check would keep them. Only on the paper's datasets: the built-in world's
# base model is pretrained on the hint template, and seldom copies "Hint:" into a rationale.
MENTIONS_HINT_RE = re.compile(r"\bgiven answer\b|\bas given\b|\bhint", re.IGNORECASE)


def label_rationale(task, gold, hint, text, finished):
    """SML step 2, the answer-consistency check. Returns (final_answer, correct, label,
    discard_reason); final_answer is the one answer the rationale *states*, or None.

    A rationale counts only if it ended (end-of-text) and states exactly one final answer;
    otherwise it is discarded ("unfinished", "no_answer", "two_answers"). Given an answer
    (hint): on the paper's datasets, discarded if it refers to the hint itself
    ("mentions_hint": "the given answer", "as given", "hint"); else kept if its final answer
    agrees with the hint, as "high" quality for the correct answer and "low" for a wrong one;
    otherwise discarded ("inconsistent"). No answer given (the RFT and STaR baselines'
    samples, never SML's): kept as "rft" if the answer is correct, else discarded ("wrong").
    """
    stated = task.stated_answers(text)  # (text: with a few-shot prompt, the rationale + the answer line read)
    final = next(iter(stated)) if len(stated) == 1 else None
    correct = task.answers_match(final, gold)
    if not finished:
        return final, correct, "discarded", "unfinished"
    if not stated:
        return final, correct, "discarded", "no_answer"
    if len(stated) > 1:
        return final, correct, "discarded", "two_answers"
    if hint is not None and task.name in DATASET_TASKS and MENTIONS_HINT_RE.search(text):
        return final, correct, "discarded", "mentions_hint"
    if hint is None:
        return (final, correct, "rft", None) if correct else (final, correct, "discarded", "wrong")
    if not task.answers_match(final, hint):
        return final, correct, "discarded", "inconsistent"
    return final, correct, "high" if task.answers_match(hint, gold) else "low", None


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
    prediction is the majority vote over k samples (maj@k), and every sample is checked too:
    the mean over them is the less noisy measure of what one sample gets right. Returns
    (summary, per-question rows)."""
    results, speed = sample_rationales(model, tok, task, [(r["question"], None) for r in rows],
                                       k, temperature, seed, complete_missing=True, desc="eval",
                                       candidates=answer_candidates(task, rows), quiet=quiet, **kw)
    preds = []
    for row, samples in zip(rows, results):
        answers = [task.normalize(s["final_answer"]) if s["final_answer"] is not None else None
                   for s in samples]
        pred = majority(answers)
        # the task's step checker (the numeric datasets': equations) on every sample, for measuring only
        step_errors = [task.step_errors(row["question"], s["text"]) for s in samples]
        preds.append({"id": row["id"], "answer": row["answer"], "prediction": pred,
                      "correct": task.answers_match(pred, row["answer"]),
                      "sample_correct": [task.answers_match(s["final_answer"], row["answer"]) for s in samples],
                      "rationale": samples[0]["text"], "step_errors": step_errors[0],  # the rationale shown
                      "sample_step_errors": step_errors})
    summary = summarize(preds, temperature, k, speed)
    if "every_step_right" in summary:
        summary["step_check"] = task.STEP_CHECK  # on the numeric datasets: "every equation right"
    summary.update(majority_class(task, rows))
    return summary, preds


def majority_class(task, rows):
    """For a choice or yes/no task: the split's most common gold answer and the accuracy of
    always answering it, the floor its accuracy is read against (a model that answers "no"
    everywhere scores this much on a split that is mostly "no"). Otherwise {}."""
    if task.answer_kind not in CLASS_KINDS or not rows:
        return {}
    answer, n = Counter(task.normalize(r["answer"]) for r in rows).most_common(1)[0]
    return {"majority_class": answer, "majority_class_accuracy": n / len(rows)}


def mean_and_se(values):
    """The mean of per-question values and its standard error over questions."""
    n = len(values)
    mean = sum(values) / max(1, n)
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / max(1, n))


def per_question_means(pred):
    """(share of the question's samples that are correct, share whose every step the step
    checker finds right, or None where the task has no step checker). A predictions row of
    an older file, without the per-sample lists, counts as its one sample."""
    correct = pred.get("sample_correct") or [pred["correct"]]
    errors = pred.get("sample_step_errors") or [pred.get("step_errors")]
    sound = None if all(e is None for e in errors) else sum(e == 0 for e in errors) / len(errors)
    return sum(correct) / len(correct), sound


def summarize(preds, temperature, k, speed=None):
    """accuracy: the prediction's (maj@k; with k = 1 the one sample), with its 95% Wilson
    interval. sample_accuracy: the mean over the k samples of each question, then over
    questions, with its standard error: one sample per question at T=1 is too noisy to rank
    two models, the mean over k is not (and is what the paired test in evaluate.py compare
    reads). every_step_right: the same mean for the step checker (an unreadable rationale
    counts as not right)."""
    n = len(preds)
    c = sum(p["correct"] for p in preds)
    lo, hi = wilson_interval(c, n)
    out = {"n": n, "correct": c, "accuracy": c / max(1, n), "ci95": [lo, hi],
           "temperature": temperature, "k": k}
    means = [per_question_means(p) for p in preds]
    out["sample_accuracy"], out["sample_accuracy_se"] = mean_and_se([m for m, _ in means])
    if any(sound is not None for _, sound in means):
        out["every_step_right"], out["every_step_right_se"] = mean_and_se([sound or 0.0 for _, sound in means])
    if speed:
        out["tokens_per_s"] = speed["tokens"] / max(1e-9, speed["seconds"])
    return out


def format_accuracy(s):
    check = s.get("step_check", "every step right")
    vote = (f"{100 * s['accuracy']:.1f}% ({s['correct']}/{s['n']}, 95% CI "
            f"{100 * s['ci95'][0]:.1f}-{100 * s['ci95'][1]:.1f})")
    return ((f"{100 * s['sample_accuracy']:.1f}% per sample (mean of {s['k']}, SE "
             f"{100 * s['sample_accuracy_se']:.1f}), maj@{s['k']} {vote}" if s.get("k", 1) > 1 else vote)
            + (f", {check} in {100 * s['every_step_right']:.1f}%" if "every_step_right" in s else "")
            + (f"; always '{s['majority_class']}', the majority class, scores {100 * s['majority_class_accuracy']:.1f}%"
               if "majority_class" in s else ""))
