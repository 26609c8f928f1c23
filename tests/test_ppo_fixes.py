"""PPO's reward scale, critic start, estimators' step sizes, GRPO's loss, the KL stop, checkpoint
choice, the random-reward control and the heads' precision: each as the paper's step 3c needs it."""

import copy
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from sml import common
import train_ppo
from sml import ppo_run
from sml import validation
from sml.checkpoint import load_checkpoint, save_checkpoint
from data.tokenizer import EOT, load_tokenizer
from model import GPT, GPTConfig, configure_optimizer, lm_to_scalar
from test_ppo_scale import models_and_batch


def ppo_argv(tiny_run, out, *extra):
    return ["--sft", tiny_run["base"], "--data_dir", tiny_run["data"], "--out_dir", str(out), "--device", "cpu",
            "--updates", "1", "--questions_per_update", "4", "--samples_per_question", "2", "--minibatch_size", "8",
            "--eval_limit", "4", "--val_samples", "1", "--norm_questions", "4", *extra]


# -----------------------------------------------------------------------------
# The heads in float32


def test_heads_run_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    lm = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=32))
    scalar = lm_to_scalar(lm)
    with torch.no_grad():
        scalar.score_head.bias.fill_(8.0)  # a reward model's large mean: bf16's step there is 0.03-0.06
    idx = torch.randint(0, 64, (2, 10))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores, _ = scalar(idx)
        logits, _ = lm(idx)
        hidden_s, hidden_l = scalar.trunk(idx), lm.trunk(idx)
    with torch.no_grad():
        want_s = F.linear(hidden_s.float(), scalar.score_head.weight, scalar.score_head.bias).squeeze(-1)
        want_l = F.linear(hidden_l.float(), lm.lm_head.weight)
    assert scores.dtype == torch.float32 and logits.dtype == torch.float32
    assert torch.allclose(scores, want_s, atol=1e-5, rtol=0)  # bf16 would be off by up to 0.03
    assert torch.allclose(logits, want_l, atol=1e-5, rtol=0)


# -----------------------------------------------------------------------------
# A reward scale of zero, and checkpoints that would hold NaN (issue 34)


def zeroed_rm(tiny_run, tmp_path):
    base, ckpt = load_checkpoint(tiny_run["base"], kind="lm")
    rm = lm_to_scalar(base)
    with torch.no_grad():
        rm.score_head.weight.zero_()
        rm.score_head.bias.zero_()
    path = str(tmp_path / "rm.pt")
    save_checkpoint(path, rm, ckpt["tokenizer"], {"script": "test"})
    return path


def test_a_reward_scale_of_zero_is_one_line_before_any_update(tiny_run, tmp_path):
    rm = zeroed_rm(tiny_run, tmp_path)
    out = tmp_path / "ppo"
    with pytest.raises(common.UserError) as e:
        train_ppo.main(ppo_argv(tiny_run, out, "--rm", rm, "--allow_weak_rm", "--reward_std_floor", "0"))
    msg = str(e.value)
    assert rm in msg and "std 0" in msg and "lower --lr" not in msg and "\n" not in msg
    assert not os.path.exists(out / "ppo_last.pt")  # no resume point to start a rerun from a broken state


def test_no_checkpoint_is_written_with_a_non_finite_tensor(tmp_path):
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=16))
    path = str(tmp_path / "x.pt")
    critic = lm_to_scalar(model)
    with torch.no_grad():
        critic.score_head.weight[0, 3] = float("nan")
    with pytest.raises(common.UserError, match="critic.score_head.weight"):
        save_checkpoint(path, model, "{}", {"script": "test"}, extra={"critic": critic.state_dict()})
    with torch.no_grad():
        model.wte.weight[1, 1] = float("inf")
    with pytest.raises(common.UserError, match="wte.weight"):
        save_checkpoint(path, model, "{}", {"script": "test"})
    assert not os.listdir(tmp_path)


# -----------------------------------------------------------------------------
# Flags that could not do what they say


def test_warmup_longer_than_the_run_is_refused(capsys):
    argv = ["--sft", "s", "--reward", "exact", "--data_dir", "d", "--out_dir", "o", "--updates", "1"]
    with pytest.raises(SystemExit):
        train_ppo.get_args(argv + ["--warmup_steps", "1000"])
    assert "--warmup_steps 1000" in capsys.readouterr().err
    assert train_ppo.get_args(argv + ["--warmup_steps", "4"]).warmup_steps == 4  # 2 epochs x 2 minibatches


def test_random_reward_and_the_default_critic_need_no_reward_model():
    args = train_ppo.get_args(["--sft", "s", "--reward", "random", "--data_dir", "d", "--out_dir", "o"])
    assert args.critic_init == "sft" and args.value_clip is None and not ppo_run.uses_rm(args)
    with pytest.raises(SystemExit):
        train_ppo.get_args(["--sft", "s", "--reward", "exact", "--critic_init", "rm", "--data_dir", "d",
                            "--out_dir", "o"])


def test_random_reward_is_a_seeded_standard_normal_per_rollout():
    seeds = list(range(4000))
    r = train_ppo.random_rewards(seeds, "cpu")
    assert abs(float(r.mean())) < 0.1 and abs(float(r.std()) - 1) < 0.1
    assert torch.equal(train_ppo.random_rewards(seeds[10:20], "cpu"), r[10:20])  # the rollout's seed alone
    seq = train_ppo.sequence_rewards("random", torch.zeros(3), torch.ones(3), torch.tensor([True, False, True]),
                                     torch.tensor([True, True, False]), 1.0, 2.0, 5.0, r[:3])
    assert torch.allclose(seq, torch.stack([r[0], r[1] - 1, torch.tensor(-2.0)]))  # the same penalties


def test_the_default_critic_starts_at_zero_for_every_reward(tiny_run):
    base, _ = load_checkpoint(tiny_run["base"], kind="lm")
    critic = ppo_run.fresh_critic(base.to(torch.bfloat16))
    assert next(critic.parameters()).dtype == torch.float32
    values = train_ppo.values_of(critic, torch.randint(0, 50, (2, 8)))
    assert torch.equal(values, torch.zeros_like(values))


# -----------------------------------------------------------------------------
# Estimators: one step size, and GRPO as Shao et al. 2024 write it


@pytest.mark.parametrize("estimator", ["ppo", "rloo", "grpo"])
def test_every_estimators_advantages_have_unit_rms(tiny_run, estimator):
    policy, ref, critic, batch = models_and_batch(tiny_run, n_prompts=4, k=4)
    ro = train_ppo.Rollout(batch.idx, batch.mask, None, None, batch.seq_lens, None, None)
    reward = torch.arange(16, dtype=torch.float32) % 3
    b = train_ppo.prepare_batch(policy, ref, critic if estimator == "ppo" else None, ro, reward, 0.05,
                                ppo_run.AdvantageSettings(1.0, 1.0, 0.95, estimator=estimator, k=4))
    rms = float(train_ppo.masked_mean(b.advantages ** 2, b.mask).sqrt())
    assert rms == pytest.approx(1.0, abs=1e-3)


def test_grpo_normalises_the_reward_alone_and_puts_the_kl_in_the_loss(tiny_run):
    policy, ref, _, batch = models_and_batch(tiny_run, n_prompts=4, k=4)
    with torch.no_grad():
        for p in policy.parameters():  # a policy away from the reference: the KL is not zero
            p.add_(0.05 * torch.randn_like(p))
    ro = train_ppo.Rollout(batch.idx, batch.mask, None, None, batch.seq_lens, None, None)
    reward = torch.arange(16, dtype=torch.float32) % 3
    grpo = ppo_run.AdvantageSettings(1.0, 1.0, 0.95, estimator="grpo", k=4)
    a = train_ppo.prepare_batch(policy, ref, None, ro, reward, 0.0, grpo)
    b = train_ppo.prepare_batch(policy, ref, None, ro, reward, 0.5, grpo)
    assert b.kl_per_seq.abs().sum() > 0 and torch.allclose(a.advantages, b.advantages)
    # the loss: k3 KL to the reference, tokens averaged per rationale; micro-batches change nothing
    grads = []
    for micro in (1, 16):
        model = copy.deepcopy(policy)
        settings = ppo_run.UpdateSettings(epochs=1, minibatch_size=16, micro_batch_size=micro, temperature=1.0,
                                          clip=0.2, value_clip=None, grad_clip=1.0, kl_loss_coef=0.5,
                                          per_sequence=True)
        train_ppo.minibatch_gradients(model, None, b, torch.arange(16), settings, True,
                                      torch.autocast("cpu", enabled=False))
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert all(torch.allclose(g, h, atol=1e-6) for g, h in zip(*grads))
    # by hand, at ratio 1: d/dtheta of mean_i mean_t (-A_i * ratio + beta * k3)
    model = copy.deepcopy(policy)
    logp, _ = train_ppo.token_logprobs(model, b.idx, b.mask, 1.0)
    k3 = torch.exp(b.ref_logp - logp) - (b.ref_logp - logp) - 1
    per_tok = -b.advantages * torch.exp(logp - b.old_logp) + 0.5 * k3
    ((per_tok * b.mask).sum(1) / b.mask.sum(1)).mean().backward()
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in
               zip([p for p in model.parameters() if p.grad is not None], grads[1]))


# -----------------------------------------------------------------------------
# --target_kl: the minibatch that passes the target takes no step


def test_target_kl_stops_before_the_step_that_passed_it(tiny_run, monkeypatch):
    policy, _, critic, batch = models_and_batch(tiny_run)
    seen, steps = [], []
    real = train_ppo.minibatch_gradients

    def spy(*a, **kw):
        stats, ratio_max = real(*a, **kw)
        seen.append(stats["approx_kl"])
        return stats, ratio_max
    monkeypatch.setattr(train_ppo, "minibatch_gradients", spy)
    opt_p, opt_c = configure_optimizer(policy, 3e-3, 0.0), configure_optimizer(critic, 1e-3, 0.0)
    opt_p.register_step_post_hook(lambda *_: steps.append(1))
    stats = train_ppo.ppo_update(policy, critic, opt_p, opt_c, batch, torch.Generator().manual_seed(0),
                                 ppo_run.UpdateSettings(epochs=4, minibatch_size=8, temperature=1.0, clip=0.2,
                                                        value_clip=None, grad_clip=1.0, target_kl=1e-4))
    assert stats["kl_stop"] and seen[-1] > 1e-4 and all(kl <= 1e-4 for kl in seen[:-1])
    assert len(steps) == stats["optimizer_steps"] == len(seen) - 1
    assert all(p.grad is None for p in policy.parameters())  # the unused gradient is not left behind


# -----------------------------------------------------------------------------
# Logging: the sampler against the recomputed log-probs


def test_sampler_and_recomputed_log_probs_agree_in_float32(tiny_run):
    policy, ref, critic, _ = models_and_batch(tiny_run, n_prompts=2, k=2)
    tok = load_tokenizer(os.path.join(tiny_run["data"], "tokenizer.json"))
    prompts = [tok.encode("Question: Ann has 2 cups. How many cups does Ann have now?\nAnswer:").ids] * 2
    ro = train_ppo.rollout(policy, prompts, 2, 1.0, 16, tok.token_to_id(EOT), [1, 2, 3, 4])
    b = train_ppo.prepare_batch(policy, ref, critic, ro, torch.zeros(4), 0.05,
                                ppo_run.AdvantageSettings(1.0, 1.0, 0.95))
    gap = ppo_run.sampler_logp_gap(ro, b.old_logp)
    assert gap is not None and gap < 1e-4


# -----------------------------------------------------------------------------
# Checkpoint choice: greedy validation accuracy; the test split is never read


def test_ppo_chooses_on_greedy_validation_and_never_reads_test(tiny_run, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(tiny_run["data"], data)
    os.remove(data / "test.jsonl")
    greedy = iter([0.5, 0.7, 0.7])  # updates 0, 1, 2: the tie goes to update 1
    sampled = iter([0.9, 0.2, 0.95])
    monkeypatch.setattr(validation, "validate", lambda model, val, name, samples, temperature:
                        (next(greedy) if temperature == 0 else next(sampled), 0.01))
    argv = ppo_argv(tiny_run, tmp_path / "ppo", "--reward", "exact", "--updates", "2", "--eval_interval", "1")
    argv[argv.index("--data_dir") + 1] = str(data)
    train_ppo.main(argv)
    summary = common.read_json(tmp_path / "ppo" / "summary.json")
    assert summary["best_update"] == 1
    assert [h["greedy_accuracy"] for h in summary["val_history"]] == [0.5, 0.7, 0.7]
    assert [h["accuracy"] for h in summary["val_history"]] == [0.9, 0.2, 0.95]


def test_the_reward_scale_is_measured_with_the_copy_that_scores(tiny_run, tmp_path, monkeypatch):
    """--dtype bfloat16: the reward model is cast before its mean and std are measured, so the
    scale is that of the bf16 copy every later score comes from."""
    base, ckpt = load_checkpoint(tiny_run["base"], kind="lm")
    torch.manual_seed(0)
    rm = str(tmp_path / "rm.pt")
    save_checkpoint(rm, lm_to_scalar(base), ckpt["tokenizer"], {"script": "test"})
    seen = []
    real = train_ppo.reward_scale

    def spy(model, *a, **kw):
        seen.append(next(model.parameters()).dtype)
        return real(model, *a, **kw)
    monkeypatch.setattr(train_ppo, "reward_scale", spy)
    train_ppo.main(ppo_argv(tiny_run, tmp_path / "ppo", "--rm", rm, "--allow_weak_rm", "--dtype", "bfloat16"))
    assert seen == [torch.bfloat16]
