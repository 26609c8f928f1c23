"""
SML step 3b: the reward model, trained on the rank that comes for free.

A rationale the model wrote for the correct answer (high quality) should score above one it
wrote for a wrong answer (low quality) of the same question. The reward model is the SFT
model's trunk with a scalar head read at the last real token (the end-of-text), trained
with the Bradley-Terry pairwise loss  -log sigmoid(r_chosen - r_rejected)  on pairs.jsonl.

Then its quality report (sml/reward_report.py: held-out pair accuracy, and the AUC of the
score for a correct answer on fresh SFT samples of validation questions), written to
--report and kept inside rm.pt, where train_ppo.py's gate reads it; rm.pt is written last.
One process: under torchrun (WORLD_SIZE > 1) it refuses to start. More in docs/scripts.md.

    python train_rm.py --init runs/default/sft.pt --pairs runs/default/collect/pairs.jsonl \\
        --data_dir runs/default/data --out runs/default/rm.pt
"""

import dataclasses
import math
import time

import torch
import torch.nn.functional as F

from sml import common
from data import load_world
from data.jsonl import DataError, load_pairs
from data.tokenizer import eot_id
from sml.checkpoint import load_checkpoint, save_checkpoint
from sml.reward_report import batch_scores, encode_pair_side, pair_scores, quality_report, val_questions
from sml.rundir import RunDir
from model import configure_optimizer, lm_to_scalar

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
# Pairs: each side is the prompt, the completion as it follows it, the end-of-text
# (encode_pair_side, which the report scores texts with too)


def encode_pairs(tok, pairs, block_size, path):
    """Each side encoded once (checked against the context here, trained on later)."""
    for i, p in enumerate(pairs):
        for side in ("chosen", "rejected"):
            p[f"{side}_ids"] = encode_pair_side(tok, p["prompt"], p[side])
            n = len(p[f"{side}_ids"])
            if n > block_size:
                raise DataError(f"{path}: pair #{i + 1}: the {side} sequence has {n} tokens, longer than the "
                                f"model's context of {block_size}")


# -----------------------------------------------------------------------------
# Scores and the loss: a pair's sides are scored at their end-of-text (batch_scores, shared
# with the report), the high-quality side preferred


def bradley_terry_loss(r_chosen, r_rejected):
    """-log sigmoid(r_chosen - r_rejected): the chance, under the Bradley-Terry model, that
    the high-quality rationale is preferred to the low-quality one."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


# -----------------------------------------------------------------------------
# Training


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


def train(rm, optimizer, tok, train_pairs, val_pairs, max_steps, args, rt):
    """SML step 3b: Bradley-Terry on (high, low) pairs of one question, a random batch of pairs
    per step. With --keep best, the weights with the lowest held-out loss are loaded back at
    the end. Returns {"step", "val_loss", "weights"} of the step kept."""
    train_seqs = [(p["chosen_ids"], p["rejected_ids"]) for p in train_pairs]
    gen = torch.Generator().manual_seed(args.seed)
    best = {"step": max_steps, "val_loss": None, "weights": None}
    bar = common.progress(range(max_steps), desc="reward model")
    for step in bar:
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
    return best


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

    # held-out pairs come from held-out questions: no question is on both sides
    train_pairs, val_pairs = common.split_by_question(pairs, args.val_frac, args.seed)
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

    run.start()  # an earlier run's rm.pt says "done": a run killed from here on must not leave it saying so
    t0 = time.time()
    best = train(rm, optimizer, tok, train_pairs, val_pairs, max_steps, args, rt)
    train_seconds = time.time() - t0

    # The report (written before the checkpoint: rm.pt, written last, says the stage is done).
    report = {"train_pairs": len(train_pairs), "val_pairs": len(val_pairs), "train_seconds": train_seconds,
              "steps": max_steps, "kept_step": best["step"]}
    report.update(quality_report(rm, sft_model, tok, task, args, rt, train_pairs, val_pairs))
    if args.report:
        common.write_json(args.report, report)
    run.finish(lambda path: save_checkpoint(path, rm, tok.to_str(), {"script": "train_rm.py", "args": vars(args),
                                                                     "step": best["step"], "parent": args.init},
                                            extra={"report": report}))
    common.cleanup_runtime(rt)


if __name__ == "__main__":
    common.run(main)
