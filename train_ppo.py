"""
SML step 3c: PPO against the reward model, in plain PyTorch (CleanRL-style, one file).

The policy starts from the SFT model and writes rationales for training questions with no
answer given. The frozen reward model scores each finished rationale; a per-token KL
penalty to the frozen SFT model (the reference) keeps the policy close to what the reward
model was trained on. A critic with a scalar head (from the reward model by default)
estimates values for GAE. Each update:

  1. rollout    sample k rationales for each of Q questions (no top-k/top-p, so the
                sampler's distribution is exactly the one whose log-probs we train)
  2. score      old log-probs, reference log-probs, values, the sequence reward
  3. advantage  per-token reward -beta * (log pi - log pi_ref), + the score at the last
                token; GAE(gamma, lambda); advantages whitened
  4. optimise   several epochs over minibatches: clipped policy ratio, clipped value loss

    python train_ppo.py --sft runs/default/sft.pt --rm runs/default/rm.pt \\
        --data_dir runs/default/data --out_dir runs/default/ppo

--reward rm (the paper) | exact (the task's answer check: RL on a verifiable reward, a
baseline) | rm+exact (both). Both kinds start their critic from the same place (the reward
model, when --rm is given), so that the two runs differ in the reward only.

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

Writes ppo_last.pt and ppo_best.pt (language-model checkpoints that generate.py reads),
ppo_log.jsonl (one row per update) and summary.json.
"""

import argparse
import copy
import json
import os
import random
import time
from dataclasses import asdict

import numpy as np
import torch

import common
import generate
from data import load_world
from data.jsonl import DataError, load_dataset
from data.tokenizer import EOT, tokenizer_to_str
from model import GPT, GPTConfig, CheckpointError, configure_optimizer, lm_to_scalar, load_checkpoint, sample, \
    save_checkpoint, sequence_scores

# The KL coefficient is in standardised reward units: 0.05 on the raw scale of the default
# run's reward model (std 2.3 on SFT samples) is about 0.02 here.
KL_COEF = 0.02

PRESETS = {
    "tiny": dict(updates=4, questions_per_update=8, samples_per_question=2, minibatch_size=8,
                 eval_interval=2, eval_limit=20, val_samples=2, norm_questions=8),
    "default": dict(updates=32, questions_per_update=48, samples_per_question=4, minibatch_size=96,
                    eval_interval=8, eval_limit=None, val_samples=4, norm_questions=64),
}


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("input / output")
    g.add_argument("--sft", required=True, help="SFT checkpoint: the initial policy and the frozen reference")
    g.add_argument("--rm", help="reward-model checkpoint (needed unless --reward exact)")
    g.add_argument("--data_dir", required=True, help="folder with train/test.jsonl, tokenizer.json, meta.json")
    g.add_argument("--out_dir", required=True)
    g.add_argument("--resume", action="store_true", help="continue from out_dir/ppo_last.pt")
    g.add_argument("--overwrite", action="store_true", help="start again in an out_dir that holds a run")
    g = p.add_argument_group("reward")
    g.add_argument("--reward", default="rm", choices=["rm", "exact", "rm+exact"])
    g.add_argument("--kl_coef", type=float, default=KL_COEF,
                   help="beta of the per-token KL penalty, in standardised reward units")
    g.add_argument("--kl_target", type=float, default=None,
                   help="adaptive KL: adjust beta towards this KL per rationale (off by default)")
    g.add_argument("--kl_horizon", type=float, default=10000)
    g.add_argument("--no_answer_penalty", type=float, default=1.0,
                   help="subtracted when a finished rationale states no final answer")
    g.add_argument("--unfinished_penalty", type=float, default=2.0,
                   help="the reward of a rationale that never ends is -this (no RM score)")
    g.add_argument("--norm_questions", type=int,
                   help="train questions whose SFT samples give the RM's mean and std")
    g.add_argument("--reward_clip", type=float, default=5.0, help="clip the sequence reward to +-this")
    g = p.add_argument_group("rollouts")
    g.add_argument("--preset", default="default", choices=sorted(PRESETS))
    g.add_argument("--updates", type=int)
    g.add_argument("--questions_per_update", type=int)
    g.add_argument("--samples_per_question", type=int)
    g.add_argument("--temperature", type=float, default=1.0, help="rollouts and log-probs alike")
    g.add_argument("--max_new_tokens", type=int, default=64)
    g = p.add_argument_group("optimisation")
    g.add_argument("--ppo_epochs", type=int, default=2, help="passes over each rollout batch")
    g.add_argument("--minibatch_size", type=int)
    g.add_argument("--lr", type=float, default=1.5e-4,
                   help="policy learning rate (at 3e-5 the default run's policy barely moves)")
    g.add_argument("--critic_lr", type=float, default=1e-4)
    g.add_argument("--critic_init", default="rm", choices=["rm", "sft"],
                   help="rm: the reward model, standardised (needs --rm, also with --reward exact)")
    g.add_argument("--clip", type=float, default=0.2, help="policy ratio clip")
    g.add_argument("--value_clip", type=float, default=0.2)
    g.add_argument("--gamma", type=float, default=1.0)
    g.add_argument("--lam", type=float, default=0.95)
    g.add_argument("--grad_clip", type=float, default=1.0)
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval_interval", type=int, help="test accuracy every this many updates")
    g.add_argument("--eval_limit", type=int, help="test questions (default: all)")
    g.add_argument("--eval_temperature", type=float, default=1.0)
    g.add_argument("--val_samples", type=int,
                   help="samples per validation question for choosing the best checkpoint")
    common.add_runtime_args(p)
    args = p.parse_args(argv)
    common.apply_preset(args, PRESETS)
    if args.reward != "exact" and not args.rm:
        p.error(f"--reward {args.reward} needs --rm")
    if args.critic_init == "rm" and not args.rm:
        args.critic_init = "sft"  # exact-match reward and no reward model: SFT's trunk
    if args.temperature <= 0:
        p.error("--temperature must be > 0: PPO needs a sampling distribution")
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
# Rollouts


@torch.no_grad()
def rollout(policy, prompts, k, temperature, max_new_tokens, eot_id, seeds, device):
    """k samples per prompt. Returns the sequences (prompt + response, right-padded), the
    response mask aligned with token_logprobs, and the response token lists."""
    out = sample(policy, prompts, num_samples=k, max_new_tokens=max_new_tokens, temperature=temperature,
                 eot_id=eot_id, pad_id=eot_id, seeds=seeds)
    responses = out.token_lists()
    seqs = [prompts[i // k] + r for i, r in enumerate(responses)]
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), eot_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T - 1)
    for i, s in enumerate(seqs):
        idx[i, :len(s)] = torch.tensor(s)
        n_prompt = len(prompts[i // k])
        mask[i, n_prompt - 1:len(s) - 1] = 1.0  # positions that predict a response token
    return {"idx": idx.to(device), "mask": mask.to(device), "responses": responses,
            "sampler_logp": [out.logprobs[i, :len(r)].tolist() for i, r in enumerate(responses)],
            "seq_lens": torch.tensor([len(s) for s in seqs], device=device),
            "finished": out.finished.clone(), "lengths": out.lengths.clone()}


@torch.no_grad()
def score_sequences(rm, batch):
    """The reward model's score at each sequence's last real token (its end-of-text when
    the rationale finished), as the reward model was trained."""
    idx = batch["idx"]
    real = torch.arange(idx.size(1), device=idx.device).unsqueeze(0) < batch["seq_lens"].unsqueeze(1)
    scores, _ = rm(idx)
    return sequence_scores(scores.float(), real)


@torch.no_grad()
def reward_scale(rm, policy, prompts, k, temperature, max_new_tokens, eot_id, seeds, device):
    """The RM's mean and std over finished rationales the SFT model writes: what a score is
    measured against. Computed once, before the first update."""
    batch = rollout(policy, prompts, k, temperature, max_new_tokens, eot_id, seeds, device)
    scores = score_sequences(rm, batch)[batch["finished"].to(device)]
    if scores.numel() < 2:
        raise ValueError("too few of the SFT model's rationales finish to measure the reward "
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


def ppo_update(policy, critic, opt_policy, opt_critic, batch, args, gen):
    """Several epochs of minibatch updates on one rollout batch. Returns the diagnostics."""
    n = batch["idx"].size(0)
    stats = {k: [] for k in ("policy_loss", "value_loss", "approx_kl", "clip_frac", "entropy")}
    policy.train()
    critic.train()
    for _ in range(args.ppo_epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, args.minibatch_size):
            mb = order[start:start + args.minibatch_size]
            idx, mask = batch["idx"][mb], batch["mask"][mb]
            new_logp, entropy = token_logprobs(policy, idx, args.temperature)
            pg_loss, approx_kl, clip_frac = policy_loss(new_logp, batch["old_logp"][mb],
                                                        batch["advantages"][mb], mask, args.clip)
            new_values = values_of(critic, idx)
            v_loss = value_loss(new_values, batch["values"][mb], batch["returns"][mb], mask, args.value_clip)
            opt_policy.zero_grad(set_to_none=True)
            opt_critic.zero_grad(set_to_none=True)
            (pg_loss + v_loss).backward()  # separate networks: the sum gives each its own gradient
            torch.nn.utils.clip_grad_norm_(policy.parameters(), args.grad_clip)
            torch.nn.utils.clip_grad_norm_(critic.parameters(), args.grad_clip)
            opt_policy.step()
            opt_critic.step()
            for k, v in (("policy_loss", pg_loss), ("value_loss", v_loss), ("approx_kl", approx_kl),
                         ("clip_frac", clip_frac), ("entropy", masked_mean(entropy.detach(), mask))):
                stats[k].append(float(v.detach()))
    return {k: float(np.mean(v)) for k, v in stats.items()}


@torch.no_grad()
def prepare_batch(policy, ref, critic, batch, seq_reward, kl_coef, args):
    """Old and reference log-probs, values, per-token rewards, GAE advantages and returns."""
    policy.eval()
    critic.eval()
    idx, mask = batch["idx"], batch["mask"]
    old_logp, _ = token_logprobs(policy, idx, args.temperature)
    ref_logp, _ = token_logprobs(ref, idx, args.temperature)
    values = values_of(critic, idx) * mask
    kl = (old_logp - ref_logp) * mask
    rewards = -kl_coef * kl
    last = mask.cumsum(1).argmax(1)  # position of each row's last response token
    rewards[torch.arange(idx.size(0)), last] += seq_reward
    advantages, returns = compute_gae(rewards, values, mask, args.gamma, args.lam)
    batch.update(old_logp=old_logp, ref_logp=ref_logp, values=values, rewards=rewards, returns=returns,
                 advantages=masked_whiten(advantages, mask), kl_per_seq=kl.sum(1))
    return batch


# -----------------------------------------------------------------------------


def read_log_until(path, update):
    """The log rows up to and including `update`: what a resumed run keeps of an interrupted
    one's log, so that the two logs end up the same."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r["update"] <= update]


def main(argv=None):
    args = get_args(argv)
    rt = common.setup_runtime(args.device, args.dtype)
    if rt.ddp:
        common.die("train_ppo.py", "runs on one process (one GPU or the CPU); start it without torchrun")
    common.seed_everything(args.seed)
    device = rt.device
    last_path, best_path = os.path.join(args.out_dir, "ppo_last.pt"), os.path.join(args.out_dir, "ppo_best.pt")
    log_path = os.path.join(args.out_dir, "ppo_log.jsonl")
    try:
        tok, task = load_world(args.data_dir)
        tok_json = tokenizer_to_str(tok)
        train_rows = load_dataset(os.path.join(args.data_dir, "train.jsonl"))
        val_path = os.path.join(args.data_dir, "val.jsonl")
        if not os.path.exists(val_path):
            raise DataError(f"{val_path}: no such file; PPO chooses its checkpoint on the validation "
                            f"split that data/prepare.py writes (held out of collection, SFT and the RM)")
        val_rows = load_dataset(val_path)
        test_rows = load_dataset(os.path.join(args.data_dir, "test.jsonl"))[:args.eval_limit]
        if os.path.exists(last_path) and not (args.resume or args.overwrite):
            raise DataError(f"{args.out_dir} already holds a PPO run; pass --resume or --overwrite")
        ref, _ = load_checkpoint(args.sft, kind="lm", tokenizer_json=tok_json, device=device)
        rm = load_checkpoint(args.rm, kind="scalar", tokenizer_json=tok_json, device=device)[0] \
            if args.rm else None
        resuming = args.resume and os.path.exists(last_path)
        if resuming:
            policy, ckpt = load_checkpoint(last_path, kind="lm", tokenizer_json=tok_json, device=device)
        else:
            policy, ckpt = load_checkpoint(args.sft, kind="lm", tokenizer_json=tok_json, device=device)
        # every prompt PPO will sample from must fit, checked now rather than after an hour
        for name, rows in (("train", train_rows), ("val", val_rows), ("test", test_rows)):
            for r in rows:
                if len(tok.encode(task.prompt(r["question"])).ids) >= policy.config.block_size:
                    raise DataError(f"{name} question {r['id']!r} does not fit the model's context of "
                                    f"{policy.config.block_size} tokens")
    except (DataError, CheckpointError, ValueError, OSError) as e:
        common.die("train_ppo.py", str(e))
    for p in ref.parameters():
        p.requires_grad_(False)
    if rm is not None:
        for p in rm.parameters():
            p.requires_grad_(False)
        rm.eval()
    ref.eval()
    eot_id = tok.token_to_id(EOT)
    prompt_ids = {r["id"]: tok.encode(task.prompt(r["question"])).ids for r in train_rows}
    k = args.samples_per_question
    os.makedirs(args.out_dir, exist_ok=True)

    # Setup: a fresh run measures the reward model's scale on SFT samples and builds the
    # critic from it; a resumed run takes all of that, and the rest of its state, from ppo_last.pt.
    if resuming:
        critic = GPT(GPTConfig(**ckpt["critic_config"])).to(device)
        critic.load_state_dict(ckpt["critic"])
        state = ckpt["ppo_state"]
        log_rows = read_log_until(log_path, ckpt["provenance"]["step"])
    else:
        state = {"update": 0, "kl_coef": args.kl_coef, "reward_mean": 0.0, "reward_std": 1.0,
                 "best_val": -1.0, "best_update": None, "val_history": [], "gen_state": None}
        if rm is not None:
            rng = random.Random(generate.derive_seed(args.seed, "norm"))
            rows = rng.sample(train_rows, min(args.norm_questions, len(train_rows)))
            seeds = [generate.derive_seed(args.seed, "norm", i) for i in range(len(rows) * k)]
            try:
                with rt.autocast:
                    state["reward_mean"], state["reward_std"] = reward_scale(
                        rm, policy, [prompt_ids[r["id"]] for r in rows], k, args.temperature,
                        args.max_new_tokens, eot_id, seeds, device)
            except ValueError as e:
                common.die("train_ppo.py", str(e))
            print(f"reward model on {len(seeds)} SFT rationales: mean {state['reward_mean']:.3f}, "
                  f"std {state['reward_std']:.3f} (scores are standardised with these)")
        critic = standardised_critic(rm, state["reward_mean"], state["reward_std"]) \
            if args.critic_init == "rm" else lm_to_scalar(ref)
        log_rows = []
    for p in critic.parameters():
        p.requires_grad_(True)
    opt_policy = configure_optimizer(policy, args.lr, 0.0)
    opt_critic = configure_optimizer(critic, args.critic_lr, 0.0)
    gen = torch.Generator().manual_seed(args.seed)  # minibatch order
    if resuming:
        opt_policy.load_state_dict(ckpt["opt_policy"])
        opt_critic.load_state_dict(ckpt["opt_critic"])
        gen.set_state(state["gen_state"])

    def evaluate(rows, name, samples):
        """Accuracy over `samples` samples per question, with the same seeds at every update
        (common random numbers: candidates differ by their weights, not by their luck), and
        its standard error over questions."""
        with rt.autocast:
            _, preds = generate.evaluate(policy, tok, task, rows, args.eval_temperature, samples,
                                         generate.derive_seed(args.seed, name), quiet=True)
        per_q = torch.tensor([sum(p["sample_correct"]) / samples for p in preds], dtype=torch.float64)
        se = float(per_q.std() / len(per_q) ** 0.5) if len(per_q) > 1 else float("nan")
        return float(per_q.mean()), se

    def save(path, update):
        state["update"] = update
        state["gen_state"] = gen.get_state()
        save_checkpoint(path, policy, tok_json,
                        {"script": "train_ppo.py", "args": vars(args), "step": update, "parent": args.sft},
                        extra={"critic": critic.state_dict(), "critic_config": asdict(critic.config),
                               "opt_policy": opt_policy.state_dict(), "opt_critic": opt_critic.state_dict(),
                               "ppo_state": state})

    def select(update, rec):
        """Checkpoint selection on the validation split; update 0 (SFT itself) is a candidate."""
        rec["val_accuracy"], rec["val_se"] = evaluate(val_rows, "val", args.val_samples)
        rec["test_accuracy"], _ = evaluate(test_rows, "test", 1)
        state["val_history"].append({"update": update, "accuracy": rec["val_accuracy"], "se": rec["val_se"]})
        if rec["val_accuracy"] > state["best_val"]:  # ties go to the earlier update
            state["best_val"], state["best_update"] = rec["val_accuracy"], update
            save(best_path, update)
        print(f"update {update}: validation {100 * rec['val_accuracy']:.1f}% (se {100 * rec['val_se']:.1f}, "
              f"{len(val_rows)} questions x {args.val_samples}), test {100 * rec['test_accuracy']:.1f}%; "
              f"best so far: update {state['best_update']}")

    with open(log_path + ".tmp", "w") as f:  # a resumed run's log: the rows up to its checkpoint
        f.writelines(json.dumps(r) + "\n" for r in log_rows)
    os.replace(log_path + ".tmp", log_path)
    log = open(log_path, "a")
    if not resuming:
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
        rng = random.Random(generate.derive_seed(args.seed, "questions", update))
        rows = rng.sample(train_rows, min(args.questions_per_update, len(train_rows)))
        seeds = [generate.derive_seed(args.seed, "rollout", update, i) for i in range(len(rows) * k)]
        with rt.autocast:
            batch = rollout(policy, [prompt_ids[r["id"]] for r in rows], k, args.temperature,
                            args.max_new_tokens, eot_id, seeds, device)
        n_tokens = int(batch["mask"].sum())

        # 2. The sequence reward: the standardised RM score and/or the exact answer check.
        texts = [tok.decode([t for t in r if t != eot_id]) for r in batch["responses"]]
        answers = [task.extract_answer(t) for t in texts]
        correct = torch.tensor([float(task.answers_match(a, rows[i // k]["answer"]))
                                for i, a in enumerate(answers)], device=device)
        has_answer = torch.tensor([a is not None for a in answers], device=device)
        finished = batch["finished"].to(device)
        rm_score = torch.zeros_like(correct)
        if rm is not None and args.reward != "exact":
            with rt.autocast:
                rm_score = (score_sequences(rm, batch) - state["reward_mean"]) / state["reward_std"]
        seq_reward = sequence_rewards(args.reward, rm_score, correct, has_answer, finished,
                                      args.no_answer_penalty, args.unfinished_penalty, args.reward_clip)

        # 3. Old/ref log-probs, values, per-token KL-penalised rewards, GAE.
        with rt.autocast:
            batch = prepare_batch(policy, ref, critic, batch, seq_reward, state["kl_coef"], args)
            # 4. PPO epochs over minibatches.
            stats = ppo_update(policy, critic, opt_policy, opt_critic, batch, args, gen)

        if not all(np.isfinite(v) for v in (stats["policy_loss"], stats["value_loss"])):
            common.die("train_ppo.py", f"loss is not finite at update {update + 1}; try a lower --lr "
                                       f"(the last good checkpoint is {last_path})")
        kl_ref = float(batch["kl_per_seq"].mean())
        if args.kl_target:
            state["kl_coef"] = adaptive_kl_coef(state["kl_coef"], kl_ref, args.kl_target, len(seeds),
                                                args.kl_horizon)
        rec = {"update": update + 1, "rm_score": float(rm_score.mean()), "accuracy": float(correct.mean()),
               "reward": float(seq_reward.mean()), "kl_ref": kl_ref, **stats,
               "expl_var": explained_variance(batch["values"], batch["returns"], batch["mask"]),
               "resp_len": float(batch["lengths"].float().mean()),
               "finished": float(finished.float().mean()), "no_answer": float((~has_answer).float().mean()),
               "kl_coef": state["kl_coef"], "tok/s": n_tokens / (time.time() - t0),
               "seconds": time.time() - t_start}
        if (update + 1) % args.eval_interval == 0 or update + 1 == args.updates:
            select(update + 1, rec)
            save(last_path, update + 1)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(" ".join(f"{rec[c]:>9.3f}" if isinstance(rec[c], float) else f"{rec[c]:>9d}" for c in cols))
    log.close()
    why = (f"highest accuracy on the {len(val_rows)} validation questions ({args.val_samples} samples "
           f"each, the same seeds for every candidate; ties go to the earlier update)")
    print(f"ppo_best.pt is update {state['best_update']}: {why}")
    common.atomic_write_json(os.path.join(args.out_dir, "summary.json"),
                             {"updates": args.updates, "seconds": time.time() - t_start, "reward": args.reward,
                              "critic_init": args.critic_init, "best_update": state["best_update"],
                              "best_val_accuracy": state["best_val"], "chosen_because": why,
                              "val_history": state["val_history"], "reward_mean": state["reward_mean"],
                              "reward_std": state["reward_std"]})
    common.cleanup_runtime(rt)


if __name__ == "__main__":
    main()
