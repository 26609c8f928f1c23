"""model.py: the transformer, the KV-cache sampler, the scalar head, checkpoints."""

import pytest
import torch

from model import (CheckpointError, GPT, GPTConfig, filter_logits, lm_to_scalar, load_checkpoint,
                   sample, save_checkpoint, sequence_scores)

EOT = 3


def tiny_model(kind="lm", seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=50, block_size=48, n_layer=2, n_head=2, n_embd=32, kind=kind)
    # float64 so that "the same numbers" comparisons are exact up to rounding
    return GPT(cfg).double().eval()


def full_recompute_logprobs(model, prompt, tokens):
    """Log-probs of `tokens` after `prompt` from one plain forward pass."""
    x = torch.tensor([prompt + tokens])
    logits, _ = model(x)
    lp = logits[0, len(prompt) - 1:-1].log_softmax(-1)
    return lp.gather(1, torch.tensor(tokens).unsqueeze(1)).squeeze(1)


def test_causality():
    model = tiny_model()
    x = torch.randint(0, 50, (2, 20))
    y = x.clone()
    y[:, 12:] = (y[:, 12:] + 7) % 50
    a, _ = model(x)
    b, _ = model(y)
    assert torch.allclose(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_loss_ignores_masked_targets():
    model = tiny_model()
    x = torch.randint(0, 50, (1, 10))
    t = x.clone()
    t[0, :5] = -100
    logits, loss = model(x, t)
    expect = torch.nn.functional.cross_entropy(logits[0, 5:], x[0, 5:])
    assert torch.allclose(loss, expect)


def test_left_padding_gives_unpadded_logits():
    model = tiny_model()
    x = torch.randint(0, 50, (1, 9))
    ref, _ = model(x)
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), x], 1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.bool), torch.ones(1, 9, dtype=torch.bool)], 1)
    out, _ = model(padded, pad_mask=mask)
    assert torch.allclose(out[:, 4:], ref)


def test_kv_cache_sampler_matches_full_recompute():
    """Same tokens as a naive loop that reruns the whole sequence, same log-probs."""
    model = tiny_model()
    prompt = [5, 6, 7, 8]
    out = sample(model, [prompt], max_new_tokens=12, temperature=1.0, seeds=[42])
    gen = torch.Generator().manual_seed(42)
    ids = list(prompt)
    for _ in range(12):  # naive: full forward per token, same inverse-CDF draw
        logits, _ = model(torch.tensor([ids]))
        cdf = logits[0, -1].float().softmax(-1).double().cumsum(-1)
        u = 1.0 - torch.rand((), generator=gen, dtype=torch.float64)
        ids.append(int(torch.searchsorted(cdf, (u * cdf[-1]).view(1))))
    assert out.tokens[0].tolist() == ids[len(prompt):]
    lp = full_recompute_logprobs(model, prompt, ids[len(prompt):])
    assert torch.allclose(out.logprobs[0].double(), lp, atol=1e-5)


def test_left_padded_batch_equals_one_by_one_and_fan_out_equals_separate_runs():
    model = tiny_model()
    prompts = [[1, 2, 4, 5, 6, 7], [8, 9], [10, 11, 12]]
    N = 3
    seeds = list(range(100, 100 + len(prompts) * N))
    batch = sample(model, prompts, num_samples=N, max_new_tokens=10, eot_id=EOT, seeds=seeds)
    for i, p in enumerate(prompts):
        for j in range(N):
            r = i * N + j
            one = sample(model, [p], num_samples=1, max_new_tokens=10, eot_id=EOT, seeds=[seeds[r]])
            n = int(one.lengths[0])
            assert int(batch.lengths[r]) == n
            assert batch.tokens[r, :n].tolist() == one.tokens[0, :n].tolist()
            assert torch.allclose(batch.logprobs[r, :n], one.logprobs[0, :n], atol=1e-6)
            # ... and the returned log-probs are those of a forward pass over the tokens
            lp = full_recompute_logprobs(model, p, one.tokens[0, :n].tolist())
            assert torch.allclose(one.logprobs[0, :n].double(), lp, atol=1e-5)


def test_sampler_stops_at_eot_and_greedy_is_argmax():
    model = tiny_model()
    out = sample(model, [[1, 2, 3, 4]], num_samples=4, max_new_tokens=30, eot_id=7, seeds=[1, 2, 3, 4],
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
                 eot_id=sorted(stops))
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
    whole = sample(model, prompts, num_samples=2, max_new_tokens=12, temperature=1.5, seeds=seeds, eot_id=[7, 11])
    shared = sample(model, prompts, num_samples=2, max_new_tokens=12, temperature=1.5, seeds=seeds, eot_id=[7, 11],
                    share_prefix=True)
    assert shared.token_lists() == whole.token_lists()
    assert torch.allclose(shared.logprobs, whole.logprobs, atol=1e-9)
    assert int(shared.lengths[6]) <= 48 - 42  # the long prompt keeps to its budget
    assert shared.finished.tolist() == whole.finished.tolist()


def test_stop_fn_and_context_bound():
    model = tiny_model()
    out = sample(model, [[1, 2]], max_new_tokens=20, seeds=[0], stop_fn=lambda r, ids: len(ids) >= 3)
    assert out.lengths.tolist() == [3] and out.finished.tolist() == [True]
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


def test_scalar_head_reads_last_real_token():
    model = tiny_model("scalar")
    x = torch.randint(0, 50, (1, 7))
    scores, _ = model(x)
    assert scores.shape == (1, 7)
    right = torch.cat([x, torch.zeros(1, 3, dtype=torch.long)], 1)
    right_mask = torch.tensor([[True] * 7 + [False] * 3])
    s_right, _ = model(right)
    left = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], 1)
    left_mask = torch.tensor([[False] * 3 + [True] * 7])
    s_left, _ = model(left, pad_mask=left_mask)
    ref = scores[0, -1]
    assert torch.allclose(sequence_scores(s_right, right_mask)[0], ref)
    assert torch.allclose(sequence_scores(s_left, left_mask)[0], ref)


def test_checkpoint_round_trip_and_wrong_kind(tmp_path):
    lm = tiny_model("lm")
    path = tmp_path / "lm.pt"
    save_checkpoint(str(path), lm, "TOKENIZER", {"script": "test", "args": {"a": 1}, "step": 3,
                                                  "parent": None})
    loaded, ckpt = load_checkpoint(str(path), kind="lm", tokenizer_json="TOKENIZER")
    x = torch.randint(0, 50, (1, 8))
    assert torch.allclose(loaded.double()(x)[0], lm(x)[0])
    assert ckpt["provenance"]["step"] == 3 and ckpt["tokenizer"] == "TOKENIZER"
    assert not list(tmp_path.glob("*.tmp*"))  # the temporary file was renamed away

    rm = lm_to_scalar(lm)
    assert torch.equal(rm.blocks[0].attn.c_attn.weight, lm.blocks[0].attn.c_attn.weight)
    rpath = tmp_path / "rm.pt"
    save_checkpoint(str(rpath), rm, "TOKENIZER", {"script": "test", "step": 0})
    rm2, _ = load_checkpoint(str(rpath), kind="scalar")
    assert torch.allclose(rm2.double()(x)[0], rm(x)[0])

    with pytest.raises(CheckpointError, match="scalar-head"):
        load_checkpoint(str(rpath), kind="lm")
    with pytest.raises(CheckpointError, match="language model"):
        load_checkpoint(str(path), kind="scalar")
    with pytest.raises(CheckpointError, match="different tokenizer"):
        load_checkpoint(str(path), kind="lm", tokenizer_json="OTHER")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(str(tmp_path / "junk.pt"))


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


def test_kv_cache_holds_the_compute_dtype_under_autocast():
    from model import KVCache
    model = tiny_model().float()
    cache = KVCache(model.config, 1, 8, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.tensor([[1, 2, 3]]), kv_cache=cache)
    assert cache.k.dtype == torch.bfloat16 and cache.v.dtype == torch.bfloat16


def test_a_rope_model_caches_its_keys_in_the_compute_dtype_under_autocast():
    """RoPE's cos / sin in float32 would turn q and k, and so the cached keys, back into
    float32 beside bf16 values; they are made in the compute dtype instead."""
    from model import KVCache
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, norm="rmsnorm",
                          mlp="swiglu", pos_emb="rope", bias=False)).eval()
    cache = KVCache(model.config, 1, 8, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.tensor([[1, 2, 3]]), kv_cache=cache)
    assert cache.k.dtype == torch.bfloat16 and cache.v.dtype == torch.bfloat16
    cache = KVCache(model.config, 1, 8, "cpu")
    model(torch.tensor([[1, 2, 3]]), kv_cache=cache)  # no autocast: float32, as the weights
    assert cache.k.dtype == torch.float32 and cache.v.dtype == torch.float32
