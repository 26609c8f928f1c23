"""
How fast is this machine for this project? Prints, from one run:
  - the machine's measured matmul rate (FLOP/s) at the model's width
  - training tokens/s of the model and its MFU against that measured rate
  - sampling tokens/s with the KV-cache fan-out engine vs the naive loop, and the ratio
  - if `transformers` is installed (not a requirement), the same config through HF generate

    python bench.py --ckpt runs/default/base.pt --data_dir runs/default/data

Without --ckpt a fresh model of the default pretraining preset is timed (random weights:
its samples run to max_new_tokens, so sampling figures are per token, not per rationale).
"""

import os
import time

import torch

import common
import rationales
from data import load_world
from data.jsonl import load_dataset
from data.tokenizer import EOT
from model import GPT, GPTConfig, configure_optimizer, load_checkpoint, sample

# Without --ckpt: a fresh model of pretrain.py's default shape
DEFAULT_MODEL = dict(vocab_size=512, block_size=128, n_layer=3, n_head=4, n_embd=128)


def matmul_flops(n, dtype, device, seconds=2.0):
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    iters, t0 = 0, time.time()
    while time.time() - t0 < seconds:
        a @ b
        iters += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n ** 3 * iters / (time.time() - t0)


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


def sampling_rates(model, tok, task, rows, k, temperature, seed, n_questions):
    """Tokens/s of rationale sampling (given the correct answer): the engine vs the naive loop."""
    rows = rows[:n_questions]
    requests = [(r["question"], r["answer"]) for r in rows]
    _, speed = rationales.sample_rationales(model, tok, task, requests, k, temperature, seed, quiet=True)
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


def train_rate(model, batch, seq, steps, rt):
    """Tokens/s of forward + backward + AdamW on random tokens; FLOPs per token ~ 6N + attention."""
    opt = configure_optimizer(model, 1e-4)
    x = torch.randint(0, model.config.vocab_size, (batch, seq + 1), device=rt.device)
    model.train()
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps
            t0 = time.time()
        with rt.autocast:
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if rt.device_type == "cuda":
        torch.cuda.synchronize()
    tok_s = batch * seq * steps / (time.time() - t0)
    c = model.config
    flops_per_token = 6 * model.num_params() + 12 * c.n_layer * c.n_embd * seq
    return tok_s, tok_s * flops_per_token


def main(argv=None):
    p = common.ArgumentParser(description=__doc__)
    p.add_argument("--ckpt", default=None, help="a language-model checkpoint (default: a fresh default model)")
    p.add_argument("--data_dir", default=None, help="data folder for real prompts (with --ckpt)")
    p.add_argument("--batch_size", type=common.COUNT, default=32)
    p.add_argument("--train_steps", type=common.COUNT, default=20)
    p.add_argument("--questions", type=common.COUNT, default=32, help="prompts for the sampling benchmark")
    p.add_argument("--k", type=common.COUNT, default=4, help="samples per prompt (fan-out)")
    common.add_runtime_args(p)
    args = p.parse_args(argv)
    rt = common.setup_runtime(args.device, args.dtype)
    common.seed_everything(args.seed)
    torch.set_grad_enabled(True)

    if args.ckpt:
        model, _ = load_checkpoint(args.ckpt, kind="lm", device=rt.device)
    else:
        model = GPT(GPTConfig(**DEFAULT_MODEL)).to(rt.device)
    c = model.config
    dtype = torch.bfloat16 if isinstance(rt.autocast, torch.autocast) else torch.float32
    print(f"device {rt.device}, threads {torch.get_num_threads()}, model {c.n_layer}x{c.n_embd} "
          f"({model.num_params() / 1e6:.2f}M parameters), compute dtype {dtype}")

    peak = max(matmul_flops(n, dtype, rt.device) for n in (c.n_embd * 4, 1024))
    print(f"matmul rate ({dtype}): {peak / 1e9:.1f} GFLOP/s")

    tok_s, flops = train_rate(model, args.batch_size, min(64, c.block_size), args.train_steps, rt)
    print(f"training: {tok_s:,.0f} tokens/s, {flops / 1e9:.2f} GFLOP/s, MFU {100 * flops / peak:.1f}% "
          f"of the measured matmul rate")

    # Sampling: real prompts if we have data, else a fixed synthetic prompt.
    if args.ckpt and args.data_dir:
        tok, task = load_world(args.data_dir)
        rows = load_dataset(os.path.join(args.data_dir, "train.jsonl"))
        r = sampling_rates(model, tok, task, rows, args.k, 1.0, args.seed, args.questions)
        engine, naive = r["engine_tokens_per_s"], r["naive_tokens_per_s"]
        eot = tok.token_to_id(EOT)
        prompts = [tok.encode(task.prompt(x["question"])).ids for x in rows[:args.questions]]
    else:
        eot = None
        prompts = [[1 + (i * 7 + j) % (c.vocab_size - 1) for j in range(24)] for i in range(args.questions)]
        t0 = time.time()
        out = sample(model, prompts, num_samples=args.k, max_new_tokens=40, temperature=1.0, eot_id=eot,
                     seeds=list(range(len(prompts) * args.k)))
        engine = int(out.lengths.sum()) / (time.time() - t0)
        g = torch.Generator().manual_seed(args.seed)
        t0, n = time.time(), 0
        for pr in prompts[:max(1, len(prompts) // 4)]:
            for _ in range(args.k):
                n += len(naive_sample(model, pr, 40, 1.0, -1, g))
        naive = n / (time.time() - t0)
    print(f"sampling: KV-cache fan-out engine {engine:,.0f} tokens/s, naive loop {naive:,.0f} tokens/s, "
          f"ratio {engine / naive:.1f}x")

    try:
        import transformers
    except ImportError:
        print("HF generate: transformers is not installed (optional; pip install transformers to compare)")
        return
    hf_cfg = transformers.GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                     n_layer=c.n_layer, n_head=c.n_head)
    hf = transformers.GPT2LMHeadModel(hf_cfg).to(rt.device).eval()
    L = max(len(x) for x in prompts)
    ids = torch.tensor([[0] * (L - len(x)) + x for x in prompts], device=rt.device)
    att = torch.tensor([[0] * (L - len(x)) + [1] * len(x) for x in prompts], device=rt.device)
    new = min(40, c.block_size - L)
    t0 = time.time()
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=att, do_sample=True, max_new_tokens=new, min_new_tokens=new,
                          num_return_sequences=args.k, pad_token_id=0)
    hf_rate = (out.size(1) - L) * out.size(0) / (time.time() - t0)
    print(f"HF generate (same config, random weights, fixed length {new}): {hf_rate:,.0f} tokens/s "
          f"(transformers {transformers.__version__})")


if __name__ == "__main__":
    common.run(main)
