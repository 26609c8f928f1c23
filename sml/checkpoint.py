"""
Checkpoints, in the project's format and in Hugging Face's: what every script loads and saves.

- Ours (.pt): self-contained (model config, weights, tokenizer, provenance: script, arguments,
  step, parent), written atomically (a temporary name, then a rename), loaded with
  weights_only=True, and checked before anything is built: the config on its own, then against
  the weights' shapes (checked_config), so that a hostile or foreign file is one clear error.
  Resume state (optimizer, PPO's critic, ...) rides along as extra keys of the files a run
  resumes from; finished models are weights only.
- Hugging Face's (a folder or a hub id): load_checkpoint reads one as a language model
  (from_pretrained); save_pretrained writes one. The format itself lives in hf.py, the hub
  client in hub.py.
"""

import dataclasses
import os
from dataclasses import asdict

import torch
from tokenizers import Tokenizer

from sml import hf
from sml import hub
from sml.common import CheckpointError, atomic_file
from model import GPT, GPTConfig, shapes_only


def save_checkpoint(path, model, tokenizer_json, provenance, extra=None):
    """Write model config + weights + tokenizer + provenance to `path` atomically.

    provenance: what made it, e.g. {"script": "pretrain.py", "args": {...}, "step": 1000,
    "parent": "runs/x/base.pt"}. extra: optional resume state (optimizer, rng, ...).
    The file is written to a temporary name and renamed, so an interrupted run never
    leaves a broken checkpoint behind.
    """
    raw = model.module if hasattr(model, "module") else model  # unwrap DDP
    raw = getattr(raw, "_orig_mod", raw)  # unwrap torch.compile
    if getattr(raw, "pretrained_from", None) and "pretrained_from" not in provenance:
        # the pretrained checkpoint this line of models started from (source, revision, hashes)
        provenance = {**provenance, "pretrained_from": raw.pretrained_from}
    ckpt = {
        "kind": raw.config.kind,
        "config": asdict(raw.config),
        "model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
        "tokenizer": tokenizer_json,
        "provenance": provenance,
    }
    if extra:
        ckpt.update(extra)
    bad = first_non_finite(ckpt)
    if bad:  # a resume point that holds NaN would start every rerun from a broken state
        raise CheckpointError(f"{path}: not written: {bad} holds NaN or inf (the run diverged; the files "
                              f"written before are untouched)")
    with atomic_file(path, "wb") as f:
        torch.save(ckpt, f)


def first_non_finite(obj, name=""):
    """The name of the first floating-point tensor in `obj` (nested dicts, lists, tuples) that holds
    NaN or inf, e.g. "critic.score_head.weight"; None when every one is finite."""
    if isinstance(obj, torch.Tensor):
        finite = not obj.is_floating_point() or bool(torch.isfinite(obj).all())
        return None if finite else (name or "a tensor")
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        bad = first_non_finite(v, f"{name}.{k}" if name else str(k))
        if bad:
            return bad
    return None


def load_checkpoint(path, kind=None, tokenizer_json=None, device="cpu"):
    """Load a checkpoint -> (model, ckpt dict). Checks the kind ("lm" / "scalar") and, if
    tokenizer_json is given, that the checkpoint was trained with that tokenizer.

    `path` is one of our .pt files, or a Hugging Face folder or hub id (a language model;
    its ckpt dict has kind, config, tokenizer and provenance, no "model" weights). Our file's
    config is checked, and against its weights' shapes, before the model is built."""
    if os.path.isdir(path) or (not os.path.exists(path) and hub.is_hub_id(path)):
        model, _, info = from_pretrained(path, return_info=True)
        ckpt = {"kind": "lm", "config": asdict(model.config), **info}
    else:
        if not os.path.exists(path):
            raise CheckpointError(f"{path}: no such checkpoint")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # torch's own message would suggest unsafe loading: never do that here
            raise CheckpointError(f"{path}: not a checkpoint of this project (unreadable)") from None
        if not isinstance(ckpt, dict) or "kind" not in ckpt or "model" not in ckpt:
            raise CheckpointError(f"{path}: not a checkpoint of this project")
        config = checked_config(ckpt.get("config"), ckpt["model"], path)
        if ckpt["kind"] != config.kind:
            raise CheckpointError(f"{path}: kind {ckpt['kind']!r}, but its config's kind is {config.kind!r}")
        model = None
    if kind is not None and ckpt["kind"] != kind:
        what = {"lm": "a language model", "scalar": "a scalar-head model (reward model / critic)"}
        raise CheckpointError(f"{path}: is {what[ckpt['kind']]}, but {what[kind]} is needed here")
    if tokenizer_json is not None and ckpt.get("tokenizer") != tokenizer_json:
        raise CheckpointError(f"{path}: was trained with a different tokenizer than the data's "
                              f"tokenizer.json")
    if model is None:
        model = GPT(config)
        model.load_state_dict(ckpt["model"])
        model.pretrained_from = (ckpt.get("provenance") or {}).get("pretrained_from")
    return model.to(device), ckpt


def checked_config(cfg, weights, where):
    """A GPTConfig from a checkpoint's config dict, checked on its own and against the shapes of
    `weights` before anything is built (a model, or a PPO critic kept beside its policy)."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where}: its config is not a dict (not a checkpoint of this project?)")
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = [k for k in cfg if k not in fields]
    if unknown:
        raise CheckpointError(f"{where}: its config has an unknown field {unknown[0]!r} (written by another "
                              f"version of this code?)")
    try:
        config = GPTConfig(**cfg)
    except ValueError as e:
        raise CheckpointError(f"{where}: its config: {e}") from None
    check_weights_fit(config, weights, where)
    return config


def check_weights_fit(config, weights, where):
    """Before a model is built: `weights` (a state dict from a file) holds exactly the tensors of
    `config`, in its shapes. They are compared with shapes_only(config), after the layer count,
    so that an absurd config never gets to allocate anything."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"{where}: its weights are not a dict of tensors")
    for k, v in weights.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{where}: weight {k!r} is not a named tensor")
    layers = {k.split(".")[1] for k in weights if k.startswith("blocks.")}
    if len(layers) != config.n_layer:
        raise CheckpointError(f"{where}: its config says n_layer={config.n_layer}, its weights hold "
                              f"{len(layers)} layers")
    expected = {k: tuple(v.shape) for k, v in shapes_only(config).state_dict().items()}
    for k, shape in expected.items():
        if k not in weights:
            raise CheckpointError(f"{where}: missing weight {k} for its config")
        if tuple(weights[k].shape) != shape:
            raise CheckpointError(f"{where}: weight {k} {tuple(weights[k].shape)} does not fit its config {shape}")
    extra = [k for k in weights if k not in expected]
    if extra:
        raise CheckpointError(f"{where}: unexpected weight {extra[0]} ({len(extra)} in all) for its config")


def from_pretrained(name_or_path, block_size=None, dtype=torch.float32, revision="main", return_info=False):
    """A Hugging Face checkpoint -> (model, tokenizer): a local folder (config.json,
    model.safetensors or shards + index, tokenizer.json, generation_config.json) or a hub id,
    downloaded into the HF cache. Families: gpt2, llama, mistral, qwen2, qwen3. block_size
    caps the context (default: the model's max_position_embeddings). The special-token ids
    are in model.config (bos_id, eos_id, pad_id). See hf.py."""
    model, tokenizer, info = hf.load_pretrained(name_or_path, block_size, dtype, revision)
    model.pretrained_from = info["provenance"]
    return (model, tokenizer, info) if return_info else (model, tokenizer)


def save_pretrained(model, tokenizer, out_dir):
    """Write a Hugging Face folder (config.json, model.safetensors, tokenizer.json, ...) that
    transformers loads as the matching family; today's from-scratch GPT is written as gpt2.
    tokenizer: a tokenizers.Tokenizer or its JSON string."""
    if isinstance(tokenizer, str):
        tokenizer = Tokenizer.from_str(tokenizer)
    hf.save_pretrained(model, tokenizer, out_dir)
