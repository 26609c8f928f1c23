"""
SML step 3c: PPO against the reward model, in plain PyTorch, one file, read top to bottom.

The policy starts from the SFT model and writes rationales for training questions with no
answer given. The frozen reward model scores each finished rationale; a per-token KL
penalty to the frozen SFT model (the reference) keeps the policy close to what the reward
model was trained on. A critic with a scalar head estimates values for GAE. Each update:

  1. rollout    sample k rationales for each of Q questions (no top-k/top-p, so the
                sampler's distribution is exactly the one whose log-probs we train)
  2. reward     one number per rationale: the reward model's standardised score (or the
                exact answer check, or a random control), penalties for no answer / no ending
  3. advantage  old and reference log-probs and values; per-token reward
                -beta * (log pi - log pi_ref), + the sequence reward at the last token;
                GAE(gamma, lambda); advantages whitened (unit RMS, as every estimator's)
  4. optimise   a few epochs over minibatches: clipped policy ratio, value loss (clipped
                only with --value_clip); the epochs stop before the step of the first
                minibatch whose approx KL passes --target_kl
  5. log        RM score and true accuracy side by side, the reward's spread beside
                beta * KL, entropy, clip fraction, approx KL, ratio max, gradient norm,
                explained variance, the sampler's log-probs against the recomputed ones,
                response length; every --eval_interval updates, checkpoint selection on
                greedy validation accuracy and a few decoded rollouts

    python train_ppo.py --sft runs/default/sft.pt --rm runs/default/rm.pt \\
        --data_dir runs/default/data --out_dir runs/default/ppo

--reward rm (the paper) | exact (the task's answer check, Task.reward: RL on a verifiable
reward, a baseline) | rm+exact (both) | random (a control: a seeded N(0,1) per rollout, on the
standardised RM's scale, with the same penalties and clip). Every kind starts its critic from
the same place, the SFT model's trunk with a zero head (--critic_init sft, the default; no
--rm needed), so the runs differ in the reward and in its scale only: exact is 0/1, so the
same beta weighs more against it than against a reward of std 1. (--critic_init rm, the
reward model standardised, fits the reward at the end-of-text token only: at the earlier
positions GAE reads, its head was never trained.)

--estimator ppo (the paper's, the default) | rloo | grpo: the last two drop the critic, as the
trainers of TRL, OpenRLHF, verl and nanochat do. Their advantage compares a rationale with the
other samples of the same question. RLOO (Ahmadian et al. 2024): its return (sequence reward
minus beta times its KL to the SFT model, the penalty PPO spreads over the tokens) minus the
mean of the other k-1 returns; every token gets it, and the loss is PPO's token mean. GRPO
(Shao et al. 2024): the sequence reward alone, minus the group's mean, over its std; the KL to
the reference is a loss term of its own (beta times the k3 estimator), and each rationale's
tokens are averaged before the rationales are. The clipped objective and the epochs are PPO's.
Every estimator's advantages are scaled to RMS 1 over the batch's response tokens (PPO's
whitening does it already), so that one --lr is one step size for all three.

Reward scale: a Bradley-Terry reward model fixes neither the shift nor the scale of its
scores, so before the first update the RM scores a batch of the SFT model's own rationales
and every later score is standardised with that mean and std (logged, with the raw range).
The std has a floor (--reward_std_floor times the spread of the RM's scores on its held-out
pairs): a reward model that scores every SFT sample alike would otherwise turn its noise into
rewards of several units. kl_coef and the penalties are in units of "standard deviations of
the RM on SFT samples". A rollout that never ends gets a fixed penalty instead of a score read
at a token the reward model never saw (it was trained on finished rationales). PPO refuses a
reward model whose held-out pair accuracy or fresh-sample AUC (train_rm.py's report, kept in
rm.pt) is near chance, unless --allow_weak_rm says that is meant.

Step sizes (a pretrained model, PRESET=pretrained): AdamW's first step moves every parameter by
about the learning rate, and the first minibatch of each update has ratio 1, so the clip
cannot stop it: --warmup_steps ramps both learning rates up (then --min_lr_frac decays them),
--critic_warmup_updates trains the critic alone first, and --target_kl ends an update's epochs
early (before the step that would pass it). The built-in world's defaults leave all three off;
a --warmup_steps longer than the run is refused (the learning rate would never reach --lr).

Memory (one GPU): every forward runs on --micro_batch_size rows at a time (gradients accumulate
over a minibatch), log-probs are computed for response positions only, a chunk at a time, the
frozen reference and reward model are kept in the compute dtype (cast before the reward scale is
measured, so that it is the scale of the copy that scores), and --grad_checkpointing
recomputes each block's activations in backward. Autocast goes around each forward only: it
caches the bf16 copy of every weight until its region ends, so an optimizer step inside one
region would be invisible to the forwards after it.

Checkpoint selection: on the validation split (data_dir/val.jsonl, held out of collection, SFT
and the RM by data/prepare.py), at update 0 (the SFT model itself) and every --eval_interval
updates, by greedy accuracy (the table's headline; ties go to the earlier update). The mean of
--val_samples samples per question at --eval_temperature, with the same seeds for every
candidate, is logged beside it. The best is ppo_best.pt, and summary.json says which and why.
The test split is not read: evaluate.py reads it once, for the final table.

Writes ppo_last.pt (the policy with the critic and both optimizers: what --resume continues,
exactly), ppo_best.pt (weights only: a language-model checkpoint that evaluate.py reads),
ppo_log.jsonl (one row per update, update 0 being the SFT model's evaluation) and, last,
summary.json (a rerun into the same folder removes it first: it says the run is finished).

KL: beta (--kl_coef) is in standardised reward units; the log's kl_term (beta times the KL per
rationale) beside reward_std shows how much of the return it is. In the built-in world at the
default beta it is a few percent of the reward's spread at most: the world's PPO is close to
unregularised, and what bounds its drift is the number of updates and the checkpoint choice.
--kl_target adapts beta (Ziegler et al. 2019) over --kl_horizon updates.

What this PPO leaves out, to stay small: no entropy bonus (nothing here holds the entropy up:
see KL above), one process only (no DDP), a separate critic rather
than a value head on the policy (so the policy's trunk serves one objective), and no reward
normalisation beyond the one-off standardisation above (running statistics would move the
reward's meaning during training).
"""

import copy
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from sml import common
from sml import rationales
from data import load_val_split, load_world
from data.jsonl import DataError, append_row, load_dataset, open_log
from data.tokenizer import decode_sampled, stop_ids
from sml.checkpoint import checked_config, load_checkpoint, save_checkpoint
from sml.reward_report import MIN_RM_QUALITY, check_reward_model
from model import GPT, configure_optimizer, fp32_head, lm_to_scalar, pad_batch, sequence_scores
from sml.sampler import mask_padded_vocab, prompts_per_batch, sample

# The defaults below are the default preset; tiny overrides these (flags given still win).
PRESETS = {"default": {},
           "tiny": dict(updates=4, questions_per_update=8, samples_per_question=2, minibatch_size=8,
                        eval_interval=2, eval_limit=20, val_samples=2, norm_questions=8, allow_weak_rm=True),
           # a pretrained model (run.sh with INIT): small steps for pretrained weights (peers use
           # 1e-6 for the policy, 1e-5 for the critic at this size), a warmup, the critic first,
           # an early stop on the policy's KL, and a smaller batch per update
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
                   help="the RM's std on SFT samples is at least this times the std of its scores on "
                        "its held-out pairs")
    g.add_argument("--reward_clip", type=common.POSITIVE, default=5.0, help="clip the sequence reward to +-this")
    g.add_argument("--allow_weak_rm", action="store_true",
                   help=f"train against a reward model whose held-out pair accuracy or fresh-sample AUC is "
                        f"below {MIN_RM_QUALITY} (near chance), or that carries no report")


def add_optimisation_args(p):
    """Step 4's flags: the epochs, the step sizes, the estimator, the clips; and memory."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--ppo_epochs", type=common.COUNT, default=2, help="passes over each rollout batch")
    g.add_argument("--minibatch_size", type=common.COUNT, default=96, help="rollouts per optimizer step")
    g.add_argument("--lr", type=common.LEARNING_RATE, default=1.5e-4,
                   help="policy learning rate")
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
                   help="ppo: GAE with a critic (the paper); rloo / grpo: a baseline from the other samples of "
                        "the same question, no critic")
    g.add_argument("--critic_init", default="sft", choices=["sft", "rm"],
                   help="sft: the SFT model's trunk with a zero scalar head (values start at 0, whatever the "
                        "reward); rm: the reward model, standardised (needs --rm)")
    g.add_argument("--clip", type=common.POSITIVE, default=0.2, help="policy ratio clip")
    g.add_argument("--value_clip", type=common.POSITIVE, default=None,
                   help="clip each value's move per update to +-this (off by default)")
    g.add_argument("--gamma", type=common.FRACTION, default=1.0)
    g.add_argument("--lam", type=common.FRACTION, default=0.95)
    g.add_argument("--grad_clip", type=common.POSITIVE, default=1.0)
    g = p.add_argument_group("memory")
    g.add_argument("--micro_batch_size", type=common.COUNT, default=None,
                   help="rollouts per forward pass; gradients accumulate over a minibatch (default: "
                        "the minibatch)")
    common.add_grad_checkpointing_arg(g)


def add_evaluation_args(p):
    """Checkpoint selection on the validation split, and what is logged."""
    g = p.add_argument_group("evaluation and checkpoint selection")
    g.add_argument("--eval_interval", type=common.COUNT, default=8, help="validate and checkpoint every N updates")
    g.add_argument("--eval_limit", type=common.NONNEG, default=0,
                   help="validation questions of each evaluation (0: all); the test split is never read here")
    common.add_eval_temperature_arg(g)
    g.add_argument("--val_samples", type=common.SAMPLES, default=4,
                   help="samples per validation question at --eval_temperature, logged beside the greedy "
                        "accuracy that chooses the checkpoint")
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
    check_args(p, args)
    return args


def check_args(p, args):
    """What no single flag's type can check, and the settings one flag implies for another."""
    if args.reward in ("rm", "rm+exact") and not args.rm:
        p.error(f"--reward {args.reward} needs --rm")
    if args.critic_init == "rm" and args.estimator == "ppo" and not args.rm:
        p.error("--critic_init rm needs --rm")
    if args.critic_warmup_updates >= args.updates:
        p.error(f"--critic_warmup_updates ({args.critic_warmup_updates}) leaves no update for the policy "
                f"(--updates {args.updates})")
    if args.estimator != "ppo" and args.samples_per_question < 2:
        p.error(f"--estimator {args.estimator} compares the samples of a question: --samples_per_question "
                f"must be at least 2")
    if args.estimator != "ppo":
        args.critic_warmup_updates = 0  # there is no critic
    args.micro_batch_size = min(args.micro_batch_size or args.minibatch_size, args.minibatch_size)
    policy_steps = (args.updates - args.critic_warmup_updates) * steps_per_update(args)
    if args.warmup_steps > policy_steps:
        p.error(f"--warmup_steps {args.warmup_steps} is longer than the run's {policy_steps} policy optimizer "
                f"steps (--updates {args.updates}): the learning rate would never reach --lr")


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
    """log pi(token t+1 | tokens <= t) at the response positions of idx (B, T) -> (B, T-1),
    0 where mask is 0, and the entropy of each of those distributions (no graph). Same
    temperature as the sampler.

    The output layer runs on response positions only, `chunk` of them at a time, and in
    training each chunk is recomputed in backward (checkpointed): a full (B, T, vocabulary)
    float32 tensor, kept for backward, is the largest term of PPO's memory with a real vocabulary."""
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
    """Generalized advantage estimation over the response tokens (mask 1). Each row's
    response is a contiguous run; values after it count as 0 (the episode has ended).
    Returns (advantages, returns) with returns = advantages + values."""
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


def explained_variance(values, returns, mask):
    v, r = values[mask > 0], returns[mask > 0]
    var_r = r.var()
    return float("nan") if var_r == 0 else float(1 - (r - v).var() / var_r)


def adaptive_kl_coef(kl_coef, kl, target, horizon):
    """Ziegler et al. (2019): raise beta when the KL to the reference is above target, lower
    it when below; the step is proportional to the error (clipped to +-20%) over `horizon`,
    counted in updates (Ziegler's 10,000 samples are about 20 of their updates)."""
    err = max(-0.2, min(0.2, kl / target - 1))
    return kl_coef * (1 + err / horizon)


def sequence_rewards(kind, rm_z, correct, has_answer, finished, no_answer_penalty,
                     unfinished_penalty, clip, noise=None):
    """One reward per rationale (SML step 3c's sequence reward), all tensors (B,).
    kind: "rm" (the standardised reward-model score, the paper), "exact" (1 if the one answer
    it states is right: RL on a verifiable reward), "rm+exact", or "random" (`noise`, N(0,1):
    a control on the standardised RM's scale that carries no information). A rationale that
    states no answer loses no_answer_penalty; one that never ended gets -unfinished_penalty
    whatever it says (the reward model only ever saw finished rationales)."""
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
    """The advantage of each of the k samples of a question (consecutive rows of `returns`, (B,)),
    against a baseline from its own group. rloo: minus the mean of the other k-1 samples
    (an unbiased baseline: it does not depend on the sample it is subtracted from). grpo (Shao et
    al. 2024): minus the group's mean, over the group's std; `returns` is then the sequence reward
    alone (GRPO's KL is a loss term, not part of the reward)."""
    groups = returns.view(-1, k)
    if estimator == "rloo":
        return (groups - (groups.sum(1, keepdim=True) - groups) / (k - 1)).view(-1)
    mean, std = groups.mean(1, keepdim=True), groups.std(1, keepdim=True)
    return ((groups - mean) / (std + eps)).view(-1)


def unit_rms(advantages, mask, eps=1e-8):
    """The advantages over their root mean square over the batch's response tokens, so that one
    --lr is one step size for every estimator (PPO's whitened advantages already have RMS 1;
    RLOO's and GRPO's were 0.73 and 0.82 in the world). A constant per batch: the signs and the
    ratios between rationales are the estimator's own."""
    return advantages * torch.rsqrt(masked_mean(advantages ** 2, mask) + eps)


def micro_batches(rows, size):
    """Consecutive slices of `rows` (a 1-d tensor of row indices) of at most `size` rows."""
    return [rows[s:s + size] for s in range(0, len(rows), size)]


# -----------------------------------------------------------------------------
# Rollouts and the batch PPO trains on


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
def rollout(policy, prompts, k, temperature, max_new_tokens, stop_ids, seeds, device, batch_prompts=None,
            amp=nullcontext(), n_vocab=None):
    """k samples per prompt, as a Rollout, sampled batch_prompts prompts at a time (None: as
    many as the device's memory holds). stop_ids: an id or a list; the first pads the rows."""
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


def standardise_head(critic, mean, std):
    """--critic_init rm: the reward model's head rescaled in place to (score - mean) / std, the
    units of the standardised rewards. Only at the end-of-text token is that the RM's judgment:
    at earlier positions (all the values GAE reads) the head was never trained."""
    with torch.no_grad():
        critic.score_head.weight /= std
        critic.score_head.bias.sub_(mean).div_(std)
    return critic


def standardised_critic(rm, mean, std):
    """A float32 copy of the reward model with its head standardised (standardise_head)."""
    return standardise_head(copy.deepcopy(rm).float(), mean, std)


def fresh_critic(lm):
    """--critic_init sft (the default): the SFT model's trunk with a zero scalar head, float32.
    Its first values are 0 for every reward kind (RM, exact match, random), so the runs
    that compare rewards start from the same critic; the head learns the reward's scale."""
    critic = lm_to_scalar(lm).float()
    with torch.no_grad():
        critic.score_head.weight.zero_()
        critic.score_head.bias.zero_()
    return critic


@torch.no_grad()
def prepare_batch(policy, ref, critic, rollouts, seq_reward, kl_coef, temperature, gamma, lam,
                  micro_batch_size=None, amp=nullcontext(), n_vocab=None, estimator="ppo", k=None):
    """Step 3 of an update: old and reference log-probs, values, per-token rewards, and the
    advantages: GAE with the critic's values (ppo), or each rationale's return against its
    group of k (rloo, grpo: critic is None; grpo's reward leaves the KL out, ppo_update adds it
    to the loss). The advantages have unit RMS over the batch's response tokens whatever the
    estimator. The forwards run micro_batch_size rows at a time, each cut to its longest row."""
    policy.eval()
    old_logp, ref_logp, values = (torch.zeros_like(rollouts.mask) for _ in range(3))
    for rows in micro_batches(torch.arange(rollouts.idx.size(0)), micro_batch_size or rollouts.idx.size(0)):
        T = int(rollouts.seq_lens[rows].max())
        idx, mask = rollouts.idx[rows, :T], rollouts.mask[rows, :T - 1]
        with amp:
            old_logp[rows, :T - 1] = token_logprobs(policy, idx, mask, temperature, n_vocab)[0]
            ref_logp[rows, :T - 1] = token_logprobs(ref, idx, mask, temperature, n_vocab)[0]
            if critic is not None:
                values[rows, :T - 1] = values_of(critic.eval(), idx) * mask
    kl = (old_logp - ref_logp) * rollouts.mask
    # the KL penalty to the SFT model, on every response token (GRPO puts it in the loss instead)
    rewards = -(0.0 if estimator == "grpo" else kl_coef) * kl
    last = rollouts.mask.cumsum(1).argmax(1)  # position of each row's last response token
    rewards[torch.arange(rollouts.idx.size(0)), last] += seq_reward
    if estimator == "ppo":
        advantages, returns = compute_gae(rewards, values, rollouts.mask, gamma, lam)
        advantages = masked_whiten(advantages, rollouts.mask)
    else:  # the whole rationale's return, against the other samples of its question
        advantages = group_advantages(rewards.sum(1), k, estimator).unsqueeze(1) * rollouts.mask
        advantages = unit_rms(advantages, rollouts.mask)
        returns = torch.zeros_like(values)
    return Batch(rollouts.idx, rollouts.mask, rollouts.seq_lens, old_logp, ref_logp, values, rewards, advantages,
                 returns, kl.sum(1))


def minibatch_gradients(policy, critic, batch, mb, micro_batch_size, temperature, clip, value_clip, train_policy,
                        amp, n_vocab, kl_loss_coef=0.0, per_sequence=False):
    """The gradients of one minibatch (`mb`: row indices), micro_batch_size rows at a time, each
    micro-batch's loss weighted by its share of the minibatch's response tokens (per_sequence:
    of its rationales), so the accumulated gradient is the whole minibatch's. kl_loss_coef adds
    beta times the k3 estimate of the KL to the reference to the policy's loss (GRPO). The
    policy's forward and backward run before the critic's, so the two graphs are never alive at
    once. Returns the minibatch's diagnostics (their token-weighted means) and its largest
    policy ratio."""
    n_tok = batch.mask[mb].sum().clamp(min=1)
    stats = {k: 0.0 for k in ("policy_loss", "value_loss", "approx_kl", "clip_frac", "entropy")}
    ratio_max = 0.0
    for rows in micro_batches(mb, micro_batch_size):
        T = int(batch.seq_lens[rows].max())
        idx, mask = batch.idx[rows, :T], batch.mask[rows, :T - 1]
        share = mask.sum() / n_tok  # this micro-batch's part of the minibatch's mean
        if train_policy:
            with amp:
                new_logp, entropy = token_logprobs(policy, idx, mask, temperature, n_vocab)
            pg_loss, approx_kl, clip_frac = policy_loss(new_logp, batch.old_logp[rows, :T - 1],
                                                        batch.advantages[rows, :T - 1], mask, clip, per_sequence)
            if kl_loss_coef:
                kl_ref = k3_kl(new_logp, batch.ref_logp[rows, :T - 1])
                pg_loss = pg_loss + kl_loss_coef * (sequence_mean if per_sequence else masked_mean)(kl_ref, mask)
            (pg_loss * (len(rows) / len(mb) if per_sequence else share)).backward()
            ratio = torch.exp(new_logp.detach() - batch.old_logp[rows, :T - 1])[mask > 0]
            ratio_max = max(ratio_max, float(ratio.max()) if ratio.numel() else 0.0)
            for k, v in (("policy_loss", pg_loss), ("approx_kl", approx_kl), ("clip_frac", clip_frac),
                         ("entropy", masked_mean(entropy, mask))):
                stats[k] += float(v.detach() * share)
        if critic is not None:
            with amp:
                new_values = values_of(critic, idx)
            v_loss = value_loss(new_values, batch.values[rows, :T - 1], batch.returns[rows, :T - 1], mask,
                                value_clip)
            (v_loss * share).backward()
            stats["value_loss"] += float(v_loss.detach() * share)
    return stats, ratio_max


def optimizer_step(model, optimizer, grad_clip):
    """Clip the gradient, step, clear; returns the gradient's norm before the clip."""
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def ppo_update(policy, critic, opt_policy, opt_critic, batch, gen, *, epochs, minibatch_size, temperature,
               clip, value_clip, grad_clip, micro_batch_size=None, train_policy=True, target_kl=None,
               lr_at=None, amp=nullcontext(), n_vocab=None, kl_loss_coef=0.0, per_sequence=False):
    """Step 4 of an update: several epochs of minibatch updates on one batch. Returns the
    diagnostics, averaged over minibatches (ratio_max and the gradient norms: their largest;
    first_approx_kl: the first minibatch's, which should be 0; epoch_clip_frac: per epoch).

    A minibatch is one optimizer step (its gradients: minibatch_gradients). train_policy=False
    (the critic's warmup) leaves the policy as it is; critic=None (rloo, grpo) trains the policy
    alone. lr_at(i) -> (policy lr, critic lr) of this update's i-th optimizer step. target_kl:
    a minibatch whose approx KL (before its step) passes it ends the epochs without its step.
    Both models run in eval mode: dropout would make the log-probs differ from the rollout's
    even at the first step, where the ratio must be 1."""
    n = batch.idx.size(0)
    micro_batch_size = micro_batch_size or minibatch_size
    stats = {k: [] for k in ("policy_loss", "value_loss", "approx_kl", "clip_frac", "entropy")}
    ratio_max, grad_norm, critic_grad_norm, steps, stopped = 0.0, 0.0, 0.0, 0, False
    epoch_clip_frac = []
    policy.eval()
    if critic is not None:
        critic.eval()
    for _ in range(epochs):
        epoch_clip_frac.append([])
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, minibatch_size):
            mb = order[start:start + minibatch_size].to(batch.idx.device)
            if lr_at is not None:
                lr_policy, lr_critic = lr_at(steps)
                common.set_lr(opt_policy, lr_policy)
                if critic is not None:
                    common.set_lr(opt_critic, lr_critic)
            mb_stats, mb_ratio_max = minibatch_gradients(policy, critic, batch, mb, micro_batch_size, temperature,
                                                         clip, value_clip, train_policy, amp, n_vocab,
                                                         kl_loss_coef, per_sequence)
            ratio_max = max(ratio_max, mb_ratio_max)
            if train_policy and target_kl is not None and mb_stats["approx_kl"] > target_kl:
                # the policy has moved as far as one batch of rollouts should take it: no step
                # from this minibatch (its KL is measured before the step, as Stable-Baselines3 does)
                for model in (policy, critic):
                    if model is not None:
                        model.zero_grad(set_to_none=True)
                stopped = True
                break
            if train_policy:
                grad_norm = max(grad_norm, optimizer_step(policy, opt_policy, grad_clip))
            if critic is not None:
                critic_grad_norm = max(critic_grad_norm, optimizer_step(critic, opt_critic, grad_clip))
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


def steps_per_update(args):
    return args.ppo_epochs * math.ceil(args.questions_per_update * args.samples_per_question / args.minibatch_size)


def lr_schedule(args, update):
    """lr_at(i) for update `update`: warmup and cosine decay over the run's optimizer steps, the
    policy's counted from the end of the critic's warmup. A function of (update, step) alone,
    so a resumed run follows the same schedule."""
    per = steps_per_update(args)
    policy_total = (args.updates - args.critic_warmup_updates) * per
    policy_start = (update - args.critic_warmup_updates) * per

    def lr_at(i):
        return (common.cosine_lr(max(0, policy_start + i), policy_total, args.lr, args.warmup_steps, args.min_lr_frac),
                common.cosine_lr(update * per + i, args.updates * per, args.critic_lr, args.warmup_steps,
                                 args.min_lr_frac))
    return lr_at


# -----------------------------------------------------------------------------
# The reward model: is it good enough, and what scale are its scores on


@torch.no_grad()
def reward_scale(rm, policy, prompts, k, temperature, max_new_tokens, stops, seeds, device,
                 batch_prompts=None, micro_batch_size=None, amp=nullcontext(), n_vocab=None):
    """The RM's raw scores on finished rationales the SFT model writes: mean, std and range,
    what every later score is measured against. Computed once, before the first update."""
    rollouts = rollout(policy, prompts, k, temperature, max_new_tokens, stops, seeds, device, batch_prompts, amp,
                       n_vocab)
    scores = score_sequences(rm, rollouts, micro_batch_size, amp)[rollouts.finished].double()
    if scores.numel() < 2:
        raise common.UserError("too few of the SFT model's rationales finish to measure the reward "
                               "model's scale; raise --max_new_tokens or --norm_questions")
    # quantile's q on the scores' device (CUDA and MPS refuse a CPU one); one copy to the host
    q = torch.tensor([0.0, 0.05, 0.5, 0.95, 1.0], dtype=scores.dtype, device=scores.device)
    mean, std, *q = torch.cat([scores.mean().view(1), scores.std().view(1), torch.quantile(scores, q)]).tolist()
    return {"mean": mean, "std": std, "n": scores.numel(),
            "min": q[0], "p05": q[1], "median": q[2], "p95": q[3], "max": q[4]}


# -----------------------------------------------------------------------------
# Setup: the data, the models, a fresh start or a resumed one


@dataclass
class PPOData:
    """The questions PPO samples from and chooses on, with what reads them."""
    tok: object
    task: object
    train_rows: list
    val_rows: list
    prompt_ids: dict  # question id -> prompt token ids
    stop_ids: list  # the end-of-text and every end id the checkpoint declares (the first pads)
    n_vocab: int  # the tokenizer's vocabulary: ids past it (a padded embedding) are never sampled
    max_new_tokens: int  # the rationale budget of rollouts and of every evaluation


@dataclass
class PPOModels:
    """The four models and what trains the two that learn."""
    policy: GPT
    ref: GPT  # frozen: the SFT model
    rm: GPT  # frozen; None with --reward exact and no --rm
    critic: GPT  # None for rloo and grpo
    opt_policy: torch.optim.Optimizer
    opt_critic: torch.optim.Optimizer
    gen: torch.Generator  # minibatch order


def load_data(args, policy_config):
    tok, task = load_world(args.data_dir)
    train_rows = load_dataset(os.path.join(args.data_dir, "train.jsonl"))
    val_rows = load_val_split(args.data_dir, args.eval_limit, "PPO's checkpoint choice")
    # every prompt PPO will sample from must fit, checked now rather than after an hour (the test
    # split is not read here: it is read once, by evaluate.py, for the final table)
    for name, rows in (("train", train_rows), ("val", val_rows)):
        for r in rows:
            if len(tok.encode(task.prompt(r["question"])).ids) >= policy_config.block_size:
                raise DataError(f"{name} question {r['id']!r} does not fit the model's context of "
                                f"{policy_config.block_size} tokens")
    prompt_ids = {r["id"]: tok.encode(task.prompt(r["question"])).ids for r in train_rows}
    return PPOData(tok, task, train_rows, val_rows, prompt_ids, stop_ids(tok, policy_config),
                   tok.get_vocab_size(), args.max_new_tokens or task.rationale_tokens)


def uses_rm(args):
    """Whether the reward model enters the run: in the reward, or as the critic's start."""
    return args.reward in ("rm", "rm+exact") or (args.estimator == "ppo" and args.critic_init == "rm")


def start(args, rt, data, policy, ref, rm, rm_report):
    """A fresh run: build the critic (none for rloo and grpo), cast the frozen models to the
    compute dtype, and measure the reward model's scale on SFT samples with the copy that will
    score (the critic from the RM is rescaled to it)."""
    state = {"update": 0, "kl_coef": args.kl_coef, "reward_mean": 0.0, "reward_std": 1.0, "reward_scale": None,
             "best_val": -1.0, "best_update": None, "val_history": [], "gen_state": None}
    critic = None  # rloo, grpo
    if args.estimator == "ppo":  # float32 weights for the optimizer, taken before the frozen ones are cast
        critic = copy.deepcopy(rm).float() if args.critic_init == "rm" else fresh_critic(ref)
    freeze(rt, ref, rm)
    if uses_rm(args):
        k = args.samples_per_question
        rng = random.Random(rationales.derive_seed(args.seed, "norm"))
        rows = rng.sample(data.train_rows, min(args.norm_questions, len(data.train_rows)))
        seeds = [rationales.derive_seed(args.seed, "norm", i) for i in range(len(rows) * k)]
        scale = reward_scale(rm, policy, [data.prompt_ids[r["id"]] for r in rows], k, args.temperature,
                             data.max_new_tokens, data.stop_ids, seeds, rt.device, args.batch_prompts,
                             args.micro_batch_size, rt.autocast, data.n_vocab)
        floor = args.reward_std_floor * (rm_report or {}).get("val_score_std", 0.0)
        state.update(reward_scale=scale, reward_mean=scale["mean"], reward_std=max(scale["std"], floor))
        print(f"reward model on {scale['n']} finished SFT rationales: mean {scale['mean']:.3f}, std "
              f"{scale['std']:.3f} (floor {floor:.3f}: std used {state['reward_std']:.3f}), raw range "
              f"{scale['min']:.2f} .. {scale['max']:.2f} (5-95%: {scale['p05']:.2f} .. {scale['p95']:.2f})")
        if not (math.isfinite(state["reward_mean"]) and math.isfinite(state["reward_std"])
                and state["reward_std"] > 0):  # else every standardised reward, and the critic, is NaN
            raise common.UserError(
                f"{args.rm}: the reward model's scores on {scale['n']} finished SFT rationales have mean "
                f"{scale['mean']:.4g} and std {scale['std']:.4g} (floor {floor:.4g}): no scale to standardise "
                f"rewards by; check the reward model (does its score head vary?) or raise --reward_std_floor")
        if args.estimator == "ppo" and args.critic_init == "rm":
            standardise_head(critic, state["reward_mean"], state["reward_std"])
    return critic, state


@dataclass
class PPOPaths:
    """What a run writes in --out_dir."""
    out_dir: str

    def __post_init__(self):
        self.last = os.path.join(self.out_dir, "ppo_last.pt")  # where --resume continues
        self.best = os.path.join(self.out_dir, "ppo_best.pt")  # the chosen policy, weights only
        self.log = os.path.join(self.out_dir, "ppo_log.jsonl")
        self.summary = os.path.join(self.out_dir, "summary.json")  # written last: the run is finished


def resume(ckpt, paths, rt):
    """The critic and the loop's state of an interrupted run, from ppo_last.pt."""
    critic = None
    if ckpt["critic"] is not None:
        critic = GPT(checked_config(ckpt["critic_config"], ckpt["critic"], f"{paths.last}: its critic"))
        critic.load_state_dict(ckpt["critic"])
        critic.to(rt.device)
    return critic, ckpt["ppo_state"]


def freeze(rt, *frozen):
    """The frozen models in the compute dtype (bf16 on a GPU): half the memory, and what autocast
    would compute in anyway."""
    for model in frozen:
        if model is not None:
            model.requires_grad_(False)
            model.to(rt.dtype).eval()


def trainable_and_frozen(args, rt, policy, ref, rm, critic):
    """The frozen models in the compute dtype; the policy and the critic keep float32 weights
    for the optimizer."""
    freeze(rt, ref, rm)
    for model in (policy, critic):
        if model is not None:
            model.requires_grad_(True)
            model.grad_checkpointing = args.grad_checkpointing
    opt_policy = configure_optimizer(policy, args.lr, 0.0)
    opt_critic = configure_optimizer(critic, args.critic_lr, 0.0) if critic is not None else None
    return PPOModels(policy, ref, rm, critic, opt_policy, opt_critic, torch.Generator().manual_seed(args.seed))


def setup(args, rt, paths):
    """Load the data and the models, check every prompt fits, and either resume from ppo_last.pt
    or start afresh (the reward model's scale, the critic, and the SFT model's validation as
    candidate 0). Returns (data, models, state, the open log)."""
    common.check_output(args.out_dir, True, [args.sft, args.rm, args.data_dir], folder=True)
    if os.path.exists(paths.last) and not (args.resume or args.overwrite):
        raise DataError(f"{args.out_dir} already holds a PPO run; pass --resume or --overwrite")
    tok, _ = load_world(args.data_dir)
    resuming = args.resume and os.path.exists(paths.last)
    policy, ckpt = load_checkpoint(paths.last if resuming else args.sft, kind="lm", tokenizer_json=tok.to_str(),
                                   device=rt.device)
    data = load_data(args, policy.config)
    ref, _ = load_checkpoint(args.sft, kind="lm", tokenizer_json=tok.to_str(), device=rt.device)
    rm, rm_report = None, None
    if args.rm:
        rm, rm_ckpt = load_checkpoint(args.rm, kind="scalar", tokenizer_json=tok.to_str(), device=rt.device)
        rm_report = rm_ckpt.get("report")
        if args.reward in ("rm", "rm+exact"):
            check_reward_model(rm_report, args.rm, args.allow_weak_rm)
    if os.path.exists(paths.summary):
        os.remove(paths.summary)  # ours, and it says "finished": a rerun, fresh or resumed, is not yet
    if resuming:
        critic, state = resume(ckpt, paths, rt)
    else:
        critic, state = start(args, rt, data, policy, ref, rm, rm_report)
    models = trainable_and_frozen(args, rt, policy, ref, rm, critic)
    if resuming:
        models.opt_policy.load_state_dict(ckpt["opt_policy"])
        if critic is not None:
            models.opt_critic.load_state_dict(ckpt["opt_critic"])
        models.gen.set_state(state["gen_state"])
    # a resumed run's log: the rows up to its checkpoint
    log = open_log(paths.log, (lambda row: row["update"] <= ckpt["provenance"]["step"]) if resuming else None)
    if not resuming:  # the SFT model is candidate 0
        rec = {"update": 0, "reward_mean": state["reward_mean"], "reward_std": state["reward_std"],
               "reward_scale": state["reward_scale"]}
        choose_checkpoint(args, rt, data, models, state, 0, rec, paths.best)
        save_resume_point(paths.last, args, data, models, state, 0)
        append_row(log, rec)
    return data, models, state, log


# -----------------------------------------------------------------------------
# Checkpoints and selection


def save_resume_point(path, args, data, models, state, update):
    """ppo_last.pt: the policy, the critic, both optimizers and the loop's state."""
    state["update"] = update
    state["gen_state"] = models.gen.get_state()
    critic = models.critic
    save_checkpoint(path, models.policy, data.tok.to_str(),
                    {"script": "train_ppo.py", "args": vars(args), "step": update, "parent": args.sft},
                    extra={"critic": critic.state_dict() if critic else None,
                           "critic_config": asdict(critic.config) if critic else None,
                           "opt_policy": models.opt_policy.state_dict(),
                           "opt_critic": models.opt_critic.state_dict() if critic else None, "ppo_state": state})


def validate(policy, data, args, rt, rows, name, samples, temperature):
    """Accuracy over `samples` samples per question (temperature 0: the greedy answer), with the
    same seeds at every update (common random numbers: candidates differ by their weights, not
    by their luck), and its standard error over questions."""
    with rt.autocast:
        _, preds = rationales.evaluate(policy, data.tok, data.task, rows, temperature, samples,
                                       rationales.derive_seed(args.seed, name), quiet=True,
                                       max_new_tokens=data.max_new_tokens, batch_prompts=args.batch_prompts)
    per_q = torch.tensor([sum(p["sample_correct"]) / samples for p in preds], dtype=torch.float64)
    se = float(per_q.std() / len(per_q) ** 0.5) if len(per_q) > 1 else float("nan")
    return float(per_q.mean()), se


def choose_checkpoint(args, rt, data, models, state, update, rec, best_path):
    """Checkpoint selection on the validation split by greedy accuracy, the table's headline
    (a T=1 accuracy rewards sharpening even while the greedy answers get worse); the mean
    accuracy of --val_samples samples at --eval_temperature is logged beside it. Update 0 (SFT
    itself) is a candidate. The chosen policy is written as weights only: it is what later
    stages read, not what resumes. The test split is never read here."""
    rec["val_greedy_accuracy"], rec["val_greedy_se"] = validate(models.policy, data, args, rt, data.val_rows,
                                                                "val greedy", 1, 0.0)
    rec["val_accuracy"], rec["val_se"] = validate(models.policy, data, args, rt, data.val_rows, "val",
                                                  args.val_samples, args.eval_temperature)
    state["val_history"].append({"update": update, "greedy_accuracy": rec["val_greedy_accuracy"],
                                 "greedy_se": rec["val_greedy_se"], "accuracy": rec["val_accuracy"],
                                 "se": rec["val_se"]})
    if rec["val_greedy_accuracy"] > state["best_val"]:  # ties go to the earlier update
        state["best_val"], state["best_update"] = rec["val_greedy_accuracy"], update
        save_checkpoint(best_path, models.policy, data.tok.to_str(),
                        {"script": "train_ppo.py", "args": vars(args), "step": update, "parent": args.sft})
    print(f"update {update}: validation greedy {100 * rec['val_greedy_accuracy']:.1f}% (se "
          f"{100 * rec['val_greedy_se']:.1f}), at T={args.eval_temperature:g} {100 * rec['val_accuracy']:.1f}% "
          f"(se {100 * rec['val_se']:.1f}, {len(data.val_rows)} questions x {args.val_samples}); best so far: "
          f"update {state['best_update']}")


# -----------------------------------------------------------------------------
# The loop


@dataclass
class Rewards:
    """Step 2's output: the sequence reward of each rollout, and what went into it."""
    sequence: torch.Tensor  # (B,) what PPO maximises
    rm_z: torch.Tensor  # (B,) the reward model's standardised score (0 with --reward exact)
    correct: torch.Tensor  # (B,) the one answer it states is right (the truth the RM is watched against)
    has_answer: torch.Tensor  # (B,) it states exactly one answer
    texts: list  # the decoded rationales


def draw_questions(args, data, update):
    """Step 1's prompts: a fresh draw of training questions per update, and a seed per rollout,
    both from (seed, update) alone, so a resumed run draws the same ones."""
    rng = random.Random(rationales.derive_seed(args.seed, "questions", update))
    rows = rng.sample(data.train_rows, min(args.questions_per_update, len(data.train_rows)))
    seeds = [rationales.derive_seed(args.seed, "rollout", update, i)
             for i in range(len(rows) * args.samples_per_question)]
    return rows, [data.prompt_ids[r["id"]] for r in rows], seeds


def score_rollouts(args, rt, data, models, state, rows, rollouts, seeds=None):
    """Step 2: the sequence reward of each rollout (the standardised RM score for SML, the exact
    answer check for the baseline, a draw from the rollout's seed for the random control;
    penalties for no answer or no ending)."""
    k, task = args.samples_per_question, data.task
    texts = [decode_sampled(data.tok, r, data.stop_ids) for r in rollouts.responses]
    golds = [rows[i // k]["answer"] for i in range(len(texts))]
    # rewards read answers strictly: only an answer the rationale states counts
    correct = torch.tensor([task.reward(t, g) for t, g in zip(texts, golds)], device=rt.device)
    has_answer = torch.tensor([task.stated_answer(t) is not None for t in texts], device=rt.device)
    rm_z = torch.zeros_like(correct)
    if args.reward in ("rm", "rm+exact"):
        raw = score_sequences(models.rm, rollouts, args.micro_batch_size, rt.autocast)
        rm_z = (raw - state["reward_mean"]) / state["reward_std"]
    noise = random_rewards(seeds, rt.device) if args.reward == "random" else None
    sequence = sequence_rewards(args.reward, rm_z, correct, has_answer, rollouts.finished, args.no_answer_penalty,
                                args.unfinished_penalty, args.reward_clip, noise)
    return Rewards(sequence, rm_z, correct, has_answer, texts)


def sampler_logp_gap(rollouts, old_logp):
    """Mean |the sampler's log-prob - the recomputed old log-prob| over the response tokens: 0 up
    to rounding in float32; on a GPU in bf16 the KV-cache path and the full forward differ, and
    a large gap means the ratio's 1 is not the sampler's distribution."""
    sampled = torch.tensor([lp for row in rollouts.sampler_logp for lp in row], dtype=torch.float32)
    recomputed = old_logp[rollouts.mask > 0].float().cpu()
    if sampled.numel() != recomputed.numel() or sampled.numel() == 0:
        return None
    return float((sampled - recomputed).abs().mean())


def log_record(args, update, rewards, rollouts, batch, stats, state, seconds, t_start):
    """Step 5: the RM's view and the truth side by side, the KL term beside the reward's spread
    (kl_term: beta * KL per rationale, in reward units), and PPO's health."""
    kl = float(batch.kl_per_seq.mean())
    return {"update": update + 1, "rm_score": float(rewards.rm_z.mean()), "accuracy": float(rewards.correct.mean()),
            "reward": float(rewards.sequence.mean()), "reward_std": float(rewards.sequence.std()), "kl_ref": kl,
            "kl_term": state["kl_coef"] * kl, "sampler_logp_gap": sampler_logp_gap(rollouts, batch.old_logp),
            **stats,
            "expl_var": (explained_variance(batch.values, batch.returns, batch.mask) if args.estimator == "ppo"
                         else None),
            "resp_len": float(rollouts.lengths.float().mean()), "finished": float(rollouts.finished.float().mean()),
            "no_answer": float((~rewards.has_answer).float().mean()), "kl_coef": state["kl_coef"],
            "lr": lr_schedule(args, update)(0)[0], "tok/s": int(batch.mask.sum()) / seconds,
            "seconds": time.time() - t_start}


LOG_COLUMNS = ["update", "rm_score", "accuracy", "reward_std", "kl_ref", "kl_term", "entropy", "clip_frac",
               "approx_kl", "value_loss", "expl_var", "resp_len", "tok/s"]


def print_row(rec):
    print(" ".join("-".rjust(9) if rec[c] is None else f"{rec[c]:>9.3f}" if isinstance(rec[c], float)
                   else f"{rec[c]:>9d}" for c in LOG_COLUMNS))


def finish(args, data, state, seconds):
    """summary.json, written last: it says the run is finished, and which update it hands on."""
    why = (f"highest greedy accuracy on the {len(data.val_rows)} validation questions (ties go to the earlier "
           f"update)")
    print(f"ppo_best.pt is update {state['best_update']}: {why}")
    common.write_json(os.path.join(args.out_dir, "summary.json"),
                      {"updates": args.updates, "seconds": seconds, "reward": args.reward,
                       "estimator": args.estimator,
                       "critic_init": args.critic_init if args.estimator == "ppo" else None,
                       "best_update": state["best_update"], "best_val_greedy_accuracy": state["best_val"],
                       "chosen_because": why, "val_history": state["val_history"],
                       "reward_mean": state["reward_mean"], "reward_std": state["reward_std"],
                       "reward_scale": state["reward_scale"]})


def main(argv=None):
    args = get_args(argv)
    rt = common.setup_runtime(args.device, args.dtype)
    if rt.ddp:
        raise common.UserError("runs on one process (one GPU or the CPU); start it without torchrun")
    common.seed_everything(args.seed)
    paths = PPOPaths(args.out_dir)
    data, models, state, log = setup(args, rt, paths)
    print(" ".join(f"{c:>9s}" for c in LOG_COLUMNS))
    t_start = time.time()
    for update in range(state["update"], args.updates):
        t0 = time.time()
        # 1. Rollout: k rationales for each of a fresh draw of training questions, no answer given.
        rows, prompts, seeds = draw_questions(args, data, update)
        rollouts = rollout(models.policy, prompts, args.samples_per_question, args.temperature, data.max_new_tokens,
                           data.stop_ids, seeds, rt.device, args.batch_prompts, rt.autocast, data.n_vocab)
        # 2. Reward: the standardised RM score (SML) and/or the exact answer check, per rationale.
        rewards = score_rollouts(args, rt, data, models, state, rows, rollouts, seeds)
        # 3. Advantages: old/ref log-probs, values, per-token KL-penalised rewards, GAE (or group baselines).
        batch = prepare_batch(models.policy, models.ref, models.critic, rollouts, rewards.sequence,
                              state["kl_coef"], args.temperature, args.gamma, args.lam, args.micro_batch_size,
                              rt.autocast, data.n_vocab, args.estimator, args.samples_per_question)
        # 4. Optimise: epochs over minibatches (the critic alone during its warmup).
        stats = ppo_update(models.policy, models.critic, models.opt_policy, models.opt_critic, batch, models.gen,
                           epochs=args.ppo_epochs, minibatch_size=args.minibatch_size,
                           micro_batch_size=args.micro_batch_size, temperature=args.temperature, clip=args.clip,
                           value_clip=args.value_clip, grad_clip=args.grad_clip, target_kl=args.target_kl,
                           train_policy=update >= args.critic_warmup_updates, lr_at=lr_schedule(args, update),
                           amp=rt.autocast, n_vocab=data.n_vocab,
                           # GRPO (Shao et al. 2024): the KL to the reference in the loss, rationales averaged
                           kl_loss_coef=state["kl_coef"] if args.estimator == "grpo" else 0.0,
                           per_sequence=args.estimator == "grpo")
        for loss in (stats["policy_loss"], stats["value_loss"]):
            if loss is not None:  # (None: a model that did not train in this update)
                common.check_loss(loss, f"at update {update + 1}", paths.last)
        # 5. Log (with the beta this update used), and every --eval_interval updates choose on the
        #    validation split and save.
        rec = log_record(args, update, rewards, rollouts, batch, stats, state, time.time() - t0, t_start)
        if args.kl_target:
            state["kl_coef"] = adaptive_kl_coef(state["kl_coef"], float(batch.kl_per_seq.mean()), args.kl_target,
                                                args.kl_horizon)
        if (update + 1) % args.eval_interval == 0 or update + 1 == args.updates:
            rec["samples"] = [{"question": rows[i // args.samples_per_question]["question"],
                               "rationale": rewards.texts[i], "reward": float(rewards.sequence[i]),
                               "rm_score": float(rewards.rm_z[i])} for i in range(min(args.log_samples, len(seeds)))]
            choose_checkpoint(args, rt, data, models, state, update + 1, rec, paths.best)
            save_resume_point(paths.last, args, data, models, state, update + 1)
        append_row(log, rec)
        print_row(rec)
    log.close()
    finish(args, data, state, time.time() - t_start)
    common.cleanup_runtime(rt)


if __name__ == "__main__":
    common.run(main)
