"""
SML step 3c: PPO against the reward model, in plain PyTorch, one file, read top to bottom.

The policy starts from the SFT model and writes rationales for training questions with no
answer given; the frozen reward model scores each finished one; a per-token KL penalty to the
frozen SFT model (the reference) keeps the policy near what the reward model was trained on;
a critic with a scalar head estimates values for GAE. Each update:

  1. rollout    k rationales for each of Q fresh training questions (no top-k/top-p)
  2. reward     the reward model's standardised score (or the exact answer check, or a random
                control), penalties for no answer / no ending
  3. advantage  old and reference log-probs, values; per-token reward -beta * KL, + the sequence
                reward at the last token; GAE (or RLOO's / GRPO's group baseline); unit RMS
  4. optimise   epochs over minibatches: clipped policy ratio, value loss
  5. log        RM score beside true accuracy, KL term beside the reward's spread, PPO's health;
                every --eval_interval updates, checkpoint choice on greedy validation accuracy

    python train_ppo.py --sft runs/default/sft.pt --rm runs/default/rm.pt \\
        --data_dir runs/default/data --out_dir runs/default/ppo

Writes ppo_last.pt (what --resume continues, exactly), ppo_best.pt (the chosen policy),
ppo_log.jsonl and, last, summary.json. The rewards, the reward model's scale and gate, RLOO
and GRPO, step sizes, memory and the checkpoint choice: docs/ppo.md.
"""

import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from sml import common
from sml import rationales
from sml import ppo_run
from sml import validation
from data import load_world
from data.jsonl import append_row
from data.tokenizer import decode_sampled
from sml.checkpoint import load_checkpoint
from sml.reward_report import MIN_RM_QUALITY
from model import fp32_head, pad_batch, sequence_scores
from sml.sampler import mask_padded_vocab, prompts_per_batch, sample
from sml.rundir import RunDir

# The defaults below are the default preset; tiny overrides these (flags given still win).
PRESETS = {"default": {},
           "tiny": dict(updates=4, questions_per_update=8, samples_per_question=2, minibatch_size=8,
                        eval_interval=2, eval_limit=20, val_samples=2, norm_questions=8, allow_weak_rm=True),
           # a pretrained model (run.sh with INIT): docs/ppo.md, "Step sizes for a pretrained model"
           "pretrained": dict(lr=1e-6, critic_lr=1e-5, warmup_steps=4, min_lr_frac=0.1, critic_warmup_updates=1,
                              target_kl=0.05, updates=16, questions_per_update=16, minibatch_size=16,
                              micro_batch_size=4, eval_interval=4, norm_questions=32)}


def add_reward_args(p):
    """Step 2's flags: the reward, its scale, its penalties, and the reward model's bar."""
    g = p.add_argument_group("reward")
    g.add_argument("--reward", default="rm", choices=["rm", "exact", "rm+exact", "random"],
                   help="random: a control, a seeded N(0,1) per rollout in place of the standardised RM score")
    g.add_argument("--kl_coef", type=common.NONNEG_FLOAT, default=0.02,
                   help="beta of the per-token KL penalty, in standardised reward units")
    g.add_argument("--kl_target", type=common.POSITIVE, default=None,
                   help="adaptive KL: adjust beta towards this KL per rationale (off by default)")
    g.add_argument("--kl_horizon", type=common.POSITIVE, default=10,
                   help="updates over which the adaptive controller moves beta by its (clipped) error")
    g.add_argument("--no_answer_penalty", type=common.NONNEG_FLOAT, default=1.0,
                   help="subtracted when a finished rationale states no final answer")
    g.add_argument("--unfinished_penalty", type=common.NONNEG_FLOAT, default=2.0,
                   help="the reward of a rationale that never ends is -this (no RM score)")
    g.add_argument("--norm_questions", type=common.COUNT, default=64,
                   help="train questions whose SFT samples give the RM's mean and std")
    g.add_argument("--reward_std_floor", type=common.NONNEG_FLOAT, default=0.25,
                   help="the RM's std on SFT samples is at least this times its std on its held-out pairs")
    g.add_argument("--reward_clip", type=common.POSITIVE, default=5.0, help="clip the sequence reward to +-this")
    g.add_argument("--allow_weak_rm", action="store_true",
                   help=f"train against an RM below the gate ({MIN_RM_QUALITY}: near chance) or with no report")


def add_optimisation_args(p):
    """Step 4's flags: the epochs, the step sizes, the estimator, the clips; and memory."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--ppo_epochs", type=common.COUNT, default=2, help="passes over each rollout batch")
    g.add_argument("--minibatch_size", type=common.COUNT, default=96, help="rollouts per optimizer step")
    g.add_argument("--lr", type=common.LEARNING_RATE, default=1.5e-4, help="policy learning rate")
    g.add_argument("--critic_lr", type=common.LEARNING_RATE, default=1e-4)
    g.add_argument("--warmup_steps", type=common.NONNEG, default=0,
                   help="optimizer steps of linear learning-rate warmup (policy and critic)")
    g.add_argument("--min_lr_frac", type=common.FRACTION, default=1.0,
                   help="cosine decay of both learning rates to this share by the last update (1: constant)")
    g.add_argument("--critic_warmup_updates", type=common.NONNEG, default=0,
                   help="first updates that train the critic only (the policy waits for useful values)")
    g.add_argument("--target_kl", type=common.POSITIVE, default=None,
                   help="stop an update's epochs once a minibatch's approx KL passes this (off by default)")
    g.add_argument("--estimator", default="ppo", choices=["ppo", "rloo", "grpo"],
                   help="ppo: GAE with a critic (the paper); rloo / grpo: the question's other samples as baseline")
    g.add_argument("--critic_init", default="sft", choices=["sft", "rm"],
                   help="sft: the SFT trunk, a zero head (values start at 0); rm: the RM, standardised (needs --rm)")
    g.add_argument("--clip", type=common.POSITIVE, default=0.2, help="policy ratio clip")
    g.add_argument("--value_clip", type=common.POSITIVE, default=None,
                   help="clip each value's move per update to +-this (off by default)")
    g.add_argument("--gamma", type=common.FRACTION, default=1.0)
    g.add_argument("--lam", type=common.FRACTION, default=0.95)
    g.add_argument("--grad_clip", type=common.POSITIVE, default=1.0)
    g = p.add_argument_group("memory")
    g.add_argument("--micro_batch_size", type=common.COUNT, default=None,
                   help="rollouts per forward pass; gradients accumulate over a minibatch (default: the minibatch)")
    common.add_grad_checkpointing_arg(g)


def add_evaluation_args(p):
    """Checkpoint selection on the validation split, and what is logged."""
    g = p.add_argument_group("evaluation and checkpoint selection")
    g.add_argument("--eval_interval", type=common.COUNT, default=8, help="validate and checkpoint every N updates")
    g.add_argument("--eval_limit", type=common.NONNEG, default=0,
                   help="validation questions of each evaluation (0: all); the test split is never read here")
    common.add_eval_temperature_arg(g)
    g.add_argument("--val_samples", type=common.SAMPLES, default=4,
                   help="samples per validation question at --eval_temperature, logged beside the greedy accuracy")
    g.add_argument("--log_samples", type=common.NONNEG, default=3,
                   help="decoded rollouts written to the log at each evaluation")


def get_args(argv=None):
    p = common.ArgumentParser(description=__doc__)
    g = p.add_argument_group("input / output")
    g.add_argument("--sft", required=True, help="SFT checkpoint: the initial policy and the frozen reference")
    g.add_argument("--rm", help="reward-model checkpoint (needed for --reward rm, rm+exact and --critic_init rm)")
    g.add_argument("--data_dir", required=True, help="folder with train/val/test.jsonl, tokenizer.json, meta.json")
    g.add_argument("--out_dir", required=True)
    g.add_argument("--resume", action="store_true", help="continue from out_dir/ppo_last.pt")
    g.add_argument("--overwrite", action="store_true", help="start again in an out_dir that holds a run")
    g.add_argument("--preset", default="default", choices=sorted(PRESETS), help=common.preset_help(PRESETS))
    add_reward_args(p)
    g = p.add_argument_group("rollouts")
    g.add_argument("--updates", type=common.COUNT, default=32)
    g.add_argument("--questions_per_update", type=common.COUNT, default=48)
    g.add_argument("--samples_per_question", type=common.SAMPLES, default=4)
    g.add_argument("--temperature", type=common.POSITIVE, default=1.0, help="rollouts and log-probs alike")
    common.add_budget_args(g)
    add_optimisation_args(p)
    add_evaluation_args(p)
    common.add_runtime_args(p, compile=False)
    args = p.parse_args(argv)
    common.apply_preset(p, args, argv, PRESETS)
    ppo_run.check_args(p, args)
    return args


# -----------------------------------------------------------------------------
# The pieces of PPO, each small enough to test on its own


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def sequence_mean(x, mask):
    """Each row's mean over its masked tokens, then the mean over rows (Shao et al. 2024's 1/|o_i|:
    every rationale weighs the same, whatever its length)."""
    return ((x * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def masked_whiten(x, mask, eps=1e-8):
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def _head_logprobs(head, hidden, targets, temperature, n_vocab):
    """log-prob of each target and the entropy of its distribution (no graph), for one chunk
    of hidden states (N, C): the only place a (N, vocabulary) tensor exists."""
    logp_all = mask_padded_vocab(fp32_head(head, hidden) / temperature, n_vocab).log_softmax(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all.nan_to_num(neginf=0.0)).sum(-1)
    return logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1), entropy


def token_logprobs(model, idx, mask, temperature, n_vocab=None, chunk=512):
    """log pi(token t+1 | tokens <= t) at the response positions of idx (B, T) -> (B, T-1), 0 elsewhere,
    and each distribution's entropy (no graph), at the sampler's temperature. The output layer runs on
    response positions only, `chunk` at a time, recomputed in backward (docs/ppo.md, "Memory")."""
    hidden = model.trunk(idx[:, :-1])
    where = mask.nonzero(as_tuple=True)
    h, targets = hidden[where], idx[:, 1:][where]
    logps, entropies = [], []
    for s in range(0, h.size(0), chunk):
        args = (model.lm_head, h[s:s + chunk], targets[s:s + chunk], temperature, n_vocab)
        lp, ent = (checkpoint(_head_logprobs, *args, use_reentrant=False) if torch.is_grad_enabled()
                   else _head_logprobs(*args))
        logps.append(lp)
        entropies.append(ent)
    zeros = torch.zeros(mask.shape, device=idx.device)
    logp = zeros.index_put(where, torch.cat(logps)) if logps else zeros
    entropy = zeros.index_put(where, torch.cat(entropies)) if entropies else zeros
    return logp, entropy


def values_of(critic, idx):
    """V(state after token t) for t < T-1: aligned with token_logprobs (B, T-1)."""
    scores, _ = critic(idx[:, :-1])
    return scores.float()


def compute_gae(rewards, values, mask, gamma, lam):
    """Generalized advantage estimation over the response tokens (mask 1), each row's a contiguous run;
    values after it count as 0 (the episode has ended). Returns (advantages, advantages + values)."""
    T = rewards.size(1)
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv[:, t] = (delta + gamma * lam * next_adv) * m
        # inside the response carry on; before it (prompt) reset to what came after
        next_adv = torch.where(m > 0, adv[:, t], next_adv)
        next_value = torch.where(m > 0, values[:, t], next_value)
    return adv, (adv + values) * mask


def policy_loss(new_logp, old_logp, advantages, mask, clip, per_sequence=False):
    """PPO's clipped surrogate: a token whose ratio has left [1-clip, 1+clip] in the
    direction its advantage pushes gets no gradient. The loss is the mean over the tokens, or
    (per_sequence, GRPO's) over each rationale's tokens and then over rationales."""
    ratio = torch.exp(new_logp - old_logp)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = (sequence_mean if per_sequence else masked_mean)(torch.max(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        log_ratio = new_logp - old_logp
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)  # k3 estimator, >= 0
        clip_frac = masked_mean(((ratio - 1).abs() > clip).float(), mask)
    return loss, approx_kl, clip_frac


def value_loss(new_values, old_values, returns, mask, clip=None):
    """Squared error to the returns; with clip, PPO2's pessimistic clipped form (a value may not
    gain by moving more than clip from where it was before the update)."""
    if clip is None:
        return 0.5 * masked_mean((new_values - returns) ** 2, mask)
    clipped = old_values + (new_values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.max((new_values - returns) ** 2, (clipped - returns) ** 2), mask)


def k3_kl(logp, ref_logp):
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled by pi (Schulman's k3, as GRPO's
    loss uses it): exp(ref - logp) - (ref - logp) - 1, never negative, unbiased."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def adaptive_kl_coef(kl_coef, kl, target, horizon):
    """Ziegler et al. (2019): move beta towards the target KL, by the error (clipped to +-20%)
    over `horizon` updates (Ziegler's 10,000 samples are about 20 of their updates)."""
    err = max(-0.2, min(0.2, kl / target - 1))
    return kl_coef * (1 + err / horizon)


def sequence_rewards(kind, rm_z, correct, has_answer, finished, no_answer_penalty,
                     unfinished_penalty, clip, noise=None):
    """One reward per rationale (SML step 3c's sequence reward), all tensors (B,). kind: "rm" (the
    standardised RM score, the paper), "exact" (1 if its one stated answer is right), "rm+exact" or
    "random" (`noise`, a control); then the penalties for no answer and no ending (docs/ppo.md)."""
    r = {"rm": rm_z, "exact": correct, "rm+exact": rm_z + correct, "random": noise}[kind]
    r = r - no_answer_penalty * (~has_answer).float()
    r = torch.where(finished, r, torch.full_like(r, -unfinished_penalty))
    return r.clamp(-clip, clip)


def random_rewards(seeds, device):
    """--reward random: one N(0,1) draw per rollout from the rollout's own seed, so that a resumed
    run (and any batching) gives every rollout the same reward."""
    return torch.tensor([random.Random(rationales.derive_seed(s, "random reward")).gauss(0.0, 1.0) for s in seeds],
                        device=device)


def group_advantages(returns, k, estimator, eps=1e-6):
    """The advantage of each of the k samples of a question (consecutive rows of `returns`, (B,))
    against its own group: rloo, minus the mean of the other k-1; grpo, minus the group's mean,
    over its std (`returns` is then the sequence reward alone). docs/ppo.md, "RLOO and GRPO"."""
    groups = returns.view(-1, k)
    if estimator == "rloo":
        return (groups - (groups.sum(1, keepdim=True) - groups) / (k - 1)).view(-1)
    mean, std = groups.mean(1, keepdim=True), groups.std(1, keepdim=True)
    return ((groups - mean) / (std + eps)).view(-1)


def unit_rms(advantages, mask, eps=1e-8):
    """The advantages over their root mean square over the batch's response tokens: one --lr is
    one step size for every estimator (docs/ppo.md, "One step size"). A constant per batch."""
    return advantages * torch.rsqrt(masked_mean(advantages ** 2, mask) + eps)


def micro_batches(rows, size):
    """Consecutive slices of `rows` (a 1-d tensor of row indices) of at most `size` rows."""
    return [rows[s:s + size] for s in range(0, len(rows), size)]


# -----------------------------------------------------------------------------
# The steps of an update: rollouts and their rewards, the batch PPO trains on, the epochs


def draw_questions(train_rows, prompt_ids, n, k, seed, update):
    """Step 1's prompts: a fresh draw of n training questions per update, and a seed per rollout,
    both from (seed, update) alone, so a resumed run draws the same ones."""
    rng = random.Random(rationales.derive_seed(seed, "questions", update))
    rows = rng.sample(train_rows, min(n, len(train_rows)))
    seeds = [rationales.derive_seed(seed, "rollout", update, i) for i in range(len(rows) * k)]
    return rows, [prompt_ids[r["id"]] for r in rows], seeds


@dataclass
class Rollout:
    """k rationales for each prompt, as sequences PPO can score."""
    idx: torch.Tensor  # (B, T) prompt + response, right-padded with end-of-text
    mask: torch.Tensor  # (B, T-1) 1 where position t predicts a response token
    responses: list  # B lists of response token ids (end-of-text included where it ended)
    sampler_logp: list  # the sampler's log-prob of each response token
    seq_lens: torch.Tensor  # (B,) prompt + response length
    finished: torch.Tensor  # (B,) ended with end-of-text
    lengths: torch.Tensor  # (B,) response lengths


@torch.no_grad()
def rollout(policy, prompts, k, temperature, max_new_tokens, stop_ids, seeds, batch_prompts=None,
            amp=nullcontext(), n_vocab=None):
    """k samples per prompt, as a Rollout on the policy's device, sampled batch_prompts prompts at a
    time (None: as many as the device's memory holds). stop_ids: an id or a list; the first pads."""
    device = next(policy.parameters()).device
    stop_ids = [stop_ids] if isinstance(stop_ids, int) else list(stop_ids)
    with amp:  # the batch size counts the cache in the dtype it will be kept in
        batch_prompts = batch_prompts or prompts_per_batch(policy, max(map(len, prompts)) + max_new_tokens, k)
    responses, sampler_logp, finished = [], [], []
    for s in range(0, len(prompts), batch_prompts):
        with amp:
            out = sample(policy, prompts[s:s + batch_prompts], num_samples=k, max_new_tokens=max_new_tokens,
                         temperature=temperature, stop_ids=stop_ids, pad_id=stop_ids[0],
                         seeds=seeds[s * k:(s + batch_prompts) * k], n_vocab=n_vocab)
        chunk = out.token_lists()
        responses += chunk
        logprobs = out.logprobs.cpu()  # one copy to the host per batch, not one per row
        sampler_logp += [logprobs[i, :len(r)].tolist() for i, r in enumerate(chunk)]
        finished.append(out.finished.cpu())
    seqs = [prompts[i // k] + r for i, r in enumerate(responses)]
    idx, _ = pad_batch(seqs, stop_ids[0])
    mask = torch.zeros(idx.shape[0], idx.shape[1] - 1)
    for i, s in enumerate(seqs):
        n_prompt = len(prompts[i // k])
        mask[i, n_prompt - 1:len(s) - 1] = 1.0  # positions that predict a response token
    return Rollout(idx.to(device), mask.to(device), responses, sampler_logp,
                   torch.tensor([len(s) for s in seqs], device=device), torch.cat(finished).to(device),
                   torch.tensor([len(r) for r in responses], device=device))


@torch.no_grad()
def score_sequences(rm, rollouts, micro_batch_size=None, amp=nullcontext()):
    """The reward model's score at each sequence's last real token (its end-of-text when
    the rationale finished), as the reward model was trained."""
    out = []
    for rows in micro_batches(torch.arange(rollouts.idx.size(0)), micro_batch_size or rollouts.idx.size(0)):
        T = int(rollouts.seq_lens[rows].max())
        idx = rollouts.idx[rows, :T]
        real = torch.arange(T, device=idx.device).unsqueeze(0) < rollouts.seq_lens[rows].unsqueeze(1)
        with amp:
            scores, _ = rm(idx)
        out.append(sequence_scores(scores.float(), real))
    return torch.cat(out)


@torch.no_grad()
def reward_scale(rm, rollouts, micro_batch_size=None, amp=nullcontext()):
    """The RM's raw scores on the finished rationales of `rollouts` (the SFT model's): mean, std
    and range, what every later score is measured against. Computed once, before the first update."""
    scores = score_sequences(rm, rollouts, micro_batch_size, amp)[rollouts.finished].double()
    if scores.numel() < 2:
        raise common.UserError("too few of the SFT model's rationales finish to measure the reward "
                               "model's scale; raise --max_new_tokens or --norm_questions")
    # quantile's q on the scores' device (CUDA and MPS refuse a CPU one); one copy to the host
    q = torch.tensor([0.0, 0.05, 0.5, 0.95, 1.0], dtype=scores.dtype, device=scores.device)
    mean, std, *q = torch.cat([scores.mean().view(1), scores.std().view(1), torch.quantile(scores, q)]).tolist()
    return {"mean": mean, "std": std, "n": scores.numel(),
            "min": q[0], "p05": q[1], "median": q[2], "p95": q[3], "max": q[4]}


@dataclass
class Rewards:
    """Step 2's output: the sequence reward of each rollout, and what went into it."""
    sequence: torch.Tensor  # (B,) what PPO maximises
    rm_z: torch.Tensor  # (B,) the reward model's standardised score (0 with --reward exact)
    correct: torch.Tensor  # (B,) the one answer it states is right (the truth the RM is watched against)
    has_answer: torch.Tensor  # (B,) it states exactly one answer
    texts: list  # the decoded rationales


def score_rollouts(texts, golds, rollouts, seeds, task, rm, cfg, micro_batch_size=None, amp=nullcontext()):
    """Step 2: the sequence reward of each rollout (sequence_rewards) from the decoded rationales
    (texts) and their answers (golds)."""
    device = rollouts.finished.device
    # rewards read answers strictly: only an answer the rationale states counts
    correct = torch.tensor([task.reward(t, g) for t, g in zip(texts, golds)], device=device)
    has_answer = torch.tensor([task.stated_answer(t) is not None for t in texts], device=device)
    rm_z = torch.zeros_like(correct)
    if cfg.kind in ("rm", "rm+exact"):
        rm_z = (score_sequences(rm, rollouts, micro_batch_size, amp) - cfg.mean) / cfg.std
    noise = random_rewards(seeds, device) if cfg.kind == "random" else None
    sequence = sequence_rewards(cfg.kind, rm_z, correct, has_answer, rollouts.finished, cfg.no_answer_penalty,
                                cfg.unfinished_penalty, cfg.clip, noise)
    return Rewards(sequence, rm_z, correct, has_answer, texts)


@dataclass
class Batch:
    """A rollout with what the PPO epochs need, all (B, T-1) but kl_per_seq and seq_lens."""
    idx: torch.Tensor
    mask: torch.Tensor
    seq_lens: torch.Tensor  # (B,): a micro-batch is cut to its longest row
    old_logp: torch.Tensor  # the policy's log-probs before this update's epochs
    ref_logp: torch.Tensor  # the reference (SFT) model's
    values: torch.Tensor  # the critic's, before the epochs
    rewards: torch.Tensor  # -beta * KL per token, + the sequence reward on the last
    advantages: torch.Tensor  # GAE whitened, or the group's; unit RMS over the batch's response tokens
    returns: torch.Tensor  # advantages (before whitening) + values: the critic's target
    kl_per_seq: torch.Tensor  # (B,) KL to the reference, summed over the response


@torch.no_grad()
def prepare_batch(policy, ref, critic, rollouts, seq_reward, kl_coef, cfg, amp=nullcontext()):
    """Step 3 of an update: old and reference log-probs, values, per-token rewards, and the
    advantages, of unit RMS: GAE with the critic's values (ppo), or each rationale's return against
    its group of k (rloo, grpo: no critic; grpo's KL is a loss term). Forwards of cfg.micro_batch_size rows."""
    policy.eval()
    old_logp, ref_logp, values = (torch.zeros_like(rollouts.mask) for _ in range(3))
    for rows in micro_batches(torch.arange(rollouts.idx.size(0)), cfg.micro_batch_size or rollouts.idx.size(0)):
        T = int(rollouts.seq_lens[rows].max())
        idx, mask = rollouts.idx[rows, :T], rollouts.mask[rows, :T - 1]
        with amp:
            old_logp[rows, :T - 1] = token_logprobs(policy, idx, mask, cfg.temperature, cfg.n_vocab)[0]
            ref_logp[rows, :T - 1] = token_logprobs(ref, idx, mask, cfg.temperature, cfg.n_vocab)[0]
            if critic is not None:
                values[rows, :T - 1] = values_of(critic.eval(), idx) * mask
    kl = (old_logp - ref_logp) * rollouts.mask
    # the KL penalty to the SFT model, on every response token (GRPO puts it in the loss instead)
    rewards = -(0.0 if cfg.estimator == "grpo" else kl_coef) * kl
    last = rollouts.mask.cumsum(1).argmax(1)  # position of each row's last response token
    rewards[torch.arange(rollouts.idx.size(0)), last] += seq_reward
    if cfg.estimator == "ppo":
        advantages, returns = compute_gae(rewards, values, rollouts.mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, rollouts.mask)
    else:  # the whole rationale's return, against the other samples of its question
        advantages = group_advantages(rewards.sum(1), cfg.k, cfg.estimator).unsqueeze(1) * rollouts.mask
        advantages = unit_rms(advantages, rollouts.mask)
        returns = torch.zeros_like(values)
    return Batch(rollouts.idx, rollouts.mask, rollouts.seq_lens, old_logp, ref_logp, values, rewards, advantages,
                 returns, kl.sum(1))


def minibatch_gradients(policy, critic, batch, mb, cfg, train_policy, amp):
    """The gradients of one minibatch (`mb`: row indices), cfg.micro_batch_size rows at a time, each
    weighted by its share of the minibatch's tokens (per_sequence: rationales); the policy's graph is
    freed before the critic's. Returns the diagnostics (token-weighted means) and the largest ratio."""
    n_tok = batch.mask[mb].sum().clamp(min=1)
    stats = {k: 0.0 for k in ("policy_loss", "value_loss", "approx_kl", "clip_frac", "entropy")}
    ratio_max = 0.0
    for rows in micro_batches(mb, cfg.micro_batch_size or cfg.minibatch_size):
        T = int(batch.seq_lens[rows].max())
        idx, mask = batch.idx[rows, :T], batch.mask[rows, :T - 1]
        share = mask.sum() / n_tok  # this micro-batch's part of the minibatch's mean
        if train_policy:
            with amp:
                new_logp, entropy = token_logprobs(policy, idx, mask, cfg.temperature, cfg.n_vocab)
            pg_loss, approx_kl, clip_frac = policy_loss(new_logp, batch.old_logp[rows, :T - 1],
                                                        batch.advantages[rows, :T - 1], mask, cfg.clip,
                                                        cfg.per_sequence)
            if cfg.kl_loss_coef:  # GRPO: beta times the k3 KL to the reference
                mean = sequence_mean if cfg.per_sequence else masked_mean
                pg_loss = pg_loss + cfg.kl_loss_coef * mean(k3_kl(new_logp, batch.ref_logp[rows, :T - 1]), mask)
            (pg_loss * (len(rows) / len(mb) if cfg.per_sequence else share)).backward()
            ratio = torch.exp(new_logp.detach() - batch.old_logp[rows, :T - 1])[mask > 0]
            ratio_max = max(ratio_max, float(ratio.max()) if ratio.numel() else 0.0)
            for k, v in (("policy_loss", pg_loss), ("approx_kl", approx_kl), ("clip_frac", clip_frac),
                         ("entropy", masked_mean(entropy, mask))):
                stats[k] += float(v.detach() * share)
        if critic is not None:
            with amp:
                new_values = values_of(critic, idx)
            v_loss = value_loss(new_values, batch.values[rows, :T - 1], batch.returns[rows, :T - 1], mask,
                                cfg.value_clip)
            (v_loss * share).backward()
            stats["value_loss"] += float(v_loss.detach() * share)
    return stats, ratio_max


def optimizer_step(model, optimizer, grad_clip):
    """Clip the gradient, step, clear; returns the gradient's norm before the clip."""
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def ppo_update(policy, critic, opt_policy, opt_critic, batch, gen, cfg, train_policy=True, lr_at=None,
               amp=nullcontext()):
    """Step 4 of an update: cfg.epochs epochs of minibatches, one optimizer step each (minibatch_gradients);
    train_policy=False (the critic's warmup) leaves the policy as it is, critic=None (rloo, grpo) trains the
    policy alone; lr_at(i) -> (policy lr, critic lr) of step i; cfg.target_kl ends the epochs. Eval mode: dropout
    would make the first ratio differ from 1. Returns the diagnostics averaged over minibatches (ratio_max, grad
    norms: their largest; first_approx_kl: the first minibatch's, which should be 0; epoch_clip_frac: per epoch)."""
    n = batch.idx.size(0)
    stats = {k: [] for k in ("policy_loss", "value_loss", "approx_kl", "clip_frac", "entropy")}
    ratio_max, grad_norm, critic_grad_norm, steps, stopped = 0.0, 0.0, 0.0, 0, False
    epoch_clip_frac = []
    policy.eval()
    if critic is not None:
        critic.eval()
    for _ in range(cfg.epochs):
        epoch_clip_frac.append([])
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.minibatch_size):
            mb = order[start:start + cfg.minibatch_size].to(batch.idx.device)
            if lr_at is not None:
                lr_policy, lr_critic = lr_at(steps)
                common.set_lr(opt_policy, lr_policy)
                if critic is not None:
                    common.set_lr(opt_critic, lr_critic)
            mb_stats, mb_ratio_max = minibatch_gradients(policy, critic, batch, mb, cfg, train_policy, amp)
            ratio_max = max(ratio_max, mb_ratio_max)
            if train_policy and cfg.target_kl is not None and mb_stats["approx_kl"] > cfg.target_kl:
                # the policy has moved as far as one batch should take it (measured before the step, as SB3 does)
                for model in (policy, critic):
                    if model is not None:
                        model.zero_grad(set_to_none=True)
                stopped = True
                break
            if train_policy:
                grad_norm = max(grad_norm, optimizer_step(policy, opt_policy, cfg.grad_clip))
            if critic is not None:
                critic_grad_norm = max(critic_grad_norm, optimizer_step(critic, opt_critic, cfg.grad_clip))
            steps += 1
            for k, v in mb_stats.items():
                if (train_policy and k != "value_loss") or (critic is not None and k == "value_loss"):
                    stats[k].append(v)
            epoch_clip_frac[-1].append(mb_stats["clip_frac"])
        if stopped:
            break
    out = {k: float(np.mean(v)) if v else None for k, v in stats.items()}
    if train_policy:  # the first minibatch compares the policy with itself: approx KL 0, nothing clipped
        out["first_approx_kl"] = stats["approx_kl"][0] if stats["approx_kl"] else None
        out["epoch_clip_frac"] = [float(np.mean(c)) for c in epoch_clip_frac if c]
    return {**out, "ratio_max": ratio_max if train_policy else None, "grad_norm": grad_norm if train_policy else None,
            "critic_grad_norm": critic_grad_norm if critic is not None else None, "optimizer_steps": steps,
            "kl_stop": stopped}


def main(argv=None):
    args = get_args(argv)
    rt = common.setup_runtime(args.device, args.dtype)
    if rt.ddp:
        raise common.UserError("runs on one process (one GPU or the CPU); start it without torchrun")
    common.seed_everything(args.seed)
    # ppo_last.pt: what --resume continues; ppo_best.pt: the chosen policy; summary.json: written last
    run = RunDir.in_folder(args.out_dir, "summary.json", resume_point="ppo_last.pt", best="ppo_best.pt",
                           log="ppo_log.jsonl", what="a PPO run")
    resuming = run.check([args.sft, args.rm, args.data_dir], args.overwrite, args.resume) is not None
    # The world: the task, its questions (every prompt checked to fit the policy's context).
    tok, task = load_world(args.data_dir)
    tok_json, k = tok.to_str(), args.samples_per_question
    policy, ckpt = load_checkpoint(run.resume_point if resuming else args.sft, kind="lm", tokenizer_json=tok_json,
                                   device=rt.device)
    data = ppo_run.load_data(args.data_dir, args.eval_limit, args.max_new_tokens, tok, task, policy.config)
    # The models: the policy (above), the frozen reference (the SFT model), the reward model (gated).
    ref, _ = load_checkpoint(args.sft, kind="lm", tokenizer_json=tok_json, device=rt.device)
    rm, rm_report = ppo_run.load_reward_model(args.rm, args.reward, args.allow_weak_rm, tok_json, rt.device)
    run.start(resuming)  # summary.json says "finished": a rerun, fresh or resumed, is not yet
    # Resume, or build the critic and measure the reward model's scale on SFT rationales; then the optimizers.
    if resuming:
        critic, state = ppo_run.resume(ckpt, run.resume_point, rt.device)
        ppo_run.freeze(rt, ref, rm)  # (a fresh start casts them in start, after copying the critic)
    else:
        critic, state = ppo_run.start(args, rt, ref, rm)
        if ppo_run.uses_rm(args):
            prompts, seeds = ppo_run.norm_prompts(data, args.norm_questions, k, args.seed)
            sft_rollouts = rollout(policy, prompts, k, args.temperature, data.max_new_tokens, data.stop_ids, seeds,
                                   args.batch_prompts, rt.autocast, data.n_vocab)
            scale = reward_scale(rm, sft_rollouts, args.micro_batch_size, rt.autocast)
            ppo_run.use_reward_scale(args, state, critic, scale, rm_report)
    opt_policy, opt_critic, gen = ppo_run.optimizers(args, policy, critic, ckpt if resuming else None)
    log = run.open_log("update", ckpt["provenance"]["step"] if resuming else None)  # up to the resume point
    val = validation.Validation(tok, task, data.val_rows, args.seed, args.val_samples, args.eval_temperature,
                                data.max_new_tokens, args.batch_prompts, rt.autocast)
    choose = ppo_run.checkpoints(args, run, tok_json, val, policy, critic, opt_policy, opt_critic, gen)
    if not resuming:  # the SFT model is candidate 0
        rec = {"update": 0, "reward_mean": state.reward_mean, "reward_std": state.reward_std,
               "reward_scale": state.reward_scale}
        choose(0, rec, state)
        append_row(log, rec)
    step2, step3, step4 = ppo_run.step_settings(args, state, data.n_vocab)
    print(" ".join(f"{c:>9s}" for c in ppo_run.LOG_COLUMNS))
    t_start = time.time()
    for update in range(state.update, args.updates):
        t0 = time.time()
        # 1. Rollout: k rationales for each of a fresh draw of training questions, no answer given.
        rows, prompts, seeds = draw_questions(data.train_rows, data.prompt_ids, args.questions_per_update, k,
                                              args.seed, update)
        rollouts = rollout(policy, prompts, k, args.temperature, data.max_new_tokens, data.stop_ids, seeds,
                           args.batch_prompts, rt.autocast, data.n_vocab)
        # 2. Reward: the standardised RM score (SML) and/or the exact answer check, per rationale.
        texts = [decode_sampled(tok, r, data.stop_ids) for r in rollouts.responses]
        rewards = score_rollouts(texts, [rows[i // k]["answer"] for i in range(len(texts))], rollouts, seeds, task,
                                 rm, step2, args.micro_batch_size, rt.autocast)
        # 3. Advantages: old/ref log-probs, values, per-token KL-penalised rewards, GAE (or group baselines).
        batch = prepare_batch(policy, ref, critic, rollouts, rewards.sequence, state.kl_coef, step3, rt.autocast)
        # 4. Optimise: epochs over minibatches (the critic alone during its warmup); GRPO's KL is in the loss.
        cfg = replace(step4, kl_loss_coef=state.kl_coef) if args.estimator == "grpo" else step4
        lr_at = ppo_run.lr_schedule(args, update)
        stats = ppo_update(policy, critic, opt_policy, opt_critic, batch, gen, cfg,
                           update >= args.critic_warmup_updates, lr_at, rt.autocast)
        for loss in (stats["policy_loss"], stats["value_loss"]):
            if loss is not None:  # (None: a model that did not train in this update)
                common.check_loss(loss, f"at update {update + 1}", run.resume_point)
        # 5. Log (with the beta this update used); every --eval_interval updates, choose on validation and save.
        rec = ppo_run.log_record(update, rewards, rollouts, batch, stats, state.kl_coef, lr_at(0)[0],
                                 critic is not None, time.time() - t0, time.time() - t_start)
        if args.kl_target:
            state.kl_coef = adaptive_kl_coef(state.kl_coef, float(batch.kl_per_seq.mean()), args.kl_target,
                                             args.kl_horizon)
        if (update + 1) % args.eval_interval == 0 or update + 1 == args.updates:
            rec["samples"] = ppo_run.log_samples(rows, texts, rewards, k, args.log_samples)
            choose(update + 1, rec, state)
        append_row(log, rec)
        ppo_run.print_row(rec)
    log.close()
    run.finish(partial(common.write_json, obj=ppo_run.summary(args, len(data.val_rows), state, time.time() - t_start)))
    common.cleanup_runtime(rt)


if __name__ == "__main__":
    common.run(main)
