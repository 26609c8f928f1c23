"""
Pretrain the base model from scratch on the built-in corpus.

The paper starts from a pretrained LLM that already writes imperfect chains of thought.
Here that starting point is made on one machine: a small GPT reads a corpus of worked
solutions by careless authors and of rationalizations that argue for a given answer
(data/prepare.py), and so learns to write rationales that are right only part of the
time and to follow a given answer: the two abilities SML needs.

The training loop, train_lm(), is shared with train_sft.py: supervised fine-tuning is the
same next-token loss, with the prompt tokens masked out.

    python pretrain.py --data_dir runs/default/data --out runs/default/base.pt
    torchrun --standalone --nproc_per_node=2 pretrain.py ...   # DDP
"""

import argparse
import json
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import common
from data.jsonl import DataError, read_jsonl
from data.tokenizer import EOT, load_tokenizer, tokenizer_to_str
from model import (IGNORE_INDEX, CheckpointError, GPT, GPTConfig, configure_optimizer,
                   load_checkpoint, save_checkpoint)

# Model and schedule per preset; any flag given on the command line wins.
PRESETS = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=128, max_steps=60, batch_size=32,
                 lr=3e-3, warmup_steps=10, eval_interval=30),
    "default": dict(n_layer=3, n_head=4, n_embd=128, block_size=128, max_steps=1000,
                    batch_size=32, lr=3e-3, warmup_steps=50, eval_interval=200),
}


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("input / output")
    g.add_argument("--data_dir", required=True, help="folder with corpus.jsonl and tokenizer.json")
    g.add_argument("--out", required=True, help="checkpoint to write (e.g. runs/default/base.pt)")
    g.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    g = p.add_argument_group("model")
    g.add_argument("--preset", default="default", choices=sorted(PRESETS))
    g.add_argument("--n_layer", type=int)
    g.add_argument("--n_head", type=int)
    g.add_argument("--n_embd", type=int)
    g.add_argument("--block_size", type=int)
    g = p.add_argument_group("optimisation")
    g.add_argument("--max_steps", type=int)
    g.add_argument("--batch_size", type=int, help="documents per optimizer step (global)")
    g.add_argument("--grad_accum", type=int, default=1, help="micro-batches per step and process")
    g.add_argument("--lr", type=float)
    g.add_argument("--warmup_steps", type=int)
    g.add_argument("--weight_decay", type=float, default=0.1)
    g.add_argument("--grad_clip", type=float, default=1.0)
    g = p.add_argument_group("logging")
    g.add_argument("--eval_interval", type=int)
    g.add_argument("--eval_docs", type=int, default=500, help="held-out documents for eval loss")
    g.add_argument("--log_file", default=None, help="JSONL of losses (default: next to --out)")
    common.add_runtime_args(p)
    args = p.parse_args(argv)
    common.apply_preset(args, PRESETS)
    return args


# -----------------------------------------------------------------------------
# Batches: one example per row, right-padded, loss only where loss_mask says


def make_batch(examples, indices, pad_id, device):
    """examples[i] = (token ids, loss mask); returns (idx, targets) of shape (B, T).
    Each row holds one example, so no example ever attends to another; padding sits at
    the end of the row (the causal mask keeps it invisible) and gets no loss."""
    rows = [examples[i] for i in indices]
    T = max(len(ids) for ids, _ in rows) - 1
    idx = torch.full((len(rows), T), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    for r, (ids, mask) in enumerate(rows):
        ids_t = torch.tensor(ids, dtype=torch.long)
        n = len(ids) - 1
        idx[r, :n] = ids_t[:-1]
        tgt = ids_t[1:].clone()
        tgt[~torch.tensor(mask[1:], dtype=torch.bool)] = IGNORE_INDEX  # mask[j]: predict token j?
        targets[r, :n] = tgt
    return idx.to(device), targets.to(device)


def check_lengths(examples, block_size, what):
    for i, (ids, _) in enumerate(examples):
        if len(ids) - 1 > block_size:
            raise DataError(f"{what} #{i + 1}: {len(ids) - 1} tokens are longer than the "
                            f"model's context of {block_size}")


def step_indices(seed, step, n_examples, batch_size):
    """The global batch of a step depends on (seed, step) only: every process computes the
    same batch and takes its share, and --resume continues with exactly the same data."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n_examples, (batch_size,), generator=g).tolist()


@torch.no_grad()
def eval_loss(model, examples, pad_id, rt, batch_size=64):
    """Mean next-token loss over the given examples (per token, loss-masked)."""
    model.eval()
    total, ntok = 0.0, 0
    for start in range(0, len(examples), batch_size):
        idx, tgt = make_batch(examples, range(start, min(start + batch_size, len(examples))),
                              pad_id, rt.device)
        with rt.autocast:
            logits, _ = model(idx)
        total += torch.nn.functional.cross_entropy(
            logits.float().view(-1, logits.size(-1)), tgt.view(-1),
            ignore_index=IGNORE_INDEX, reduction="sum").item()
        ntok += int((tgt != IGNORE_INDEX).sum())
    model.train()
    return total / max(1, ntok)


# -----------------------------------------------------------------------------
# The loop (shared with train_sft.py)


def train_lm(args, rt, model, train_examples, val_examples, pad_id, tokenizer_json,
             provenance, start_step=0, optimizer_state=None, desc="train"):
    """Next-token training on (ids, loss_mask) examples. Writes args.out (atomically) every
    eval_interval steps and at the end, with the optimizer state so --resume can continue.
    Returns the list of logged records."""
    model.to(rt.device)
    raw_model = model
    optimizer = configure_optimizer(raw_model, args.lr, args.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    if args.compile:
        model = torch.compile(model)
    if rt.ddp:
        model = DDP(model, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None)
    per_rank = args.batch_size // rt.world_size
    if per_rank * rt.world_size != args.batch_size or per_rank % args.grad_accum:
        common.die(desc, f"--batch_size {args.batch_size} must split evenly over "
                         f"{rt.world_size} processes x {args.grad_accum} micro-batches")
    micro = per_rank // args.grad_accum
    log_path = args.log_file or os.path.splitext(args.out)[0] + ".log.jsonl"
    records = []

    def save(step):
        if rt.master:
            save_checkpoint(args.out, raw_model, tokenizer_json, {**provenance, "step": step},
                            extra={"optimizer": optimizer.state_dict(), "done": step >= args.max_steps})

    log = open(log_path, "a" if start_step else "w") if rt.master else None
    model.train()
    t0, tokens_seen = time.time(), 0
    bar = tqdm(range(start_step, args.max_steps), desc=desc, disable=not rt.master,
               initial=start_step, total=args.max_steps, dynamic_ncols=True)
    for step in bar:
        lr = common.cosine_lr(step, args.max_steps, args.lr, args.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # This process's share of the global batch, split into micro-batches.
        batch = step_indices(args.seed, step, len(train_examples), args.batch_size)
        global_tokens = sum(int(sum(train_examples[i][1][1:])) for i in batch)
        mine = batch[rt.rank * per_rank:(rt.rank + 1) * per_rank]
        loss_sum = torch.zeros((), device=rt.device)
        for m in range(args.grad_accum):
            idx, tgt = make_batch(train_examples, mine[m * micro:(m + 1) * micro], pad_id, rt.device)
            if rt.ddp:  # average gradients across processes only on the last micro-batch
                model.require_backward_grad_sync = m == args.grad_accum - 1
            with rt.autocast:
                logits, _ = model(idx)
            # Sum of token losses over the *global* token count, so that one process and
            # several give the same gradient whatever the token counts per process
            # (DDP averages gradients, hence the factor world_size).
            tok_loss = torch.nn.functional.cross_entropy(
                logits.float().view(-1, logits.size(-1)), tgt.view(-1),
                ignore_index=IGNORE_INDEX, reduction="sum")
            (tok_loss * rt.world_size / global_tokens).backward()
            loss_sum += tok_loss.detach()
        if rt.ddp:
            torch.distributed.all_reduce(loss_sum)
        loss = loss_sum.item() / global_tokens
        if not torch.isfinite(torch.tensor(loss)):
            common.die(desc, f"loss is {loss} at step {step}; try a lower --lr "
                             f"(the last good checkpoint is {args.out})")
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += global_tokens

        rec = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": float(grad_norm)}
        last = step + 1 == args.max_steps
        if (step + 1) % args.eval_interval == 0 or last:
            rec["val_loss"] = eval_loss(raw_model, val_examples, pad_id, rt) if val_examples else None
            rec["tokens_per_s"] = tokens_seen / (time.time() - t0)
            save(step + 1)
            common.print0(rt, f"\nstep {step + 1}: loss {loss:.4f} val {rec['val_loss'] or 0:.4f} "
                              f"lr {lr:.2e} {rec['tokens_per_s']:.0f} tok/s")
        if rt.master:
            log.write(json.dumps(rec) + "\n")
            log.flush()
        records.append(rec)
        bar.set_postfix(loss=f"{loss:.3f}")
    bar.close()
    if rt.master:
        log.close()
    return records


# -----------------------------------------------------------------------------


def tokenize_docs(tok, texts, eot_id):
    """Each corpus document + end-of-text, loss on every token."""
    encs = tok.encode_batch(texts)
    return [(e.ids + [eot_id], [1] * (len(e.ids) + 1)) for e in encs]


def main(argv=None):
    args = get_args(argv)
    rt = common.setup_runtime(args.device, args.dtype)
    common.seed_everything(args.seed)
    try:
        tok = load_tokenizer(os.path.join(args.data_dir, "tokenizer.json"))
        docs = read_jsonl(os.path.join(args.data_dir, "corpus.jsonl"), {"text": str})
    except DataError as e:
        common.die("pretrain.py", str(e))
    eot_id = tok.token_to_id(EOT)
    examples = tokenize_docs(tok, [d["text"] for d in docs], eot_id)
    # Hold out a few documents for the eval loss (corpus order is already shuffled).
    n_val = min(args.eval_docs, len(examples) // 10)
    train_examples, val_examples = examples[n_val:], examples[:n_val]
    try:
        check_lengths(examples, args.block_size, os.path.join(args.data_dir, "corpus.jsonl") + " document")
    except DataError as e:
        common.die("pretrain.py", str(e))

    config = GPTConfig(vocab_size=tok.get_vocab_size(), block_size=args.block_size,
                       n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    start_step, opt_state = 0, None
    if os.path.exists(args.out) and not (args.resume or args.overwrite):
        common.die("pretrain.py", f"{args.out} already exists; pass --resume to continue it or "
                                  f"--overwrite to replace it")
    if args.resume and os.path.exists(args.out):
        try:
            model, ckpt = load_checkpoint(args.out, kind="lm", tokenizer_json=tokenizer_to_str(tok))
        except CheckpointError as e:
            common.die("pretrain.py", str(e))
        start_step, opt_state = ckpt["provenance"]["step"], ckpt["optimizer"]
        common.print0(rt, f"resuming {args.out} from step {start_step}")
    else:
        model = GPT(config)
    common.print0(rt, f"{model.num_params() / 1e6:.2f}M parameters, {len(train_examples)} documents, "
                      f"{sum(len(e[0]) for e in train_examples) / len(train_examples):.1f} tokens each")
    provenance = {"script": "pretrain.py", "args": vars(args), "parent": None}
    train_lm(args, rt, model, train_examples, val_examples, eot_id, tokenizer_to_str(tok),
             provenance, start_step, opt_state, desc="pretrain")
    common.cleanup_runtime(rt)


if __name__ == "__main__":
    main()
