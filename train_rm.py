"""
SML step 3b: the reward model, trained on the rank that comes for free.

A rationale the model wrote for the correct answer (high quality) should score above one it
wrote for a wrong answer (low quality) of the same question. The reward model is the SFT
model's trunk with a scalar head read at the last real token (the end-of-text), trained
with the Bradley-Terry pairwise loss  -log sigmoid(r_chosen - r_rejected)  on pairs.jsonl.

The report (--report, and inside rm.pt, where train_ppo.py reads it) says whether the scores
mean anything:
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

One process: under torchrun (WORLD_SIZE > 1) it refuses to start rather than have every
process train the same model and write the same files.

    python train_rm.py --init runs/default/sft.pt --pairs runs/default/collect/pairs.jsonl \\
        --data_dir runs/default/data --out runs/default/rm.pt
"""

import dataclasses
import math
import os
import random
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from sml import common
from sml import rationales
from data import load_val_split, load_world
from data.jsonl import DataError, load_dataset, load_pairs
from data.tokenizer import encode_after, eot_id
from sml.checkpoint import load_checkpoint, save_checkpoint
from sml.rundir import RunDir
from model import configure_optimizer, lm_to_scalar, pad_batch, sequence_scores

# The defaults below are the default preset; tiny overrides these (flags given still win).
PRESETS = {"default": {}, "tiny": dict(max_steps=30, batch_size=16, warmup_steps=1, auc_questions=20),
           # a pretrained model: a learning rate for pretrained weights, one epoch (peers' habit),
           # the checkpoint with the lowest held-out loss
           "pretrained": dict(lr=1e-5, epochs=1, keep="best", eval_interval=25, batch_size=16, warmup_steps=20,
                              micro_batch_size=8, auc_questions=100)}


def get_args(argv=None):
    p = common.ArgumentParser(description=__doc__)
    g = p.add_argument_group("input / output")
    g.add_argument("--init", required=True, help="language-model checkpoint for the trunk (the SFT model)")
    g.add_argument("--pairs", required=True, help="pairs.jsonl: prompt, chosen, rejected (and id)")
    g.add_argument("--data_dir", required=True, help="folder with tokenizer.json, meta.json, train/val.jsonl")
    g.add_argument("--out", required=True, help="reward-model checkpoint to write (last, after the report)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out and --report")
    g.add_argument("--report", default=None, help="write the report JSON here")
    g.add_argument("--preset", default="default", choices=sorted(PRESETS), help=common.preset_help(PRESETS))
    g = p.add_argument_group("optimisation")
    g.add_argument("--max_steps", type=common.COUNT, default=1000)
    g.add_argument("--epochs", type=common.POSITIVE, default=None,
                   help="train for this many passes over the training pairs instead of --max_steps")
    g.add_argument("--batch_size", type=common.COUNT, default=32, help="pairs per optimizer step")
    g.add_argument("--micro_batch_size", type=common.COUNT, default=None,
                   help="pairs per forward pass; gradients accumulate over a step (default: the batch)")
    common.add_grad_checkpointing_arg(g)
    g.add_argument("--lr", type=common.LEARNING_RATE, default=3e-4)
    g.add_argument("--warmup_steps", type=common.NONNEG, default=50)
    g.add_argument("--weight_decay", type=common.NONNEG_FLOAT, default=0.0)
    g.add_argument("--grad_clip", type=common.POSITIVE, default=1.0)
    g.add_argument("--val_frac", type=common.HELD_OUT, default=0.1, help="share of questions held out")
    g.add_argument("--keep", default="last", choices=["last", "best"],
                   help="the weights written: the last step's, or those with the lowest held-out loss")
    g.add_argument("--eval_interval", type=common.COUNT, default=100,
                   help="with --keep best: steps between held-out evaluations")
    g = p.add_argument_group("evaluation")
    g.add_argument("--auc_questions", type=common.NONNEG, default=300,
                   help="validation questions (val.jsonl) for the fresh-sample figures; 0: none (reported as null)")
    g.add_argument("--auc_samples", type=common.SAMPLES, default=4, help="SFT samples per validation question")
    common.add_budget_args(g)
    common.add_runtime_args(p, compile=False)
    args = p.parse_args(argv)
    common.apply_preset(p, args, argv, PRESETS)
    args.micro_batch_size = min(args.micro_batch_size or args.batch_size, args.batch_size)
    return args


# -----------------------------------------------------------------------------


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


def bradley_terry_loss(r_chosen, r_rejected):
    """-log sigmoid(r_chosen - r_rejected): the chance, under the Bradley-Terry model, that
    the high-quality rationale is preferred to the low-quality one."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


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


def split_by_question(pairs, val_frac, seed):
    """Held-out pairs come from held-out questions: no question is on both sides."""
    return common.split_by_question(pairs, val_frac, seed)


def pair_scores(rm, tok, pairs, device, amp=nullcontext()):
    """(chosen scores, rejected scores) of pairs, on the CPU."""
    prompts = [p["prompt"] for p in pairs]
    return (score_texts(rm, tok, prompts, [p["chosen"] for p in pairs], device, amp=amp),
            score_texts(rm, tok, prompts, [p["rejected"] for p in pairs], device, amp=amp))


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


# -----------------------------------------------------------------------------
# Training


def encode_pairs(tok, pairs, block_size, path):
    """Each side encoded once (checked against the context here, trained on later)."""
    for i, p in enumerate(pairs):
        for side in ("chosen", "rejected"):
            p[f"{side}_ids"] = encode_pair_side(tok, p["prompt"], p[side])
            n = len(p[f"{side}_ids"])
            if n > block_size:
                raise DataError(f"{path}: pair #{i + 1}: the {side} sequence has {n} tokens, longer than the "
                                f"model's context of {block_size}")


def check_memory(sft_model, pairs, args, rt):
    """Before the reward model is built beside the SFT model (which the report samples from
    later): its weights, gradients, AdamW's state and one micro-batch (both sides of
    micro_batch_size pairs, at the longest pair's length) fit in what the process can have."""
    config = dataclasses.replace(sft_model.config, kind="scalar")  # one score, no logits over the vocabulary
    longest = max(len(p[f"{side}_ids"]) for p in pairs for side in ("chosen", "rejected"))
    need = common.training_memory(config, sft_model.num_params(), 2 * args.micro_batch_size, longest,
                                  rt.dtype.itemsize, grad_checkpointing=args.grad_checkpointing)
    common.check_training_memory(need, rt.device, f"--init {args.init} ({sft_model.num_params() / 1e9:.2f}B "
                                 f"parameters)", f"--batch_size {args.batch_size} / --micro_batch_size "
                                 f"{args.micro_batch_size}")


def train_step(rm, optimizer, batch, args, rt, pad_id):
    """One optimizer step of Bradley-Terry on (chosen ids, rejected ids) pairs, micro_batch_size
    pairs per forward. Returns (loss, accuracy) over the batch."""
    losses, right = [], 0
    for s in range(0, len(batch), args.micro_batch_size):
        micro = batch[s:s + args.micro_batch_size]
        with rt.autocast:
            scores = batch_scores(rm, [c for c, _ in micro] + [r for _, r in micro], rt.device, pad_id)
        r_chosen, r_rejected = scores[:len(micro)], scores[len(micro):]
        loss = bradley_terry_loss(r_chosen, r_rejected)
        (loss * len(micro) / len(batch)).backward()
        losses.append(float(loss.detach()) * len(micro))
        right += int((r_chosen > r_rejected).sum())
    loss = sum(losses) / len(batch)
    common.check_loss(loss)
    torch.nn.utils.clip_grad_norm_(rm.parameters(), args.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, right / len(batch)


@torch.no_grad()
def held_out_loss(rm, tok, pairs, rt):
    c, r = pair_scores(rm, tok, pairs, rt.device, rt.autocast)
    return float(bradley_terry_loss(c, r))


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


# what every report of this script holds (written in main): how a stale one is recognised, a
# report without its checkpoint (a run killed between the two; rm.pt, written last, says the
# stage is done), which the rerun replaces without --overwrite
REPORT_KEYS = {"train_pairs", "val_pairs", "train_seconds", "steps", "kept_step"}


def main(argv=None):
    args = get_args(argv)
    common.refuse_torchrun()  # every process would train alike and write the same files
    run = RunDir(args.out, beside={"--report": args.report}, report_keys=REPORT_KEYS)
    run.check([args.init, args.pairs, args.data_dir], args.overwrite)
    if args.auc_questions:
        val_questions(args)  # before training, not after
    rt = common.setup_runtime(args.device, args.dtype)
    common.seed_everything(args.seed)
    tok, task = load_world(args.data_dir)
    pairs = load_pairs(args.pairs)
    sft_model, _ = load_checkpoint(args.init, kind="lm", tokenizer_json=tok.to_str())
    encode_pairs(tok, pairs, sft_model.config.block_size, args.pairs)
    check_memory(sft_model, pairs, args, rt)

    train_pairs, val_pairs = split_by_question(pairs, args.val_frac, args.seed)
    if args.keep == "best" and not val_pairs:
        raise common.UserError("--keep best chooses on held-out pairs: there are none (--val_frac)")
    max_steps = math.ceil(args.epochs * len(train_pairs) / args.batch_size) if args.epochs else args.max_steps
    note = common.warmup_note(args.warmup_steps, max_steps)
    if note:
        print(note)
    print(f"{len(train_pairs)} training pairs, {len(val_pairs)} held-out pairs (by question); {max_steps} steps "
          f"of {args.batch_size} pairs" + (f" ({args.epochs} epochs)" if args.epochs else ""))
    rm = lm_to_scalar(sft_model).to(rt.device)  # the trunk of the SFT model + a scalar head
    rm.grad_checkpointing = args.grad_checkpointing
    optimizer = configure_optimizer(rm, args.lr, args.weight_decay)
    train_seqs = [(p["chosen_ids"], p["rejected_ids"]) for p in train_pairs]

    t0 = time.time()
    gen = torch.Generator().manual_seed(args.seed)
    best = {"step": max_steps, "val_loss": None, "weights": None}
    bar = common.progress(range(max_steps), desc="reward model")
    for step in bar:  # SML step 3b: Bradley-Terry on (high, low) pairs of one question
        common.set_lr(optimizer, common.cosine_lr(step, max_steps, args.lr, args.warmup_steps))
        batch = [train_seqs[i] for i in torch.randint(0, len(train_seqs), (args.batch_size,), generator=gen)]
        rm.train()
        loss, acc = train_step(rm, optimizer, batch, args, rt, eot_id(tok))
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.2f}", refresh=False)  # a redraw would log every step
        if args.keep == "best" and ((step + 1) % args.eval_interval == 0 or step + 1 == max_steps):
            val_loss = held_out_loss(rm, tok, val_pairs, rt)
            if best["val_loss"] is None or val_loss < best["val_loss"]:  # ties: the earlier step
                best = {"step": step + 1, "val_loss": val_loss,
                        "weights": {k: v.detach().cpu().clone() for k, v in rm.state_dict().items()}}
    if best["weights"] is not None:
        rm.load_state_dict(best["weights"])
        print(f"kept step {best['step']} of {max_steps}: the lowest held-out loss ({best['val_loss']:.4f} on "
              f"{len(val_pairs)} pairs)")
    train_seconds = time.time() - t0

    # The report (written before the checkpoint: rm.pt, written last, says the stage is done).
    report = {"train_pairs": len(train_pairs), "val_pairs": len(val_pairs), "train_seconds": train_seconds,
              "steps": max_steps, "kept_step": best["step"]}
    report.update(quality_report(rm, sft_model, tok, task, args, rt, train_pairs, val_pairs))
    run.start()  # an earlier run's rm.pt says "done", and this run's report comes first
    if args.report:
        common.write_json(args.report, report)
    run.finish(lambda path: save_checkpoint(path, rm, tok.to_str(), {"script": "train_rm.py", "args": vars(args),
                                                                     "step": best["step"], "parent": args.init},
                                            extra={"report": report}))
    common.cleanup_runtime(rt)


if __name__ == "__main__":
    common.run(main)
