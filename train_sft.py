"""
SML step 3a: supervised fine-tuning on the high-quality rationales.

The base model is trained to write, from the question alone, the rationales it wrote
itself given the correct answer and that passed the answer-consistency check
(generate.py collect -> sft.jsonl). The loss is the next-token loss on completion tokens
only: the prompt is context, not something to learn to write.

The same script trains the baselines:
  --data collect/sft_unhinted.jsonl   rejection sampling / STaR (unhinted correct samples)
  --gold data/train.jsonl             SFT on the gold rationales (the annotation upper bound)

    python train_sft.py --init runs/default/base.pt --data runs/default/collect/sft.jsonl \\
        --data_dir runs/default/data --out runs/default/sft.pt
"""

import argparse
import os
import random

import common
import generate
from data import load_world
from data.jsonl import DataError, load_dataset, load_sft
from data.tokenizer import EOT, tokenizer_to_str
from model import CheckpointError, load_checkpoint
from pretrain import check_lengths, train_lm

PRESETS = {
    "tiny": dict(max_steps=30, batch_size=16, lr=1e-3, warmup_steps=5, eval_interval=15),
    "default": dict(max_steps=600, batch_size=32, lr=1e-3, warmup_steps=20, eval_interval=100),
}


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("input / output")
    g.add_argument("--init", required=True, help="language-model checkpoint to start from (the base model)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="prompt/completion JSONL (e.g. collect/sft.jsonl)")
    src.add_argument("--gold", help="a dataset JSONL with gold rationales (upper-bound baseline)")
    g.add_argument("--data_dir", required=True, help="folder with tokenizer.json, meta.json, test.jsonl")
    g.add_argument("--out", required=True, help="checkpoint to write")
    g.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    g = p.add_argument_group("optimisation")
    g.add_argument("--preset", default="default", choices=sorted(PRESETS))
    g.add_argument("--max_steps", type=int)
    g.add_argument("--batch_size", type=int, help="examples per optimizer step (global)")
    g.add_argument("--grad_accum", type=int, default=1)
    g.add_argument("--lr", type=float)
    g.add_argument("--warmup_steps", type=int)
    g.add_argument("--weight_decay", type=float, default=0.0)
    g.add_argument("--grad_clip", type=float, default=1.0)
    g.add_argument("--val_frac", type=float, default=0.05, help="held-out share for the eval loss")
    g = p.add_argument_group("evaluation at the end")
    g.add_argument("--eval_interval", type=int)
    g.add_argument("--eval_limit", type=int, default=None, help="test questions (default: all; 0: skip)")
    g.add_argument("--eval_temperature", type=float, default=1.0)
    g.add_argument("--log_file", default=None)
    common.add_runtime_args(p)
    args = p.parse_args(argv)
    common.apply_preset(args, PRESETS)
    return args


def sft_examples(tok, rows, path, block_size):
    """(ids, loss mask): the prompt's tokens get mask 0 (no loss), the completion and the
    end-of-text token get 1. Prompt and completion are encoded separately, exactly as the
    sampler sees them (prompt tokens, then generated tokens)."""
    eot = tok.token_to_id(EOT)
    examples = []
    for row in rows:
        p, c = tok.encode(row["prompt"]).ids, tok.encode(row["completion"]).ids
        examples.append((p + c + [eot], [0] * len(p) + [1] * (len(c) + 1)))
    check_lengths(examples, block_size, f"{path}: example")
    return examples


def main(argv=None):
    args = get_args(argv)
    rt = common.setup_runtime(args.device, args.dtype)
    common.seed_everything(args.seed)
    try:
        tok, task = load_world(args.data_dir)
        if args.gold:
            rows = [{"id": r["id"], "prompt": task.prompt(r["question"]), "completion": " " + r["rationale"]}
                    for r in load_dataset(args.gold) if r.get("rationale")]
            if not rows:
                raise DataError(f"{args.gold}: no row has a gold 'rationale'")
        else:
            rows = load_sft(args.data)
        if os.path.exists(args.out) and not (args.resume or args.overwrite):
            raise DataError(f"{args.out} already exists; pass --resume or --overwrite")
        if args.resume and os.path.exists(args.out):
            model, ckpt = load_checkpoint(args.out, kind="lm", tokenizer_json=tokenizer_to_str(tok))
            start_step, opt_state = ckpt["provenance"]["step"], ckpt["optimizer"]
        else:
            model, _ = load_checkpoint(args.init, kind="lm", tokenizer_json=tokenizer_to_str(tok))
            start_step, opt_state = 0, None
        examples = sft_examples(tok, rows, args.data or args.gold, model.config.block_size)
    except (DataError, CheckpointError, ValueError, OSError) as e:
        common.die("train_sft.py", str(e))

    # Hold out a few rows for the eval loss, by question so that no question is on both sides.
    qids = [r.get("id", str(i)) for i, r in enumerate(rows)]
    unique = sorted(set(qids))
    val_ids = set(random.Random(args.seed).sample(unique, int(len(unique) * args.val_frac)))
    train_ex = [e for e, q in zip(examples, qids) if q not in val_ids]
    val_ex = [e for e, q in zip(examples, qids) if q in val_ids]
    common.print0(rt, f"SFT on {len(train_ex)} examples ({len(val_ex)} held out) from "
                      f"{args.data or args.gold}")
    provenance = {"script": "train_sft.py", "args": vars(args), "parent": args.init}
    train_lm(args, rt, model, train_ex, val_ex, tok.token_to_id(EOT), tokenizer_to_str(tok),
             provenance, start_step, opt_state, desc="sft")

    # Test accuracy through generate.py's evaluation (the same sample-and-check code).
    if rt.master and args.eval_limit != 0:
        rows_test = load_dataset(os.path.join(args.data_dir, "test.jsonl"))[:args.eval_limit]
        model.to(rt.device)
        summary, _ = generate.evaluate(model, tok, task, rows_test, args.eval_temperature, 1, args.seed)
        print(f"test accuracy after SFT: {generate.format_accuracy(summary)} "
              f"(temperature {args.eval_temperature})")
    common.cleanup_runtime(rt)


if __name__ == "__main__":
    main()
