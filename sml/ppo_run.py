"""
What a PPO run holds around the algorithm of train_ppo.py (SML step 3c): the checks on its
flags and its step sizes, each step's settings, the loop's state, the questions and models it
loads, a fresh start (the critic) or a resumed one, the optimizers, ppo_last.pt and
summary.json, and what each update logs.

train_ppo.py is the method, read top to bottom; this is its bookkeeping. Nothing here imports
train_ppo.py (a script): where setup needs a piece of the method (the reward model's scale is
measured on the SFT model's own rollouts), train_ppo.main calls the piece and hands the result
here. What the settings mean: docs/ppo.md.
"""

import copy
import math
import os
import random
from dataclasses import asdict, dataclass, field
from functools import partial

import torch

from sml import common
from sml import rationales
from sml import validation
from data import load_val_split
from data.jsonl import DataError, load_dataset
from data.tokenizer import stop_ids
from model import GPT, configure_optimizer, lm_to_scalar
from sml.checkpoint import checked_config, load_checkpoint, save_checkpoint
from sml.reward_report import check_reward_model


# -----------------------------------------------------------------------------
# The checks on the flags, and the learning-rate schedule


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
# Each step's settings, and the loop's state


@dataclass(frozen=True)
class RewardSettings:
    """Step 2's settings (the flags of the same names) and the reward model's scale."""
    kind: str  # --reward: rm, exact, rm+exact, random
    no_answer_penalty: float
    unfinished_penalty: float
    clip: float
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class AdvantageSettings:
    """Step 3's hyperparameters (the flags of the same names)."""
    temperature: float  # of the rollouts, so of every log-prob
    gamma: float
    lam: float
    estimator: str = "ppo"  # or rloo, grpo: a baseline from the other samples of the question
    k: int = None  # samples per question (rloo, grpo)
    micro_batch_size: int = None  # rows per forward (None: all)
    n_vocab: int = None  # ids past the tokenizer's vocabulary are never sampled


@dataclass(frozen=True)
class UpdateSettings:
    """Step 4's hyperparameters (the flags of the same names)."""
    epochs: int
    minibatch_size: int  # rollouts per optimizer step
    temperature: float
    clip: float  # of the policy ratio
    value_clip: float  # None: the value loss is not clipped
    grad_clip: float
    micro_batch_size: int = None  # rows per forward; gradients accumulate over a minibatch (None: all)
    target_kl: float = None  # an approx KL that ends the epochs, before its minibatch's step
    n_vocab: int = None
    kl_loss_coef: float = 0.0  # GRPO: beta times the k3 KL to the reference, in the loss
    per_sequence: bool = False  # GRPO: each rationale's tokens averaged before the rationales are


def step_settings(args, state, n_vocab):
    """Steps 2, 3 and 4's settings, from the flags (and the reward model's scale)."""
    return (RewardSettings(args.reward, args.no_answer_penalty, args.unfinished_penalty, args.reward_clip,
                           state.reward_mean, state.reward_std),
            AdvantageSettings(args.temperature, args.gamma, args.lam, args.estimator, args.samples_per_question,
                              args.micro_batch_size, n_vocab),
            UpdateSettings(args.ppo_epochs, args.minibatch_size, args.temperature, args.clip, args.value_clip,
                           args.grad_clip, args.micro_batch_size, args.target_kl, n_vocab,
                           per_sequence=args.estimator == "grpo"))  # GRPO (Shao et al. 2024): rationales averaged


@dataclass
class State:
    """What the loop carries from update to update besides the weights: in ppo_last.pt (as a
    dict), so --resume continues exactly."""
    update: int = 0
    kl_coef: float = 0.0  # beta: --kl_coef, moved by --kl_target
    reward_mean: float = 0.0  # the RM on SFT samples: every score is standardised with these
    reward_std: float = 1.0
    reward_scale: dict = None  # their measurement (None when the RM gives no reward)
    best_val: float = -1.0  # the checkpoint choice so far (sml.validation.choose_checkpoint)
    best_update: int = None
    val_history: list = field(default_factory=list)
    gen_state: torch.Tensor = None  # the minibatch order's generator


# -----------------------------------------------------------------------------
# Setup: the questions, the models, a fresh start or a resumed one


@dataclass
class PPOData:
    """The questions PPO samples from and chooses on, and how rollouts are cut."""
    train_rows: list
    val_rows: list
    prompt_ids: dict  # question id -> prompt token ids
    stop_ids: list  # the end-of-text and every end id the checkpoint declares (the first pads)
    n_vocab: int  # the tokenizer's vocabulary: ids past it (a padded embedding) are never sampled
    max_new_tokens: int  # the rationale budget of rollouts and of every evaluation


def load_data(data_dir, eval_limit, max_new_tokens, tok, task, policy_config):
    """The train questions (their prompts encoded) and the validation ones."""
    train_rows = load_dataset(os.path.join(data_dir, "train.jsonl"))
    val_rows = load_val_split(data_dir, eval_limit, "PPO's checkpoint choice")
    # every prompt PPO will sample from must fit, checked now rather than after an hour (the test
    # split is not read here: it is read once, by evaluate.py, for the final table)
    for name, rows in (("train", train_rows), ("val", val_rows)):
        for r in rows:
            if len(tok.encode(task.prompt(r["question"])).ids) >= policy_config.block_size:
                raise DataError(f"{name} question {r['id']!r} does not fit the model's context of "
                                f"{policy_config.block_size} tokens")
    prompt_ids = {r["id"]: tok.encode(task.prompt(r["question"])).ids for r in train_rows}
    return PPOData(train_rows, val_rows, prompt_ids, stop_ids(tok, policy_config),
                   tok.get_vocab_size(), max_new_tokens or task.rationale_tokens)


def load_reward_model(path, reward, allow_weak, tokenizer_json, device):
    """The reward model (None without --rm) and its report, gated when it gives the reward."""
    if not path:
        return None, None
    rm, ckpt = load_checkpoint(path, kind="scalar", tokenizer_json=tokenizer_json, device=device)
    if reward in ("rm", "rm+exact"):
        check_reward_model(ckpt.get("report"), path, allow_weak)
    return rm, ckpt.get("report")


def uses_rm(args):
    """Whether the reward model enters the run: in the reward, or as the critic's start."""
    return args.reward in ("rm", "rm+exact") or (args.estimator == "ppo" and args.critic_init == "rm")


def freeze(rt, *frozen):
    """The frozen models in the compute dtype (bf16 on a GPU): half the memory, and what autocast
    would compute in anyway."""
    for model in frozen:
        if model is not None:
            model.requires_grad_(False)
            model.to(rt.dtype).eval()


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


def start(args, rt, ref, rm):
    """A fresh run: build the critic (none for rloo and grpo) and cast the frozen models to the
    compute dtype. Returns (critic, state); the reward model's scale is set next (use_reward_scale),
    measured with the copy that will score."""
    state, critic = State(kl_coef=args.kl_coef), None  # no critic: rloo, grpo
    if args.estimator == "ppo":  # float32 weights for the optimizer, taken before the frozen ones are cast
        critic = copy.deepcopy(rm).float() if args.critic_init == "rm" else fresh_critic(ref)
    freeze(rt, ref, rm)
    return critic, state


def norm_prompts(data, n, k, seed):
    """The prompts (and a seed per rollout) of the n training questions whose SFT rationales give
    the reward model's scale: a draw of their own, from the seed alone."""
    rng = random.Random(rationales.derive_seed(seed, "norm"))
    rows = rng.sample(data.train_rows, min(n, len(data.train_rows)))
    seeds = [rationales.derive_seed(seed, "norm", i) for i in range(len(rows) * k)]
    return [data.prompt_ids[r["id"]] for r in rows], seeds


def use_reward_scale(args, state, critic, scale, rm_report):
    """The reward model's scale (train_ppo.reward_scale on SFT rationales) into the state: its mean,
    and its std held up by --reward_std_floor; the critic from the RM is rescaled to it."""
    floor = args.reward_std_floor * (rm_report or {}).get("val_score_std", 0.0)
    state.reward_scale, state.reward_mean, state.reward_std = scale, scale["mean"], max(scale["std"], floor)
    print(f"reward model on {scale['n']} finished SFT rationales: mean {scale['mean']:.3f}, std "
          f"{scale['std']:.3f} (floor {floor:.3f}: std used {state.reward_std:.3f}), raw range "
          f"{scale['min']:.2f} .. {scale['max']:.2f} (5-95%: {scale['p05']:.2f} .. {scale['p95']:.2f})")
    if not (math.isfinite(state.reward_mean) and math.isfinite(state.reward_std)
            and state.reward_std > 0):  # else every standardised reward, and the critic, is NaN
        raise common.UserError(
            f"{args.rm}: the reward model's scores on {scale['n']} finished SFT rationales have mean "
            f"{scale['mean']:.4g} and std {scale['std']:.4g} (floor {floor:.4g}): no scale to standardise "
            f"rewards by; check the reward model (does its score head vary?) or raise --reward_std_floor")
    if args.estimator == "ppo" and args.critic_init == "rm":
        standardise_head(critic, state.reward_mean, state.reward_std)


def resume(ckpt, path, device):
    """The critic and the loop's state of an interrupted run, from ppo_last.pt."""
    critic = None
    if ckpt["critic"] is not None:
        critic = GPT(checked_config(ckpt["critic_config"], ckpt["critic"], f"{path}: its critic"))
        critic.load_state_dict(ckpt["critic"])
        critic.to(device)
    return critic, State(**ckpt["ppo_state"])


def optimizers(args, policy, critic, resumed=None):
    """The policy and the critic keep float32 weights for their optimizers (the frozen models are
    already in the compute dtype: start or main's resume cast them). Returns the two optimizers and
    the generator of the minibatch order, as `resumed` (ppo_last.pt's checkpoint, with the state)
    left them, if given."""
    for model in (policy, critic):
        if model is not None:
            model.requires_grad_(True)
            model.grad_checkpointing = args.grad_checkpointing
    opt_policy = configure_optimizer(policy, args.lr, 0.0)
    opt_critic = configure_optimizer(critic, args.critic_lr, 0.0) if critic is not None else None
    gen = torch.Generator().manual_seed(args.seed)
    if resumed:
        opt_policy.load_state_dict(resumed["opt_policy"])
        if critic is not None:
            opt_critic.load_state_dict(resumed["opt_critic"])
        gen.set_state(resumed["ppo_state"]["gen_state"])
    return opt_policy, opt_critic, gen


# -----------------------------------------------------------------------------
# The run's files, and what each update logs


def provenance(args, update):
    return {"script": "train_ppo.py", "args": vars(args), "step": update, "parent": args.sft}


def save_resume_point(path, tokenizer_json, about, policy, critic, opt_policy, opt_critic, gen, state):
    """ppo_last.pt: the policy, the critic, both optimizers and the loop's state (at about["step"])."""
    state.update, state.gen_state = about["step"], gen.get_state()
    save_checkpoint(path, policy, tokenizer_json, about,
                    extra={"critic": critic.state_dict() if critic else None,
                           "critic_config": asdict(critic.config) if critic else None,
                           "opt_policy": opt_policy.state_dict(),
                           "opt_critic": opt_critic.state_dict() if critic else None, "ppo_state": asdict(state)})


def checkpoints(args, run, tokenizer_json, val, policy, critic, opt_policy, opt_critic, gen):
    """choose(update, rec, state): validate the policy at `update` into rec, keep it as ppo_best.pt
    if it is the best so far (sml.validation.choose_checkpoint), then write ppo_last.pt."""
    def choose(update, rec, state):
        about = provenance(args, update)
        validation.choose_checkpoint(policy, val, update, rec, state,
                                     partial(save_checkpoint, run.best, policy, tokenizer_json, about))
        save_resume_point(run.resume_point, tokenizer_json, about, policy, critic, opt_policy, opt_critic, gen, state)
    return choose


def summary(args, n_val, state, seconds):
    """summary.json, written last: it says the run is finished, and which update it hands on."""
    why = f"highest greedy accuracy on the {n_val} validation questions (ties go to the earlier update)"
    print(f"ppo_best.pt is update {state.best_update}: {why}")
    return {"updates": args.updates, "seconds": seconds, "reward": args.reward, "estimator": args.estimator,
            "critic_init": args.critic_init if args.estimator == "ppo" else None, "best_update": state.best_update,
            "best_val_greedy_accuracy": state.best_val, "chosen_because": why, "val_history": state.val_history,
            "reward_mean": state.reward_mean, "reward_std": state.reward_std, "reward_scale": state.reward_scale}


def explained_variance(values, returns, mask):
    v, r = values[mask > 0], returns[mask > 0]
    var_r = r.var()
    return float("nan") if var_r == 0 else float(1 - (r - v).var() / var_r)


def sampler_logp_gap(rollouts, old_logp):
    """Mean |the sampler's log-prob - the recomputed old log-prob| over the response tokens: 0 up
    to rounding in float32; on a GPU in bf16 the KV-cache path and the full forward differ, and
    a large gap means the ratio's 1 is not the sampler's distribution."""
    sampled = torch.tensor([lp for row in rollouts.sampler_logp for lp in row], dtype=torch.float32)
    recomputed = old_logp[rollouts.mask > 0].float().cpu()
    if sampled.numel() != recomputed.numel() or sampled.numel() == 0:
        return None
    return float((sampled - recomputed).abs().mean())


def log_record(update, rewards, rollouts, batch, stats, kl_coef, lr, has_critic, seconds, elapsed):
    """Step 5: the RM's view and the truth side by side, the KL term beside the reward's spread
    (kl_term: beta * KL per rationale, in reward units), and PPO's health."""
    kl = float(batch.kl_per_seq.mean())
    return {"update": update + 1, "rm_score": float(rewards.rm_z.mean()), "accuracy": float(rewards.correct.mean()),
            "reward": float(rewards.sequence.mean()), "reward_std": float(rewards.sequence.std()), "kl_ref": kl,
            "kl_term": kl_coef * kl, "sampler_logp_gap": sampler_logp_gap(rollouts, batch.old_logp), **stats,
            "expl_var": explained_variance(batch.values, batch.returns, batch.mask) if has_critic else None,
            "resp_len": float(rollouts.lengths.float().mean()), "finished": float(rollouts.finished.float().mean()),
            "no_answer": float((~rewards.has_answer).float().mean()), "kl_coef": kl_coef, "lr": lr,
            "tok/s": int(batch.mask.sum()) / seconds, "seconds": elapsed}


def log_samples(rows, texts, rewards, k, n):
    """The first n decoded rollouts of an update, with their question and reward, for the log."""
    return [{"question": rows[i // k]["question"], "rationale": texts[i], "reward": float(rewards.sequence[i]),
             "rm_score": float(rewards.rm_z[i])} for i in range(min(n, len(texts)))]


LOG_COLUMNS = ["update", "rm_score", "accuracy", "reward_std", "kl_ref", "kl_term", "entropy", "clip_frac",
               "approx_kl", "value_loss", "expl_var", "resp_len", "tok/s"]


def print_row(rec):
    print(" ".join("-".rjust(9) if rec[c] is None else f"{rec[c]:>9.3f}" if isinstance(rec[c], float)
                   else f"{rec[c]:>9d}" for c in LOG_COLUMNS))
