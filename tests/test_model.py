"""model.py: the transformer, the scalar head, checkpoints (the sampler: test_sampler.py)."""

import pytest
import torch

from sml.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from model import GPT, GPTConfig, lm_to_scalar, pad_batch, sequence_scores
from sml.sampler import KVCache


def tiny_model(kind="lm", seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=50, block_size=48, n_layer=2, n_head=2, n_embd=32, kind=kind)
    # float64 so that "the same numbers" comparisons are exact up to rounding
    return GPT(cfg).double().eval()


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


def test_pad_batch_pads_each_row_at_its_end_or_start():
    seqs = [[5, 6, 7], [8], []]
    idx, real = pad_batch(seqs, pad_id=0)
    assert idx.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]] and idx.dtype == torch.long
    assert real.tolist() == [[True] * 3, [True, False, False], [False] * 3]
    idx, real = pad_batch(seqs, pad_id=-1, left=True)
    assert idx.tolist() == [[5, 6, 7], [-1, -1, 8], [-1, -1, -1]]
    assert real.tolist() == [[True] * 3, [False, False, True], [False] * 3]


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


def test_kv_cache_holds_the_compute_dtype_under_autocast():
    model = tiny_model().float()
    cache = KVCache(model.config, 1, 8, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.tensor([[1, 2, 3]]), kv_cache=cache)
    assert cache.k.dtype == torch.bfloat16 and cache.v.dtype == torch.bfloat16


def rope_model():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, block_size=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, norm="rmsnorm",
                    mlp="swiglu", pos_emb="rope", bias=False)
    return GPT(cfg).eval()


def test_a_rope_model_caches_its_keys_in_the_compute_dtype_under_autocast():
    """RoPE's cos / sin in float32 would turn q and k, and so the cached keys, back into
    float32 beside bf16 values; they are made in the compute dtype instead."""
    model = rope_model()
    cache = KVCache(model.config, 1, 8, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.tensor([[1, 2, 3]]), kv_cache=cache)
    assert cache.k.dtype == torch.bfloat16 and cache.v.dtype == torch.bfloat16
    cache = KVCache(model.config, 1, 8, "cpu")
    model(torch.tensor([[1, 2, 3]]), kv_cache=cache)  # no autocast: float32, as the weights
    assert cache.k.dtype == torch.float32 and cache.v.dtype == torch.float32
