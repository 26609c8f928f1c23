"""
SML step 3c: PPO against the reward model, in plain PyTorch, one file, read top to bottom.

The policy starts from the SFT model and writes rationales for training questions with no
answer given. The frozen reward model scores each finished rationale; a per-token KL
penalty to the frozen SFT model (the reference) keeps the policy close to what the reward
model was trained on. A critic with a scalar head estimates values for GAE. Each update:

  1. rollout    sample k rationales for each of Q questions (no top-k/top-p, so the
                sampler's distribution is exactly the one whose log-probs we train)
  2. reward     one number per rationale: the reward model's standardised score (or the
                exact answer check, for the baseline), penalties for no answer / no ending
  3. advantage  old and reference log-probs and values; per-token reward
                -beta * (log pi - log pi_ref), + the sequence reward at the last token;
                GAE(gamma, lambda); advantages whitened
  4. optimise   a few epochs over minibatches: clipped policy ratio, clipped value loss
  5. log        RM score and true accuracy side by side, KL, entropy, clip fraction,
                approx KL, explained variance, response length; every --eval_interval
                updates, checkpoint selection on the validation split

    python train_ppo.py --sft runs/default/sft.pt --rm runs/default/rm.pt \\
        --data_dir runs/default/data --out_dir runs/default/ppo

--reward rm (the paper) | exact (the task's answer check, Task.reward: RL on a verifiable
reward, a baseline) | rm+exact (both). Both kinds start their critic from the same place (the
reward model, standardised, when --rm is given), so that the runs differ in the reward only.

Reward scale: a Bradley-Terry reward model fixes neither the shift nor the scale of its
scores, so before the first update the RM scores a batch of the SFT model's own rationales
and every later score is standardised with that mean and std (logged). kl_coef and the
penalties are therefore in units of "standard deviations of the RM on SFT samples". A
rollout that never ends gets a fixed penalty instead of a score read at a token the reward
model never saw (it was trained on finished rationales).

Checkpoint selection: the validation split (data_dir/val.jsonl, held out of collection, SFT
and the RM by data/prepare.py) is sampled --val_samples times per question with the same
seeds for every candidate (common random numbers), at update 0 (the SFT model itself) and
every --eval_interval updates; the best is ppo_best.pt, and summary.json says which and why.

Writes ppo_last.pt and ppo_best.pt (language-model checkpoints that evaluate.py reads),
ppo_log.jsonl (one row per update, update 0 being the SFT model's evaluation) and, last,
summary.json. --resume continues from ppo_last.pt exactly (the minibatch order's generator
state is in the checkpoint, and the log is cut back to the checkpoint's update).

What this PPO leaves out, to stay small: no entropy bonus (the KL penalty to the SFT model
already keeps the policy from collapsing), one process only (no DDP; the models are small),
a separate critic rather than a value head on the policy (so the policy's trunk serves one
objective), no learning-rate schedule, no early stop on approx KL (it is logged instead), and
no reward normalisation beyond the one-off standardisation above (running statistics would
move the reward's meaning during training).
"""

import copy
import json
import os
import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

import common
import rationales
from data import load_world
from data.jsonl import DataError, load_dataset
from data.tokenizer import eot_id
from lm_training import read_log
from model import GPT, GPTConfig, configure_optimizer, lm_to_scalar, load_checkpoint, \
    save_checkpoint, sequence_scores
from sampler import sample

# The defaults below are the default preset; tiny overrides these (flags given still win).
PRESETS = {"default": {},
           "tiny": dict(updates=4, questions_per_update=8, samples_per_question=2, minibatch_size=8,
                        eval_interval=2, eval_limit=20, val_samples=2, norm_questions=8),
           # a pretrained model (run.sh with INIT): small steps for pretrained weights, longer
           # rationales, a smaller batch per update
           "pretrained": dict(lr=1e-6, critic_lr=1e-5, updates=16, questions_per_update=16, minibatch_size=16,
                              max_new_tokens=128, eval_interval=4, eval_limit=100, norm_questions=32)}


def get_args(argv=None):
    p = common.ArgumentParser(description=__doc__)
    g = p.add_argument_group("input / output")
    g.add_argument("--sft", required=True, help="SFT checkpoint: the initial policy and the frozen reference")
    g.add_argument("--rm", help="reward-model checkpoint (needed unless --reward exact)")
    g.add_argument("--data_dir", required=True, help="folder with train/val/test.jsonl, tokenizer.json, meta.json")
    g.add_argument("--out_dir", required=True)
    g.add_argument("--resume", action="store_true", help="continue from out_dir/ppo_last.pt")
    g.add_argument("--overwrite", action="store_true", help="start again in an out_dir that holds a run")
    g.add_argument("--preset", default="default", choices=sorted(PRESETS), help=common.preset_help(PRESETS))
    g = p.add_argument_group("reward")
    g.add_argument("--reward", default="rm", choices=["rm", "exact", "rm+exact"])
    g.add_argument("--kl_coef", type=common.NONNEG_FLOAT, default=0.02,
                   help="beta of the per-token KL penalty, in standardised reward units")
    g.add_argument("--kl_target", type=common.POSITIVE, default=None,
                   help="adaptive KL: adjust beta towards this KL per rationale (off by default)")
    g.add_argument("--kl_horizon", type=common.POSITIVE, default=10000)
    g.add_argument("--no_answer_penalty", type=common.NONNEG_FLOAT, default=1.0,
                   help="subtracted when a finished rationale states no final answer")
    g.add_argument("--unfinished_penalty", type=common.NONNEG_FLOAT, default=2.0,
                   help="the reward of a rationale that never ends is -this (no RM score)")
    g.add_argument("--norm_questions", type=common.COUNT, default=64,
                   help="train questions whose SFT samples give the RM's mean and std")
    g.add_argument("--reward_clip", type=common.POSITIVE, default=5.0, help="clip the sequence reward to +-this")
    g = p.add_argument_group("rollouts")
    g.add_argument("--updates", type=common.COUNT, default=32)
    g.add_argument("--questions_per_update", type=common.COUNT, default=48)
    g.add_argument("--samples_per_question", type=common.COUNT, default=4)
    g.add_argument("--temperature", type=common.POSITIVE, default=1.0, help="rollouts and log-probs alike")
    g.add_argument("--max_new_tokens", type=common.COUNT, default=64)
    g = p.add_argument_group("optimisation")
    g.add_argument("--ppo_epochs", type=common.COUNT, default=2, help="passes over each rollout batch")
    g.add_argument("--minibatch_size", type=common.COUNT, default=96)
    g.add_argument("--lr", type=common.POSITIVE, default=1.5e-4,
                   help="policy learning rate (at 3e-5 the default run's policy barely moves)")
    g.add_argument("--critic_lr", type=common.POSITIVE, default=1e-4)
    g.add_argument("--critic_init", default="rm", choices=["rm", "sft"],
                   help="rm: the reward model, standardised (needs --rm, also with --reward exact)")
    g.add_argument("--clip", type=common.POSITIVE, default=0.2, help="policy ratio clip")
    g.add_argument("--value_clip", type=common.POSITIVE, default=0.2)
    g.add_argument("--gamma", type=common.FRACTION, default=1.0)
    g.add_argument("--lam", type=common.FRACTION, default=0.95)
    g.add_argument("--grad_clip", type=common.POSITIVE, default=1.0)
    g = p.add_argument_group("evaluation and checkpoint selection")
    g.add_argument("--eval_interval", type=common.COUNT, default=8, help="validate and checkpoint every N updates")
    g.add_argument("--eval_limit", type=common.NONNEG, default=0, help="test questions logged at each evaluation (0: all)")
    g.add_argument("--eval_temperature", type=common.NONNEG_FLOAT, default=1.0)
    g.add_argument("--val_samples", type=common.COUNT, default=4,
                   help="samples per validation question for choosing the best checkpoint")
    common.add_runtime_args(p)
    args = p.parse_args(argv)
    common.apply_preset(p, args, argv, PRESETS)
    if args.reward != "exact" and not args.rm:
        p.error(f"--reward {args.reward} needs --rm")
    if args.temperature <= 0:
        p.error("--temperature must be > 0: PPO needs a sampling distribution")
    if args.critic_init == "rm" and not args.rm:
        args.critic_init = "sft"  # exact-match reward and no reward model: SFT's trunk
    return args


# -----------------------------------------------------------------------------
# The pieces of PPO, each small enough to test on its own


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x, mask, eps=1e-8):
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def token_logprobs(model, idx, temperature):
    """log pi(token t+1 | tokens <= t) and the entropy of that distribution, for every
    position of idx (B, T) -> (B, T-1). Same temperature as the sampler."""
    logits, _ = model(idx[:, :-1])
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, idx[:, 1:].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
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


def policy_loss(new_logp, old_logp, advantages, mask, clip):
    """PPO's clipped surrogate: a token whose ratio has left [1-clip, 1+clip] in the
    direction its advantage pushes gets no gradient."""
    ratio = torch.exp(new_logp - old_logp)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.max(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        log_ratio = new_logp - old_logp
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)  # k3 estimator, >= 0
        clip_frac = masked_mean(((ratio - 1).abs() > clip).float(), mask)
    return loss, approx_kl, clip_frac


def value_loss(new_values, old_values, returns, mask, clip):
    clipped = old_values + (new_values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.max((new_values - returns) ** 2, (clipped - returns) ** 2), mask)


def explained_variance(values, returns, mask):
    v, r = values[mask > 0], returns[mask > 0]
    var_r = r.var()
    return float("nan") if var_r == 0 else float(1 - (r - v).var() / var_r)


def adaptive_kl_coef(kl_coef, kl, target, n_samples, horizon):
    """Ziegler et al. (2019): raise beta when the KL to the reference is above target, lower
    it when below; the step is proportional to the error (clipped to +-20%)."""
    err = max(-0.2, min(0.2, kl / target - 1))
    return kl_coef * (1 + err * n_samples / horizon)


def sequence_rewards(kind, rm_z, correct, has_answer, finished, no_answer_penalty,
                     unfinished_penalty, clip):
    """One reward per rationale (SML step 3c's sequence reward), all tensors (B,).
    kind: "rm" (the standardised reward-model score, the paper), "exact" (1 if the stated
    answer is right: RL on a verifiable reward) or "rm+exact". A rationale that states no
    answer loses no_answer_penalty; one that never ended gets -unfinished_penalty whatever
    it says (the reward model only ever saw finished rationales)."""
    r = {"rm": rm_z, "exact": correct, "rm+exact": rm_z + correct}[kind]
    r = r - no_answer_penalty * (~has_answer).float()
    r = torch.where(finished, r, torch.full_like(r, -unfinished_penalty))
    return r.clamp(-clip, clip)


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
    """A rollout with what the PPO epochs need, all (B, T-1) but kl_per_seq."""
    idx: torch.Tensor
    mask: torch.Tensor
    old_logp: torch.Tensor  # the policy's log-probs before this update's epochs
    ref_logp: torch.Tensor  # the reference (SFT) model's
    values: torch.Tensor  # the critic's, before the epochs
    rewards: torch.Tensor  # -beta * KL per token, + the sequence reward on the last
    advantages: torch.Tensor  # GAE, whitened over the batch's response tokens
    returns: torch.Tensor  # advantages (before whitening) + values: the critic's target
    kl_per_seq: torch.Tensor  # (B,) KL to the reference, summed over the response


@torch.no_grad()
def rollout(policy, prompts, k, temperature, max_new_tokens, eot_id, seeds, device):
    """k samples per prompt, as a Rollout."""
    out = sample(policy, prompts, num_samples=k, max_new_tokens=max_new_tokens, temperature=temperature,
                 stop_ids=eot_id, pad_id=eot_id, seeds=seeds)
    responses = out.token_lists()
    seqs = [prompts[i // k] + r for i, r in enumerate(responses)]
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), eot_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T - 1)
    for i, s in enumerate(seqs):
        idx[i, :len(s)] = torch.tensor(s)
        n_prompt = len(prompts[i // k])
        mask[i, n_prompt - 1:len(s) - 1] = 1.0  # positions that predict a response token
    return Rollout(idx.to(device), mask.to(device), responses,
                   [out.logprobs[i, :len(r)].tolist() for i, r in enumerate(responses)],
                   torch.tensor([len(s) for s in seqs], device=device), out.finished.to(device),
                   out.lengths.to(device))


@torch.no_grad()
def score_sequences(rm, ro):
    """The reward model's score at each sequence's last real token (its end-of-text when
    the rationale finished), as the reward model was trained."""
    real = torch.arange(ro.idx.size(1), device=ro.idx.device).unsqueeze(0) < ro.seq_lens.unsqueeze(1)
    scores, _ = rm(ro.idx)
    return sequence_scores(scores.float(), real)


@torch.no_grad()
def reward_scale(rm, policy, prompts, k, temperature, max_new_tokens, eot_id, seeds, device):
    """The RM's mean and std over finished rationales the SFT model writes: what a score is
    measured against. Computed once, before the first update."""
    ro = rollout(policy, prompts, k, temperature, max_new_tokens, eot_id, seeds, device)
    scores = score_sequences(rm, ro)[ro.finished]
    if scores.numel() < 2:
        raise common.UserError("too few of the SFT model's rationales finish to measure the reward "
                               "model's scale; raise --max_new_tokens or --norm_questions")
    return float(scores.mean()), float(scores.std())


def standardised_critic(rm, mean, std):
    """The critic starts as the reward model whose head is rescaled to (score - mean) / std:
    its first values are in the same units as the standardised rewards."""
    critic = copy.deepcopy(rm)
    with torch.no_grad():
        critic.score_head.weight /= std
        critic.score_head.bias.sub_(mean).div_(std)
    return critic


@torch.no_grad()
def prepare_batch(policy, ref, critic, ro, seq_reward, kl_coef, temperature, gamma, lam):
    """Step 3 of an update: old and reference log-probs, values, per-token rewards, GAE."""
    policy.eval()
    critic.eval()
    old_logp, _ = token_logprobs(policy, ro.idx, temperature)
    ref_logp, _ = token_logprobs(ref, ro.idx, temperature)
    values = values_of(critic, ro.idx) * ro.mask
    kl = (old_logp - ref_logp) * ro.mask
    rewards = -kl_coef * kl  # the KL penalty to the SFT model, on every response token
    last = ro.mask.cumsum(1).argmax(1)  # position of each row's last response token
    rewards[torch.arange(ro.idx.size(0)), last] += seq_reward
    advantages, returns = compute_gae(rewards, values, ro.mask, gamma, lam)
    return Batch(ro.idx, ro.mask, old_logp, ref_logp, values, rewards,
                 masked_whiten(advantages, ro.mask), returns, kl.sum(1))


def ppo_update(policy, critic, opt_policy, opt_critic, b, gen, *, epochs, minibatch_size, temperature,
               clip, value_clip, grad_clip):
    """Step 4 of an update: several epochs of minibatch updates on one batch. Returns the
    diagnostics, averaged over minibatches."""
    n = b.idx.size(0)
    stats = {k: [] for k in ("policy_loss", "value_loss", "approx_kl", "clip_frac", "entropy")}
    policy.train()
    critic.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, minibatch_size):
            mb = order[start:start + minibatch_size]
            idx, mask = b.idx[mb], b.mask[mb]
            new_logp, entropy = token_logprobs(policy, idx, temperature)
            pg_loss, approx_kl, clip_frac = policy_loss(new_logp, b.old_logp[mb], b.advantages[mb], mask, clip)
            new_values = values_of(critic, idx)
            v_loss = value_loss(new_values, b.values[mb], b.returns[mb], mask, value_clip)
            opt_policy.zero_grad(set_to_none=True)
            opt_critic.zero_grad(set_to_none=True)
            (pg_loss + v_loss).backward()  # separate networks: the sum gives each its own gradient
            torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
            torch.nn.utils.clip_grad_norm_(critic.parameters(), grad_clip)
            opt_policy.step()
            opt_critic.step()
            for k, v in (("policy_loss", pg_loss), ("value_loss", v_loss), ("approx_kl", approx_kl),
                         ("clip_frac", clip_frac), ("entropy", masked_mean(entropy.detach(), mask))):
                stats[k].append(float(v.detach()))
    return {k: float(np.mean(v)) for k, v in stats.items()}


# -----------------------------------------------------------------------------
# Setup and resume, in one place


@dataclass
class Run:
    """Everything the loop works with."""
    tok: object
    task: object
    train_rows: list
    val_rows: list
    test_rows: list
    prompt_ids: dict  # question id -> prompt token ids
    policy: GPT
    ref: GPT
    rm: GPT
    critic: GPT
    opt_policy: torch.optim.Optimizer
    opt_critic: torch.optim.Optimizer
    gen: torch.Generator  # minibatch order
    state: dict  # update, kl_coef, reward scale, best checkpoint so far, validation history
    log_rows: list  # the log of the run so far (a resumed run: up to its checkpoint)


def read_log_until(path, update):
    """The log rows up to and including `update`: what a resumed run keeps of an interrupted
    one's log, so that the two logs end up the same."""
    return [r for r in read_log(path) if r["update"] <= update]


def setup(args, rt, last_path, log_path):
    """Load the data and the models, check every prompt fits, and either start afresh (measure
    the reward model's scale on SFT samples, build the critic from it) or resume."""
    device = rt.device
    tok, task = load_world(args.data_dir)
    train_rows = load_dataset(os.path.join(args.data_dir, "train.jsonl"))
    val_path = os.path.join(args.data_dir, "val.jsonl")
    if not os.path.exists(val_path):
        raise DataError(f"{val_path}: no such file; PPO chooses its checkpoint on the validation "
                        f"split that data/prepare.py writes (held out of collection, SFT and the RM)")
    val_rows = load_dataset(val_path)
    test_rows = load_dataset(os.path.join(args.data_dir, "test.jsonl"))
    test_rows = test_rows[:args.eval_limit] if args.eval_limit else test_rows
    common.check_output(args.out_dir, True, [args.sft, args.rm, args.data_dir], folder=True)
    if os.path.exists(last_path) and not (args.resume or args.overwrite):
        raise DataError(f"{args.out_dir} already holds a PPO run; pass --resume or --overwrite")
    tok_json = tok.to_str()
    ref, _ = load_checkpoint(args.sft, kind="lm", tokenizer_json=tok_json, device=device)
    rm = load_checkpoint(args.rm, kind="scalar", tokenizer_json=tok_json, device=device)[0] if args.rm else None
    resuming = args.resume and os.path.exists(last_path)
    policy, ckpt = load_checkpoint(last_path if resuming else args.sft, kind="lm", tokenizer_json=tok_json,
                                   device=device)
    # every prompt PPO will sample from must fit, checked now rather than after an hour
    for name, rows in (("train", train_rows), ("val", val_rows), ("test", test_rows)):
        for r in rows:
            if len(tok.encode(task.prompt(r["question"])).ids) >= policy.config.block_size:
                raise DataError(f"{name} question {r['id']!r} does not fit the model's context of "
                                f"{policy.config.block_size} tokens")
    for frozen in (ref, rm):
        if frozen is not None:
            frozen.requires_grad_(False)
            frozen.eval()
    prompt_ids = {r["id"]: tok.encode(task.prompt(r["question"])).ids for r in train_rows}

    if resuming:
        critic = GPT(GPTConfig(**ckpt["critic_config"])).to(device)
        critic.load_state_dict(ckpt["critic"])
        state = ckpt["ppo_state"]
        log_rows = read_log_until(log_path, ckpt["provenance"]["step"])
    else:
        state = {"update": 0, "kl_coef": args.kl_coef, "reward_mean": 0.0, "reward_std": 1.0,
                 "best_val": -1.0, "best_update": None, "val_history": [], "gen_state": None}
        if rm is not None:
            k = args.samples_per_question
            rng = random.Random(rationales.derive_seed(args.seed, "norm"))
            rows = rng.sample(train_rows, min(args.norm_questions, len(train_rows)))
            seeds = [rationales.derive_seed(args.seed, "norm", i) for i in range(len(rows) * k)]
            with rt.autocast:
                state["reward_mean"], state["reward_std"] = reward_scale(
                    rm, policy, [prompt_ids[r["id"]] for r in rows], k, args.temperature,
                    args.max_new_tokens, eot_id(tok), seeds, device)
            print(f"reward model on {len(seeds)} SFT rationales: mean {state['reward_mean']:.3f}, "
                  f"std {state['reward_std']:.3f} (scores are standardised with these)")
        critic = standardised_critic(rm, state["reward_mean"], state["reward_std"]) \
            if args.critic_init == "rm" else lm_to_scalar(ref)
        log_rows = []
    critic.requires_grad_(True)
    opt_policy = configure_optimizer(policy, args.lr, 0.0)
    opt_critic = configure_optimizer(critic, args.critic_lr, 0.0)
    gen = torch.Generator().manual_seed(args.seed)
    if resuming:
        opt_policy.load_state_dict(ckpt["opt_policy"])
        opt_critic.load_state_dict(ckpt["opt_critic"])
        gen.set_state(state["gen_state"])
    return Run(tok, task, train_rows, val_rows, test_rows, prompt_ids, policy, ref, rm, critic,
               opt_policy, opt_critic, gen, state, log_rows)


# -----------------------------------------------------------------------------


def main(argv=None):
    args = get_args(argv)
    rt = common.setup_runtime(args.device, args.dtype)
    if rt.ddp:
        raise common.UserError("runs on one process (one GPU or the CPU); start it without torchrun")
    common.seed_everything(args.seed)
    last_path, best_path = os.path.join(args.out_dir, "ppo_last.pt"), os.path.join(args.out_dir, "ppo_best.pt")
    log_path = os.path.join(args.out_dir, "ppo_log.jsonl")
    run = setup(args, rt, last_path, log_path)
    tok, task, policy, state = run.tok, run.task, run.policy, run.state
    eot, k = eot_id(tok), args.samples_per_question

    def evaluate(rows, name, samples):
        """Accuracy over `samples` samples per question, with the same seeds at every update
        (common random numbers: candidates differ by their weights, not by their luck), and
        its standard error over questions."""
        with rt.autocast:
            _, preds = rationales.evaluate(policy, tok, task, rows, args.eval_temperature, samples,
                                           rationales.derive_seed(args.seed, name), quiet=True)
        per_q = torch.tensor([sum(p["sample_correct"]) / samples for p in preds], dtype=torch.float64)
        se = float(per_q.std() / len(per_q) ** 0.5) if len(per_q) > 1 else float("nan")
        return float(per_q.mean()), se

    def save(path, update):
        state["update"] = update
        state["gen_state"] = run.gen.get_state()
        save_checkpoint(path, policy, tok.to_str(),
                        {"script": "train_ppo.py", "args": vars(args), "step": update, "parent": args.sft},
                        extra={"critic": run.critic.state_dict(), "critic_config": asdict(run.critic.config),
                               "opt_policy": run.opt_policy.state_dict(),
                               "opt_critic": run.opt_critic.state_dict(), "ppo_state": state})

    def select(update, rec):
        """Checkpoint selection on the validation split; update 0 (SFT itself) is a candidate."""
        rec["val_accuracy"], rec["val_se"] = evaluate(run.val_rows, "val", args.val_samples)
        rec["test_accuracy"], _ = evaluate(run.test_rows, "test", 1)
        state["val_history"].append({"update": update, "accuracy": rec["val_accuracy"], "se": rec["val_se"]})
        if rec["val_accuracy"] > state["best_val"]:  # ties go to the earlier update
            state["best_val"], state["best_update"] = rec["val_accuracy"], update
            save(best_path, update)
        print(f"update {update}: validation {100 * rec['val_accuracy']:.1f}% (se {100 * rec['val_se']:.1f}, "
              f"{len(run.val_rows)} questions x {args.val_samples}), test {100 * rec['test_accuracy']:.1f}%; "
              f"best so far: update {state['best_update']}")

    os.makedirs(args.out_dir, exist_ok=True)
    with common.atomic_file(log_path) as f:  # a resumed run's log: the rows up to its checkpoint
        f.writelines(json.dumps(r) + "\n" for r in run.log_rows)
    log = open(log_path, "a")
    if state["update"] == 0 and not run.log_rows:  # a fresh run: the SFT model is candidate 0
        rec = {"update": 0, "reward_mean": state["reward_mean"], "reward_std": state["reward_std"]}
        select(0, rec)
        save(last_path, 0)
        log.write(json.dumps(rec) + "\n")
        log.flush()
    cols = ["update", "rm_score", "accuracy", "kl_ref", "entropy", "clip_frac", "approx_kl",
            "value_loss", "expl_var", "resp_len", "kl_coef", "tok/s"]
    print(" ".join(f"{c:>9s}" for c in cols))
    t_start = time.time()
    for update in range(state["update"], args.updates):
        t0 = time.time()
        # 1. Rollout: training questions, no answer given (a fresh draw per update, by seed).
        rng = random.Random(rationales.derive_seed(args.seed, "questions", update))
        rows = rng.sample(run.train_rows, min(args.questions_per_update, len(run.train_rows)))
        seeds = [rationales.derive_seed(args.seed, "rollout", update, i) for i in range(len(rows) * k)]
        with rt.autocast:
            ro = rollout(policy, [run.prompt_ids[r["id"]] for r in rows], k, args.temperature,
                         args.max_new_tokens, eot, seeds, rt.device)

        # 2. The sequence reward: the standardised RM score (SML) and/or the exact answer check.
        texts = [tok.decode([t for t in r if t != eot]) for r in ro.responses]
        correct = torch.tensor([task.reward(t, rows[i // k]["answer"]) for i, t in enumerate(texts)],
                               device=rt.device)
        has_answer = torch.tensor([task.extract_answer(t) is not None for t in texts], device=rt.device)
        rm_score = torch.zeros_like(correct)
        if run.rm is not None and args.reward != "exact":
            with rt.autocast:
                rm_score = (score_sequences(run.rm, ro) - state["reward_mean"]) / state["reward_std"]
        seq_reward = sequence_rewards(args.reward, rm_score, correct, has_answer, ro.finished,
                                      args.no_answer_penalty, args.unfinished_penalty, args.reward_clip)

        with rt.autocast:
            # 3. Old/ref log-probs, values, per-token KL-penalised rewards, GAE.
            batch = prepare_batch(policy, run.ref, run.critic, ro, seq_reward, state["kl_coef"],
                                  args.temperature, args.gamma, args.lam)
            # 4. PPO epochs over minibatches.
            stats = ppo_update(policy, run.critic, run.opt_policy, run.opt_critic, batch, run.gen,
                               epochs=args.ppo_epochs, minibatch_size=args.minibatch_size,
                               temperature=args.temperature, clip=args.clip, value_clip=args.value_clip,
                               grad_clip=args.grad_clip)
        if not all(np.isfinite(v) for v in (stats["policy_loss"], stats["value_loss"])):
            raise common.UserError(f"loss is not finite at update {update + 1}; try a lower --lr "
                                   f"(the last good checkpoint is {last_path})")
        kl_ref = float(batch.kl_per_seq.mean())
        if args.kl_target:
            state["kl_coef"] = adaptive_kl_coef(state["kl_coef"], kl_ref, args.kl_target, len(seeds),
                                                args.kl_horizon)

        # 5. Log: the RM's view and the truth side by side, and PPO's health.
        rec = {"update": update + 1, "rm_score": float(rm_score.mean()), "accuracy": float(correct.mean()),
               "reward": float(seq_reward.mean()), "kl_ref": kl_ref, **stats,
               "expl_var": explained_variance(batch.values, batch.returns, batch.mask),
               "resp_len": float(ro.lengths.float().mean()),
               "finished": float(ro.finished.float().mean()), "no_answer": float((~has_answer).float().mean()),
               "kl_coef": state["kl_coef"], "tok/s": int(batch.mask.sum()) / (time.time() - t0),
               "seconds": time.time() - t_start}
        if (update + 1) % args.eval_interval == 0 or update + 1 == args.updates:
            select(update + 1, rec)
            save(last_path, update + 1)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(" ".join(f"{rec[c]:>9.3f}" if isinstance(rec[c], float) else f"{rec[c]:>9d}" for c in cols))
    log.close()
    why = (f"highest accuracy on the {len(run.val_rows)} validation questions ({args.val_samples} samples "
           f"each, the same seeds for every candidate; ties go to the earlier update)")
    print(f"ppo_best.pt is update {state['best_update']}: {why}")
    common.write_json(os.path.join(args.out_dir, "summary.json"),
                      {"updates": args.updates, "seconds": time.time() - t_start, "reward": args.reward,
                       "critic_init": args.critic_init, "best_update": state["best_update"],
                       "best_val_accuracy": state["best_val"], "chosen_because": why,
                       "val_history": state["val_history"], "reward_mean": state["reward_mean"],
                       "reward_std": state["reward_std"]})
    common.cleanup_runtime(rt)


if __name__ == "__main__":
    common.run(main)
