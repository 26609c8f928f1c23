"""
The Hugging Face checkpoint format, in and out, with nothing but torch, tokenizers and the
standard library: so SML can start from a real pretrained model (GPT-2, Llama, Mistral,
Qwen2, Qwen3, SmolLM) and hand its results back to other tools.

- safetensors, by hand (read_safetensors / write_safetensors). The format is small:
    8 bytes   little-endian u64 N, the length of the header
    N bytes   JSON: {name: {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
                     "__metadata__": {..} (optional)}, padded with spaces
    the rest  the tensors' bytes, little-endian, row-major, at [begin, end) after the header
  A big model is split into shards (model-00001-of-00002.safetensors, ...) listed by
  model.safetensors.index.json: {"weight_map": {name: shard file}}.
- config.json -> GPTConfig, and weight names, with one table per family (config_from_hf,
  NAME_TABLES). Our GPT fuses q/k/v into one matrix (c_attn) and SwiGLU's gate and up
  into one (c_fc); the tables say which HF tensors are concatenated into each.
- A hub id ("HuggingFaceTB/SmolLM2-135M") downloads with urllib into the standard cache
  layout (hub_download), so transformers and this code share one cache.
- load_pretrained / save_pretrained: the folder <-> (GPT, tokenizer) conversions that
  model.from_pretrained / model.save_pretrained expose.
"""

import hashlib
import json
import os
import struct
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict

import torch

from common import atomic_file
from model import GPT, CheckpointError, GPTConfig

# -----------------------------------------------------------------------------
# safetensors

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
           "U8": torch.uint8, "BOOL": torch.bool}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
assert sys.byteorder == "little", "safetensors data is little-endian; this reader assumes a little-endian host"


def read_safetensors_header(path):
    """-> (header dict without __metadata__, offset of the data section)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise CheckpointError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{path}: not a safetensors file (header is not JSON: {e})")
    header.pop("__metadata__", None)
    return header, 8 + n


def read_safetensors(path, names=None):
    """{name: tensor} of a .safetensors file (only `names` if given), in the stored dtype."""
    header, data_start = read_safetensors_header(path)
    out = {}
    with open(path, "rb") as f:
        for name, info in header.items():
            if names is not None and name not in names:
                continue
            if info["dtype"] not in _DTYPES:
                raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
            begin, end = info["data_offsets"]
            f.seek(data_start + begin)
            buf = bytearray(end - begin)
            if f.readinto(buf) != len(buf):
                raise CheckpointError(f"{path}: tensor {name} is cut off (file truncated?)")
            t = torch.frombuffer(buf, dtype=_DTYPES[info["dtype"]]) if buf else \
                torch.empty(0, dtype=_DTYPES[info["dtype"]])
            shape = info["shape"]
            if t.numel() != (torch.Size(shape).numel()):
                raise CheckpointError(f"{path}: tensor {name} has {t.numel()} elements for shape {shape}")
            out[name] = t.view(shape)
    return out


def write_safetensors(path, tensors, metadata=None):
    """Write {name: tensor} as one .safetensors file (atomically: temporary name, rename)."""
    header, offset = {}, 0
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt", **(metadata or {})}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with atomic_file(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors.values():
            f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())


# -----------------------------------------------------------------------------
# config.json <-> GPTConfig, one entry per family

FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "qwen3")
# transformers' defaults for keys a config.json may leave out
_DEFAULTS = {
    "gpt2": {"n_positions": 1024, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
             "tie_word_embeddings": True},
    "llama": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
              "attention_bias": False, "mlp_bias": False, "max_position_embeddings": 2048},
    "mistral": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
                "max_position_embeddings": 32768},
    "qwen2": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
              "max_position_embeddings": 32768},
    "qwen3": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
              "attention_bias": False, "max_position_embeddings": 32768, "head_dim": 128},
}


def _rope_from_hf(cfg, where):
    """(theta, scaling or None). transformers 5 writes rope_parameters; hub checkpoints have
    rope_theta and rope_scaling (with "type" in older ones)."""
    params = dict(cfg.get("rope_parameters") or {})
    if not params:
        params = dict(cfg.get("rope_scaling") or {})
        params.setdefault("rope_theta", cfg.get("rope_theta"))
    theta = params.pop("rope_theta", None) or cfg.get("rope_theta") or 10000.0
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    if rope_type == "default":
        return float(theta), None
    if rope_type != "llama3":
        raise CheckpointError(f"{where}: rope scaling {rope_type!r} is not supported (default and llama3 are)")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    if any(k not in params for k in keys):
        raise CheckpointError(f"{where}: llama3 rope scaling needs {', '.join(keys)}")
    return float(theta), {"rope_type": "llama3", **{k: params[k] for k in keys}}


def config_from_hf(cfg, where, block_size=None):
    """A GPTConfig from a config.json dict. block_size: cap the context (None: the model's
    max_position_embeddings, or Mistral's sliding window if smaller, where full attention
    is still exact)."""
    family = cfg.get("model_type")
    if family not in FAMILIES:
        raise CheckpointError(f"{where}: model_type {family!r} is not supported (supported: {', '.join(FAMILIES)})")
    cfg = {**_DEFAULTS[family], **{k: v for k, v in cfg.items() if v is not None}}
    special = {"bos_id": cfg.get("bos_token_id"), "eos_id": cfg.get("eos_token_id"), "pad_id": cfg.get("pad_token_id")}
    if family == "gpt2":
        if cfg.get("scale_attn_by_inverse_layer_idx") or cfg.get("reorder_and_upcast_attn") \
                or cfg.get("scale_attn_weights") is False:
            raise CheckpointError(f"{where}: GPT-2 attention variants (scale_attn_*, reorder_and_upcast_attn) "
                                  f"are not supported")
        acts = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
        if cfg["activation_function"] not in acts:
            raise CheckpointError(f"{where}: activation {cfg['activation_function']!r} is not supported")
        context = cfg["n_positions"]
        out = dict(vocab_size=cfg["vocab_size"], n_layer=cfg["n_layer"], n_head=cfg["n_head"],
                   n_embd=cfg["n_embd"], mlp_hidden=cfg.get("n_inner") or 4 * cfg["n_embd"],
                   norm="layernorm", norm_eps=cfg["layer_norm_epsilon"], mlp=acts[cfg["activation_function"]],
                   pos_emb="learned", tie_embeddings=bool(cfg["tie_word_embeddings"]))
        if block_size and block_size > context:
            raise CheckpointError(f"{where}: learned positions stop at {context}, block_size {block_size} is longer")
    else:
        if cfg.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"{where}: hidden_act {cfg['hidden_act']!r} is not supported (silu is)")
        theta, scaling = _rope_from_hf(cfg, where)
        attention_bias = bool(cfg.get("attention_bias", False))
        bias = attention_bias
        qkv_bias = {"qwen2": True}.get(family, attention_bias)
        if family == "qwen2":
            bias = False  # Qwen2: biases on q, k, v only
        if family == "llama" and bool(cfg.get("mlp_bias")) != attention_bias:
            raise CheckpointError(f"{where}: attention_bias != mlp_bias is not supported")
        context = cfg["max_position_embeddings"]
        window = cfg.get("sliding_window") if (family == "mistral" or cfg.get("use_sliding_window")) else None
        if window and window < context:
            context = window  # up to the window, sliding-window attention is full attention
        n_head = cfg["num_attention_heads"]
        out = dict(vocab_size=cfg["vocab_size"], n_layer=cfg["num_hidden_layers"], n_head=n_head,
                   n_embd=cfg["hidden_size"], mlp_hidden=cfg["intermediate_size"],
                   n_kv_head=cfg.get("num_key_value_heads") or n_head,
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_head,
                   norm="rmsnorm", norm_eps=cfg["rms_norm_eps"], mlp="swiglu", pos_emb="rope",
                   rope_theta=theta, rope_scaling=scaling, bias=bias, qkv_bias=qkv_bias,
                   qk_norm=family == "qwen3", tie_embeddings=bool(cfg["tie_word_embeddings"]))
        if block_size and block_size > context:
            raise CheckpointError(f"{where}: block_size {block_size} is longer than the model's context {context}")
    return GPTConfig(**out, block_size=block_size or context, dropout=0.0, **special)


def family_of(config):
    """Which HF family a GPTConfig is written as. A Mistral model without its sliding
    window is a Llama; today's from-scratch GPT is a GPT-2."""
    c = config
    if c.pos_emb == "learned":
        ok = c.norm == "layernorm" and c.mlp in ("gelu", "gelu_tanh") and c.bias and c.qkv_bias \
            and c.n_kv_head == c.n_head and c.head_dim * c.n_head == c.n_embd and not c.qk_norm
        family = "gpt2"
    else:
        family = "qwen3" if c.qk_norm else "qwen2" if (c.qkv_bias and not c.bias) else "llama"
        ok = c.norm == "rmsnorm" and c.mlp == "swiglu" and (family == "qwen2" or c.qkv_bias == c.bias)
    if not ok:
        raise CheckpointError(f"this model's switches ({asdict(c)}) match no Hugging Face family")
    return family


def config_to_hf(config):
    c = config
    family = family_of(c)
    special = {"bos_token_id": c.bos_id, "eos_token_id": c.eos_id, "pad_token_id": c.pad_id}
    if family == "gpt2":
        out = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
               "n_positions": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
               "n_inner": c.mlp_hidden, "activation_function": "gelu_new" if c.mlp == "gelu_tanh" else "gelu",
               "layer_norm_epsilon": c.norm_eps, "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
               "attn_pdrop": c.dropout}
    else:
        arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[family]
        out = {"architectures": [arch], "model_type": family, "vocab_size": c.vocab_size,
               "hidden_size": c.n_embd, "intermediate_size": c.mlp_hidden, "num_hidden_layers": c.n_layer,
               "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim,
               "hidden_act": "silu", "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps,
               "rope_theta": c.rope_theta, "rope_scaling": c.rope_scaling, "attention_dropout": c.dropout}
        if family != "qwen2":
            out["attention_bias"] = c.bias
        if family == "llama":
            out["mlp_bias"] = c.bias
    out["tie_word_embeddings"] = c.tie_embeddings
    out["torch_dtype"] = "float32"
    out.update({k: v for k, v in special.items() if v is not None})
    return out


# -----------------------------------------------------------------------------
# Weight names: ours -> the HF tensors it is made of. "{}" is the layer index. A list means
# the HF tensors are concatenated along dim 0 (q, k, v into c_attn; gate, up into c_fc).

_LLAMA_NAMES = {
    "wte.weight": "model.embed_tokens.weight",
    "ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
    "blocks.{}.ln_1.weight": "model.layers.{}.input_layernorm.weight",
    "blocks.{}.attn.c_attn.weight": ["model.layers.{}.self_attn.q_proj.weight",
                                     "model.layers.{}.self_attn.k_proj.weight",
                                     "model.layers.{}.self_attn.v_proj.weight"],
    "blocks.{}.attn.c_attn.bias": ["model.layers.{}.self_attn.q_proj.bias",
                                   "model.layers.{}.self_attn.k_proj.bias",
                                   "model.layers.{}.self_attn.v_proj.bias"],
    "blocks.{}.attn.c_proj.weight": "model.layers.{}.self_attn.o_proj.weight",
    "blocks.{}.attn.c_proj.bias": "model.layers.{}.self_attn.o_proj.bias",
    "blocks.{}.attn.q_norm.weight": "model.layers.{}.self_attn.q_norm.weight",
    "blocks.{}.attn.k_norm.weight": "model.layers.{}.self_attn.k_norm.weight",
    "blocks.{}.ln_2.weight": "model.layers.{}.post_attention_layernorm.weight",
    "blocks.{}.mlp.c_fc.weight": ["model.layers.{}.mlp.gate_proj.weight", "model.layers.{}.mlp.up_proj.weight"],
    "blocks.{}.mlp.c_fc.bias": ["model.layers.{}.mlp.gate_proj.bias", "model.layers.{}.mlp.up_proj.bias"],
    "blocks.{}.mlp.c_proj.weight": "model.layers.{}.mlp.down_proj.weight",
    "blocks.{}.mlp.c_proj.bias": "model.layers.{}.mlp.down_proj.bias",
}
_GPT2_NAMES = {
    "wte.weight": "transformer.wte.weight",
    "wpe.weight": "transformer.wpe.weight",
    "ln_f.weight": "transformer.ln_f.weight",
    "ln_f.bias": "transformer.ln_f.bias",
    "lm_head.weight": "lm_head.weight",
    **{f"blocks.{{}}.{m}.{p}": f"transformer.h.{{}}.{m}.{p}"
       for m in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj") for p in ("weight", "bias")},
}
NAME_TABLES = {"gpt2": _GPT2_NAMES, "llama": _LLAMA_NAMES, "mistral": _LLAMA_NAMES,
               "qwen2": _LLAMA_NAMES, "qwen3": _LLAMA_NAMES}
# GPT-2 stores its linear layers as Conv1D, weight (in, out): the transpose of nn.Linear's.
_GPT2_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Tensors a checkpoint may hold that are not weights (GPT-2's causal-mask buffers, old rotary caches).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


def _hf_names(family, ours):
    """Our parameter name -> list of the HF names it is made of, and whether to transpose."""
    parts = ours.split(".")
    layer = None
    if parts[0] == "blocks":
        layer, template = parts[1], ".".join(["blocks", "{}"] + parts[2:])
    else:
        template = ours
    hf = NAME_TABLES[family].get(template)
    if hf is None:
        return None, False
    hf = hf if isinstance(hf, list) else [hf]
    transpose = family == "gpt2" and template.endswith(_GPT2_TRANSPOSED)
    return [h.format(layer) for h in hf], transpose


def state_dict_from_hf(model, family, read_tensor, names_available, where):
    """Fill our state dict from HF tensors. read_tensor(name) -> (tensor, file it came from)."""
    sd = model.state_dict()
    used = set()
    new = {}
    for ours, target in sd.items():
        if ours == "lm_head.weight" and model.config.tie_embeddings:
            continue  # the same tensor as wte.weight
        hf, transpose = _hf_names(family, ours)
        if hf is None:
            raise CheckpointError(f"{where}: no {family} tensor maps to this model's {ours}")
        pieces = []
        for name in hf:
            if name not in names_available:
                raise CheckpointError(f"{where}: missing tensor {name} (for {ours})")
            t, file = read_tensor(name)
            pieces.append((t.t() if transpose else t, name, file))
            used.add(name)
        t = pieces[0][0] if len(pieces) == 1 else torch.cat([p[0] for p in pieces], dim=0)
        if t.shape != target.shape:
            detail = ", ".join(f"{n} {tuple(p.shape)}" for p, n, _ in pieces)
            raise CheckpointError(f"{pieces[0][2]}: tensor {detail} does not fit {ours} {tuple(target.shape)}"
                                  f" of the config")
        new[ours] = t.to(target.dtype)
    extra = [n for n in names_available if n not in used and not n.endswith(_IGNORED_SUFFIXES)
             and not (n == "lm_head.weight" and model.config.tie_embeddings)]
    if extra:
        raise CheckpointError(f"{where}: unexpected tensor {extra[0]} ({len(extra)} in all) for this config")
    missing, unexpected = model.load_state_dict(new, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)


def state_dict_to_hf(model):
    family = family_of(model.config)
    out = {}
    for ours, t in model.state_dict().items():
        if ours == "lm_head.weight" and model.config.tie_embeddings:
            continue  # transformers ties it back to the embedding
        hf, transpose = _hf_names(family, ours)
        if hf is None:
            raise CheckpointError(f"no {family} name for this model's {ours}")
        if len(hf) == 1:
            pieces = [t]
        elif ours.endswith("c_attn.weight") or ours.endswith("c_attn.bias"):
            c = model.config
            pieces = t.split([c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.n_kv_head * c.head_dim])
        else:
            pieces = t.chunk(len(hf))
        for name, p in zip(hf, pieces):
            out[name] = (p.t() if transpose else p).contiguous()
    return out


# -----------------------------------------------------------------------------
# Hub downloads into the standard cache layout:
#   $HF_HOME/hub/models--org--name/blobs/<etag>            the files' bytes
#   $HF_HOME/hub/models--org--name/snapshots/<commit>/f    links to the blobs
#   $HF_HOME/hub/models--org--name/refs/<revision>         the commit a branch / tag pointed at

_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "model.safetensors", "model.safetensors.index.json")
_OPTIONAL = ("generation_config.json", "tokenizer_config.json")


def hub_cache_dir():
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return os.path.join(home, "hub")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # we want the hub's own headers (commit, etag, size), not the CDN's


def _request(url, method="GET", headers=None, follow=True):
    req = urllib.request.Request(url, method=method, headers=headers or {})
    opener = urllib.request.build_opener() if follow else urllib.request.build_opener(_NoRedirect)
    return opener.open(req, timeout=30)


class _Offline(Exception):
    pass


def _hub_file(repo_id, filename, revision, repo_dir, endpoint, token):
    """Download one file into the cache (resuming a partial one) -> (commit, path), or
    (None, None) if the hub has no such file."""
    url = f"{endpoint}/{repo_id}/resolve/{urllib.parse.quote(revision, safe='')}/{filename}"
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        try:
            r = _request(url, "HEAD", auth, follow=False)
            headers, location = r.headers, None
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None, None
            if e.code not in (301, 302, 303, 307, 308):
                raise CheckpointError(f"{url}: HTTP {e.code} {e.reason}"
                                      + (" (gated or private? set HF_TOKEN)" if e.code in (401, 403) else ""))
            headers, location = e.headers, urllib.parse.urljoin(url, e.headers["Location"])
    except (urllib.error.URLError, OSError) as e:
        raise _Offline(str(getattr(e, "reason", e)))
    commit = headers.get("X-Repo-Commit") or revision
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").strip('"').replace("W/", "").strip('"')
    size = headers.get("X-Linked-Size") or (headers.get("Content-Length") if location is None else None)
    size = int(size) if size is not None else None
    if not etag:
        raise CheckpointError(f"{url}: the server sent no ETag, cannot cache the file")
    blob = os.path.join(repo_dir, "blobs", etag)
    snap = os.path.join(repo_dir, "snapshots", commit, filename)
    os.makedirs(os.path.dirname(blob), exist_ok=True)
    os.makedirs(os.path.dirname(snap), exist_ok=True)
    if not (os.path.exists(blob) and (size is None or os.path.getsize(blob) == size)):
        _download(location or url, blob, size, auth if location is None or
                  urllib.parse.urlparse(location).netloc == urllib.parse.urlparse(url).netloc else {}, filename)
    if not os.path.exists(snap):
        rel = os.path.relpath(blob, os.path.dirname(snap))
        try:
            os.symlink(rel, snap)
        except OSError:  # no symlinks (Windows without developer mode): a copy, as huggingface_hub does
            import shutil
            shutil.copyfile(blob, snap)
    return commit, snap


def _download(url, blob, size, headers, label):
    """GET url into blob, resuming blob.incomplete with a Range request; check the size."""
    from tqdm import tqdm
    part = blob + ".incomplete"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if size is not None and have > size:
        os.remove(part)
        have = 0
    h = dict(headers)
    if have:
        h["Range"] = f"bytes={have}-"
    try:
        r = _request(url, "GET", h)
    except urllib.error.HTTPError as e:
        if e.code == 416 and size == have:  # already complete
            os.replace(part, blob)
            return
        raise CheckpointError(f"{url}: HTTP {e.code} {e.reason}")
    except (urllib.error.URLError, OSError) as e:
        raise _Offline(str(getattr(e, "reason", e)))
    if have and r.status != 206:  # the server ignored Range: start over
        have = 0
    with r, open(part, "ab" if have else "wb") as f, \
            tqdm(total=size, initial=have, unit="B", unit_scale=True, desc=label, leave=False) as bar:
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            f.write(chunk)
            bar.update(len(chunk))
    got = os.path.getsize(part)
    if size is not None and got != size:
        raise CheckpointError(f"{url}: downloaded {got} bytes, expected {size} (run again to resume)")
    os.replace(part, blob)


def hub_download(repo_id, revision="main"):
    """Download a hub model's config, tokenizer and safetensors weights into the HF cache
    -> (snapshot folder, commit). HF_ENDPOINT picks the server, HF_TOKEN authenticates.
    Offline (or HF_HUB_OFFLINE=1), a complete snapshot already in the cache is used."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    token = os.environ.get("HF_TOKEN")
    repo_dir = os.path.join(hub_cache_dir(), "models--" + repo_id.replace("/", "--"))
    ref = os.path.join(repo_dir, "refs", revision)

    def cached():
        commit = open(ref).read().strip() if os.path.exists(ref) else revision
        snap = os.path.join(repo_dir, "snapshots", commit)
        ok = os.path.exists(os.path.join(snap, "config.json")) and (
            os.path.exists(os.path.join(snap, "model.safetensors")) or
            os.path.exists(os.path.join(snap, "model.safetensors.index.json")))
        return (snap, commit) if ok else None

    offline_msg = (f"cannot download {repo_id} from {endpoint} (offline?): download it on a machine with "
                   f"network access (or set HF_ENDPOINT) and pass the local folder with config.json, "
                   f"*.safetensors and tokenizer.json instead")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        if cached():
            return cached()
        raise CheckpointError(offline_msg)
    try:
        commit, snap_file = _hub_file(repo_id, "config.json", revision, repo_dir, endpoint, token)
        if commit is None:
            raise CheckpointError(f"{endpoint}/{repo_id}: no such model (or no config.json at {revision})")
        for f in _FILES[1:]:
            if f == "model.safetensors.index.json" and os.path.exists(
                    os.path.join(os.path.dirname(snap_file), "model.safetensors")):
                continue
            _, path = _hub_file(repo_id, f, commit, repo_dir, endpoint, token)
            if path is None and f == "model.safetensors":
                continue  # sharded, try the index next
            if path is None and f not in _OPTIONAL and f != "model.safetensors.index.json":
                raise CheckpointError(f"{endpoint}/{repo_id}: has no {f}")
            if f == "model.safetensors.index.json":
                if path is None:
                    raise CheckpointError(f"{endpoint}/{repo_id}: has no model.safetensors (nor a sharded "
                                          f"index); only safetensors weights are read")
                for shard in sorted(set(json.load(open(path))["weight_map"].values())):
                    _hub_file(repo_id, shard, commit, repo_dir, endpoint, token)
    except _Offline as e:
        if cached():
            return cached()
        raise CheckpointError(f"{offline_msg} ({e})")
    if revision != commit:
        os.makedirs(os.path.dirname(ref), exist_ok=True)
        with open(ref, "w") as f:
            f.write(commit)
    return os.path.dirname(snap_file), commit


# -----------------------------------------------------------------------------
# Folder <-> model


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path, required=True):
    if not os.path.exists(path):
        if required:
            raise CheckpointError(f"{path}: no such file (a Hugging Face folder needs config.json, "
                                  f"*.safetensors and tokenizer.json)")
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})")


def is_hub_id(s):
    parts = s.split("/")
    return not os.path.exists(s) and len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~")) \
        and not s.endswith((".pt", ".json", ".safetensors"))


def load_pretrained(name_or_path, block_size=None, dtype=torch.float32, revision="main"):
    """A Hugging Face folder or hub id -> (GPT, tokenizers.Tokenizer, info). info holds the
    tokenizer's JSON string and the provenance: source, revision, sha256 of every file read."""
    from tokenizers import Tokenizer
    folder, commit = local_folder(name_or_path, revision)
    read = []
    cfg_path = os.path.join(folder, "config.json")
    cfg = _read_json(cfg_path)
    read.append(cfg_path)
    gen_path = os.path.join(folder, "generation_config.json")
    gen = _read_json(gen_path, required=False)
    if gen is not None:
        read.append(gen_path)
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if gen.get(k) is not None:  # what generate() uses wins over config.json
                cfg[k] = gen[k]
    config = config_from_hf(cfg, cfg_path, block_size)

    # weights: one file, or shards listed by an index
    single = os.path.join(folder, "model.safetensors")
    index_path = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(single):
        stored = {n: single for n in read_safetensors_header(single)[0]}
    elif os.path.exists(index_path):
        index = _read_json(index_path)
        read.append(index_path)
        stored = {n: os.path.join(folder, f) for n, f in index["weight_map"].items()}
        for f in set(stored.values()):
            if not os.path.exists(f):
                raise CheckpointError(f"{f}: shard named by {index_path} is missing")
    else:
        raise CheckpointError(f"{folder}: no model.safetensors nor model.safetensors.index.json "
                              f"(only safetensors weights are read)")
    read.extend(sorted(set(stored.values())))
    # canonical name -> (file, name in the file). The original GPT-2 checkpoints name their
    # tensors without the "transformer." prefix that transformers writes today.
    where = {}
    for n, f in stored.items():
        gpt2_short = cfg["model_type"] == "gpt2" and not n.startswith(("transformer.", "lm_head."))
        where["transformer." + n if gpt2_short else n] = (f, n)
    tensors_of = {}  # each file read once

    def read_tensor(name):
        f, n = where[name]
        if f not in tensors_of:
            tensors_of[f] = read_safetensors(f)
        return tensors_of[f][n], f

    with torch.device("cpu"):
        model = GPT(config)
    state_dict_from_hf(model, cfg["model_type"], read_tensor, set(where), folder)
    tensors_of.clear()
    model = model.to(dtype)

    tok_path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(tok_path):
        raise CheckpointError(f"{tok_path}: no such file (the model's tokenizer is needed)")
    read.append(tok_path)
    tokenizer = Tokenizer.from_file(tok_path)
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise CheckpointError(f"{tok_path}: {tokenizer.get_vocab_size()} tokens, more than the model's "
                              f"{config.vocab_size}")
    provenance = {"source": name_or_path, "revision": commit,
                  "files": {os.path.basename(p): _sha256(p) for p in read}}
    return model, tokenizer, {"tokenizer": tokenizer.to_str(), "provenance": provenance}


def local_folder(name_or_path, revision="main"):
    """(folder, commit): a local folder as it is (commit None), or a hub id's snapshot in the
    cache, downloaded where needed."""
    if os.path.isdir(name_or_path):
        return name_or_path, None
    if is_hub_id(name_or_path):
        return hub_download(name_or_path, revision)
    raise CheckpointError(f"{name_or_path}: no such folder (nor a hub id like org/name)")


def tokenizer_json_of(name_or_path, revision="main"):
    """The text of a Hugging Face folder's (or hub id's) tokenizer.json: what a data folder
    takes so that the scripts tokenize as the pretrained model does (a hub id is downloaded
    whole, into the cache the model is then loaded from)."""
    folder, _ = local_folder(name_or_path, revision)
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file (the model's tokenizer is needed)")
    with open(path, encoding="utf-8") as f:
        return f.read()


def save_pretrained(model, tokenizer, out_dir):
    """Write config.json, generation_config.json, model.safetensors, tokenizer.json and
    tokenizer_config.json: a folder transformers loads as the matching family."""
    raw = model.module if hasattr(model, "module") else model
    raw = getattr(raw, "_orig_mod", raw)
    c = raw.config
    if c.kind != "lm":
        raise CheckpointError("save_pretrained writes language models only (this is a scalar-head model)")
    os.makedirs(out_dir, exist_ok=True)
    hf_config = config_to_hf(c)
    write_safetensors(os.path.join(out_dir, "model.safetensors"), state_dict_to_hf(raw))
    hf_config["torch_dtype"] = str(next(raw.parameters()).dtype).replace("torch.", "")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    gen = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in hf_config}
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))

    def token(i):
        i = i[0] if isinstance(i, list) else i
        return tokenizer.id_to_token(i) if i is not None else None
    eos = token(c.eos_id) or ("<|endoftext|>" if tokenizer.token_to_id("<|endoftext|>") is not None else None)
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": token(c.bos_id) or eos,
               "eos_token": eos, "pad_token": token(c.pad_id), "model_max_length": c.block_size}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({k: v for k, v in tok_cfg.items() if v is not None}, f, indent=2)
