"""
The sampler: many completions of many prompts at once, with a KV cache, on the device. Rationale
collection (SML step 1), every evaluation and PPO's rollouts go through sample().

- Prefill once, fan out. Each prompt runs through the model once (the prefill); its keys and
  values (the KV cache) are then copied to its num_samples rows, which decode side by side,
  one token per step, each step attending over the cache instead of recomputing the prefix.
  A few-shot prompt's exemplars, the same at the start of every prompt, can be encoded once
  for the whole batch (share_prefix).
- Left padding. Prompts of different lengths share a batch padded on the left, so every row
  writes its next token in the same column. A row's positions count its real tokens only and
  no query attends to a padding key (model.forward's pad_mask): a row computes what it would
  alone. A row that has stopped is fed as padding from then on.
- Per-sample seeding. Row r draws its t-th token by an exponential race (next_tokens) whose
  noise is a hash of the token id under the t-th key pair of its own random stream, a
  torch.Generator seeded with seeds[r]. A row's tokens therefore depend on its prompt and its
  seed only, never on the batch: a batch gives what one-by-one sampling gives, and N
  fanned-out samples equal N runs with the same seeds. The keys are drawn on the host once
  per call (copied to the device once); everything else (filtering, the race, log-probs,
  stopping) stays on the device, and the host waits for the device only to ask whether every
  row has stopped (stop_check_every).
- Stopping. A row stops after any of stop_ids (the tokenizer's end-of-text and every
  end-of-sequence id the checkpoint declares: data/tokenizer.stop_ids; a few-shot prompt adds
  the line breaks), or when it has written its budget.
- Padded vocabularies. A checkpoint may have more embedding rows than its tokenizer has
  tokens (Qwen2.5 pads 151,665 tokens to 151,936 rows); n_vocab masks the extra ids, which
  decode to nothing, out of sampling and out of the log-probs (mask_padded_vocab).
- Batch sizes. prompts_per_batch: as many prompts as the GPU's free memory holds.
"""

from dataclasses import dataclass

import torch

from model import compute_dtype, pad_batch


class KVCache:
    """Keys and values of every layer for a batch of sequences, max_len slots each, and which
    slots hold real tokens (pad_mask). model.forward appends each step's keys and values.

    The buffers are made at the first append, in the dtype the keys arrive in: under bf16
    autocast the cache holds bf16, as the attention computes in it (half the memory)."""

    class _Layer:
        def __init__(self, cache, i):
            self.cache, self.i = cache, i

        def append(self, k, v):
            c = self.cache
            if c.k is None:
                shape = (c.n_layer, k.size(0), k.size(1), c.max_len, k.size(3))
                c.k = torch.zeros(shape, device=k.device, dtype=k.dtype)
                c.v = torch.zeros(shape, device=v.device, dtype=v.dtype)
            T = k.size(2)
            c.k[self.i, :, :, c.length:c.length + T] = k
            c.v[self.i, :, :, c.length:c.length + T] = v
            return c.k[self.i, :, :, :c.length + T], c.v[self.i, :, :, :c.length + T]

    def __init__(self, config, batch_size, max_len, device):
        self.n_layer, self.max_len = config.n_layer, max_len
        self.k = self.v = None
        self.pad_mask = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.length = 0

    def layer(self, i):
        return KVCache._Layer(self, i)

    def advance(self, T):
        self.length += T

    def fan_out(self, n):
        """Repeat each row n times: the prompt is encoded once and shared by n samples."""
        self.k = self.k.repeat_interleave(n, dim=1)
        self.v = self.v.repeat_interleave(n, dim=1)
        self.pad_mask = self.pad_mask.repeat_interleave(n, dim=0)


def kv_cache_bytes_per_row(config, dtype, length):
    """What one row's cache holds: keys and values of every layer for `length` tokens."""
    return config.n_layer * config.n_kv_head * config.head_dim * 2 * dtype.itemsize * length


@dataclass
class Samples:
    """What sample() returns. Row r is sample r % n of prompt r // n."""
    tokens: torch.Tensor  # (R, L) sampled tokens, padded with pad_id after a row stops
    logprobs: torch.Tensor  # (R, L) log-prob of each sampled token (0 after the row stops)
    lengths: torch.Tensor  # (R,) number of generated tokens, the stop token included
    finished: torch.Tensor  # (R,) True if the row stopped at a stop id (not at its budget)

    def token_lists(self):
        tokens, lengths = self.tokens.cpu(), self.lengths.tolist()  # one copy from the device
        return [tokens[r, :n].tolist() for r, n in enumerate(lengths)]


# -----------------------------------------------------------------------------
# One decoding step's pieces


def check_sampling_args(top_k=None, top_p=None):
    """top_k: an int >= 0 (0 or None: off); top_p: a float in [0, 1] (None or 1: off; 0 keeps
    only the most likely token). The same meaning as Hugging Face's samplers."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if top_p is not None and not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be between 0 and 1, got {top_p!r}")


def filter_logits(logits, top_k=None, top_p=None):
    """Keep the top_k most likely tokens (ties at the k-th value are all kept) and / or the
    smallest set of most likely tokens whose mass reaches top_p. The most likely token is
    always kept, so a row never ends up empty."""
    check_sampling_args(top_k, top_p)
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # a stable sort: tokens of equal probability keep their vocabulary order, so which of
        # them falls at the boundary does not depend on the sort's implementation
        sorted_logits, order = torch.sort(logits, descending=True, stable=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs
        drop_sorted = mass_before >= top_p  # the set before this token already reaches top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def mask_padded_vocab(logits, n_vocab):
    """logits (..., V) with the ids >= n_vocab set to -inf. A checkpoint may pad its embedding
    to more rows than its tokenizer has tokens (Qwen2.5: 151,665 tokens, 151,936 rows); a
    padding id decodes to nothing, so it is never sampled, and log-probs are over the
    tokenizer's vocabulary. n_vocab None (or >= V): logits unchanged."""
    if n_vocab is None or n_vocab >= logits.size(-1):
        return logits
    padding = torch.arange(logits.size(-1), device=logits.device) >= n_vocab
    return logits.masked_fill(padding, float("-inf"))


def row_keys(seeds, steps, device):
    """(R, steps, 2) int32 keys: row r's t-th pair is the t-th pair of draws of a
    torch.Generator seeded with seeds[r]. Row r's keys depend on seeds[r] alone, not on how
    many rows there are, where row r is, or what its neighbours are: this is what makes a
    sample independent of its batch. Drawn on the host once per call, copied once."""
    draws = [torch.randint(-2**31, 2**31, (steps, 2), generator=torch.Generator().manual_seed(int(s)),
                           dtype=torch.int32) for s in seeds]
    return torch.stack(draws).to(device)


# lowbias32's multipliers (C. Wellons' hash prospector), the second written as a signed int32:
# int32 products wrap modulo 2**32 on every device, the bits unsigned arithmetic gives
HASH_MUL = (0x7FEB352D, 0x846CA68B - 2**32)


def _xorshift_(x, n, tmp):
    """x ^= x >>> n in place; a logical shift (int32's >> copies the sign bit)."""
    torch.bitwise_right_shift(x, n, out=tmp)
    tmp &= (1 << (32 - n)) - 1
    x ^= tmp


def race_buffers(rows, vocab_size, device):
    """The exponential race's scratch, made once per sample() call (not at every step): the
    token ids (int32), and an int32 and a float32 (rows, vocab) buffer."""
    ids = torch.arange(vocab_size, dtype=torch.int32, device=device)
    return (ids, torch.empty(rows, vocab_size, dtype=torch.int32, device=device),
            torch.empty(rows, vocab_size, device=device))


def log_exponentials(keys, buffers):
    """log E (R, V) float32, E ~ Exp(1) for every (row, token): a counter-based hash
    (lowbias32, with the second key mixed in between its rounds) of the token id under the
    row's key pair keys (R, 2). Token v's draw depends on (the row's seed, the step, v) only,
    never on the batch or on another token. Written into the float32 buffer, which lends its
    storage to the hash's shifts first."""
    ids, x, out = buffers
    tmp = out.view(torch.int32)
    torch.add(ids, keys[:, :1], out=x)
    _xorshift_(x, 16, tmp)
    x *= HASH_MUL[0]
    x ^= keys[:, 1:]
    _xorshift_(x, 15, tmp)
    x *= HASH_MUL[1]
    _xorshift_(x, 16, tmp)
    x &= 0x7FFFFFFF
    # w = (31 bits + 1/2) / 2**31 in (0, 1), kept below 1 where float32 rounds it up; E =
    # -log(1 - w) is finest near 0, where a token of small probability wins the race
    out.copy_(x).add_(0.5).mul_(-2.0 ** -31).clamp_(min=2.0 ** -24 - 1)  # -w
    return out.log1p_().neg_().log_()


def next_tokens(logits, temperature, top_k, top_p, keys, buffers=None):
    """Every row's next token and its log-prob, from float32 logits (R, V) and the row's key
    pair for this step, keys (R, 2). temperature 0: the argmax (keys unused).

    The exponential race: with E_v ~ Exp(1) independent, argmax_v p_v / E_v is a draw from p
    (the minimum of E_v / p_v, each an Exp(p_v), is token v's with probability p_v), i.e.
    argmax of logits / temperature - log E, in float32 and elementwise but for the argmax: a
    row's token depends on its logits and its own draws only. The log-prob is under
    softmax(logits / temperature) before top-k / top-p (greedy: under softmax(logits)), what a
    forward pass over the same tokens gives. buffers: race_buffers (made here if None)."""
    if temperature == 0:
        tok = logits.argmax(-1)
        return tok, logits.log_softmax(-1).gather(1, tok.unsqueeze(1)).squeeze(1)
    if temperature != 1:  # x / 1 is x: no copy of the logits for nothing
        logits = logits / temperature
    buffers = buffers or race_buffers(*logits.shape, logits.device)
    # log_softmax's own sum, (l - max) - log(sum(exp(l - max))), for the sampled token only
    top = logits.amax(-1, keepdim=True)
    log_total = torch.sub(logits, top, out=buffers[2]).exp_().sum(-1).log_()
    log_e = log_exponentials(keys, buffers)
    tok = torch.sub(filter_logits(logits, top_k, top_p), log_e, out=log_e).argmax(-1).unsqueeze(1)
    return tok.squeeze(1), ((logits.gather(1, tok) - top) - log_total.unsqueeze(1)).squeeze(1)


def stop_check_every(device):
    """How many decoding steps pass between two looks at whether every row has stopped. The
    look waits for the device to finish its queued work; on a GPU it is taken every 8 steps so
    the host can queue steps ahead meanwhile. The results do not change: a stopped row is fed
    as padding and writes nothing. On the CPU the look costs nothing and saves the steps."""
    return 1 if device.type == "cpu" else 8


# -----------------------------------------------------------------------------
# The sampler


def shared_prefix_length(prompts):
    """The longest prefix every prompt starts with, leaving each prompt a token of its own."""
    first, shortest, n = prompts[0], min(map(len, prompts)) - 1, 0
    while n < shortest and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


def prefill(model, prompts, num_samples, new_tokens, pad_id, share_prefix):
    """Encode the prompts, left-padded into one batch, into a KV cache with room for
    new_tokens more, and fan each prompt out to num_samples rows. Returns the logits of every
    row's first new token (R, V) and the cache. With share_prefix, the tokens every prompt
    starts with are encoded first, for one row, and the padding goes between them and the
    rest of each prompt (the same numbers up to rounding, most of a few-shot prefill saved)."""
    device = next(model.parameters()).device
    P = len(prompts)
    shared = shared_prefix_length(prompts) if share_prefix and P > 1 else 0
    T0 = max(map(len, prompts)) - shared
    cache = KVCache(model.config, 1 if shared else P, shared + T0 + new_tokens, device)
    if shared:
        model(torch.tensor([prompts[0][:shared]], device=device), kv_cache=cache, last_only=True)
        cache.fan_out(P)
    idx, pad_mask = pad_batch([p[shared:] for p in prompts], pad_id, left=True)
    logits, _ = model(idx.to(device), pad_mask=pad_mask.to(device), kv_cache=cache, last_only=True)
    cache.fan_out(num_samples)
    return logits[:, -1, :].repeat_interleave(num_samples, dim=0), cache


@torch.no_grad()
def sample(model, prompts, num_samples=1, max_new_tokens=64, temperature=1.0, top_k=None, top_p=None,
           stop_ids=None, pad_id=0, seeds=None, generator=None, share_prefix=False, n_vocab=None):
    """Sample num_samples completions for each prompt (a list of token-id lists).

    seeds: one per row (R = len(prompts) * num_samples), row r = sample r % num_samples of
    prompt r // num_samples; without them they are drawn from `generator` (or the global one).
    temperature 0 means greedy. top_k / top_p as filter_logits. For PPO, sample with no top-k
    / top-p so that the returned log-probs are those of the distribution that was sampled.

    stop_ids: an id or a list of ids after which a row stops (finished = True). Budget: each
    row may write min(max_new_tokens, block_size - its prompt's length) tokens, so a short
    prompt batched with a long one gets as many as it would alone; a row that uses its budget
    up without stopping comes back with finished = False.

    n_vocab: the tokenizer's vocabulary size; ids at or beyond it are never sampled
    (mask_padded_vocab). share_prefix: see prefill. Runs under whatever autocast the caller
    entered.
    """
    check_sampling_args(top_k, top_p)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    model.eval()
    device = next(model.parameters()).device
    P, N = len(prompts), num_samples
    R = P * N
    lens = [len(p) for p in prompts]
    if min(lens) == 0:
        raise ValueError("empty prompt")
    block = model.config.block_size
    if max(lens) >= block:
        raise ValueError(f"prompt of {max(lens)} tokens does not fit the model's context of {block}")
    budgets = [min(max_new_tokens, block - n) for n in lens]  # host-side: no device sync
    steps = max(budgets)
    budget = torch.tensor(budgets, device=device).repeat_interleave(N)  # (R,)
    if seeds is None:
        seeds = torch.randint(0, 2**62, (R,), generator=generator).tolist()
    assert len(seeds) == R, f"need one seed per sample ({R}), got {len(seeds)}"
    keys = row_keys(seeds, steps, device) if temperature > 0 else None
    buffers = race_buffers(R, model.config.vocab_size, device) if temperature > 0 else None
    stops = [] if stop_ids is None else [stop_ids] if isinstance(stop_ids, int) else list(stop_ids)
    stops = torch.tensor(stops, dtype=torch.long, device=device)

    logits, cache = prefill(model, prompts, N, steps, pad_id, share_prefix)
    tokens = torch.full((R, steps), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(R, steps, device=device)
    lengths = torch.zeros(R, dtype=torch.long, device=device)
    finished = torch.zeros(R, dtype=torch.bool, device=device)
    check_every = stop_check_every(device)
    for t in range(steps):
        logits = mask_padded_vocab(logits.float(), n_vocab)
        next_tok, lp = next_tokens(logits, temperature, top_k, top_p, keys[:, t] if keys is not None else None,
                                   buffers)
        active = ~finished & (t < budget)
        tokens[:, t] = torch.where(active, next_tok, pad_id)
        logprobs[:, t] = torch.where(active, lp, 0.0)
        lengths += active.long()
        finished |= active & torch.isin(next_tok, stops)
        going = ~finished & (t + 1 < budget)
        if t == steps - 1 or ((t + 1) % check_every == 0 and not bool(going.any())):
            break
        # A row that is done is fed as padding: its position no longer advances, so it
        # never runs past the context while its neighbours go on.
        logits, _ = model(next_tok.unsqueeze(1), kv_cache=cache, pad_mask=going.unsqueeze(1))
        logits = logits[:, -1, :]
    L = int(lengths.max()) if R else 0
    return Samples(tokens[:, :L], logprobs[:, :L], lengths, finished)


# -----------------------------------------------------------------------------
# Batch sizes

CPU_BATCH_PROMPTS = 64  # on the CPU (or MPS) a fixed number: there memory is rarely what limits
# A decoding step reads every weight once whatever the batch; past a few hundred rows its
# matmuls take longer than that read, so a larger batch is hardly faster and only delays the
# first results.
MAX_ROWS = 1024


def prompts_per_batch(model, seq_len, num_samples=1):
    """How many prompts (each fanned out to num_samples rows) to sample at once, for rows of
    up to seq_len tokens (prompt + new tokens). On CUDA: as many as half the free memory holds
    (prompts_that_fit; the other half is headroom for what that estimate leaves out and for
    the allocator's fragmentation); elsewhere CPU_BATCH_PROMPTS. Call it under the autocast the sampling runs in: the cache is kept in
    the compute dtype."""
    param = next(model.parameters())
    if param.device.type != "cuda":
        return CPU_BATCH_PROMPTS
    free, _ = torch.cuda.mem_get_info(param.device)
    # what torch's allocator holds without using it (after a training step, say) is free to us
    free += torch.cuda.memory_reserved(param.device) - torch.cuda.memory_allocated(param.device)
    return prompts_that_fit(model.config, compute_dtype(param), seq_len, num_samples, free // 2)


def prompts_that_fit(config, dtype, seq_len, num_samples, memory):
    """The prompts whose num_samples rows of seq_len tokens fit in `memory` bytes: at least 1,
    at most MAX_ROWS rows. A row holds its KV cache and, at each step, its logits, their copy
    divided by the temperature, and the race's float32 and int32 buffers. Each row is also
    counted as a prompt of its own in the prefill (the answer-reading passes prefill one
    prompt per row, as many rows as collection), which holds per token the widest activations
    of a layer (the MLP's, in float32 at most) and, if the attention runs unfused, a float32
    score per head and pair of tokens."""
    decode = kv_cache_bytes_per_row(config, dtype, seq_len) + config.vocab_size * (4 + 4 + 4 + 4)
    prefill = seq_len * 4 * (config.mlp_hidden + config.n_embd) * 4 + config.n_head * seq_len**2 * 4
    rows = min(memory // (decode + prefill), MAX_ROWS)
    return int(max(1, rows // num_samples))
