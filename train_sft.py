"""
SML step 3a: supervised fine-tuning on the high-quality rationales.

The base model is trained to write, from the question alone, the rationales it wrote
itself given the correct answer and that passed the answer-consistency check
(generate.py -> sft.jsonl). The loss is the next-token loss on completion tokens
only: the prompt is context, not something to learn to write.

The same script trains the baselines:
  --data collect/rft.jsonl    rejection-sampling fine-tuning, RFT (its correct unhinted samples)
  --data collect/star.jsonl   one STaR iteration (those, and rationalizations of the questions
                              it got wrong), always from the base model (run.sh loops them)
  --gold data/train.jsonl     SFT on the gold rationales (the annotation upper bound)

run.sh gives every SFT stage --keep val_greedy: the checkpoint with the best greedy accuracy
on the validation split, the measure PPO chooses its checkpoint on, so that every trained
method in the table gets the same choice.

    python train_sft.py --init runs/default/base.pt --data runs/default/collect/sft.jsonl \\
        --data_dir runs/default/data --out runs/default/sft.pt
"""

import math
import os

from sml import common
from sml import rationales
from data import load_val_split, load_world
from data.jsonl import DataError, load_dataset, load_sft
from data.tokenizer import encode_after, eot_id
from sml.lm_training import start_or_resume, train_lm
from sml.checkpoint import load_checkpoint
from sml.validation import Validation, greedy_accuracy

# The defaults below are the default preset; tiny overrides these (flags given still win).
# pretrained: fine-tuning a pretrained model (run.sh with INIT): a learning rate for
# pretrained weights, not the from-scratch model's 1e-3; a pretrained model writes slowly on a
# CPU, so --keep val_greedy reads 100 validation questions.
PRESETS = {"default": {}, "tiny": dict(max_steps=30, batch_size=16, warmup_steps=5, eval_interval=15),
           "pretrained": dict(lr=2e-5, epochs=2, keep="best", batch_size=16, warmup_steps=10, eval_interval=25,
                              eval_limit=100, val_questions=100)}


def get_args(argv=None):
    p = common.ArgumentParser(description=__doc__)
    g = p.add_argument_group("input / output")
    g.add_argument("--init", required=True, help="language-model checkpoint to start from (the base model)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="prompt/completion JSONL (e.g. collect/sft.jsonl)")
    src.add_argument("--gold", help="a dataset JSONL with gold rationales (upper-bound baseline)")
    g.add_argument("--data_dir", required=True, help="folder with tokenizer.json, meta.json, test.jsonl")
    g.add_argument("--out", required=True, help="checkpoint to write")
    g.add_argument("--resume", action="store_true", help="continue from --out's .partial checkpoint if there is one")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    g.add_argument("--preset", default="default", choices=sorted(PRESETS), help=common.preset_help(PRESETS))
    g = p.add_argument_group("optimisation")
    g.add_argument("--max_steps", type=common.COUNT, default=600)
    g.add_argument("--epochs", type=common.POSITIVE, default=None,
                   help="train for this many passes over the training examples instead of --max_steps")
    g.add_argument("--keep", default="last", choices=["last", "best", "val_greedy"],
                   help="the checkpoint written: the last step's, the evaluation with the lowest held-out loss "
                        "(best), or the one with the best greedy accuracy on data_dir/val.jsonl (val_greedy: "
                        "the results table's headline, on which PPO chooses too; run.sh's choice)")
    g.add_argument("--batch_size", type=common.COUNT, default=32, help="examples per optimizer step (global)")
    g.add_argument("--grad_accum", type=common.COUNT, default=1, help="micro-batches per step and process")
    common.add_grad_checkpointing_arg(g)
    g.add_argument("--lr", type=common.LEARNING_RATE, default=1e-3)
    g.add_argument("--warmup_steps", type=common.NONNEG, default=20)
    g.add_argument("--weight_decay", type=common.NONNEG_FLOAT, default=0.0)
    g.add_argument("--grad_clip", type=common.POSITIVE, default=1.0)
    g.add_argument("--val_frac", type=common.HELD_OUT, default=0.05, help="held-out share for the eval loss")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval_interval", type=common.COUNT, default=100, help="eval loss and checkpoint every N steps")
    g.add_argument("--val_questions", type=common.NONNEG, default=0,
                   help="with --keep val_greedy: the first N questions of val.jsonl (0: all)")
    g.add_argument("--eval_limit", type=common.NONNEG, default=0,
                   help="test questions to evaluate at the end (0: none; run.sh evaluates separately)")
    common.add_eval_temperature_arg(g)
    common.add_budget_args(g)
    common.add_runtime_args(p)
    args = p.parse_args(argv)
    common.apply_preset(p, args, argv, PRESETS)
    return args


def sft_examples(tok, rows, path, block_size):
    """(ids, loss mask): the prompt's tokens get mask 0 (no loss), the completion and the
    end-of-text token get 1. Prompt and completion are encoded separately, exactly as the
    sampler sees them (prompt tokens, then generated tokens)."""
    eot = eot_id(tok)
    examples = []
    for row in rows:
        p, c = tok.encode(row["prompt"]).ids, encode_after(tok, row["prompt"], row["completion"])
        examples.append((p + c + [eot], [0] * len(p) + [1] * (len(c) + 1)))
        if len(examples[-1][0]) - 1 > block_size:
            raise DataError(f"{path}: the example of question {row.get('id', row['prompt'][:40])!r} has "
                            f"{len(examples[-1][0]) - 1} tokens, longer than the model's context of {block_size}")
    return examples


def greedy_val_accuracy(args, rt, tok, task):
    """--keep val_greedy: a model's greedy accuracy on the validation split (held out of
    collection and training), the measure every trained method's checkpoint is chosen on
    (sml/validation.py, as PPO chooses)."""
    val = Validation(tok, task, load_val_split(args.data_dir, args.val_questions, "--keep val_greedy"), args.seed,
                     samples=1, temperature=0.0, max_new_tokens=args.max_new_tokens,
                     batch_prompts=args.batch_prompts, amp=rt.autocast)

    def score(model):
        model.eval()
        accuracy = greedy_accuracy(model, val)
        model.train()
        common.print0(rt, f"greedy validation accuracy {100 * accuracy:.1f}% ({len(val.rows)} questions)")
        return accuracy
    return score


def main(argv=None):
    args = get_args(argv)
    rt = common.setup_runtime(args.device, args.dtype)
    common.seed_everything(args.seed)
    tok, task = load_world(args.data_dir)
    if args.gold:
        rows = [{"id": r["id"], "prompt": task.prompt(r["question"]), "completion": " " + r["rationale"]}
                for r in load_dataset(args.gold) if r.get("rationale")]
        if not rows:
            raise DataError(f"{args.gold}: no row has a gold 'rationale'")
    else:
        rows = load_sft(args.data)
    select_on = greedy_val_accuracy(args, rt, tok, task) if args.keep == "val_greedy" else None
    model, start_step, resume_state = start_or_resume(args.out, args.resume, args.overwrite, args.init,
                                                   tok.to_str(), inputs=[args.data or args.gold, args.data_dir])
    # Hold out a few rows for the eval loss, by question so that no question is on both sides.
    model.grad_checkpointing = args.grad_checkpointing
    train_rows, val_rows = common.split_by_question(rows, args.val_frac, args.seed)
    what = args.data or args.gold
    train_ex = sft_examples(tok, train_rows, what, model.config.block_size)
    val_ex = sft_examples(tok, val_rows, what, model.config.block_size)
    max_steps = math.ceil(args.epochs * len(train_ex) / args.batch_size) if args.epochs else args.max_steps
    common.print0(rt, f"SFT on {len(train_ex)} examples ({len(val_ex)} held out) from {what}: {max_steps} steps "
                      f"of {args.batch_size}" + (f" ({args.epochs} epochs)" if args.epochs else ""))
    # SML step 3a: next-token loss on the completion (the rationale) only
    train_lm(model, rt, train_ex, val_ex, eot_id(tok), args.out, tok.to_str(),
             {"script": "train_sft.py", "args": vars(args), "parent": args.init},
             max_steps=max_steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
             weight_decay=args.weight_decay, grad_clip=args.grad_clip, eval_interval=args.eval_interval,
             seed=args.seed, grad_accum=args.grad_accum, compile=args.compile, start_step=start_step,
             resume_state=resume_state, select_best=args.keep != "last", select_on=select_on, desc="sft")

    if rt.master and args.eval_limit:  # a quick look at what was written; evaluate.py is the full evaluation
        rows_test = load_dataset(os.path.join(args.data_dir, "test.jsonl"))[:args.eval_limit]
        model, _ = load_checkpoint(args.out, kind="lm", device=rt.device)
        with rt.autocast:
            summary, _ = rationales.evaluate(model, tok, task, rows_test, args.eval_temperature, 1, args.seed,
                                             max_new_tokens=args.max_new_tokens, batch_prompts=args.batch_prompts)
        print(f"test accuracy after SFT: {rationales.format_accuracy(summary)} "
              f"(temperature {args.eval_temperature})")
    common.cleanup_runtime(rt)


if __name__ == "__main__":
    common.run(main)
