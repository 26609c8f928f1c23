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
baseline) | rm+exact (both). Writes ppo_last.pt and ppo_best.pt (language-model checkpoints
that generate.py reads), ppo_log.jsonl (one row per update) and summary.json.
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

PRESETS = {
    "tiny": dict(updates=4, questions_per_update=8, samples_per_question=2, minibatch_size=8,
                 eval_interval=2, eval_limit=20, val_questions=16),
    "default": dict(updates=32, questions_per_update=48, samples_per_question=4, minibatch_size=96,
                    eval_interval=8, eval_limit=None, val_questions=200),
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
    g.add_argument("--kl_coef", type=float, default=0.05, help="beta of the per-token KL penalty")
    g.add_argument("--kl_target", type=float, default=None,
                   help="adaptive KL: adjust beta towards this KL per rationale (off by default)")
    g.add_argument("--kl_horizon", type=float, default=10000)
    g.add_argument("--no_answer_penalty", type=float, default=1.0,
                   help="subtracted when a rationale has no final answer or no end-of-text")
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
    g.add_argument("--critic_init", default="rm", choices=["rm", "sft"])
    g.add_argument("--clip", type=float, default=0.2, help="policy ratio clip")
    g.add_argument("--value_clip", type=float, default=0.2)
    g.add_argument("--gamma", type=float, default=1.0)
    g.add_argument("--lam", type=float, default=0.95)
    g.add_argument("--grad_clip", type=float, default=1.0)
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval_interval", type=int, help="test accuracy every this many updates")
    g.add_argument("--eval_limit", type=int, help="test questions (default: all)")
    g.add_argument("--eval_temperature", type=float, default=1.0)
    g.add_argument("--val_questions", type=int,
                   help="train questions held out of rollouts; the best checkpoint is chosen on them")
    common.add_runtime_args(p)
    args = p.parse_args(argv)
    common.apply_preset(args, PRESETS)
    if args.reward != "exact" and not args.rm:
        p.error(f"--reward {args.reward} needs --rm")
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
    batch.update(old_logp=old_logp, ref_logp=ref_logp, values=values, returns=returns,
                 advantages=masked_whiten(advantages, mask), kl_per_seq=kl.sum(1))
    return batch


# -----------------------------------------------------------------------------


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

    # The critic: the reward model's trunk and head (it already reads rationales), or SFT's trunk.
    if resuming:
        critic = GPT(GPTConfig(**ckpt["critic_config"])).to(device)
        critic.load_state_dict(ckpt["critic"])
    else:
        critic = copy.deepcopy(rm) if args.critic_init == "rm" and rm is not None else lm_to_scalar(ref)
    for p in critic.parameters():
        p.requires_grad_(True)
    opt_policy = configure_optimizer(policy, args.lr, 0.0)
    opt_critic = configure_optimizer(critic, args.critic_lr, 0.0)
    kl_coef, start_update, best_val = args.kl_coef, 0, -1.0
    if resuming:
        opt_policy.load_state_dict(ckpt["opt_policy"])
        opt_critic.load_state_dict(ckpt["opt_critic"])
        kl_coef, start_update, best_val = ckpt["kl_coef"], ckpt["provenance"]["step"], ckpt["best_val"]
    os.makedirs(args.out_dir, exist_ok=True)

    # Held-out train questions choose the best checkpoint; rollouts use the rest.
    order = list(range(len(train_rows)))
    random.Random(args.seed).shuffle(order)
    val_rows = [train_rows[i] for i in order[:args.val_questions]]
    rollout_rows = [train_rows[i] for i in order[args.val_questions:]]
    if not rollout_rows:
        common.die("train_ppo.py", f"no train questions left for rollouts after holding out "
                                   f"{args.val_questions}")
    prompt_ids = {r["id"]: tok.encode(task.prompt(r["question"])).ids for r in rollout_rows}
    too_long = [r["id"] for r in rollout_rows if len(prompt_ids[r["id"]]) >= policy.config.block_size]
    if too_long:
        common.die("train_ppo.py", f"train question {too_long[0]!r} does not fit the model's context")

    def evaluate(rows, name, update):
        summary, _ = generate.evaluate(policy, tok, task, rows, args.eval_temperature, 1,
                                       generate.derive_seed(args.seed, name, update), quiet=True)
        return summary["accuracy"]

    def save(path, update):
        save_checkpoint(path, policy, tok_json,
                        {"script": "train_ppo.py", "args": vars(args), "step": update, "parent": args.sft},
                        extra={"critic": critic.state_dict(), "critic_config": asdict(critic.config),
                               "opt_policy": opt_policy.state_dict(), "opt_critic": opt_critic.state_dict(),
                               "kl_coef": kl_coef, "best_val": best_val})

    log = open(log_path, "a" if resuming else "w")
    cols = ["update", "rm_score", "accuracy", "kl_ref", "entropy", "clip_frac", "approx_kl",
            "value_loss", "expl_var", "resp_len", "kl_coef", "tok/s"]
    print(" ".join(f"{c:>9s}" for c in cols))
    gen = torch.Generator().manual_seed(args.seed)
    t_start = time.time()
    for update in range(start_update, args.updates):
        t0 = time.time()
        # 1. Rollout: training questions, no answer given (a fresh draw per update, by seed).
        rng = random.Random(generate.derive_seed(args.seed, "questions", update))
        rows = rng.sample(rollout_rows, min(args.questions_per_update, len(rollout_rows)))
        k = args.samples_per_question
        seeds = [generate.derive_seed(args.seed, "rollout", update, i) for i in range(len(rows) * k)]
        batch = rollout(policy, [prompt_ids[r["id"]] for r in rows], k, args.temperature,
                        args.max_new_tokens, eot_id, seeds, device)
        n_tokens = int(batch["mask"].sum())

        # 2. The sequence reward: RM score and/or the exact answer check, a penalty for
        #    a rationale with no final answer or no end-of-text.
        texts = [tok.decode([t for t in r if t != eot_id]) for r in batch["responses"]]
        answers = [task.extract_answer(t) for t in texts]
        correct = torch.tensor([float(a is not None and task.answers_match(a, rows[i // k]["answer"]))
                                for i, a in enumerate(answers)], device=device)
        bad = torch.tensor([float(a is None or not f) for a, f in zip(answers, batch["finished"].tolist())],
                           device=device)
        rm_score = score_sequences(rm, batch) if rm is not None else torch.zeros_like(correct)
        seq_reward = {"rm": rm_score, "exact": correct, "rm+exact": rm_score + correct}[args.reward]
        seq_reward = (seq_reward - args.no_answer_penalty * bad).clamp(-args.reward_clip, args.reward_clip)

        # 3. Old/ref log-probs, values, per-token KL-penalised rewards, GAE.
        batch = prepare_batch(policy, ref, critic, batch, seq_reward, kl_coef, args)
        # 4. PPO epochs over minibatches.
        stats = ppo_update(policy, critic, opt_policy, opt_critic, batch, args, gen)

        if not all(np.isfinite(v) for v in (stats["policy_loss"], stats["value_loss"])):
            common.die("train_ppo.py", f"loss is not finite at update {update + 1}; try a lower --lr "
                                       f"(the last good checkpoint is {last_path})")
        kl_ref = float(batch["kl_per_seq"].mean())
        if args.kl_target:  # adaptive KL controller (Ziegler et al. 2019)
            err = max(-0.2, min(0.2, kl_ref / args.kl_target - 1))
            kl_coef *= 1 + err * len(seeds) / args.kl_horizon
        rec = {"update": update + 1, "rm_score": float(rm_score.mean()), "accuracy": float(correct.mean()),
               "reward": float(seq_reward.mean()), "kl_ref": kl_ref, **stats,
               "expl_var": explained_variance(batch["values"], batch["returns"], batch["mask"]),
               "resp_len": float(batch["lengths"].float().mean()),
               "finished": float(batch["finished"].float().mean()), "no_answer": float(bad.mean()),
               "kl_coef": kl_coef, "tok/s": n_tokens / (time.time() - t0), "seconds": time.time() - t_start}
        if (update + 1) % args.eval_interval == 0 or update + 1 == args.updates:
            rec["val_accuracy"] = evaluate(val_rows, "val", update) if val_rows else None
            rec["test_accuracy"] = evaluate(test_rows, "test", update)
            if val_rows and rec["val_accuracy"] > best_val:
                best_val = rec["val_accuracy"]
                save(best_path, update + 1)
            save(last_path, update + 1)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(" ".join(f"{rec[c]:>9.3f}" if isinstance(rec[c], float) else f"{rec[c]:>9d}" for c in cols)
              + (f"  test acc {100 * rec['test_accuracy']:.1f}%" if "test_accuracy" in rec else ""))
    log.close()
    if not os.path.exists(best_path):  # no held-out questions: the last is the best we know
        save(best_path, args.updates)
    common.atomic_write_json(os.path.join(args.out_dir, "summary.json"),
                             {"updates": args.updates, "seconds": time.time() - t_start, "reward": args.reward,
                              "best_val_accuracy": best_val})
    common.cleanup_runtime(rt)


if __name__ == "__main__":
    main()
