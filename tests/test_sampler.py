"""sampler.py: the KV-cache sampler (prefill once, fan out, left padding, per-sample seeds,
stop ids, a padded vocabulary), its batch sizes, and data/tokenizer.stop_ids."""

import json
import os

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from sml import rationales
from sml import sampler
from data.tokenizer import eot_id, stop_ids, train_tokenizer
from model import GPT, GPTConfig
from sml.sampler import (KVCache, filter_logits, kv_cache_bytes_per_row, mask_padded_vocab, prompts_per_batch,
                     prompts_that_fit, sample)
from test_model import tiny_model

EOT = 3


def full_recompute_logprobs(model, prompt, tokens, temperature=1.0, n_vocab=None):
    """Log-probs of `tokens` after `prompt` from one plain forward pass."""
    x = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits, _ = model(x)
    lp = mask_padded_vocab(logits[0, len(prompt) - 1:-1] / temperature, n_vocab).log_softmax(-1)
    return lp.gather(1, torch.tensor(tokens).unsqueeze(1)).squeeze(1)


def race_reference(keys, vocab_size):
    """log E of the exponential race for one row and step, in numpy's unsigned 32-bit
    arithmetic (lowbias32 under the key pair): what sampler.log_exponentials computes in
    torch's wrapping int32."""
    k0, k1 = keys.astype(np.int64).astype(np.uint32)
    x = np.arange(vocab_size, dtype=np.uint32) + k0
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= k1
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    w = np.minimum(((x & np.uint32(0x7FFFFFFF)).astype(np.float32) + np.float32(0.5)) * np.float32(2.0 ** -31),
                   np.float32(1 - 2.0 ** -24))
    return np.log(-np.log1p(-w))


def test_kv_cache_sampler_matches_full_recompute():
    """Same tokens as a naive loop that reruns the whole sequence, same log-probs. The naive
    loop races the tokens with its own copy of the noise: the t-th key pair of a
    torch.Generator seeded with the row's seed, hashed with each token id (race_reference)."""
    model = tiny_model()
    prompt = [5, 6, 7, 8]
    out = sample(model, [prompt], max_new_tokens=12, temperature=1.0, seeds=[42])
    keys = torch.randint(-2**31, 2**31, (12, 2), generator=torch.Generator().manual_seed(42), dtype=torch.int32)
    ids = list(prompt)
    for t in range(12):  # naive: full forward per token, the same race
        logits, _ = model(torch.tensor([ids]))
        score = logits[0, -1].detach().double().numpy() - race_reference(keys[t].numpy(), logits.size(-1))
        ids.append(int(score.argmax()))
    assert out.tokens[0].tolist() == ids[len(prompt):]
    lp = full_recompute_logprobs(model, prompt, ids[len(prompt):])
    assert torch.allclose(out.logprobs[0].double(), lp, atol=1e-5)


def test_the_exponential_race_draws_from_the_distribution():
    """argmax(logits / T - log E) is a draw from softmax(logits / T): over 40,000 rows (each
    its own key pair) every token's frequency, a rare one's included, is its probability
    within 4 standard errors; top-k / top-p keep the draw inside their set, renormalised; the same
    keys give the same tokens, and the log-prob is log_softmax's."""
    n, temperature = 40_000, 0.7
    logits = torch.tensor([2.0, 1.0, 0.0, -1.5, -3.0]).repeat(n, 1)
    keys = torch.randint(-2**31, 2**31, (n, 2), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    for top_k, top_p in ((None, None), (2, None), (None, 0.97)):
        tok, lp = sampler.next_tokens(logits, temperature, top_k, top_p, keys)
        p = filter_logits(logits[0] / temperature, top_k, top_p).softmax(-1).double()
        freq = torch.bincount(tok, minlength=5).double() / n
        assert ((freq - p).abs() <= 4 * (p * (1 - p) / n).sqrt() + 1e-12).all(), (freq, p)
        assert torch.allclose(lp, (logits / temperature).log_softmax(-1).gather(1, tok.unsqueeze(1)).squeeze(1))
        assert torch.equal(sampler.next_tokens(logits, temperature, top_k, top_p, keys)[0], tok)
    assert p[3:].sum() == 0 and p[2] > 0 and 1e-4 < (logits[0] / temperature).softmax(-1)[4] < 1e-3  # a rare token


def test_left_padded_batch_equals_one_by_one_and_fan_out_equals_separate_runs():
    model = tiny_model()
    prompts = [[1, 2, 4, 5, 6, 7], [8, 9], [10, 11, 12]]
    N = 3
    seeds = list(range(100, 100 + len(prompts) * N))
    batch = sample(model, prompts, num_samples=N, max_new_tokens=10, stop_ids=EOT, seeds=seeds)
    for i, p in enumerate(prompts):
        for j in range(N):
            r = i * N + j
            one = sample(model, [p], num_samples=1, max_new_tokens=10, stop_ids=EOT, seeds=[seeds[r]])
            n = int(one.lengths[0])
            assert int(batch.lengths[r]) == n
            assert batch.tokens[r, :n].tolist() == one.tokens[0, :n].tolist()
            assert torch.allclose(batch.logprobs[r, :n], one.logprobs[0, :n], atol=1e-6)
            # ... and the returned log-probs are those of a forward pass over the tokens
            lp = full_recompute_logprobs(model, p, one.tokens[0, :n].tolist())
            assert torch.allclose(one.logprobs[0, :n].double(), lp, atol=1e-5)


def test_sampler_stops_at_eot_and_greedy_is_argmax():
    model = tiny_model()
    out = sample(model, [[1, 2, 3, 4]], num_samples=4, max_new_tokens=30, stop_ids=7, seeds=[1, 2, 3, 4],
                 temperature=2.0)
    for r, ids in enumerate(out.token_lists()):
        assert 7 not in ids[:-1]
        assert out.finished[r] == (ids[-1] == 7)
        assert out.tokens[r, len(ids):].eq(0).all() and out.logprobs[r, len(ids):].eq(0).all()
    g = sample(model, [[1, 2, 3, 4]], max_new_tokens=5, temperature=0)
    ids = [1, 2, 3, 4]
    for _ in range(5):
        ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    assert g.tokens[0].tolist() == ids[4:]


def test_sampler_stops_at_any_of_several_stop_ids():
    """A few-shot prompt ends a rationale at any line-break token: each row is what it is
    without stops, cut just after the first stop id it writes."""
    model = tiny_model()
    seeds = list(range(8))
    free = sample(model, [[1, 2, 3, 4], [5, 6]], num_samples=4, max_new_tokens=30, temperature=2.0, seeds=seeds)
    stops = {7, 11, 19}
    out = sample(model, [[1, 2, 3, 4], [5, 6]], num_samples=4, max_new_tokens=30, temperature=2.0, seeds=seeds,
                 stop_ids=sorted(stops))
    cut = 0
    for r, (ids, full) in enumerate(zip(out.token_lists(), free.token_lists())):
        first = next((i for i, t in enumerate(full) if t in stops), None)
        assert ids == (full if first is None else full[:first + 1])
        assert bool(out.finished[r]) == (first is not None)
        cut += first is not None and first + 1 < len(full)
    assert cut  # the stops did cut some rows short


def test_a_shared_prefix_is_encoded_once_with_the_same_samples():
    """Few-shot prompts share their exemplars: encoding them once for the batch gives the same
    samples and log-probs as encoding every prompt whole, with ragged rest lengths and a row
    at the context limit."""
    model = tiny_model()
    prefix = [5, 9, 2, 8, 1, 4, 4, 7, 30, 31, 32, 33]
    prompts = [prefix + [1, 2, 3], prefix + [6], prefix + [9, 9, 9, 9, 9, 9, 9], prefix + [1] * 30]
    seeds = list(range(8))
    whole = sample(model, prompts, num_samples=2, max_new_tokens=12, temperature=1.5, seeds=seeds, stop_ids=[7, 11])
    shared = sample(model, prompts, num_samples=2, max_new_tokens=12, temperature=1.5, seeds=seeds, stop_ids=[7, 11],
                    share_prefix=True)
    assert shared.token_lists() == whole.token_lists()
    assert torch.allclose(shared.logprobs, whole.logprobs, atol=1e-9)
    assert int(shared.lengths[6]) <= 48 - 42  # the long prompt keeps to its budget
    assert shared.finished.tolist() == whole.finished.tolist()


def test_context_bound():
    model = tiny_model()
    out = sample(model, [[1] * 40], max_new_tokens=50, seeds=[0])  # bounded by block_size 48
    assert int(out.lengths[0]) == 8
    with pytest.raises(ValueError, match="context"):
        sample(model, [[1] * 48], max_new_tokens=5, seeds=[0])


def test_top_k_top_p_filter():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    k2 = filter_logits(logits, top_k=2)
    assert torch.isfinite(k2).tolist() == [[True, True, False, False, False]]
    p = filter_logits(logits, top_p=0.8)  # 0.5 + 0.2 < 0.8, so 0.15 is needed too
    assert torch.isfinite(p).tolist() == [[True, True, True, False, False]]


def test_batch_neighbours_do_not_cut_each_other_short_at_the_context_limit():
    """Each row's budget is min(max_new_tokens, block_size - its prompt length): a short
    prompt batched with one near the context limit gets what it gets alone."""
    model = tiny_model()  # block_size 48
    prompts = [[1] * 40, [2, 3, 4, 5, 6], [7] * 30]
    seeds = [11, 12, 13]
    batch = sample(model, prompts, max_new_tokens=20, seeds=seeds)  # no eot: rows run to budget
    assert batch.lengths.tolist() == [8, 20, 18]
    assert batch.finished.tolist() == [False, False, False]  # budget used up, not stopped
    for r, p in enumerate(prompts):
        one = sample(model, [p], max_new_tokens=20, seeds=[seeds[r]])
        n = int(one.lengths[0])
        assert int(batch.lengths[r]) == n
        assert batch.tokens[r, :n].tolist() == one.tokens[0, :n].tolist()
        assert torch.allclose(batch.logprobs[r, :n], one.logprobs[0, :n], atol=1e-6)


def test_top_p_boundary_ties_and_off_values():
    # four equally likely tokens: probabilities are exactly 0.25, so the boundary is exact
    logits = torch.zeros(1, 4)
    kept = torch.isfinite(filter_logits(logits, top_p=0.5)).tolist()
    assert kept == [[True, True, False, False]]  # two tokens reach 0.5; ties keep vocab order
    assert torch.isfinite(filter_logits(logits, top_p=0.51)).sum() == 3
    skewed = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    assert torch.isfinite(filter_logits(skewed, top_p=0.0)).tolist() == [[False, True, False]]
    assert torch.equal(filter_logits(skewed, top_k=0), skewed)  # 0 = off, as in Hugging Face
    assert torch.equal(filter_logits(skewed, top_p=1.0), skewed)
    for bad in (dict(top_k=-1), dict(top_p=1.5), dict(top_p=-0.1), dict(top_k=2.5)):
        with pytest.raises(ValueError, match="top_"):
            filter_logits(skewed, **bad)
    out = sample(tiny_model(), [[1, 2]], max_new_tokens=4, seeds=[0], top_k=0, top_p=0.0)
    assert torch.isfinite(out.logprobs).all() and int(out.lengths[0]) == 4


@pytest.mark.parametrize("every", [3, 8])
def test_looking_for_stopped_rows_every_few_steps_changes_nothing(monkeypatch, every):
    """On a GPU the sampler asks whether every row has stopped only every few steps; the steps
    it runs past the last stop feed stopped rows as padding and change no result."""
    model = tiny_model()
    prompts = [[1, 2, 3, 4], [5, 6], [7, 8, 9]]
    kw = dict(num_samples=3, max_new_tokens=30, temperature=2.0, seeds=list(range(9)), stop_ids=list(range(0, 50, 4)))
    each_step = sample(model, prompts, **kw)
    assert each_step.finished.all() and int(each_step.lengths.max()) < 30 - every  # steps past the last stop run
    monkeypatch.setattr(sampler, "stop_check_every", lambda device: every)
    few = sample(model, prompts, **kw)
    assert torch.equal(few.tokens, each_step.tokens) and torch.equal(few.logprobs, each_step.logprobs)
    assert torch.equal(few.lengths, each_step.lengths) and torch.equal(few.finished, each_step.finished)


class HostReads(TorchFunctionMode):
    """Counts the reads of a tensor's value on the host: on a GPU each waits for the device."""
    READS = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "cpu", "numpy"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in self.READS
        return func(*args, **(kwargs or {}))


def test_the_host_waits_for_the_device_only_to_look_for_stopped_rows(monkeypatch):
    """Sampling stays on the device: no copy of the probabilities to the host and no look at
    the rows' state at every step, only every stop_check_every steps (and once at the end)."""
    monkeypatch.setattr(sampler, "stop_check_every", lambda device: 8)
    model = tiny_model()
    for temperature in (1.0, 0.0):
        with HostReads() as reads:
            out = sample(model, [[1, 2, 3], [4, 5]], num_samples=2, max_new_tokens=40, temperature=temperature,
                         seeds=[1, 2, 3, 4], top_k=20)
        assert out.lengths.tolist() == [40] * 4  # no stop ids: every row runs all 40 steps
        assert reads.count <= 40 // 8 + 1


def test_mask_padded_vocab():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    masked = mask_padded_vocab(logits, 3)
    assert masked[0, :3].tolist() == [1.0, 2.0, 3.0] and torch.isinf(masked[0, 3:]).all()
    assert mask_padded_vocab(logits, None) is logits and mask_padded_vocab(logits, 5) is logits


def test_ids_beyond_the_tokenizers_vocabulary_are_never_sampled():
    """A checkpoint may have more embedding rows than its tokenizer has tokens (Qwen2.5: 151,665
    tokens, 151,936 rows). The padding ids decode to nothing: with n_vocab they are never
    sampled, greedy or not, and the log-probs are over the tokenizer's vocabulary."""
    model, n_vocab = tiny_model(), 40  # 50 embedding rows
    padding = (torch.arange(50) >= n_vocab).double()
    model.lm_head.register_forward_hook(lambda module, inputs, out: out + 6.0 * padding)  # padding would win
    prompts, seeds = [[1, 2, 3], [4, 5, 6, 7, 8]], list(range(6))
    unmasked = sample(model, prompts, num_samples=3, max_new_tokens=20, seeds=seeds)
    assert (unmasked.tokens >= n_vocab).float().mean() > 0.5  # the test has teeth
    for kw in (dict(temperature=1.0), dict(temperature=2.0, top_k=10), dict(temperature=0.7, top_p=0.9),
               dict(temperature=0)):
        out = sample(model, prompts, num_samples=3, max_new_tokens=20, seeds=seeds, n_vocab=n_vocab, **kw)
        assert int(out.tokens.max()) < n_vocab and out.lengths.tolist() == [20] * 6
        if "top_k" not in kw and "top_p" not in kw:  # log-probs of the distribution sampled
            for r, ids in enumerate(out.token_lists()):
                lp = full_recompute_logprobs(model, prompts[r // 3], ids, kw["temperature"] or 1.0, n_vocab)
                assert torch.allclose(out.logprobs[r].double(), lp, atol=1e-5)


def test_stop_ids_are_the_end_of_text_and_every_declared_eos():
    tok = train_tokenizer(["a b c d"] * 5, vocab_size=270)
    tok.add_special_tokens(["<|im_end|>"])
    eot, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    assert stop_ids(tok, GPTConfig()) == [eot]  # our own models: the end-of-text only
    assert stop_ids(tok, GPTConfig(eos_id=im_end)) == [eot, im_end]
    assert stop_ids(tok, GPTConfig(eos_id=[im_end, eot])) == [eot, im_end]  # Qwen2.5-Instruct's pair


def test_an_instruct_checkpoint_stops_at_its_own_eos_and_never_writes_padding(tmp_path):
    """A Qwen-style checkpoint in Hugging Face format: generation_config.json declares
    <|im_end|> and the end-of-text as EOS, and the embedding has 24 rows more than the
    tokenizer. Its rationales stop at <|im_end|> (finished, not run to the budget and taken
    for unfinished), and no padding id is written."""
    from data.tasks import get_task
    from sml.checkpoint import from_pretrained, save_pretrained
    texts = [f"Tom has {i} pens. Tom finds 1 more. How many pens does Tom have now?" for i in range(30)]
    tok = train_tokenizer(texts, vocab_size=300)
    tok.add_special_tokens(["<|im_end|>"])
    n_vocab, eot, im_end = tok.get_vocab_size(), eot_id(tok), tok.token_to_id("<|im_end|>")
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=n_vocab + 24, block_size=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                       norm="rmsnorm", mlp="swiglu", pos_emb="rope", bias=False, qkv_bias=True, eos_id=im_end)
    folder = str(tmp_path / "qwen")
    save_pretrained(GPT(config), tok, folder)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:  # as Qwen2.5-Instruct's
        json.dump({"eos_token_id": [im_end, eot]}, f)
    model, tok = from_pretrained(folder)
    assert model.config.eos_id == [im_end, eot] and model.config.vocab_size == n_vocab + 24
    # the habits of an instruct model on a padded embedding: it ends its turn with <|im_end|>
    # after a few tokens, and its padding rows would outweigh the real tokens without the mask
    bias = torch.zeros(model.config.vocab_size)
    bias[n_vocab:], bias[im_end] = 8.0, 4.0
    model.lm_head.register_forward_hook(lambda module, inputs, out: out + bias)
    results, _ = rationales.sample_rationales(model, tok, get_task("arithmetic"), [(texts[3], None), (texts[5], "6")],
                                              4, 1.0, 0, max_new_tokens=48, quiet=True)
    samples = [s for r in results for s in r]
    assert all(s["finished"] for s in samples)
    assert sum(s["tokens"][-1] == im_end for s in samples) > len(samples) / 2
    assert all(max(s["tokens"]) < n_vocab for s in samples)
    assert any(len(s["tokens"]) > 2 for s in samples)


def test_batch_sizes_come_from_the_cache_the_sampler_really_keeps(monkeypatch):
    model = tiny_model().float()
    c = model.config
    cache = KVCache(c, 3, 20, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.tensor([[1, 2, 3]] * 3), kv_cache=cache)
    assert cache.k.nbytes + cache.v.nbytes == 3 * kv_cache_bytes_per_row(c, torch.bfloat16, 20)

    qwen = GPTConfig(vocab_size=151936, block_size=32768, n_layer=24, n_head=14, n_kv_head=2, n_embd=896,
                     mlp_hidden=4864)  # Qwen2.5-0.5B's shapes

    def fit(memory, k=1, dtype=torch.bfloat16):
        return prompts_that_fit(qwen, dtype, 400, k, memory)
    assert fit(2**30) < fit(2**31) <= 2 * fit(2**30) + 1  # twice the memory, about twice the batch
    assert fit(2**33, dtype=torch.float32) < fit(2**33)  # a float32 cache is twice as large
    assert fit(2**33, k=4) == fit(2**33) // 4  # the budget is in rows: k samples a prompt
    assert fit(2**50) == sampler.MAX_ROWS and fit(2**50, k=4) == sampler.MAX_ROWS // 4
    assert fit(1) == 1  # one prompt at a time rather than none
    assert prompts_per_batch(model, 100, 4) == sampler.CPU_BATCH_PROMPTS  # not on CUDA: a fixed default

    class OnGPU:  # what prompts_per_batch reads of a parameter on a GPU
        device, dtype = torch.device("cuda", 0), torch.bfloat16
    gpu_model = type("M", (), {"config": qwen, "parameters": lambda self: iter([OnGPU()])})()
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2**33, 2**37))  # 8 GiB free
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 2**32)  # 4 GiB held by torch,
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2**31)  # half of it unused
    assert prompts_per_batch(gpu_model, 400, 4) == fit((2**33 + 2**31) // 2, k=4)


def test_rationales_batch_by_memory_and_read_answers_in_batches_as_large_as_collection(monkeypatch):
    """Collection samples batch_prompts prompts x k rows a call (batch_prompts: the device's
    default unless given); the few-shot answer-reading pass, one row per rationale, as many
    rows a call."""
    from data import fewshot
    from data.tasks import get_task
    task = get_task("coin_flip")
    tok = train_tokenizer(["A coin is heads up. Ann flips the coin. Is the coin still heads up?"] * 5, 300)
    calls = []

    def one_line_each(model, prompts, num_samples=1, **kw):  # every rationale and answer: one finished line
        calls.append(len(prompts) * num_samples)
        ids, R = tok.encode(" Ann flips it once.\n").ids, len(prompts) * num_samples
        return sampler.Samples(torch.tensor([ids] * R), torch.zeros(R, len(ids)), torch.full((R,), len(ids)),
                               torch.ones(R, dtype=torch.bool))
    monkeypatch.setattr(rationales, "sample", one_line_each)
    model = type("M", (), {"config": GPTConfig(block_size=4096), "parameters": lambda self: iter([torch.zeros(1)])})()
    requests = [(f"A coin is heads up. Ann flips the coin {i} times. Is the coin still heads up?", "yes")
                for i in range(70)]
    exemplars = fewshot.exemplars(task, [], 2)
    rationales.sample_rationales(model, tok, task, requests, 3, 1.0, 0, exemplars=exemplars, quiet=True)
    assert calls == [64 * 3, 6 * 3] * 2  # collection, then the answers read: 64 prompts on a CPU
    calls.clear()
    rationales.sample_rationales(model, tok, task, requests, 3, 1.0, 0, batch_prompts=5, exemplars=exemplars,
                                 quiet=True)
    assert calls == [5 * 3] * 14 * 2


class OnDevice(torch.Tensor):
    """A tensor that counts the reads of its value on the host, as if it lived on a GPU (each
    read waits for the device); .cpu() copies it to a plain host tensor, read freely after."""
    reads = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HostReads.READS:
            OnDevice.reads += 1
        if name == "cpu":
            with torch._C.DisableTorchFunctionSubclass():
                return args[0].clone()
        return super().__torch_function__(func, types, args, kwargs)


def test_collection_copies_a_batch_to_the_host_once_not_once_per_row(monkeypatch):
    """rationales.sample_rationales reads the sampler's log-probs and stop flags with one copy
    per batch: a read per row would wait for the device twice per rationale."""
    tok = train_tokenizer(["A coin is heads up. Ann flips the coin. Is the coin still heads up?"] * 5, 300)
    from data.tasks import get_task
    task = get_task("coin_flip")

    def on_device(model, prompts, num_samples=1, **kw):
        ids, R = tok.encode(" Ann flips it once.").ids, len(prompts) * num_samples
        return sampler.Samples(*(t.as_subclass(OnDevice) for t in (
            torch.tensor([ids] * R), torch.full((R, len(ids)), -0.5), torch.full((R,), len(ids)),
            torch.ones(R, dtype=torch.bool))))
    monkeypatch.setattr(rationales, "sample", on_device)
    model = type("M", (), {"config": GPTConfig(block_size=4096), "parameters": lambda self: iter([torch.zeros(1)])})()
    requests = [(f"A coin is heads up. Ann flips the coin {i} times. Is the coin still heads up?", "yes")
                for i in range(10)]
    OnDevice.reads = 0
    results, _ = rationales.sample_rationales(model, tok, task, requests, 3, 1.0, 0, batch_prompts=5, quiet=True)
    rows = [r for rs in results for r in rs]
    assert [r["logprobs"][0] for r in rows] == [-0.5] * 30 and all(r["finished"] for r in rows)
    assert OnDevice.reads <= 2 * 5  # two batches of 15 rows: a few reads each, not two per row
