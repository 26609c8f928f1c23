"""PPO's statistics, reward, advantage and update code on tensors that live on another device than
the CPU, so that a tensor made on the CPU where the data lives elsewhere fails here as it would on
a GPU (a CPU-built quantile q crashed every run with --rm on CUDA and MPS).

The device is torch's meta device: its kernels check devices as CUDA's do (an op that mixes it
with a CPU tensor raises), it runs autograd and the optimizer, and it holds no data. What reads
data on the host (float(), .tolist(), a boolean mask's count) is stubbed: HostValues answers the
reads, and a mask is taken as all true. (torch's FakeTensorMode with device="cuda" raises the
quantile error too, but on a CPU-only build it aborts the process at the first autograd op and
fails at any slice, so it cannot run a model.)"""

import pytest
import torch
import torch.fx.experimental._config as fx_config
from torch.utils._python_dispatch import TorchDispatchMode

import train_ppo
from sml import ppo_run
from model import GPT, GPTConfig, configure_optimizer, lm_to_scalar

META = torch.device("meta")
B, K, T, PROMPT = 4, 2, 12, 4  # rollouts, samples per question, sequence length, prompt length


def stand_in(dtype):
    return True if dtype == torch.bool else 0.5 if dtype.is_floating_point else T


class HostValues(TorchDispatchMode):
    """A host read of a meta tensor (float(), .item(), .tolist(), .cpu()) returns stand-ins: T for
    an integer (the sequence lengths PPO cuts micro-batches to), 0.5 for a float, True for a bool."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            return stand_in(args[0].dtype)
        if (func is torch.ops.aten._to_copy.default and args[0].device == META
                and kwargs.get("device") == torch.device("cpu")):
            dtype = kwargs.get("dtype") or args[0].dtype
            return torch.full(args[0].shape, stand_in(dtype), dtype=dtype)
        return func(*args, **kwargs)


@pytest.fixture
def on_meta():
    with fx_config.patch(meta_nonzero_assume_all_nonzero=True), HostValues():
        yield


def models():
    torch.manual_seed(0)
    policy = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=16))
    critic = lm_to_scalar(policy)
    ref = GPT(policy.config)
    rm = lm_to_scalar(ref)
    return [m.to(META) for m in (policy, ref, rm, critic)]


def meta_rollout():
    """A rollout as train_ppo.rollout returns it (sampling itself reads data: it is stubbed)."""
    idx = torch.randint(0, 64, (B, T))
    mask = torch.zeros(B, T - 1)
    mask[:, PROMPT - 1:] = 1.0
    responses = [idx[i, PROMPT:].tolist() for i in range(B)]
    return train_ppo.Rollout(idx.to(META), mask.to(META), responses, [[-1.0] * (T - PROMPT)] * B,
                             torch.full((B,), T).to(META), torch.ones(B, dtype=torch.bool).to(META),
                             torch.full((B,), T - PROMPT).to(META))


def test_reward_scale_keeps_its_statistics_on_the_scores_device(on_meta):
    _, _, rm, _ = models()
    scale = train_ppo.reward_scale(rm, meta_rollout())
    assert set(scale) == {"mean", "std", "n", "min", "p05", "median", "p95", "max"}


@pytest.mark.parametrize("estimator", ["ppo", "rloo", "grpo"])
def test_rewards_advantages_and_an_update_stay_on_the_device(on_meta, estimator):
    policy, ref, _, critic = models()
    critic = critic if estimator == "ppo" else None
    ro = meta_rollout()
    rm_z = torch.randn(B).to(META)
    noise = train_ppo.random_rewards(list(range(B)), META)
    for kind in ("rm", "exact", "rm+exact", "random"):
        seq = train_ppo.sequence_rewards(kind, rm_z, torch.ones(B).to(META), torch.ones(B, dtype=torch.bool).to(META),
                                         ro.finished, 1.0, 2.0, 5.0, noise)
        assert seq.device == META
    batch = train_ppo.prepare_batch(policy, ref, critic, ro, seq, 0.05,
                                    ppo_run.AdvantageSettings(1.0, 1.0, 0.95, estimator=estimator, k=K))
    assert batch.advantages.device == META and batch.returns.device == META
    opt_p = configure_optimizer(policy, 1e-3, 0.0)
    opt_c = configure_optimizer(critic, 1e-3, 0.0) if critic is not None else None
    settings = ppo_run.UpdateSettings(epochs=2, minibatch_size=2, micro_batch_size=1, temperature=1.0, clip=0.2,
                                      value_clip=None, grad_clip=1.0, target_kl=10.0,
                                      kl_loss_coef=0.05 if estimator == "grpo" else 0.0,
                                      per_sequence=estimator == "grpo")
    stats = train_ppo.ppo_update(policy, critic, opt_p, opt_c, batch, torch.Generator().manual_seed(0), settings)
    assert stats["optimizer_steps"] == 4
    assert all(p.device == META for p in policy.parameters())
