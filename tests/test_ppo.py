"""train_ppo.py: GAE, the clipped objective, masking, and PPO raising a trivial reward."""

import os
import subprocess
import sys

import pytest
import torch

import train_ppo
from sml import ppo_run
from data.tokenizer import EOT, load_tokenizer
from sml.checkpoint import load_checkpoint
from model import lm_to_scalar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gae_hand_computed():
    # position 0 is the prompt; the response is positions 1-3, the last one padding in row 2
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 2.0, 0.0]])
    values = torch.tensor([[9.0, 0.5, 0.6, 0.7], [9.0, 0.5, 0.6, 0.0]])
    mask = torch.tensor([[0.0, 1, 1, 1], [0.0, 1, 1, 0]])
    adv, ret = train_ppo.compute_gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 1: delta_3 = 1 - 0.7 = 0.3; delta_2 = 0.7 - 0.6 = 0.1; delta_1 = 0.6 - 0.5 = 0.1
    #        A_3 = 0.3; A_2 = 0.1 + 0.5 * 0.3 = 0.25; A_1 = 0.1 + 0.5 * 0.25 = 0.225
    # row 2: delta_2 = 2 - 0.6 = 1.4 (the episode ends); delta_1 = 0.6 - 0.5 = 0.1
    #        A_2 = 1.4; A_1 = 0.1 + 0.5 * 1.4 = 0.8
    expected = torch.tensor([[0.0, 0.225, 0.25, 0.3], [0.0, 0.8, 1.4, 0.0]])
    assert torch.allclose(adv, expected)
    assert torch.allclose(ret, (adv + values) * mask)
    # with a discount: A_3 = 0.3, delta_2 = 0.9*0.7 - 0.6 = 0.03, A_2 = 0.03 + 0.45*0.3 = 0.165
    adv, _ = train_ppo.compute_gae(rewards[:1], values[:1], mask[:1], gamma=0.9, lam=0.5)
    assert adv[0, 2].item() == pytest.approx(0.165)


def test_clipped_objective_has_no_gradient_where_the_clip_forbids():
    clip = 0.2
    old = torch.zeros(1, 4)
    # ratios 1.5 (adv +), 0.5 (adv +), 0.5 (adv -), 1.5 (adv -)
    new = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5]])).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, _, clip_frac = train_ppo.policy_loss(new, old, adv, torch.ones(1, 4), clip)
    loss.backward()
    g = new.grad[0]
    assert g[0] == 0   # already far more likely, and the advantage says "more": clipped
    assert g[1] < 0    # less likely but good: the gradient may still push it up
    assert g[2] == 0   # already far less likely, and the advantage says "less": clipped
    assert g[3] > 0    # more likely but bad: pushed down
    assert clip_frac.item() == 1.0


def test_masked_positions_get_neither_policy_nor_value_loss():
    torch.manual_seed(0)
    mask = torch.tensor([[0.0, 1, 1, 0, 0], [0.0, 0, 1, 1, 1]])
    new_logp = torch.randn(2, 5, requires_grad=True)
    new_values = torch.randn(2, 5, requires_grad=True)
    old_logp, old_values, adv, ret = (torch.randn(2, 5) for _ in range(4))
    pl, _, _ = train_ppo.policy_loss(new_logp, old_logp, adv, mask, 0.2)
    vl = train_ppo.value_loss(new_values, old_values, ret, mask, 0.2)
    (pl + vl).backward()
    assert (new_logp.grad[mask == 0] == 0).all() and (new_values.grad[mask == 0] == 0).all()
    assert (new_logp.grad[mask == 1] != 0).any() and (new_values.grad[mask == 1] != 0).any()


def prepare(policy, ref, critic, ro, seq_reward, kl_coef):
    return train_ppo.prepare_batch(policy, ref, critic, ro, seq_reward, kl_coef,
                                   ppo_run.AdvantageSettings(temperature=1.0, gamma=1.0, lam=0.95))


def tiny_models(tiny_run):
    tok = load_tokenizer(os.path.join(tiny_run["data"], "tokenizer.json"))
    policy, _ = load_checkpoint(tiny_run["base"], kind="lm")
    ref, _ = load_checkpoint(tiny_run["base"], kind="lm")
    critic = lm_to_scalar(ref)
    prompts = [tok.encode(f"Question: Tom has {n} apples. Tom finds 2 more. How many apples does Tom have "
                          f"now?\nAnswer:").ids for n in range(1, 9)]
    return tok, policy, ref, critic, prompts


def test_first_update_policy_old_and_reference_agree(tiny_run):
    tok, policy, ref, critic, prompts = tiny_models(tiny_run)
    eot = tok.token_to_id(EOT)
    ro = train_ppo.rollout(policy, prompts, 2, 1.0, 24, eot, list(range(16)))
    batch = prepare(policy, ref, critic, ro, torch.ones(16), 0.1)
    m = batch.mask > 0
    assert torch.allclose(batch.old_logp[m], batch.ref_logp[m], atol=1e-6)
    assert batch.kl_per_seq.abs().max().item() < 1e-5
    # the sampler's own log-probs are those of a forward pass (no top-k/top-p in rollouts)
    for i, r in enumerate(ro.responses):
        assert torch.allclose(batch.old_logp[i][m[i]], torch.tensor(ro.sampler_logp[i]), atol=1e-4)
    # the first minibatch sees ratio 1: no approx KL, nothing clipped
    new_logp, _ = train_ppo.token_logprobs(policy, batch.idx, batch.mask, 1.0)
    _, approx_kl, clip_frac = train_ppo.policy_loss(new_logp, batch.old_logp, batch.advantages, batch.mask, 0.2)
    assert approx_kl.abs().item() < 1e-6 and clip_frac.item() == 0.0


def test_ppo_raises_a_trivial_reward(tiny_run):
    # reward +1 when the response contains a chosen token: PPO should make it more frequent
    torch.manual_seed(0)
    tok, policy, ref, critic, prompts = tiny_models(tiny_run)
    eot = tok.token_to_id(EOT)
    target = tok.encode(" So").ids[0]

    def rate(update):
        ro = train_ppo.rollout(policy, prompts, 4, 1.0, 24, eot, [update * 1000 + i for i in range(32)])
        return ro, torch.tensor([float(target in r) for r in ro.responses])

    opt_p = torch.optim.Adam(policy.parameters(), lr=3e-3)
    opt_c = torch.optim.Adam(critic.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    rates = []
    for update in range(8):
        ro, reward = rate(update)
        rates.append(reward.mean().item())
        batch = prepare(policy, ref, critic, ro, reward, 0.0)
        train_ppo.ppo_update(policy, critic, opt_p, opt_c, batch, gen,
                             ppo_run.UpdateSettings(epochs=4, minibatch_size=16, temperature=1.0, clip=0.2,
                                                    value_clip=0.2, grad_clip=1.0))
    _, final = rate(99)
    assert final.mean().item() > rates[0] + 0.3, (rates, final.mean().item())


@pytest.mark.slow  # through the CLI, a process per case: CI runs it, -m "not slow" leaves it out
def test_cli_bad_input(tiny_run, tmp_path):
    base, data = tiny_run["base"], tiny_run["data"]

    def run(*a):
        return subprocess.run([sys.executable, "train_ppo.py", *a], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    r = run("--sft", base, "--data_dir", data, "--out_dir", str(tmp_path / "p"))
    assert r.returncode != 0 and "needs --rm" in r.stderr
    r = run("--sft", base, "--rm", base, "--data_dir", data, "--out_dir", str(tmp_path / "p"))
    assert r.returncode != 0 and "scalar" in r.stderr and "Traceback" not in r.stderr
    r = run("--sft", str(tmp_path / "missing.pt"), "--reward", "exact", "--data_dir", data,
            "--out_dir", str(tmp_path / "p"))
    assert r.returncode != 0 and "no such checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_masked_whiten_uses_only_masked_positions():
    x = torch.tensor([[100.0, 1.0, 2.0, 3.0], [-50.0, 4.0, 5.0, 0.0]])
    mask = torch.tensor([[0.0, 1, 1, 1], [0.0, 1, 1, 0]])
    w = train_ppo.masked_whiten(x, mask)
    inside = w[mask > 0]
    assert inside.mean().abs() < 1e-6 and (inside.pow(2).mean() - 1).abs() < 1e-4
    assert (w[mask == 0] == 0).all()
    # the masked-out values (100, -50, 0) must not move the statistics
    expected = (torch.tensor([1.0, 2, 3, 4, 5]) - 3) / torch.tensor(2.0).sqrt()
    assert torch.allclose(inside, expected, atol=1e-4)


def test_adaptive_kl_controller_moves_towards_the_target():
    up = train_ppo.adaptive_kl_coef(0.1, kl=2.0, target=1.0, horizon=10)
    down = train_ppo.adaptive_kl_coef(0.1, kl=0.5, target=1.0, horizon=10)
    same = train_ppo.adaptive_kl_coef(0.1, kl=1.0, target=1.0, horizon=10)
    assert up > 0.1 > down and same == pytest.approx(0.1)
    assert up == pytest.approx(0.1 * (1 + 0.2 / 10))  # the error is clipped to +20%, over 10 updates
    assert down == pytest.approx(0.1 * (1 - 0.2 / 10))


def test_adaptive_kl_horizon_counts_updates_not_samples():
    """Over one horizon of updates at a KL far above target, beta grows by about e^0.2 (Ziegler's
    controller), whatever the batch size; a horizon in samples moved it by 0.4% per update."""
    beta = 0.02
    for _ in range(train_ppo.get_args(["--sft", "s", "--reward", "exact", "--data_dir", "d", "--out_dir", "o"]
                                      ).kl_horizon):
        beta = train_ppo.adaptive_kl_coef(beta, kl=5.0, target=1.0, horizon=10)
    assert beta == pytest.approx(0.02 * 1.02 ** 10)


def test_sequence_rewards_penalise_no_answer_and_unfinished():
    rm_z = torch.tensor([0.5, 0.5, 0.5, 9.0])
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0])
    has_answer = torch.tensor([True, False, True, True])
    finished = torch.tensor([True, True, False, True])
    r = train_ppo.sequence_rewards("rm", rm_z, correct, has_answer, finished, 1.0, 2.0, 5.0)
    assert r.tolist() == [0.5, -0.5, -2.0, 5.0]  # no answer: -1; never ended: -2 flat; clipped
    r = train_ppo.sequence_rewards("exact", rm_z, correct, has_answer, finished, 1.0, 2.0, 5.0)
    assert r.tolist() == [1.0, -1.0, -2.0, 1.0]
    r = train_ppo.sequence_rewards("rm+exact", rm_z, correct, has_answer, finished, 1.0, 2.0, 5.0)
    assert r.tolist() == [1.5, -0.5, -2.0, 5.0]


def test_standardised_critic_starts_at_the_standardised_score(tiny_run):
    rm = lm_to_scalar(load_checkpoint(tiny_run["base"], kind="lm")[0])
    with torch.no_grad():
        rm.score_head.bias.fill_(3.0)
    critic = ppo_run.standardised_critic(rm, mean=2.0, std=4.0)
    x = torch.randint(0, 50, (2, 9))
    assert torch.allclose(critic(x)[0], (rm(x)[0] - 2.0) / 4.0, atol=1e-5)
    assert rm.score_head.bias[0].item() == 3.0  # the reward model itself is untouched


def test_rollout_with_ragged_prompts_and_a_moved_policy(tiny_run):
    """Prompts of different lengths and a policy that differs from the reference: the mask
    covers exactly each response, the KL is non-zero, and the sequence reward sits on the
    last response token."""
    tok, policy, ref, critic, _ = tiny_models(tiny_run)
    with torch.no_grad():  # move the policy away from the reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    questions = ["Tom has 2 pens. How many pens does Tom have now?",
                 "Ann has 3 cups. Ann buys 2 more. Ann loses 1. Ann finds 3 more. How many cups does "
                 "Ann have now?",
                 "Max has 1 key. Max gets 2 more. How many keys does Max have now?"]
    prompts = [tok.encode(f"Question: {q}\nAnswer:").ids for q in questions]
    assert len({len(p) for p in prompts}) == 3
    eot = tok.token_to_id(EOT)
    k = 2
    ro = train_ppo.rollout(policy, prompts, k, 1.0, 20, eot, list(range(6)))
    seq_reward = torch.tensor([1.0, -1.0, 2.0, 0.5, -2.0, 3.0])
    batch = prepare(policy, ref, critic, ro, seq_reward, 0.1)
    for i, resp in enumerate(ro.responses):
        p = prompts[i // k]
        pos = torch.nonzero(batch.mask[i]).flatten().tolist()
        assert pos == list(range(len(p) - 1, len(p) - 1 + len(resp)))  # predicts response tokens only
        assert batch.idx[i, len(p):len(p) + len(resp)].tolist() == resp
        kl = (batch.old_logp[i] - batch.ref_logp[i]) * batch.mask[i]
        expected = -0.1 * kl
        expected[pos[-1]] += seq_reward[i]
        assert torch.allclose(batch.rewards[i], expected, atol=1e-6)
    assert (batch.kl_per_seq.abs() > 1e-3).all()


@pytest.mark.slow  # end to end: CI runs it, -m "not slow" leaves it out
def test_interrupted_then_resumed_run_writes_the_same_log_and_weights(tiny_run, tmp_path, monkeypatch):
    import json
    from sml.checkpoint import save_checkpoint
    tok = load_tokenizer(os.path.join(tiny_run["data"], "tokenizer.json"))
    rm_path = str(tmp_path / "rm.pt")
    torch.manual_seed(0)
    save_checkpoint(rm_path, lm_to_scalar(load_checkpoint(tiny_run["base"], kind="lm")[0]),
                    tok.to_str(), {"script": "test"})
    argv = ["--sft", tiny_run["base"], "--rm", rm_path, "--data_dir", tiny_run["data"], "--preset", "tiny",
            "--device", "cpu", "--seed", "3"]
    train_ppo.main(argv + ["--out_dir", str(tmp_path / "whole")])

    real_update, calls = train_ppo.ppo_update, []

    def interrupted(*a, **kw):  # killed during update 4: update 3 is logged, the checkpoint is at 2
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_update(*a, **kw)
    monkeypatch.setattr(train_ppo, "ppo_update", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_ppo.main(argv + ["--out_dir", str(tmp_path / "cut")])
    monkeypatch.setattr(train_ppo, "ppo_update", real_update)
    rows = [json.loads(x) for x in open(tmp_path / "cut" / "ppo_log.jsonl")]
    assert [r["update"] for r in rows] == [0, 1, 2, 3]
    train_ppo.main(argv + ["--out_dir", str(tmp_path / "cut"), "--resume"])

    def log(run):
        drop = ("tok/s", "seconds")
        return [{k: v for k, v in json.loads(x).items() if k not in drop}
                for x in open(tmp_path / run / "ppo_log.jsonl")]
    assert log("cut") == log("whole") and [r["update"] for r in log("cut")] == [0, 1, 2, 3, 4]
    for name in ("ppo_last.pt", "ppo_best.pt"):
        a = torch.load(tmp_path / "whole" / name, weights_only=True)
        b = torch.load(tmp_path / "cut" / name, weights_only=True)
        assert a["provenance"]["step"] == b["provenance"]["step"]
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), (name, key)
    summary = json.load(open(tmp_path / "whole" / "summary.json"))
    assert summary["best_update"] in (0, 2, 4) and summary["val_history"][0]["update"] == 0


# -----------------------------------------------------------------------------
# RLOO and GRPO: a baseline from the other samples of the question, no critic


def test_rloo_advantage_is_the_leave_one_out_mean_by_hand():
    returns = torch.tensor([1.0, 0.0, 0.0, 3.0, 2.0, 2.0, 2.0, 6.0])  # two questions, k = 4
    adv = train_ppo.group_advantages(returns, 4, "rloo")
    # question 1: 1 - (0+0+3)/3 = 0, 0 - (1+0+3)/3 = -4/3, 0 - 4/3, 3 - 1/3 = 8/3
    # question 2: 2 - (2+2+6)/3 = -4/3 (three times), 6 - 2 = 4
    expected = torch.tensor([0.0, -4 / 3, -4 / 3, 8 / 3, -4 / 3, -4 / 3, -4 / 3, 4.0])
    assert torch.allclose(adv, expected)
    grpo = train_ppo.group_advantages(returns, 4, "grpo")
    g = returns[:4]
    assert torch.allclose(grpo[:4], (g - g.mean()) / (g.std() + 1e-6))
    assert torch.allclose(train_ppo.group_advantages(torch.ones(4), 4, "grpo"), torch.zeros(4))


def test_critic_free_batch_gives_every_token_its_rationales_advantage(tiny_run):
    tok, policy, ref, _, prompts = tiny_models(tiny_run)
    with torch.no_grad():  # a policy that differs from the reference: the KL enters the return
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    eot = tok.token_to_id(EOT)
    k = 4
    ro = train_ppo.rollout(policy, prompts[:3], k, 1.0, 20, eot, list(range(12)))
    seq_reward = torch.arange(12, dtype=torch.float32) % 5
    b = train_ppo.prepare_batch(policy, ref, None, ro, seq_reward, 0.1,
                                ppo_run.AdvantageSettings(1.0, 1.0, 0.95, estimator="rloo", k=k))
    returns = seq_reward - 0.1 * b.kl_per_seq
    expected = train_ppo.group_advantages(returns, k, "rloo")
    n_tok = b.mask.sum(1)
    expected = expected / ((expected ** 2 * n_tok).sum() / n_tok.sum()).sqrt()  # unit RMS over the tokens
    for i in range(12):
        on = b.mask[i] > 0
        assert torch.allclose(b.advantages[i][on], expected[i].expand(int(on.sum())), atol=1e-5)
        assert (b.advantages[i][~on] == 0).all()
    # and an update trains the policy alone
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    stats = train_ppo.ppo_update(policy, None, opt, None, b, torch.Generator().manual_seed(0),
                                 ppo_run.UpdateSettings(epochs=1, minibatch_size=6, temperature=1.0, clip=0.2,
                                                        value_clip=0.2, grad_clip=1.0))
    assert stats["value_loss"] is None and stats["policy_loss"] is not None and stats["optimizer_steps"] == 2


@pytest.mark.slow  # through main, twice
def test_rloo_run_has_no_critic_and_resumes(tiny_run, tmp_path):
    import json
    argv = ["--sft", tiny_run["base"], "--reward", "exact", "--estimator", "rloo", "--data_dir", tiny_run["data"],
            "--preset", "tiny", "--device", "cpu", "--seed", "3", "--out_dir", str(tmp_path / "r")]
    train_ppo.main(argv + ["--updates", "2"])
    last = torch.load(tmp_path / "r" / "ppo_last.pt", weights_only=True)
    assert last["critic"] is None and last["opt_critic"] is None
    train_ppo.main(argv + ["--updates", "4", "--resume"])
    rows = [json.loads(x) for x in open(tmp_path / "r" / "ppo_log.jsonl")]
    assert [r["update"] for r in rows] == [0, 1, 2, 3, 4] and rows[-1]["value_loss"] is None
    assert json.load(open(tmp_path / "r" / "summary.json"))["estimator"] == "rloo"
