"""
How fast is this machine for this project? Prints, from one run:
  - the machine's measured matmul rate (FLOP/s) at the model's width
  - training tokens/s of the model and its MFU against that measured rate
  - sampling tokens/s with the KV-cache fan-out engine vs the naive loop, and the ratio
  - if `transformers` is installed (not a requirement), the same config through HF generate

    python bench.py --ckpt runs/default/base.pt --data_dir runs/default/data

Against transformers on the same config and the same weights (test-only dependency), at the
shapes of pretrained models: training tokens/s (forward + backward + AdamW) and sampling
tokens/s (16 prompts, or --hf_prompts, 64 new tokens, temperature 1), ours and theirs in the
same run:

    python bench.py --hf_compare all [--hf_layers 4] [--hf_prompts 16]

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
from data.tokenizer import eot_id
from model import GPT, GPTConfig, configure_optimizer, load_checkpoint
from sampler import sample

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
            n += len(naive_sample(model, p, 64, temperature, eot_id(tok), g))
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


# Shapes of two pretrained models (random weights: speed does not depend on them).
HF_SHAPES = {
    "gpt2": dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True),
}


def hf_compare(name, layers, device, train_steps, batch, seq, seed, n_prompts):
    """Ours vs transformers on one shape, the same weights in both."""
    import transformers

    import hf
    shape = dict(HF_SHAPES[name])
    layer_key = "n_layer" if shape["model_type"] == "gpt2" else "num_hidden_layers"
    if layers:
        shape[layer_key] = layers
    torch.manual_seed(seed)
    hf_config = transformers.AutoConfig.for_model(**shape)
    theirs = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa").to(device)
    ours = GPT(hf.config_from_hf(hf_config.to_dict(), name, block_size=1024))
    sd = theirs.state_dict()
    hf.state_dict_from_hf(ours, shape["model_type"], lambda n: (sd[n], name), set(sd), name)
    ours = ours.to(device)
    print(f"{name}: {shape[layer_key]} layers, {ours.num_params() / 1e6:.1f}M parameters, device {device}, "
          f"threads {torch.get_num_threads()}, transformers {transformers.__version__}")

    def train(model, step):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, shape["vocab_size"], (batch, seq + 1), generator=g).to(device)
        model.train()
        for i in range(train_steps + 1):
            if i == 1:  # one warm-up step
                sync(device)
                t0 = time.time()
            step(model, x).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(device)
        return batch * seq * train_steps / (time.time() - t0)

    ours_train = train(ours, lambda m, x: m(x[:, :-1], x[:, 1:])[1])
    theirs_train = train(theirs, lambda m, x: m(input_ids=x[:, :-1], labels=x[:, :-1]).loss)

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, shape["vocab_size"], (int(n),), generator=g).tolist()
               for n in torch.randint(16, 33, (n_prompts,), generator=g)]
    new = 64

    def time_it(fn):
        fn(4)  # warm-up
        sync(device)
        t0 = time.time()
        n = fn(new)
        sync(device)
        return n / (time.time() - t0)

    def ours_sample(n):
        out = sample(ours, prompts, max_new_tokens=n, temperature=1.0, seeds=list(range(len(prompts))))
        return int(out.lengths.sum())

    L = max(map(len, prompts))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts], device=device)
    att = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts], device=device)

    def theirs_sample(n):
        theirs.eval()
        with torch.no_grad():
            out = theirs.generate(ids, attention_mask=att, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                  max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
        return (out.size(1) - L) * out.size(0)

    ours_rate, theirs_rate = time_it(ours_sample), time_it(theirs_sample)
    print(f"  training (batch {batch} x {seq} tokens, AdamW): ours {ours_train:,.0f} tokens/s, transformers "
          f"{theirs_train:,.0f} tokens/s, {ours_train / theirs_train:.2f}x")
    print(f"  sampling ({n_prompts} prompts of 16-32 tokens, {new} new, temperature 1): ours {ours_rate:,.0f} tokens/s, "
          f"transformers generate {theirs_rate:,.0f} tokens/s, {ours_rate / theirs_rate:.2f}x")


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None):
    p = common.ArgumentParser(description=__doc__)
    p.add_argument("--ckpt", default=None, help="a language-model checkpoint (default: a fresh default model)")
    p.add_argument("--data_dir", default=None, help="data folder for real prompts (with --ckpt)")
    p.add_argument("--batch_size", type=common.COUNT, default=32)
    p.add_argument("--train_steps", type=common.COUNT, default=20)
    p.add_argument("--questions", type=common.COUNT, default=32, help="prompts for the sampling benchmark")
    p.add_argument("--k", type=common.COUNT, default=4, help="samples per prompt (fan-out)")
    p.add_argument("--hf_compare", default=None, choices=["all", *HF_SHAPES],
                   help="only compare with transformers at a pretrained model's shape (needs transformers)")
    p.add_argument("--hf_layers", type=common.COUNT, default=None, help="fewer layers than the real model (CPU)")
    p.add_argument("--hf_batch", type=common.COUNT, default=4, help="training batch of the comparison")
    p.add_argument("--hf_seq", type=common.COUNT, default=128, help="training sequence length of the comparison")
    p.add_argument("--hf_train_steps", type=common.COUNT, default=3, help="timed training steps of the comparison")
    p.add_argument("--hf_prompts", type=common.COUNT, default=16, help="prompts sampled at once in the comparison")
    common.add_runtime_args(p)
    args = p.parse_args(argv)
    rt = common.setup_runtime(args.device, args.dtype)
    common.seed_everything(args.seed)
    torch.set_grad_enabled(True)
    if args.hf_compare:
        for name in (HF_SHAPES if args.hf_compare == "all" else [args.hf_compare]):
            hf_compare(name, args.hf_layers, rt.device, args.hf_train_steps, args.hf_batch,
                       args.hf_seq, args.seed, args.hf_prompts)
        return

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
        eot = eot_id(tok)
        prompts = [tok.encode(task.prompt(x["question"])).ids for x in rows[:args.questions]]
    else:
        eot = None
        prompts = [[1 + (i * 7 + j) % (c.vocab_size - 1) for j in range(24)] for i in range(args.questions)]
        t0 = time.time()
        out = sample(model, prompts, num_samples=args.k, max_new_tokens=40, temperature=1.0, stop_ids=eot,
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
