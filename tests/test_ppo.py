"""train_ppo.py: GAE, the clipped objective, masking, and PPO raising a trivial reward."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import train_ppo
from data.tokenizer import EOT, load_tokenizer
from model import load_checkpoint, lm_to_scalar

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


def args(**kw):
    base = dict(temperature=1.0, gamma=1.0, lam=0.95, ppo_epochs=2, minibatch_size=16, clip=0.2,
                value_clip=0.2, grad_clip=1.0)
    return SimpleNamespace(**{**base, **kw})


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
    batch = train_ppo.rollout(policy, prompts, 2, 1.0, 24, eot, list(range(16)), "cpu")
    batch = train_ppo.prepare_batch(policy, ref, critic, batch, torch.ones(16), 0.1, args())
    m = batch["mask"] > 0
    assert torch.allclose(batch["old_logp"][m], batch["ref_logp"][m], atol=1e-6)
    assert batch["kl_per_seq"].abs().max().item() < 1e-5
    # the sampler's own log-probs are those of a forward pass (no top-k/top-p in rollouts)
    for i, r in enumerate(batch["responses"]):
        assert torch.allclose(batch["old_logp"][i][m[i]], torch.tensor(batch["sampler_logp"][i]), atol=1e-4)
    # the first minibatch sees ratio 1: no approx KL, nothing clipped
    new_logp, _ = train_ppo.token_logprobs(policy, batch["idx"], 1.0)
    _, approx_kl, clip_frac = train_ppo.policy_loss(new_logp, batch["old_logp"], batch["advantages"],
                                                    batch["mask"], 0.2)
    assert approx_kl.abs().item() < 1e-6 and clip_frac.item() == 0.0


def test_ppo_raises_a_trivial_reward(tiny_run):
    # reward +1 when the response contains a chosen token: PPO should make it more frequent
    torch.manual_seed(0)
    tok, policy, ref, critic, prompts = tiny_models(tiny_run)
    eot = tok.token_to_id(EOT)
    target = tok.encode(" So").ids[0]

    def rate(update):
        b = train_ppo.rollout(policy, prompts, 4, 1.0, 24, eot, [update * 1000 + i for i in range(32)], "cpu")
        return b, torch.tensor([float(target in r) for r in b["responses"]])

    a = args(ppo_epochs=4, minibatch_size=16)
    opt_p = torch.optim.Adam(policy.parameters(), lr=3e-3)
    opt_c = torch.optim.Adam(critic.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    rates = []
    for update in range(8):
        batch, reward = rate(update)
        rates.append(reward.mean().item())
        batch = train_ppo.prepare_batch(policy, ref, critic, batch, reward, 0.0, a)
        train_ppo.ppo_update(policy, critic, opt_p, opt_c, batch, a, gen)
    _, final = rate(99)
    assert final.mean().item() > rates[0] + 0.3, (rates, final.mean().item())


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
