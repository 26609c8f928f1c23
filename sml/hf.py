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
- load_pretrained / save_pretrained: the folder <-> (GPT, tokenizer) conversions that
  checkpoint.from_pretrained / checkpoint.save_pretrained expose. A hub id is downloaded
  first (hub.py).
"""

import hashlib
import json
import math
import os
import re
import struct
import sys
from dataclasses import asdict

import torch

from sml import common
from sml import hub
from sml.common import CheckpointError, atomic_file
from model import GPT, LLAMA3_SCALING, GPTConfig, shapes_only

# -----------------------------------------------------------------------------
# safetensors

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
           "U8": torch.uint8, "BOOL": torch.bool}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_DTYPE_SIZES = {k: v.itemsize for k, v in _DTYPES.items()}
assert sys.byteorder == "little", "safetensors data is little-endian; this reader assumes a little-endian host"


def read_safetensors_header(path):
    """-> (header dict without __metadata__, offset of the data section). The header is
    checked whole (check_safetensors_header) before any tensor's bytes are read."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(100_000_000, size - 8):
            raise CheckpointError(f"{path}: not a safetensors file (header length {n} in a file of {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{path}: not a safetensors file (header is not JSON: {e})")
    check_safetensors_header(path, header, size - 8 - n)
    header.pop("__metadata__", None)
    return header, 8 + n


def _sizes(value):
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def check_safetensors_header(path, header, data_size):
    """Refuse a header that does not describe its file: every tensor needs a known dtype, a
    shape of sizes, and data_offsets [begin, end] that hold exactly its bytes, inside the data
    section (data_size bytes) and overlapping no other tensor's. Checked before anything is
    read, so a header that lies about sizes is an error, not a huge buffer."""
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict):
        raise CheckpointError(f"{path}: not a safetensors file (the header is not a JSON object of tensors)")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise CheckpointError(f"{where}: expected {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _DTYPES:
            raise CheckpointError(f"{where}: dtype {dtype!r} is not supported ({', '.join(_DTYPES)})")
        if not _sizes(shape):
            raise CheckpointError(f"{where}: shape {shape!r} is not a list of sizes")
        if not (_sizes(offsets) and len(offsets) == 2 and offsets[0] <= offsets[1]):
            raise CheckpointError(f"{where}: data_offsets {offsets!r} is not [begin, end]")
        begin, end = offsets
        if end > data_size:
            raise CheckpointError(f"{where}: data_offsets {offsets} run past the end of the file "
                                  f"({data_size} bytes of data)")
        need = math.prod(shape) * _DTYPE_SIZES[dtype]
        if end - begin != need:
            raise CheckpointError(f"{where}: {end - begin} bytes for shape {shape} of {dtype} ({need} needed)")
        if begin < end:
            spans.append((begin, end, name))
    spans.sort()
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise CheckpointError(f"{path}: tensors {a!r} and {b!r} overlap in the file")


def read_safetensors(path, names=None):
    """{name: tensor} of a .safetensors file (only `names` if given), in the stored dtype."""
    header, data_start = read_safetensors_header(path)
    out = {}
    with open(path, "rb") as f:
        for name, info in header.items():
            if names is not None and name not in names:
                continue
            begin, end = info["data_offsets"]
            f.seek(data_start + begin)
            buf = bytearray(end - begin)  # at most the file's size: the header is checked
            if f.readinto(buf) != len(buf):
                raise CheckpointError(f"{path}: tensor {name} is cut off (the file changed while read?)")
            dtype = _DTYPES[info["dtype"]]
            t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
            out[name] = t.view(info["shape"])
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
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise CheckpointError(f"{where}: rope_theta {theta!r} is not a number")
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    if rope_type == "default":
        return float(theta), None
    if rope_type != "llama3":
        raise CheckpointError(f"{where}: rope scaling {rope_type!r} is not supported (default and llama3 are)")
    if any(k not in params for k in LLAMA3_SCALING):
        raise CheckpointError(f"{where}: llama3 rope scaling needs {', '.join(LLAMA3_SCALING)}")
    return float(theta), {"rope_type": "llama3", **{k: params[k] for k in LLAMA3_SCALING}}


def config_from_hf(cfg, where, block_size=None):
    """A GPTConfig from a config.json dict. block_size: cap the context (None: the model's
    max_position_embeddings, or Mistral's sliding window if smaller, where full attention
    is still exact). A missing key or a value GPTConfig refuses is one CheckpointError."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where}: expected a JSON object")
    try:
        return _config_from_hf(cfg, where, block_size)
    except KeyError as e:
        raise CheckpointError(f"{where}: no {e.args[0]!r}, which a {cfg.get('model_type')} config.json needs") from None
    except (TypeError, ValueError) as e:  # a value of the wrong type or out of range; GPTConfig names the field
        raise CheckpointError(f"{where}: {e}") from None


def _config_from_hf(cfg, where, block_size):
    family = cfg.get("model_type")
    if family not in FAMILIES:
        raise CheckpointError(f"{where}: model_type {family!r} is not supported (supported: {', '.join(FAMILIES)})")
    cfg = {**_DEFAULTS[family], **{k: v for k, v in cfg.items() if v is not None}}
    special = {"bos_id": cfg.get("bos_token_id"), "eos_id": cfg.get("eos_token_id"), "pad_id": cfg.get("pad_token_id")}
    if family == "gpt2":
        if (cfg.get("scale_attn_by_inverse_layer_idx") or cfg.get("reorder_and_upcast_attn")
                or cfg.get("scale_attn_weights") is False):
            raise CheckpointError(f"{where}: GPT-2 attention variants (scale_attn_*, reorder_and_upcast_attn) "
                                  f"are not supported")
        acts = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
        if cfg["activation_function"] not in acts:
            raise CheckpointError(f"{where}: activation {cfg['activation_function']!r} is not supported")
        context = cfg["n_positions"]
        out = dict(vocab_size=cfg["vocab_size"], n_layer=cfg["n_layer"], n_head=cfg["n_head"],
                   n_embd=cfg["n_embd"], mlp_hidden=cfg.get("n_inner"),
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
        # n_kv_head / head_dim left out: GPTConfig's defaults (n_head, n_embd // n_head) are HF's
        out = dict(vocab_size=cfg["vocab_size"], n_layer=cfg["num_hidden_layers"], n_head=cfg["num_attention_heads"],
                   n_embd=cfg["hidden_size"], mlp_hidden=cfg["intermediate_size"],
                   n_kv_head=cfg.get("num_key_value_heads"), head_dim=cfg.get("head_dim"),
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
        ok = (c.norm == "layernorm" and c.mlp in ("gelu", "gelu_tanh") and c.bias and c.qkv_bias
              and c.n_kv_head == c.n_head and c.head_dim * c.n_head == c.n_embd and not c.qk_norm)
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


def hf_tensor_plan(model, family, shapes, file_of, where, config_path):
    """Which HF tensors make each of the model's parameters -> {ours: (HF names, transpose)},
    from the headers' shapes alone (shapes: {HF name: shape}, file_of: {HF name: file}), so
    that nothing is read or allocated before every tensor is known to be there, to fit the
    parameter's shape in the config, and none is left over. `model` may be on the meta device."""
    plan = {}
    for ours, target in model.state_dict().items():
        if ours == "lm_head.weight" and model.config.tie_embeddings:
            continue  # the same tensor as wte.weight
        hf, transpose = _hf_names(family, ours)
        if hf is None:
            raise CheckpointError(f"{where}: no {family} tensor maps to this model's {ours}")
        for name in hf:
            if name not in shapes:
                raise CheckpointError(f"{where}: missing tensor {name} (for {ours})")
        # the pieces are concatenated along dim 0, after GPT-2's transpose
        pieces = [tuple(shapes[n])[::-1] if transpose else tuple(shapes[n]) for n in hf]
        fits = (all(len(p) == target.dim() and p[1:] == target.shape[1:] for p in pieces)
                and sum(p[0] for p in pieces) == target.shape[0])
        if not fits:
            detail = ", ".join(f"{n} {tuple(shapes[n])}" for n in hf)
            raise CheckpointError(f"{file_of[hf[0]]}: tensor {detail} does not fit {ours} {tuple(target.shape)}"
                                  f" of {config_path}")
        plan[ours] = (hf, transpose)
    used = {n for hf, _ in plan.values() for n in hf}
    extra = [n for n in shapes if n not in used and not n.endswith(_IGNORED_SUFFIXES)
             and not (n == "lm_head.weight" and model.config.tie_embeddings)]
    if extra:
        raise CheckpointError(f"{where}: unexpected tensor {extra[0]} ({len(extra)} in all) for this config")
    return plan


def state_dict_from_hf(model, plan, read_tensor):
    """Fill our state dict from HF tensors as hf_tensor_plan says. read_tensor(HF name) -> tensor."""
    sd = model.state_dict()
    new = {}
    for ours, (hf, transpose) in plan.items():
        pieces = [read_tensor(n).t() if transpose else read_tensor(n) for n in hf]
        new[ours] = (pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)).to(sd[ours].dtype)
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
# Folder <-> model


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_LAYER = re.compile(r"(?:model\.layers|transformer\.h)\.(\d+)\.")  # a layer's tensors: Llama / Qwen, GPT-2


def load_pretrained(name_or_path, block_size=None, dtype=torch.float32, revision="main"):
    """A Hugging Face folder or hub id -> (GPT, tokenizers.Tokenizer, info). info holds the
    tokenizer's JSON string and the provenance: source, revision, sha256 of every file read.
    Every safetensors header, and the config against the shapes they give, is checked before
    any weight is read or the model is built."""
    folder, commit = hub.local_folder(name_or_path, revision)
    read = []
    cfg_path = os.path.join(folder, "config.json")
    cfg = hub.read_json(cfg_path)
    read.append(cfg_path)
    gen_path = os.path.join(folder, "generation_config.json")
    gen = hub.read_json(gen_path, required=False)
    for path, content in ((cfg_path, cfg), (gen_path, gen)):
        if content is not None and not isinstance(content, dict):
            raise CheckpointError(f"{path}: expected a JSON object")
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
        stored = hub.weight_map(index_path)
        read.append(index_path)
        for f in set(stored.values()):
            if not os.path.exists(f):
                raise CheckpointError(f"{f}: shard named by {index_path} is missing")
    else:
        raise CheckpointError(f"{folder}: no model.safetensors nor model.safetensors.index.json "
                              f"(only safetensors weights are read)")
    read.extend(sorted(set(stored.values())))
    headers = {f: read_safetensors_header(f)[0] for f in set(stored.values())}
    # canonical name -> (file, name in the file). The original GPT-2 checkpoints name their
    # tensors without the "transformer." prefix that transformers writes today.
    where, shapes = {}, {}
    for n, f in stored.items():
        if n not in headers[f]:
            raise CheckpointError(f"{f}: has no tensor {n} (named by {index_path})")
        gpt2_short = cfg["model_type"] == "gpt2" and not n.startswith(("transformer.", "lm_head."))
        name = "transformer." + n if gpt2_short else n
        where[name], shapes[name] = (f, n), headers[f][n]["shape"]
    layers = {m.group(1) for n in where if (m := _LAYER.match(n))}
    if len(layers) != config.n_layer:  # before a model of the config's size is made, even shapes only
        raise CheckpointError(f"{cfg_path}: {config.n_layer} layers, but the weights hold {len(layers)}")
    plan = hf_tensor_plan(shapes_only(config), cfg["model_type"], shapes, {n: f for n, (f, _) in where.items()},
                          folder, cfg_path)
    tensors_of = {}  # each file read once

    def read_tensor(name):
        f, n = where[name]
        if f not in tensors_of:
            tensors_of[f] = read_safetensors(f)
        return tensors_of[f][n]

    with torch.device("cpu"):
        model = GPT(config)
    state_dict_from_hf(model, plan, read_tensor)
    tensors_of.clear()
    model = model.to(dtype)

    tok_path = os.path.join(folder, "tokenizer.json")
    read.append(tok_path)
    tokenizer = hub.read_tokenizer(tok_path)
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise CheckpointError(f"{tok_path}: {tokenizer.get_vocab_size()} tokens, more than the model's "
                              f"{config.vocab_size}")
    provenance = {"source": name_or_path, "revision": commit,
                  "files": {os.path.basename(p): _sha256(p) for p in read}}
    return model, tokenizer, {"tokenizer": tokenizer.to_str(), "provenance": provenance}


_SAVED = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def save_pretrained(model, tokenizer, out_dir):
    """Write config.json, generation_config.json, model.safetensors, tokenizer.json and
    tokenizer_config.json: a folder transformers loads as the matching family. All or
    nothing (common.atomic_folder): a folder save_pretrained wrote before is replaced whole, and
    a folder that holds anything else is refused, never wiped."""
    raw = model.module if hasattr(model, "module") else model
    raw = getattr(raw, "_orig_mod", raw)
    c = raw.config
    if c.kind != "lm":
        raise CheckpointError("save_pretrained writes language models only (this is a scalar-head model)")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CheckpointError(f"{out_dir}: is a file; save_pretrained writes a folder")
    others = sorted(set(os.listdir(out_dir)) - set(_SAVED)) if os.path.isdir(out_dir) else []
    if others:
        raise CheckpointError(f"{out_dir}: holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}, "
                              f"which save_pretrained did not write; save into a new or empty folder")
    hf_config = config_to_hf(c)
    hf_config["torch_dtype"] = str(next(raw.parameters()).dtype).replace("torch.", "")
    gen = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in hf_config}

    def token(i):
        i = i[0] if isinstance(i, list) else i
        return tokenizer.id_to_token(i) if i is not None else None
    eos = token(c.eos_id) or ("<|endoftext|>" if tokenizer.token_to_id("<|endoftext|>") is not None else None)
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": token(c.bos_id) or eos,
               "eos_token": eos, "pad_token": token(c.pad_id), "model_max_length": c.block_size}
    with common.atomic_folder(out_dir, _SAVED) as tmp:
        write_safetensors(os.path.join(tmp, "model.safetensors"), state_dict_to_hf(raw))
        common.write_json(os.path.join(tmp, "config.json"), hf_config)
        common.write_json(os.path.join(tmp, "generation_config.json"), gen)
        common.write_json(os.path.join(tmp, "tokenizer_config.json"),
                          {k: v for k, v in tok_cfg.items() if v is not None})
        tokenizer.save(os.path.join(tmp, "tokenizer.json"))
