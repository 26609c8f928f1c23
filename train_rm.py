"""
SML step 3b: the reward model, trained on the rank that comes for free.

A rationale the model wrote for the correct answer (high quality) should score above one it
wrote for a wrong answer (low quality) of the same question. The reward model is the SFT
model's trunk with a scalar head read at the last real token (the end-of-text), trained
with the Bradley-Terry pairwise loss  -log sigmoid(r_chosen - r_rejected)  on pairs.jsonl.

Reports: pair accuracy on questions held out of training; the mean score of high vs low
rationales; and the paper's finding that a higher score goes with a better rationale: on
fresh samples of the SFT model on test questions, the AUC of the score for correctness.

    python train_rm.py --init runs/default/sft.pt --pairs runs/default/collect/pairs.jsonl \\
        --data_dir runs/default/data --out runs/default/rm.pt
"""

import os
import random
import time

import torch
import torch.nn.functional as F

import common
import rationales
from data import load_world
from data.jsonl import DataError, load_dataset, load_pairs
from data.tokenizer import encode_after, eot_id
from model import configure_optimizer, lm_to_scalar, load_checkpoint, save_checkpoint, sequence_scores

# The defaults below are the default preset; tiny overrides these (flags given still win).
PRESETS = {"default": {}, "tiny": dict(max_steps=30, batch_size=16, warmup_steps=1, auc_questions=20),
           "pretrained": dict(lr=1e-5, max_steps=300, batch_size=16, warmup_steps=20, auc_questions=100)}


def get_args(argv=None):
    p = common.ArgumentParser(description=__doc__)
    g = p.add_argument_group("input / output")
    g.add_argument("--init", required=True, help="language-model checkpoint for the trunk (the SFT model)")
    g.add_argument("--pairs", required=True, help="pairs.jsonl: prompt, chosen, rejected (and id)")
    g.add_argument("--data_dir", required=True, help="folder with tokenizer.json, meta.json, test.jsonl")
    g.add_argument("--out", required=True, help="reward-model checkpoint to write (last, after the report)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    g.add_argument("--report", default=None, help="write the report JSON here")
    g.add_argument("--preset", default="default", choices=sorted(PRESETS), help=common.preset_help(PRESETS))
    g = p.add_argument_group("optimisation")
    g.add_argument("--max_steps", type=common.COUNT, default=1000)
    g.add_argument("--batch_size", type=common.COUNT, default=32, help="pairs per step")
    g.add_argument("--lr", type=common.POSITIVE, default=3e-4)
    g.add_argument("--warmup_steps", type=common.NONNEG, default=50)
    g.add_argument("--weight_decay", type=common.NONNEG_FLOAT, default=0.0)
    g.add_argument("--grad_clip", type=common.POSITIVE, default=1.0)
    g.add_argument("--val_frac", type=common.FRACTION, default=0.1, help="share of questions held out")
    g = p.add_argument_group("evaluation")
    g.add_argument("--auc_questions", type=common.NONNEG, default=300, help="test questions for the correctness AUC")
    g.add_argument("--auc_samples", type=common.COUNT, default=4, help="SFT samples per test question")
    common.add_runtime_args(p)
    args = p.parse_args(argv)
    common.apply_preset(p, args, argv, PRESETS)
    return args


# -----------------------------------------------------------------------------


def encode_pair_side(tok, prompt, completion):
    return tok.encode(prompt).ids + encode_after(tok, prompt, completion) + [eot_id(tok)]


def batch_scores(rm, seqs, device, pad_id):
    """Right-pad token lists and read each sequence's score at its last real token."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        idx[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = True
    scores, _ = rm(idx.to(device))
    return sequence_scores(scores.float(), mask.to(device))


@torch.no_grad()
def score_texts(rm, tok, prompts, completions, device, batch_size=128):
    """Reward-model scores of (prompt, completion) texts; used here and by train_ppo.py."""
    rm.eval()
    # Decoding sampled tokens and encoding the text again can give more tokens than were
    # sampled (a stray byte becomes a replacement character): keep the end, where the score is read.
    block = rm.config.block_size
    seqs = [encode_pair_side(tok, p, c)[-block:] for p, c in zip(prompts, completions)]
    out = [batch_scores(rm, seqs[i:i + batch_size], device, eot_id(tok))
           for i in range(0, len(seqs), batch_size)]
    return torch.cat(out).cpu()


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


def split_by_question(pairs, val_frac, seed):
    """Held-out pairs come from held-out questions: no question is on both sides."""
    qids = sorted({p.get("id", p["prompt"]) for p in pairs})
    val_q = set(random.Random(seed).sample(qids, max(1, int(len(qids) * val_frac)))) if len(qids) > 1 else set()
    train = [p for p in pairs if p.get("id", p["prompt"]) not in val_q]
    val = [p for p in pairs if p.get("id", p["prompt"]) in val_q]
    return train, val


def pair_accuracy(rm, tok, pairs, device):
    c = score_texts(rm, tok, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs], device)
    r = score_texts(rm, tok, [p["prompt"] for p in pairs], [p["rejected"] for p in pairs], device)
    return float((c > r).float().mean()), float(c.mean()), float(r.mean())


# -----------------------------------------------------------------------------


def main(argv=None):
    args = get_args(argv)
    rt = common.setup_runtime(args.device, args.dtype)
    common.seed_everything(args.seed)
    common.check_output(args.out, args.overwrite, [args.init, args.pairs])
    if args.report:
        common.check_output(args.report, True, [args.init, args.pairs])
    tok, task = load_world(args.data_dir)
    pairs = load_pairs(args.pairs)
    sft_model, _ = load_checkpoint(args.init, kind="lm", tokenizer_json=tok.to_str())
    for i, p in enumerate(pairs):  # encode each side once: checked here, trained on below
        for side in ("chosen", "rejected"):
            p[f"{side}_ids"] = encode_pair_side(tok, p["prompt"], p[side])
            n = len(p[f"{side}_ids"])
            if n > sft_model.config.block_size:
                raise DataError(f"{args.pairs}: pair #{i + 1}: the {side} sequence has {n} tokens, "
                                f"longer than the model's context of {sft_model.config.block_size}")

    train_pairs, val_pairs = split_by_question(pairs, args.val_frac, args.seed)
    print(f"{len(train_pairs)} training pairs, {len(val_pairs)} held-out pairs (by question)")
    rm = lm_to_scalar(sft_model).to(rt.device)  # the trunk of the SFT model + a scalar head
    optimizer = configure_optimizer(rm, args.lr, args.weight_decay)
    pad_id = eot_id(tok)
    train_seqs = [(p["chosen_ids"], p["rejected_ids"]) for p in train_pairs]

    t0 = time.time()
    gen = torch.Generator().manual_seed(args.seed)
    rm.train()
    bar = common.progress(range(args.max_steps), desc="reward model")
    for step in bar:  # SML step 3b: Bradley-Terry on (high, low) pairs of one question
        lr = common.cosine_lr(step, args.max_steps, args.lr, args.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = [train_seqs[i] for i in torch.randint(0, len(train_seqs), (args.batch_size,), generator=gen)]
        with rt.autocast:
            scores = batch_scores(rm, [c for c, _ in batch] + [r for _, r in batch], rt.device, pad_id)
        r_chosen, r_rejected = scores[:len(batch)], scores[len(batch):]
        loss = bradley_terry_loss(r_chosen, r_rejected)
        if not torch.isfinite(loss):
            raise common.UserError(f"loss is {loss.item()} at step {step}; try a lower --lr")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{(r_chosen > r_rejected).float().mean():.2f}",
                        refresh=False)  # a redraw here would write a log line every step
    train_seconds = time.time() - t0

    # Reports (written before the checkpoint: rm.pt, written last, says the stage is done).
    report = {"train_pairs": len(train_pairs), "val_pairs": len(val_pairs), "train_seconds": train_seconds}
    if val_pairs:
        # Held out of the RM's training, but not of SFT's: the trunk was fine-tuned on these
        # questions' high-quality rationales. The AUC below, on test questions, is the headline.
        with rt.autocast:
            acc, mean_hi, mean_lo = pair_accuracy(rm, tok, val_pairs, rt.device)
        report.update({"val_pair_accuracy": acc, "val_mean_score_high": mean_hi, "val_mean_score_low": mean_lo})
        print(f"held-out pair accuracy {100 * acc:.1f}% ({len(val_pairs)} pairs); mean score "
              f"high {mean_hi:.2f} vs low {mean_lo:.2f}")
    # Does a higher score go with a better rationale? Fresh SFT samples on test questions.
    test_rows = load_dataset(os.path.join(args.data_dir, "test.jsonl"))[:args.auc_questions]
    sft_model.to(rt.device)
    with rt.autocast:  # read as evaluation reads them (the answer line completed where missing)
        results, _ = rationales.sample_rationales(sft_model, tok, task, [(r["question"], None) for r in test_rows],
                                                args.auc_samples, 1.0, args.seed, complete_missing=True,
                                                desc="SFT samples")
    prompts, texts, correct = [], [], []
    for row, samples in zip(test_rows, results):
        for s in samples:
            prompts.append(task.prompt(row["question"]))
            texts.append(" " + s["text"])
            correct.append(task.answers_match(s["final_answer"], row["answer"]))
    with rt.autocast:
        scores = score_texts(rm, tok, prompts, texts, rt.device).tolist()
    report["auc_correctness"] = auc([s for s, c in zip(scores, correct) if c],
                                    [s for s, c in zip(scores, correct) if not c])
    report["auc_samples"] = len(scores)
    report["auc_sample_accuracy"] = sum(correct) / max(1, len(correct))
    print(f"AUC of the RM score for correctness on {len(scores)} fresh SFT samples of test questions: "
          f"{report['auc_correctness']:.3f} (their accuracy {100 * report['auc_sample_accuracy']:.1f}%)")
    if args.report:
        common.write_json(args.report, report)
    save_checkpoint(args.out, rm, tok.to_str(),
                    {"script": "train_rm.py", "args": vars(args), "step": args.max_steps, "parent": args.init})
    common.cleanup_runtime(rt)


if __name__ == "__main__":
    common.run(main)
