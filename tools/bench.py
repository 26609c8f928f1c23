"""
How fast is this machine for this project? Prints, from one run:
  - the machine's measured matmul rate (FLOP/s) at the model's width
  - training tokens/s of the model and its MFU against that measured rate
  - sampling tokens/s with the KV-cache fan-out engine vs the naive loop, and the ratio
  - if `transformers` is installed (not a requirement), the same config through HF generate

    python -m tools.bench --ckpt runs/default/base.pt --data_dir runs/default/data

Against transformers on the same config and the same weights (test-only dependency), at the
shapes of pretrained models: training tokens/s (forward + backward + AdamW) and sampling
tokens/s (16 prompts, or --hf_prompts, 64 new tokens, temperature 1), ours and theirs in the
same run:

    python -m tools.bench --hf_compare all [--hf_layers 4] [--hf_prompts 16]

The sampler's draw at Qwen2.5's vocabulary, the exponential race against the inverse CDF it
replaced, per-step time and peak memory of each in the same run:

    OMP_NUM_THREADS=1 python -m tools.bench --sampler_compare --device cpu [--sampler_rows 64,256]

Without --ckpt a fresh model of the default pretraining preset is timed (random weights:
its samples run to max_new_tokens, so sampling figures are per token, not per rationale).
"""

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from sml import common
from sml import hf
from sml import rationales
from sml import sampler
import train_ppo
from sml import ppo_run
from data import load_world
from data.prepare import main as prepare_world
from data.jsonl import load_dataset
from data.tokenizer import eot_id
from sml.checkpoint import load_checkpoint, save_checkpoint
from model import GPT, GPTConfig, configure_optimizer, lm_to_scalar, pad_batch
from sml.sampler import sample

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


# Shapes of pretrained models, as their config.json has them (random weights: neither speed nor
# memory depends on them). --hf_compare all: the first two.
HF_SHAPES = {
    "gpt2": dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True),
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
    "smollm2-360m": dict(model_type="llama", vocab_size=49152, hidden_size=960, intermediate_size=2560,
                         num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True),
}
HF_COMPARE = ("gpt2", "qwen2.5-0.5b")


def left_padded(prompts, device):
    """(input_ids, attention_mask) of prompts left-padded with 0, as transformers' generate takes them."""
    ids, real = pad_batch(prompts, 0, left=True)
    return ids.to(device), real.long().to(device)


def hf_compare(name, layers, device, train_steps, batch, seq, seed, n_prompts):
    """Ours vs transformers on one shape, the same weights in both."""
    import transformers  # a test-only peer, not a requirement

    shape = dict(HF_SHAPES[name])
    layer_key = "n_layer" if shape["model_type"] == "gpt2" else "num_hidden_layers"
    if layers:
        shape[layer_key] = layers
    torch.manual_seed(seed)
    hf_config = transformers.AutoConfig.for_model(**shape)
    theirs = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa").to(device)
    ours = GPT(hf.config_from_hf(hf_config.to_dict(), name, block_size=1024))
    sd = theirs.state_dict()
    plan = hf.hf_tensor_plan(ours, shape["model_type"], {n: t.shape for n, t in sd.items()},
                             dict.fromkeys(sd, name), name, name)
    hf.state_dict_from_hf(ours, plan, sd.__getitem__)
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

    ids, att = left_padded(prompts, device)
    L = ids.size(1)

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
    return {"train_tokens_per_s": {"ours": ours_train, "transformers": theirs_train},
            "sample_tokens_per_s": {"ours": ours_rate, "transformers": theirs_rate},
            "sample_ratio": ours_rate / theirs_rate, "prompts": n_prompts, "new_tokens": new}


# -----------------------------------------------------------------------------
# PPO at a real shape: the memory and speed of one update's three phases


def reset_peak_memory(device):
    """Start measuring the peak from now: the GPU allocator's peak, or on Linux the process's
    peak resident set (writing 5 to /proc/self/clear_refs resets it)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_memory(device):
    """Bytes at the peak since reset_peak_memory: allocated tensors on a GPU; the whole
    process's resident memory on a CPU (weights, Python and all)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    return int(kb) * 1024


def shape_config(name, layers=None, block_size=None, vocab_size=None):
    """The GPTConfig of a named shape, with fewer layers or a smaller vocabulary where asked (a
    CPU run of the same code)."""
    shape = dict(HF_SHAPES[name])
    if layers:
        shape["n_layer" if shape["model_type"] == "gpt2" else "num_hidden_layers"] = layers
    if vocab_size:
        shape["vocab_size"] = vocab_size
    return hf.config_from_hf(shape, name, block_size=block_size)


def ppo_models(config, rt, seed):
    """The policy and the critic (float32, trained) and the frozen reference and reward model (in
    the compute dtype), as train_ppo.py holds them, with random weights."""
    torch.manual_seed(seed)
    with torch.device(rt.device):
        policy = GPT(config)
    ref = copy.deepcopy(policy).to(rt.dtype).requires_grad_(False).eval()
    rm = lm_to_scalar(policy).to(rt.dtype).requires_grad_(False).eval()
    critic = lm_to_scalar(policy)
    return policy, ref, rm, critic


def ppo_phases(name, layers, rollouts, k, micro_batch_size, prompt_tokens, rationale_tokens, rt, seed,
               updates=1, epochs=1, lr=1e-6, grad_checkpointing=False, vocab_size=None):
    """`updates` PPO updates at a named shape on random prompts, with random rewards: per phase
    (rollout, scoring, update) its seconds, tokens/s and peak memory. The rollouts run to the
    budget (random weights seldom write the stop id), the worst case for memory."""
    config = shape_config(name, layers, prompt_tokens + rationale_tokens, vocab_size)
    policy, ref, rm, critic = ppo_models(config, rt, seed)
    for model in (policy, critic):
        model.grad_checkpointing = grad_checkpointing
    opt_policy, opt_critic = configure_optimizer(policy, lr, 0.0), configure_optimizer(critic, 10 * lr, 0.0)
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, config.vocab_size - 1, (prompt_tokens,), generator=g).tolist()
               for _ in range(rollouts // k)]
    stop = config.vocab_size - 1
    out = []
    for update in range(updates):
        phases = {}
        reset_peak_memory(rt.device)
        t0 = time.time()
        ro = train_ppo.rollout(policy, prompts, k, 1.0, rationale_tokens, stop, list(range(update * rollouts,
                               (update + 1) * rollouts)), None, rt.autocast)
        sync(rt.device)
        phases["rollout"] = (time.time() - t0, int(ro.lengths.sum()), peak_memory(rt.device))
        reset_peak_memory(rt.device)
        t0 = time.time()
        train_ppo.score_sequences(rm, ro, micro_batch_size, rt.autocast)
        batch = train_ppo.prepare_batch(policy, ref, critic, ro, torch.randn(len(ro.responses), generator=g,
                                        device="cpu").to(rt.device), 0.02,
                                        ppo_run.AdvantageSettings(1.0, 1.0, 0.95, micro_batch_size=micro_batch_size),
                                        rt.autocast)
        sync(rt.device)
        phases["scoring"] = (time.time() - t0, 4 * int(ro.seq_lens.sum()), peak_memory(rt.device))  # 4 models
        reset_peak_memory(rt.device)
        t0 = time.time()
        settings = ppo_run.UpdateSettings(epochs=epochs, minibatch_size=max(1, rollouts // 2), temperature=1.0,
                                          clip=0.2, value_clip=0.2, grad_clip=1.0, micro_batch_size=micro_batch_size)
        stats = train_ppo.ppo_update(policy, critic, opt_policy, opt_critic, batch, g, settings, amp=rt.autocast)
        sync(rt.device)
        phases["update"] = (time.time() - t0, 2 * epochs * int(ro.seq_lens.sum()), peak_memory(rt.device))
        out.append({"phases": {k: {"seconds": t, "tokens_per_s": n / t, "peak_gib": m / 2**30}
                               for k, (t, n, m) in phases.items()},
                    "first_approx_kl": stats["first_approx_kl"], "epoch_clip_frac": stats["epoch_clip_frac"]})
    return {"shape": name, "layers": config.n_layer, "parameters": policy.num_params(), "rollouts": rollouts,
            "micro_batch_size": micro_batch_size, "prompt_tokens": prompt_tokens,
            "rationale_tokens": rationale_tokens, "dtype": str(rt.dtype).replace("torch.", ""), "updates": out}


def ppo_table(args, rt):
    """--ppo: one PPO update per (rollouts, micro-batch) of the grid, each in a fresh process on a
    CPU (a process's peak memory cannot be taken back) and one after the other on a GPU."""
    rows = []
    for rollouts in args.ppo_rollouts:
        for micro in args.ppo_micro_batch:
            spec = dict(name=args.ppo, layers=args.ppo_layers, rollouts=rollouts, k=min(4, rollouts),
                        micro_batch_size=micro, prompt_tokens=args.ppo_prompt_tokens,
                        rationale_tokens=args.ppo_rationale_tokens, seed=args.seed,
                        grad_checkpointing=args.grad_checkpointing)
            rows.append(run_isolated(spec, args) if rt.device_type == "cpu" else ppo_phases(rt=rt, **spec))
    print(f"PPO at {args.ppo} shape, {rows[0]['layers']} layers ({rows[0]['parameters'] / 1e6:.0f}M parameters), "
          f"{args.ppo_prompt_tokens}-token prompts, {args.ppo_rationale_tokens}-token rationales, {rows[0]['dtype']}, "
          f"{'gradient checkpointing, ' if args.grad_checkpointing else ''}device {rt.device}; peak memory "
          f"{'allocated on the GPU' if rt.device_type == 'cuda' else 'of the whole process (resident)'}")
    print("| rollouts | micro-batch | rollout: GiB, tok/s | scoring: GiB, tok/s | update: GiB, tok/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        ph = r["updates"][0]["phases"]
        print(f"| {r['rollouts']} | {r['micro_batch_size']} | " + " | ".join(
            f"{ph[k]['peak_gib']:.2f}, {ph[k]['tokens_per_s']:,.0f}" for k in ("rollout", "scoring", "update")) + " |")
    return rows


def run_isolated(spec, args):
    """ppo_phases in a child process (python -m tools.bench --ppo_child '<json>'), its result as JSON."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))}
    cmd = [sys.executable, "-m", "tools.bench", "--ppo_child", json.dumps(spec), "--device", "cpu",
           "--dtype", args.dtype]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    if r.returncode != 0:
        raise common.UserError(f"the PPO measurement {spec} failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# -----------------------------------------------------------------------------
# The sampler's draw: the exponential race against the inverse CDF it replaced


def inverse_cdf_tokens(logits, u):
    """The draw sampler.py made before the exponential race, at temperature 1 without top-k /
    top-p (kept here to be timed against it): the first token whose running sum of
    probabilities (float64) reaches u * total, u (R,) uniforms in (0, 1]."""
    logp = logits.log_softmax(-1)
    cdf = logits.softmax(-1).double().cumsum(-1)
    tok = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).squeeze(1).clamp(max=cdf.size(-1) - 1)
    return tok, logp.gather(1, tok.unsqueeze(1)).squeeze(1)


def resident_bytes():
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmRSS:"))) * 1024


def sampler_compare(args, rt):
    """--sampler_compare: one decoding step's draw (temperature 1) for rows x vocabulary float32
    logits, the inverse CDF against the exponential race: seconds per step and the memory the
    draws add at their peak (a sample() call's worth of steps each, the race's buffers made once
    per call as sample() makes them), the two alternated --sampler_repeats times."""
    V, steps = args.sampler_vocab, args.sampler_steps
    print(f"draw of one decoding step, vocabulary {V:,}, temperature 1, {steps} steps a call, device {rt.device}, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}; the median of {args.sampler_repeats}")
    print("| rows | inverse CDF: ms/step, peak MiB | exponential race: ms/step, peak MiB | race / CDF time | "
          "race / CDF memory |")
    print("|---|---|---|---|---|")
    rows_out = []
    for R in args.sampler_rows:
        g = torch.Generator().manual_seed(args.seed)
        logits = (3 * torch.randn(R, V, generator=g)).to(rt.device)
        seeds = list(range(R))

        def cdf_call():  # the uniforms drawn as the sampler drew them, a generator per row
            u = torch.stack([1 - torch.rand(steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                             for s in seeds]).to(rt.device)
            return [inverse_cdf_tokens(logits, u[:, t]) for t in range(steps)]

        def race_call():
            keys = sampler.row_keys(seeds, steps, rt.device)
            buffers = sampler.race_buffers(R, V, rt.device)
            return [sampler.next_tokens(logits, 1.0, None, None, keys[:, t], buffers) for t in range(steps)]

        figures = {"cdf": [], "race": []}
        for _ in range(args.sampler_repeats):
            for name, call in (("cdf", cdf_call), ("race", race_call)):
                sync(rt.device)
                base = torch.cuda.memory_allocated() if rt.device_type == "cuda" else resident_bytes()
                reset_peak_memory(rt.device)
                t0 = time.time()
                call()
                sync(rt.device)
                figures[name].append(((time.time() - t0) / steps, peak_memory(rt.device) - base))
        med = {k: (statistics.median(t for t, _ in v), statistics.median(m for _, m in v)) for k, v in figures.items()}
        (tc, mc), (tr, mr) = med["cdf"], med["race"]
        print(f"| {R} | {1e3 * tc:,.1f}, {mc / 2**20:,.0f} | {1e3 * tr:,.1f}, {mr / 2**20:,.0f} | {tr / tc:.2f} | "
              f"{mr / max(mc, 1):.2f} |")
        rows_out.append({"rows": R, "vocab": V, "cdf_s_per_step": tc, "cdf_peak_bytes": mc,
                         "race_s_per_step": tr, "race_peak_bytes": mr})
    return rows_out


def ppo_entry_path(rt, seed):
    """train_ppo.main as a user starts it, with --rm, two updates and bf16, on the tiny world
    (data/prepare.py) with a random model of DEFAULT_MODEL's shape as the SFT model and its
    scalar copy as the reward model: the code between the flags and the update (the reward's
    scale, validation, checkpoints) that ppo_phases skips. Returns its log and its seconds."""
    with tempfile.TemporaryDirectory() as d:
        data, sft, rm, out = (os.path.join(d, x) for x in ("data", "sft.pt", "rm.pt", "ppo"))
        prepare_world(["--out_dir", data, "--task", "arithmetic", "--preset", "tiny", "--seed", str(seed)])
        tok, _ = load_world(data)
        torch.manual_seed(seed)
        model = GPT(GPTConfig(**{**DEFAULT_MODEL, "vocab_size": tok.get_vocab_size()}))
        save_checkpoint(sft, model, tok.to_str(), {"script": "bench.py --gpu_check"})
        save_checkpoint(rm, lm_to_scalar(model), tok.to_str(), {"script": "bench.py --gpu_check"})
        t0 = time.time()
        train_ppo.main(["--sft", sft, "--rm", rm, "--data_dir", data, "--out_dir", out, "--preset", "tiny",
                        "--updates", "2", "--dtype", "bfloat16", "--allow_weak_rm", "--device", str(rt.device),
                        "--seed", str(seed)])
        seconds = time.time() - t0
        with open(os.path.join(out, "ppo_log.jsonl")) as f:
            log = [json.loads(line) for line in f]
    return {"seconds": seconds, "log": log}


def gpu_check(args, rt):
    """--gpu_check: the figures a GPU run owes the README, in one command (under 8 minutes on
    one H200; --cut runs the same code at cut shapes on a CPU, as the tests do):
      0. train_ppo.main end to end, as users run it (ppo_entry_path): first, as a crash there
         would stop every PPO run
      1. two PPO updates of a pretrained shape (Qwen2.5-0.5B): approx KL 0 on the first
         minibatch, some clipping by the second epoch, and each phase's peak memory
      2. PPO's peak memory at Qwen2.5-0.5B and 1.5B shapes with 256-token rationales (goal:
         1.5B under 60 GB)
      3. sampling tokens/s against transformers' generate at Qwen2.5-0.5B (goal: 2x or more)
      4. training MFU at GPT-2 124M in bf16 (goal: 40% or more)
      5. the sampler's draw, the exponential race against the inverse CDF, at Qwen2.5's
         vocabulary and 256 and 1,024 rows (sampler_compare)"""
    cut = args.cut
    # cut: one layer, a 4,096-token vocabulary, short sequences, few rollouts
    layers, vocab, prompt, rationale, rollouts = (1, 4096, 16, 16, 8) if cut else (None, None, 128, 256, 64)
    report = {"device": str(rt.device), "dtype": str(rt.dtype), "cut": cut}
    t0 = time.time()
    report["ppo_entry_path"] = entry = ppo_entry_path(rt, args.seed)
    print(f"[0] train_ppo.main (--rm, 2 updates, bf16, a random model on the tiny world): {len(entry['log'])} "
          f"log rows in {entry['seconds']:.0f} s")
    check = ppo_phases("qwen2.5-0.5b", layers, rollouts, 4, 8, prompt, rationale, rt, args.seed,
                       updates=2, epochs=2, lr=1e-5, grad_checkpointing=True, vocab_size=vocab)
    report["ppo_two_updates"] = check
    for u, upd in enumerate(check["updates"], 1):
        print(f"[1] update {u}: first-minibatch approx KL {upd['first_approx_kl']:.2e}, clip fraction by epoch "
              f"{', '.join(f'{c:.4f}' for c in upd['epoch_clip_frac'])}; peak GiB " +
              ", ".join(f"{k} {v['peak_gib']:.2f}" for k, v in upd["phases"].items()))
    for name in ("qwen2.5-0.5b", "qwen2.5-1.5b"):
        r = ppo_phases(name, layers, rollouts, 4, 8, prompt, rationale, rt, args.seed, grad_checkpointing=True,
                       vocab_size=vocab)
        report[f"ppo_memory_{name}"] = r
        phases = r["updates"][0]["phases"]
        each = ", ".join(f"{k} {v['peak_gib']:.1f}" for k, v in phases.items())
        print(f"[2] {name} ({r['parameters'] / 1e9:.2f}B parameters): PPO peak "
              f"{max(v['peak_gib'] for v in phases.values()):.1f} GiB ({each})")
    try:
        report["sampling_vs_generate"] = hf_compare("gpt2" if cut else "qwen2.5-0.5b", layers, rt.device, 1, 2, 32,
                                                    args.seed, 4 if cut else 64)
    except ImportError:
        print("[3] transformers is not installed: no comparison with generate")
    model = GPT(shape_config("gpt2", layers, 1024, vocab)).to(rt.device)
    if args.compile:
        model = torch.compile(model)
    peak = max(matmul_flops(n, rt.dtype, rt.device) for n in ((1024,) if cut else (4096, 8192)))
    tok_s, flops = train_rate(model, 4 if cut else 16, 64 if cut else 1024, 2 if cut else 20, rt)
    report["train_mfu"] = {"tokens_per_s": tok_s, "flops": flops, "matmul_peak": peak, "mfu": flops / peak}
    print(f"[4] GPT-2 124M training: {tok_s:,.0f} tokens/s, MFU {100 * flops / peak:.1f}% of the measured "
          f"{str(rt.dtype).replace('torch.', '')} matmul rate ({peak / 1e12:.2f} TFLOP/s)")
    print("[5] the sampler's draw:")
    report["sampler_draw"] = sampler_compare(argparse.Namespace(**{
        **vars(args), "sampler_rows": [4] if cut else [256, 1024], "sampler_vocab": vocab or 151936}), rt)
    report["seconds"] = time.time() - t0
    print(f"gpu check: {report['seconds']:.0f} s")
    if args.out:
        common.write_json(args.out, report)
    return report


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def counts(text):
    """An argparse type: a comma-separated list of counts, "16,64" -> [16, 64]."""
    return [common.COUNT(x) for x in text.split(",")]


def get_args(argv=None):
    p = common.ArgumentParser(description=__doc__)
    p.add_argument("--ckpt", default=None, help="a language-model checkpoint (default: a fresh default model)")
    p.add_argument("--data_dir", default=None, help="data folder for real prompts (with --ckpt)")
    p.add_argument("--batch_size", type=common.number(int, low=1, high=4096), default=32)
    p.add_argument("--train_steps", type=common.COUNT, default=20)
    p.add_argument("--questions", type=common.number(int, low=1, high=10_000), default=32,
                   help="prompts for the sampling benchmark (with --data_dir: the first of the train split)")
    p.add_argument("--k", type=common.SAMPLES, default=4, help="samples per prompt (fan-out)")
    p.add_argument("--hf_compare", default=None, choices=["all", *HF_SHAPES],
                   help="only compare with transformers at a pretrained model's shape (needs transformers)")
    p.add_argument("--hf_layers", type=common.number(int, low=1, high=100), default=None,
                   help="fewer layers than the real model (CPU)")
    p.add_argument("--hf_batch", type=common.number(int, low=1, high=1024), default=4,
                   help="training batch of the comparison")
    p.add_argument("--hf_seq", type=common.number(int, low=1, high=32768), default=128,
                   help="training sequence length of the comparison")
    p.add_argument("--hf_train_steps", type=common.COUNT, default=3, help="timed training steps of the comparison")
    p.add_argument("--hf_prompts", type=common.COUNT, default=16, help="prompts sampled at once in the comparison")
    g = p.add_argument_group("PPO at a pretrained model's shape (random weights)")
    g.add_argument("--ppo", default=None, choices=sorted(HF_SHAPES),
                   help="only measure one PPO update's memory and speed per (rollouts, micro-batch)")
    g.add_argument("--ppo_layers", type=common.COUNT, default=None, help="fewer layers than the real model")
    g.add_argument("--ppo_rollouts", type=counts, default="16,64", help="rollouts per update, comma-separated")
    g.add_argument("--ppo_micro_batch", type=counts, default="2,8", help="micro-batch sizes, comma-separated")
    g.add_argument("--ppo_prompt_tokens", type=common.COUNT, default=128)
    g.add_argument("--ppo_rationale_tokens", type=common.COUNT, default=256)
    g.add_argument("--grad_checkpointing", action="store_true")
    g.add_argument("--gpu_check", action="store_true", help="only the GPU check (see gpu_check in bench.py)")
    g.add_argument("--cut", action="store_true", help="the GPU check at cut shapes (a CPU)")
    g.add_argument("--out", default=None, help="write the GPU check's figures here (JSON)")
    g.add_argument("--ppo_child", default=None, help=argparse.SUPPRESS)
    g = p.add_argument_group("the sampler's draw at a real vocabulary")
    g.add_argument("--sampler_compare", action="store_true",
                   help="only time the exponential race against the inverse CDF (sampler_compare)")
    g.add_argument("--sampler_rows", type=counts, default="64,256", help="rows decoded at once, comma-separated")
    g.add_argument("--sampler_vocab", type=common.COUNT, default=151936, help="vocabulary (Qwen2.5's by default)")
    g.add_argument("--sampler_steps", type=common.COUNT, default=8, help="decoding steps a call")
    g.add_argument("--sampler_repeats", type=common.COUNT, default=3, help="each measured this many times")
    common.add_runtime_args(p)
    return p.parse_args(argv)


def sampling_rates_of(model, args):
    """(engine tokens/s, naive loop tokens/s, the prompts): real prompts with --ckpt and
    --data_dir, else fixed synthetic ones."""
    c = model.config
    if args.ckpt and args.data_dir:
        tok, task = load_world(args.data_dir)
        rows = load_dataset(os.path.join(args.data_dir, "train.jsonl"))
        r = sampling_rates(model, tok, task, rows, args.k, 1.0, args.seed, args.questions)
        engine, naive = r["engine_tokens_per_s"], r["naive_tokens_per_s"]
        prompts = [tok.encode(task.prompt(x["question"])).ids for x in rows[:args.questions]]
    else:  # synthetic prompts: no tokenizer, so no stop id (every sample runs to its budget)
        prompts = [[1 + (i * 7 + j) % (c.vocab_size - 1) for j in range(24)] for i in range(args.questions)]
        t0 = time.time()
        out = sample(model, prompts, num_samples=args.k, max_new_tokens=40, temperature=1.0,
                     seeds=list(range(len(prompts) * args.k)))
        engine = int(out.lengths.sum()) / (time.time() - t0)
        g = torch.Generator().manual_seed(args.seed)
        t0, n = time.time(), 0
        for pr in prompts[:max(1, len(prompts) // 4)]:
            for _ in range(args.k):
                n += len(naive_sample(model, pr, 40, 1.0, -1, g))
        naive = n / (time.time() - t0)
    return engine, naive, prompts


def generate_rate(model, prompts, args, rt):
    """transformers' generate on the same config (random weights, a fixed length), if it is installed."""
    c = model.config
    try:
        import transformers
    except ImportError:
        print("HF generate: transformers is not installed (optional; pip install transformers to compare)")
        return
    hf_cfg = transformers.GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                     n_layer=c.n_layer, n_head=c.n_head)
    hf = transformers.GPT2LMHeadModel(hf_cfg).to(rt.device).eval()
    ids, att = left_padded(prompts, rt.device)
    L = ids.size(1)
    new = min(40, c.block_size - L)
    t0 = time.time()
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=att, do_sample=True, max_new_tokens=new, min_new_tokens=new,
                          num_return_sequences=args.k, pad_token_id=0)
    hf_rate = (out.size(1) - L) * out.size(0) / (time.time() - t0)
    print(f"HF generate (same config, random weights, fixed length {new}): {hf_rate:,.0f} tokens/s "
          f"(transformers {transformers.__version__})")


def benchmark(args, rt):
    """Without a mode flag: the matmul rate, training tokens/s and MFU, sampling tokens/s against
    the naive loop, and against transformers' generate."""
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

    engine, naive, prompts = sampling_rates_of(model, args)
    print(f"sampling: KV-cache fan-out engine {engine:,.0f} tokens/s, naive loop {naive:,.0f} tokens/s, "
          f"ratio {engine / naive:.1f}x")

    generate_rate(model, prompts, args, rt)


def main(argv=None):
    args = get_args(argv)
    rt = common.setup_runtime(args.device, args.dtype)
    common.seed_everything(args.seed)
    torch.set_grad_enabled(True)
    if args.ppo_child:  # one measurement of ppo_table's, in its own process
        print(json.dumps(ppo_phases(rt=rt, **json.loads(args.ppo_child))))
        return
    if args.ppo:
        ppo_table(args, rt)
        return
    if args.gpu_check:
        gpu_check(args, rt)
        return
    if args.sampler_compare:
        sampler_compare(args, rt)
        return
    if args.hf_compare:
        for name in (HF_COMPARE if args.hf_compare == "all" else [args.hf_compare]):
            hf_compare(name, args.hf_layers, rt.device, args.hf_train_steps, args.hf_batch,
                       args.hf_seq, args.seed, args.hf_prompts)
        return
    benchmark(args, rt)


if __name__ == "__main__":
    common.run(main)
