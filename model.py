"""
A small GPT, written out by hand, plus everything SML needs from a model:

- GPT: token + position embeddings, pre-norm transformer blocks, a language-model
  head (kind "lm") or a scalar head (kind "scalar": the reward model and the PPO critic
  share the trunk and read one number per position).
- forward() takes left-padded batches (pad_mask) and a KV cache, which is what the sampler
  (sampler.py) needs; trunk() gives the hidden states PPO applies the output layer to.
- GPTConfig: the from-scratch GPT by default, with the switches a pretrained GPT-2, Llama,
  Mistral or Qwen checkpoint needs (hf.py reads and writes those; checkpoint.py our files).
- configure_optimizer(): AdamW with decay / no-decay parameter groups.
"""

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


IGNORE_INDEX = -100  # targets with this value get no loss (prompt tokens, padding)


@dataclass
class GPTConfig:
    vocab_size: int = 512
    block_size: int = 128  # the longest sequence (prompt + completion) the model can see
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    kind: str = "lm"  # "lm": next-token logits; "scalar": one score per position
    # The switches a pretrained GPT-2, Llama, Mistral or Qwen checkpoint needs (see hf.py).
    # The defaults are today's from-scratch GPT, bit for bit.
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama, Qwen)
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # "gelu" (exact), "gelu_tanh" (GPT-2's approximation), "swiglu" (Llama, Qwen)
    mlp_hidden: int = None  # the MLP's inner width; None: 4 * n_embd
    pos_emb: str = "learned"  # "learned" (a table, GPT-2) or "rope" (rotary, Llama, Qwen)
    rope_theta: float = 10000.0
    rope_scaling: dict = None  # Llama 3's frequency scaling: {"rope_type": "llama3", "factor", ...}
    n_kv_head: int = None  # grouped-query attention: heads of keys / values; None: n_head
    head_dim: int = None  # None: n_embd // n_head (Qwen3 sets it)
    bias: bool = True  # biases of the output projection, the MLP and the layer norms
    qkv_bias: bool = None  # biases of q, k, v; None: as `bias` (Qwen2: on while `bias` is off)
    qk_norm: bool = False  # RMSNorm of each head's q and k before RoPE (Qwen3)
    tie_embeddings: bool = True  # the output layer shares the token embedding's weights
    # Special tokens of a pretrained checkpoint (None for ours: they use <|endoftext|>).
    bos_id: int = None
    eos_id: object = None  # an id, or a list of ids as the checkpoint gives them (data/tokenizer.stop_ids)
    pad_id: int = None

    def __post_init__(self):
        check_config(self)  # before the defaults below divide by n_head
        self.n_kv_head = self.n_kv_head or self.n_head
        self.head_dim = self.head_dim or self.n_embd // self.n_head
        self.mlp_hidden = self.mlp_hidden or 4 * self.n_embd
        if self.qkv_bias is None:
            self.qkv_bias = self.bias


CHOICES = {"kind": ("lm", "scalar"), "norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "gelu_tanh", "swiglu"),
           "pos_emb": ("learned", "rope")}
LLAMA3_SCALING = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def check_config(c):
    """A ValueError naming the first field of GPTConfig `c` that no model can be built from.
    A config may come from a file (a checkpoint, a config.json): a bad value is one clear line
    here, not a ZeroDivisionError or an allocator's error deep inside the model. Whether the
    sizes fit the weights is the loaders' check (load_checkpoint, hf.load_pretrained)."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_hidden", "n_kv_head", "head_dim"):
        v = getattr(c, name)
        optional = name in ("mlp_hidden", "n_kv_head", "head_dim")  # None: derived from the others
        if not (v is None and optional) and not (is_int(v) and v >= 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    for name, allowed in CHOICES.items():
        if getattr(c, name) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(c, name)!r}")
    n_kv_head, head_dim = c.n_kv_head or c.n_head, c.head_dim or c.n_embd // c.n_head
    if c.n_head % n_kv_head:
        raise ValueError(f"n_head {c.n_head} is not a multiple of n_kv_head {n_kv_head}")
    if head_dim < 1:
        raise ValueError(f"n_embd {c.n_embd} is smaller than n_head {c.n_head}: a head would have no dimensions")
    if c.pos_emb == "rope" and head_dim % 2:
        raise ValueError(f"head_dim must be even for rotary positions, got {head_dim}")
    for name in ("bias", "qkv_bias", "qk_norm", "tie_embeddings"):
        if not isinstance(getattr(c, name), bool) and not (name == "qkv_bias" and c.qkv_bias is None):
            raise ValueError(f"{name} must be true or false, got {getattr(c, name)!r}")
    if not (is_number(c.dropout) and 0 <= c.dropout < 1):
        raise ValueError(f"dropout must be in [0, 1), got {c.dropout!r}")
    if not (is_number(c.norm_eps) and c.norm_eps >= 0) or not (is_number(c.rope_theta) and c.rope_theta > 0):
        raise ValueError(f"norm_eps must be >= 0 and rope_theta > 0, got {c.norm_eps!r} and {c.rope_theta!r}")
    s = c.rope_scaling
    if s is not None and not (isinstance(s, dict) and s.get("rope_type") == "llama3"
                              and all(is_number(s.get(k)) for k in LLAMA3_SCALING)
                              and s["high_freq_factor"] != s["low_freq_factor"]):
        raise ValueError(f"rope_scaling must be none or Llama 3's (rope_type llama3, {', '.join(LLAMA3_SCALING)}),"
                         f" got {s!r}")


# -----------------------------------------------------------------------------
# The transformer


class RMSNorm(nn.Module):
    """x / rms(x) * weight (Llama, Qwen). Computed in float32 and cast back, as the
    reference implementation does, so that bf16 models give the same numbers."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def make_norm(config, dim):
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps)
    assert config.norm == "layernorm", f"unknown norm {config.norm!r}"
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)


def rope_inv_freq(config, device):
    """Rotary frequencies theta^(-2i/d), i < d/2, with Llama 3's scaling of the long
    wavelengths when the config asks for it (low frequencies slowed down by `factor`,
    a smooth blend between low_freq_factor and high_freq_factor)."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, device=device).float() / d))
    s = config.rope_scaling
    if s:
        assert s.get("rope_type") == "llama3", f"unsupported rope scaling {s!r}"
        old_len = s["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / s["low_freq_factor"], old_len / s["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / s["factor"], inv_freq)
        smooth = (old_len / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
        blended = (1 - smooth) * scaled / s["factor"] + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(medium, blended, scaled)
    return inv_freq


def compute_dtype(x):
    """The dtype the layers compute in: autocast's where it is on (an embedding's output stays
    float32 under autocast, while the matmuls after it run in autocast's dtype), else x's own."""
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype


def rope_cos_sin(config, positions, dtype):
    """cos and sin of every (position, frequency), (B or 1, 1, T, head_dim), for per-row
    positions (B, T) or shared ones (T,). Angles in float32 whatever the model's dtype."""
    pos = positions if positions.dim() == 2 else positions.unsqueeze(0)
    freqs = pos.float().unsqueeze(-1) * rope_inv_freq(config, positions.device)  # (B, T, d/2)
    emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # halves, not interleaved pairs
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    """Rotate each pair (x[i], x[i + d/2]) by its angle (the "rotate half" layout of the
    Hugging Face Llama weights, whose q / k rows are permuted for it)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        assert self.n_head % self.n_kv_head == 0
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.c_attn = nn.Linear(config.n_embd, q_dim + 2 * kv_dim, bias=config.qkv_bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(q_dim, config.n_embd, bias=config.bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.norm_eps)
        self.qk_norm = config.qk_norm
        self.dropout = config.dropout

    def forward(self, x, attn_mask=None, kv_cache=None, rope=None):
        B, T, C = x.shape
        hd = self.head_dim
        q, k, v = self.c_attn(x).split([self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=2)
        q = q.view(B, T, self.n_head, hd)
        k = k.view(B, T, self.n_kv_head, hd)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.view(B, T, self.n_kv_head, hd).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_cache is not None:
            # The cache holds keys/values of earlier positions; append this step's and
            # attend over all of them (attn_mask says which cached slots are real).
            k, v = kv_cache.append(k, v)
        dropout_p = self.dropout if self.training else 0.0
        group = self.n_head // self.n_kv_head
        if group > 1 and attn_mask is not None:
            # grouped-query attention over a cache or a padded batch: query head h reads key /
            # value head h // group, so the group's queries are stacked as extra rows of one
            # kv head (no copy of the cache's keys and values at every decoding step)
            q = q.reshape(B, self.n_kv_head, group * T, hd)
            mask = attn_mask.unsqueeze(2).expand(-1, -1, group, -1, -1).reshape(B, 1, group * T, -1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
            y = y.view(B, self.n_head, T, hd).transpose(1, 2).contiguous().view(B, T, self.n_head * hd)
            return self.c_proj(y)
        if group > 1:  # the same, copying each kv head for its group (a causal mask has no rows to stack)
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * hd)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.act = config.mlp
        assert self.act in ("gelu", "gelu_tanh", "swiglu"), f"unknown mlp {self.act!r}"
        # SwiGLU's gate and up projections are one matmul: c_fc = [gate; up]
        fc_out = 2 * config.mlp_hidden if self.act == "swiglu" else config.mlp_hidden
        self.c_fc = nn.Linear(config.n_embd, fc_out, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.act == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh" if self.act == "gelu_tanh" else "none")
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, kv_cache=None, rope=None):
        x = x + self.attn(self.ln_1(x), attn_mask, kv_cache, rope)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.kind in ("lm", "scalar"), f"unknown model kind {config.kind!r}"
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos_emb == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:  # rotary: positions turn q and k inside attention, no table here
            assert config.pos_emb == "rope", f"unknown position embedding {config.pos_emb!r}"
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = make_norm(config, config.n_embd)
        if config.kind == "lm":
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            if config.tie_embeddings:
                self.lm_head.weight = self.wte.weight  # weight tying, as in GPT-2
        else:
            self.score_head = nn.Linear(config.n_embd, 1)
        self.grad_checkpointing = False  # set by a training script (--grad_checkpointing)
        # GPT-2 init: N(0, 0.02), and residual projections scaled by 1/sqrt(2 * n_layer)
        # so the residual stream's variance does not grow with depth.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, pad_mask=None, positions=None, kv_cache=None, last_only=False):
        """
        idx: (B, T) token ids. targets: (B, T) next-token targets (IGNORE_INDEX = no loss).
        pad_mask: (B, T) bool, True at real tokens. Without it every token is real and the
          plain causal mask is used. With it (left padding), each row's positions count
          real tokens only and no query attends to a padding key.
        kv_cache: a sampler.KVCache for incremental decoding (see sampler.py).
        last_only: logits at the last position only (a prefill needs no more; with a large
          vocabulary the output layer is most of the prefill's work).
        Returns (out, loss): out is logits (B, T, V) for kind "lm", scores (B, T) for "scalar".
        """
        x = self.trunk(idx, pad_mask, positions, kv_cache)
        if self.config.kind == "scalar":
            return fp32_head(self.score_head, x).squeeze(-1), None
        logits = fp32_head(self.lm_head, x[:, -1:] if last_only else x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return logits, loss

    def trunk(self, idx, pad_mask=None, positions=None, kv_cache=None):
        """The final hidden states (B, T, n_embd), after the last norm: what the heads read.
        PPO calls it directly to apply the output layer to response positions only."""
        B, T = idx.shape
        attn_mask = None
        if pad_mask is not None or kv_cache is not None:
            attn_mask, positions = _attention_mask_and_positions(idx, pad_mask, positions, kv_cache)
        if positions is None:
            positions = torch.arange(T, device=idx.device)
        # The length check uses host-side numbers only (reading positions.max() would wait
        # for the device at every decoding step). With a cache, the sampler keeps every row's
        # position inside the context through its per-row token budget.
        if kv_cache is None and T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than the model's context of "
                             f"{self.config.block_size}")
        x = self.wte(idx)
        rope = None
        if self.config.pos_emb == "rope":
            # cos / sin in the dtype q and k come out of their matmul in: float32 ones would
            # turn q and k (and the cached keys) back into float32 under bf16 autocast
            rope = rope_cos_sin(self.config, positions, compute_dtype(x))
        else:
            x = x + self.wpe(positions)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing and torch.is_grad_enabled() and kv_cache is None:
                # keep only each block's input for backward and run the block again there:
                # activation memory of one block instead of all of them, for a third more compute
                x = checkpoint(block, x, attn_mask, None, rope, use_reentrant=False)
            else:
                x = block(x, attn_mask, kv_cache.layer(i) if kv_cache is not None else None, rope)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.ln_f(x)


def fp32_head(head, hidden):
    """An output layer (the LM head or a scalar head) in float32, whatever the autocast and the
    weights' dtype: bf16 logits would carry a 2^-9 relative error into log-softmax, and a bf16
    score would quantise a reward model's score before PPO standardises it (at a mean of 8 and a
    std of 0.1, a bf16 step is 30-60% of the std). One matmul per forward: cheap next to the trunk."""
    device_type = hidden.device.type
    off = (torch.autocast(device_type, enabled=False) if torch.amp.is_autocast_available(device_type)
           else nullcontext())
    with off:
        if head.weight.dtype in (torch.float32, torch.float64):
            return head(hidden.to(head.weight.dtype))  # the module itself, so that its hooks run
        bias = None if head.bias is None else head.bias.float()
        return F.linear(hidden.float(), head.weight.float(), bias)  # a frozen model's bf16 weights


def _attention_mask_and_positions(idx, pad_mask, positions, kv_cache):
    """Boolean attention mask (B, 1, T, S) and positions (B, T) for padded / cached input.

    Query t may attend key s when s is not after t (causal) and key s is a real token.
    Each query may always attend itself, so a padding query never has an all-False row
    (that would give NaN); padding outputs are never used.
    """
    B, T = idx.shape
    device = idx.device
    if pad_mask is None:
        pad_mask = torch.ones(B, T, dtype=torch.bool, device=device)
    past = 0
    key_mask = pad_mask
    if kv_cache is not None:
        past = kv_cache.length
        key_mask = torch.cat([kv_cache.pad_mask[:, :past], pad_mask], dim=1)
        kv_cache.pad_mask[:, past:past + T] = pad_mask
    S = past + T
    q_pos = torch.arange(past, S, device=device).view(T, 1)
    k_pos = torch.arange(S, device=device).view(1, S)
    causal = k_pos <= q_pos  # (T, S)
    mask = causal.view(1, T, S) & key_mask.view(B, 1, S)
    mask = mask | (k_pos == q_pos).view(1, T, S)
    if positions is None:
        # position = number of real tokens before this one (so left padding shifts nothing)
        positions = (key_mask.long().cumsum(dim=1) - 1).clamp(min=0)[:, past:]
    return mask.unsqueeze(1), positions


def pad_batch(seqs, pad_id, left=False):
    """Token-id lists as one batch: (idx, real), both (B, T) for T the longest list. Each row is
    padded with pad_id at its end (left=True: at its start, so that every row's next token goes
    in the same column, as the sampler needs), and real is True at its own tokens."""
    T = max(map(len, seqs))
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    real = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        cols = slice(T - len(s), T) if left else slice(0, len(s))
        idx[i, cols] = torch.tensor(s, dtype=torch.long)
        real[i, cols] = True
    return idx, real


def sequence_scores(scores, pad_mask):
    """The score of a sequence is read at its last real token. scores, pad_mask: (B, T).
    Works for right padding, left padding and both at once."""
    T = pad_mask.size(1)
    idx = torch.arange(T, device=pad_mask.device).expand_as(pad_mask)
    last = torch.where(pad_mask, idx, -1).max(dim=1).values
    return scores.gather(1, last.clamp(min=0).unsqueeze(1)).squeeze(1)


class _NoInit(torch.overrides.TorchFunctionMode):
    """torch.nn.init's functions leave their tensor as it is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def shapes_only(config):
    """A GPT of `config` on the meta device: its parameters' shapes, no memory. Built without
    its random init, which on the meta device costs seconds (torch imports its compiler to
    draw there). The loaders compare a config with its weights this way."""
    with torch.device("meta"), _NoInit():
        return GPT(config)


def lm_to_scalar(lm_model):
    """A scalar-head model with the trunk of a language model (the reward model starts
    from the SFT model; the PPO critic from the reward model or SFT)."""
    cfg = GPTConfig(**{**asdict(lm_model.config), "kind": "scalar"})
    model = GPT(cfg)
    trunk = {k: v for k, v in lm_model.state_dict().items() if not k.startswith("lm_head")}
    missing, unexpected = model.load_state_dict(trunk, strict=False)
    assert set(missing) == {"score_head.weight", "score_head.bias"} and not unexpected
    model.pretrained_from = getattr(lm_model, "pretrained_from", None)
    p = next(lm_model.parameters())
    return model.to(device=p.device, dtype=p.dtype)


# -----------------------------------------------------------------------------


def configure_optimizer(model, lr, weight_decay=0.1, betas=(0.9, 0.95)):
    """AdamW; weight decay on matrices only (not on biases, LayerNorm, or embeddings'
    tied copy twice: parameters are deduplicated by identity)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)
