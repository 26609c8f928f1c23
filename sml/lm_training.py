"""
The language-model training loop that pretrain.py (next-token loss on the corpus) and
train_sft.py (SML step 3a: the same loss on the completion tokens of high-quality
rationales) share, with the checkpoint convention of both:

  `out`.partial   the unfinished checkpoint, written atomically every eval_interval steps
                  with the optimizer state; --resume continues it
  `out`.best      with select_best: the weights of the evaluation with the lowest held-out loss
                  (or with select_on, the highest score it gives)
  `out`           the finished checkpoint, weights only (the last step's, or the best one's);
                  the .partial file is removed then
  `out` - .pt + .log.jsonl   one row per step
"""

import time

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from sml import common
from data.jsonl import DataError, append_row
from sml.checkpoint import load_checkpoint, save_checkpoint
from sml.rundir import RunDir
from model import IGNORE_INDEX, configure_optimizer, pad_batch


def start_or_resume(out, resume, overwrite, init, tokenizer_json, device="cpu", inputs=()):
    """(model, start_step, resume_state): with --resume from `out`.partial (or a finished
    `out`, weights only), else from the checkpoint `init` (or the model init() returns). The
    run folder's checks (RunDir.check: `out` is none of the `inputs`, `init` included, and a
    finished one needs --resume or --overwrite); a fresh start removes a finished `out` (it
    says the stage is done). resume_state holds the optimizer state and the best held-out loss
    so far (None: start them afresh)."""
    run = RunDir.for_checkpoint(out)
    source = run.check([*inputs, *([] if callable(init) else [init])], overwrite, resume)
    if source:  # the unfinished checkpoint, or a finished one to train further (a larger --max_steps)
        model, ckpt = load_checkpoint(source, kind="lm", tokenizer_json=tokenizer_json, device=device)
        print(f"resuming {source} from step {ckpt['provenance']['step']}"
              + ("" if "optimizer" in ckpt else " (a finished checkpoint: a fresh optimizer)"), flush=True)
        return model, ckpt["provenance"]["step"], ckpt.get("resume")
    model = init() if callable(init) else load_checkpoint(init, kind="lm", tokenizer_json=tokenizer_json,
                                                          device=device)[0]
    run.start()
    return model, 0, None


# -----------------------------------------------------------------------------
# Batches: one example per row, right-padded, loss only where loss_mask says


def make_batch(examples, indices, pad_id, device):
    """examples[i] = (token ids, loss mask); returns (idx, targets) of shape (B, T).
    Each row holds one example, so no example ever attends to another; padding sits at
    the end of the row (the causal mask keeps it invisible) and gets no loss."""
    rows = [examples[i] for i in indices]
    idx, _ = pad_batch([ids[:-1] for ids, _ in rows], pad_id)
    # mask[j]: is token j predicted (trained on)?
    targets, _ = pad_batch([[t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])] for ids, mask in rows],
                           IGNORE_INDEX)
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


def token_loss_sum(logits, targets):
    """The next-token loss summed over the tokens that get one (targets not IGNORE_INDEX)."""
    return torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1),
                                             ignore_index=IGNORE_INDEX, reduction="sum")


@torch.no_grad()
def eval_loss(model, examples, pad_id, rt, batch_size):
    """Mean next-token loss over the given examples (per token, loss-masked)."""
    model.eval()
    total, ntok = 0.0, 0
    for start in range(0, len(examples), batch_size):
        idx, tgt = make_batch(examples, range(start, min(start + batch_size, len(examples))),
                              pad_id, rt.device)
        with rt.autocast:
            logits, _ = model(idx)
        total += token_loss_sum(logits, tgt).item()
        ntok += int((tgt != IGNORE_INDEX).sum())
    model.train()
    return total / max(1, ntok)


# -----------------------------------------------------------------------------
# The loop


def micro_batch_size(batch_size, rt, grad_accum):
    """The examples of one forward pass: the global batch split evenly over the processes, and
    each process's share over its grad_accum micro-batches."""
    per_rank = batch_size // rt.world_size
    if per_rank * rt.world_size != batch_size or per_rank % grad_accum:
        raise common.UserError(f"--batch_size {batch_size} must split evenly over "
                               f"{rt.world_size} processes x {grad_accum} micro-batches")
    return per_rank // grad_accum


def accumulate_gradients(model, rt, examples, batch, micro, grad_accum, pad_id):
    """Forward and backward of this process's share of a step's global batch (`batch`: example
    indices), grad_accum micro-batches of `micro` examples. Returns (the loss per token over
    the global batch, the global batch's loss tokens)."""
    per_rank = micro * grad_accum
    global_tokens = sum(int(sum(examples[i][1][1:])) for i in batch)
    mine = batch[rt.rank * per_rank:(rt.rank + 1) * per_rank]
    loss_sum = torch.zeros((), device=rt.device)
    for m in range(grad_accum):
        idx, tgt = make_batch(examples, mine[m * micro:(m + 1) * micro], pad_id, rt.device)
        if rt.ddp:  # average gradients across processes only on the last micro-batch
            model.require_backward_grad_sync = m == grad_accum - 1
        with rt.autocast:
            logits, _ = model(idx)
        # Sum of token losses over the *global* token count, so that one process and
        # several give the same gradient whatever the token counts per process
        # (DDP averages gradients, hence the factor world_size).
        tok_loss = token_loss_sum(logits, tgt)
        (tok_loss * rt.world_size / global_tokens).backward()
        loss_sum += tok_loss.detach()
    if rt.ddp:
        torch.distributed.all_reduce(loss_sum)
    return loss_sum.item() / global_tokens, global_tokens


def check_memory(model, rt, micro, tokens, batch_flags):
    """Before the model moves to the device: its gradients, AdamW's state and one micro-batch of
    `micro` rows of up to `tokens` tokens fit in what the process can have (one line if not). A
    model still on the CPU has its weights there already; on a GPU they are to come."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    need = common.training_memory(model.config, model.num_params(), micro, min(tokens, model.config.block_size),
                                  rt.dtype.itemsize, weights_allocated=on_cpu and rt.device_type == "cpu",
                                  grad_checkpointing=getattr(model, "grad_checkpointing", False))
    common.check_training_memory(need, rt.device, f"the model ({model.num_params() / 1e9:.2f}B parameters)",
                                 batch_flags)


def optimizer_and_best(model, lr, weight_decay, resume_state):
    """AdamW, with a resumed run's state, and the best held-out loss so far (none yet)."""
    optimizer = configure_optimizer(model, lr, weight_decay)
    resume_state = resume_state or {}
    if resume_state.get("optimizer") is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
    return optimizer, resume_state.get("best") or {"step": None, "val_loss": float("inf")}


def finish(run, model, tokenizer_json, provenance, max_steps, best, select_best, n_val):
    """The finished checkpoint under its real name, weights only (the last step's, or the chosen
    ones), and the unfinished one removed (RunDir.finish)."""
    if select_best:  # finished: the chosen weights get the real name
        print(f"{run.done}: step {best['step']} of {max_steps}, " +
              (f"the best score ({best['val_score']:.4f})" if best.get("val_score") is not None else
               f"the lowest held-out loss ({best['val_loss']:.4f} on {n_val} examples)"), flush=True)
        run.finish()
    else:
        run.finish(lambda path: save_checkpoint(path, model, tokenizer_json, {**provenance, "step": max_steps}))


def train_lm(model, rt, train_examples, val_examples, pad_id, out, tokenizer_json, provenance, *,
             max_steps, batch_size, lr, warmup_steps, weight_decay, grad_clip, eval_interval, seed,
             grad_accum=1, compile=False, start_step=0, resume_state=None, select_best=False, select_on=None,
             desc="train"):
    """Next-token training on (ids, loss_mask) examples. Every eval_interval steps the model
    and the optimizer state go to `out`.partial (the unfinished checkpoint, which --resume
    continues). At the end `out` gets the weights alone: the last step's, or with select_best
    those of the evaluation with the lowest held-out loss (a pretrained model fine-tuned for
    epochs can overfit a small collection). select_on(model), a score where higher is better
    (train_sft.py's greedy validation accuracy), is logged at every evaluation as val_score and
    replaces the held-out loss in that choice. The log, `out` without .pt + .log.jsonl, gets one
    row per step; a resumed run first drops the rows after its checkpoint, so its log equals an
    uninterrupted run's. Returns the logged records."""
    if select_best and select_on is None and not val_examples:
        raise common.UserError("choosing the checkpoint on held-out loss needs held-out examples (--val_frac)")
    micro = micro_batch_size(batch_size, rt, grad_accum)
    check_memory(model, rt, micro, max((len(ids) - 1 for ids, _ in train_examples), default=1),
                 f"--batch_size {batch_size}" + (f" (--grad_accum {grad_accum})" if grad_accum > 1 else ""))
    note = common.warmup_note(warmup_steps, max_steps)
    if note:
        common.print0(rt, note)
    model.to(rt.device)
    raw_model = model
    optimizer, best = optimizer_and_best(raw_model, lr, weight_decay, resume_state)
    if compile:
        model = torch.compile(model)
    if rt.ddp:
        model = DDP(model, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None)
    run = RunDir.for_checkpoint(out)
    records, log = [], None
    if rt.master:  # the rows up to the checkpoint we start from, then this run's
        log = run.open_log("step", start_step or None)
    model.train()
    t0, tokens_seen = time.time(), 0
    bar = common.progress(range(start_step, max_steps), desc=desc, disable=not rt.master,
                          initial=start_step, total=max_steps)
    for step in bar:
        step_lr = common.cosine_lr(step, max_steps, lr, warmup_steps)
        common.set_lr(optimizer, step_lr)
        batch = step_indices(seed, step, len(train_examples), batch_size)
        loss, global_tokens = accumulate_gradients(model, rt, train_examples, batch, micro, grad_accum, pad_id)
        common.check_loss(loss, f"at step {step}", run.resume_point)
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += global_tokens

        rec = {"step": step + 1, "loss": loss, "lr": step_lr, "grad_norm": float(grad_norm)}
        if (step + 1) % eval_interval == 0 or step + 1 == max_steps:
            rec["val_loss"] = eval_loss(raw_model, val_examples, pad_id, rt, micro) if val_examples else None
            rec["tokens_per_s"] = tokens_seen / (time.time() - t0)
            if select_on is not None:
                rec["val_score"] = select_on(raw_model)
            if select_best and (rec["val_score"] > best.get("val_score", float("-inf")) if select_on is not None
                                else rec["val_loss"] < best["val_loss"]):  # ties: the earlier step
                best = {"step": step + 1, "val_loss": rec["val_loss"], "val_score": rec.get("val_score")}
                if rt.master:
                    save_checkpoint(run.best, raw_model, tokenizer_json, {**provenance, "step": step + 1})
            if rt.master:
                save_checkpoint(run.resume_point, raw_model, tokenizer_json, {**provenance, "step": step + 1},
                                extra={"resume": {"optimizer": optimizer.state_dict(), "best": best}})
            common.print0(rt, f"\nstep {step + 1}: loss {loss:.4f} val {rec['val_loss'] or 0:.4f} "
                              f"lr {step_lr:.2e} {rec['tokens_per_s']:.0f} tok/s")
        if rt.master:
            append_row(log, rec)
        records.append(rec)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)  # shown at the next redraw
    bar.close()
    if rt.master:
        log.close()
        finish(run, raw_model, tokenizer_json, provenance, max_steps, best, select_best, len(val_examples))
    return records
