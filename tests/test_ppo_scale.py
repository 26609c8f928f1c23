"""PPO and its inputs at real scale: bf16 autocast, the sampling budget, strict rewards, the
reward model's gate and scale, step sizes for pretrained weights, memory (micro-batches,
chunked log-probs, checkpointing), weights-only final checkpoints, dropout."""

import copy
import json
import os
from types import SimpleNamespace

import pytest
import torch

from sml import common
from sml import reward_report
from sml import rationales
import train_ppo
from sml import ppo_run
import train_rm
import train_sft
from data.tasks import get_task
from data.tokenizer import EOT, decode_sampled, load_tokenizer
from sml.checkpoint import load_checkpoint, save_checkpoint
from model import GPT, GPTConfig, configure_optimizer, lm_to_scalar


def models_and_batch(tiny_run, n_prompts=8, k=4, seed=0, dropout=0.0):
    """The tiny base model as policy and reference, a critic from its trunk, and a prepared batch
    of k rollouts for n_prompts prompts with random sequence rewards."""
    tok = load_tokenizer(os.path.join(tiny_run["data"], "tokenizer.json"))
    base, _ = load_checkpoint(tiny_run["base"], kind="lm")
    policy = GPT(GPTConfig(**{**base.config.__dict__, "dropout": dropout}))
    policy.load_state_dict(base.state_dict())
    ref = copy.deepcopy(base).eval()
    critic = lm_to_scalar(base)
    prompts = [tok.encode(f"Question: Ann has {n} cups. Ann buys {n % 3 + 1} more. Ann loses 1. How many cups "
                          f"does Ann have now?\nAnswer:").ids for n in range(1, n_prompts + 1)]
    prompts[0] = tok.encode("Question: Tom has 2 pens. How many pens does Tom have now?\nAnswer:").ids  # ragged
    eot = tok.token_to_id(EOT)
    ro = train_ppo.rollout(policy, prompts, k, 1.0, 24, eot, list(range(seed, seed + n_prompts * k)))
    g = torch.Generator().manual_seed(seed)
    reward = torch.randn(n_prompts * k, generator=g)
    batch = train_ppo.prepare_batch(policy, ref, critic, ro, reward, 0.05, ppo_run.AdvantageSettings(1.0, 1.0, 0.95))
    return policy, ref, critic, batch


def run_update(policy, critic, batch, lr=1e-3, critic_lr=1e-3, **kw):
    opt_p, opt_c = configure_optimizer(policy, lr, 0.0), configure_optimizer(critic, critic_lr, 0.0)
    settings = dict(epochs=2, minibatch_size=8, temperature=1.0, clip=0.2, value_clip=0.2, grad_clip=1.0)
    settings.update(kw)
    loop = {k: settings.pop(k) for k in ("train_policy", "lr_at", "amp") if k in settings}
    return train_ppo.ppo_update(policy, critic, opt_p, opt_c, batch, torch.Generator().manual_seed(0),
                                ppo_run.UpdateSettings(**settings), **loop)


# -----------------------------------------------------------------------------
# bf16: autocast around each forward, never around an optimizer step


def test_bf16_update_sees_each_optimizer_step(tiny_run):
    """Autocast caches the bf16 copy of every weight until its region ends: an update run inside
    one region trains every minibatch after the first against the weights of the first, so the
    ratio barely leaves 1 (the review measured clip_frac 0.095 against 0.38 in fp32)."""
    policy, _, critic, batch = models_and_batch(tiny_run)
    fp32 = run_update(copy.deepcopy(policy), copy.deepcopy(critic), batch, lr=3e-3, epochs=4)
    bf16 = run_update(copy.deepcopy(policy), copy.deepcopy(critic), batch, lr=3e-3, epochs=4,
                      amp=torch.autocast("cpu", dtype=torch.bfloat16))
    assert fp32["clip_frac"] > 0.1, fp32  # the setting moves the policy enough to clip
    for key in ("clip_frac", "approx_kl"):
        assert abs(bf16[key] - fp32[key]) <= 0.15 * fp32[key], (key, fp32[key], bf16[key])


# -----------------------------------------------------------------------------
# One sampling budget everywhere


def test_every_sampling_call_gets_the_flag_budget(tiny_run, tmp_path, monkeypatch):
    seen = []
    real_sample_rationales, real_sample = rationales.sample_rationales, train_ppo.sample

    def spy_rationales(*a, **kw):
        seen.append(("rationales", kw.get("max_new_tokens"), kw.get("batch_prompts")))
        return real_sample_rationales(*a, **kw)

    def spy_sample(*a, **kw):
        seen.append(("sample", kw.get("max_new_tokens"), None))
        return real_sample(*a, **kw)
    monkeypatch.setattr(rationales, "sample_rationales", spy_rationales)
    monkeypatch.setattr(train_ppo, "sample", spy_sample)
    data, base = tiny_run["data"], tiny_run["base"]
    rm_path = str(tmp_path / "rm.pt")
    tok = load_tokenizer(os.path.join(data, "tokenizer.json"))
    save_checkpoint(rm_path, lm_to_scalar(load_checkpoint(base, kind="lm")[0]), tok.to_str(), {"script": "test"})
    budget = ["--max_new_tokens", "37", "--batch_prompts", "5", "--device", "cpu"]
    train_ppo.main(["--sft", base, "--rm", rm_path, "--data_dir", data, "--out_dir", str(tmp_path / "ppo"),
                    "--preset", "tiny", "--updates", "2", *budget])
    train_sft.main(["--init", base, "--data", sft_rows(tmp_path, tok), "--data_dir", data,
                    "--out", str(tmp_path / "sft.pt"), "--preset", "tiny", "--max_steps", "2", "--eval_limit", "3",
                    *budget])
    train_rm.main(["--init", base, "--pairs", pair_rows(tmp_path), "--data_dir", data, "--out",
                   str(tmp_path / "rm2.pt"), "--preset", "tiny", "--max_steps", "2", "--auc_questions", "3", *budget])
    assert {s[0] for s in seen} == {"rationales", "sample"}
    assert all(s[1] == 37 for s in seen), seen
    assert all(s[2] == 5 for s in seen if s[0] == "rationales"), seen


def test_the_task_sets_the_budget_when_no_flag_does(monkeypatch):
    assert get_task("gsm8k").rationale_tokens == 256 and get_task("arithmetic").rationale_tokens == 64
    seen = []

    class Stop(Exception):
        pass

    def fake_sample(model, prompts, **kw):
        seen.append(kw["max_new_tokens"])
        raise Stop
    monkeypatch.setattr(rationales, "sample", fake_sample)
    model = GPT(GPTConfig(vocab_size=300, block_size=1024))
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(Stop):
        rationales.sample_rationales(model, tok, get_task("gsm8k"), [("How many?", None)], 1, 1.0, 0)
    assert seen == [256]


def sft_rows(tmp_path, tok):
    path = tmp_path / "sft.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"Question: Tom has {i} pens. How many pens does Tom have now?\nAnswer:",
             "completion": f" So the answer is {i}."} for i in range(1, 30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def pair_rows(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"Question: Tom has {i} pens. How many pens does Tom have now?\nAnswer:",
             "chosen": f" So the answer is {i}.", "rejected": f" So the answer is {i + 1}."} for i in range(1, 30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# -----------------------------------------------------------------------------
# Rewards read answers strictly


def test_rewards_count_only_a_stated_answer():
    gsm8k = get_task("gsm8k")
    assert gsm8k.extract_answer("She has 5 apples") == "5"  # evaluation's lenient fallback
    assert gsm8k.reward("She has 5 apples", "5") == 0.0 and gsm8k.stated_answer("She has 5 apples") is None
    assert gsm8k.reward("3 + 2 = 5. So the answer is 5.", "5") == 1.0
    assert gsm8k.reward("So the answer is 4. No, the answer is 5.", "5") == 0.0  # two answers: neither
    world = get_task("arithmetic")
    assert world.reward("1 + 2 = 3. So the answer is 3.", "3") == 1.0


def test_ppo_penalises_a_rationale_that_states_no_answer(tiny_run):
    tok = load_tokenizer(os.path.join(tiny_run["data"], "tokenizer.json"))
    eot = tok.token_to_id(EOT)
    texts = ["She has 5 apples.", "2 + 3 = 5. So the answer is 5."]
    ro = SimpleNamespace(responses=[tok.encode(t).ids + [eot] for t in texts],
                         finished=torch.tensor([True, True]))
    settings = ppo_run.RewardSettings("exact", no_answer_penalty=1.0, unfinished_penalty=2.0, clip=5.0)
    decoded = [decode_sampled(tok, r, [eot]) for r in ro.responses]
    rows = [{"question": "How many apples?", "answer": "5"}]
    rewards = train_ppo.score_rollouts(decoded, [rows[0]["answer"]] * 2, ro, None, get_task("gsm8k"), None, settings)
    assert rewards.correct.tolist() == [0.0, 1.0] and rewards.has_answer.tolist() == [False, True]
    assert rewards.sequence.tolist() == [-1.0, 1.0]


# -----------------------------------------------------------------------------
# The reward model: refused near chance, its scale floored


def test_a_reward_model_near_chance_is_refused_unless_meant():
    with pytest.raises(common.UserError, match="near chance"):
        reward_report.check_reward_model({"val_pair_accuracy": 0.52, "auc_correctness": 0.9}, "rm.pt", False)
    with pytest.raises(common.UserError, match="auc_correctness"):
        reward_report.check_reward_model({"val_pair_accuracy": 0.9, "auc_correctness": float("nan")}, "rm.pt", False)
    with pytest.raises(common.UserError, match="no quality report"):
        reward_report.check_reward_model(None, "rm.pt", False)
    reward_report.check_reward_model({"val_pair_accuracy": 0.52, "auc_correctness": 0.5}, "rm.pt", True)
    reward_report.check_reward_model({"val_pair_accuracy": 0.97, "auc_correctness": 0.88}, "rm.pt", False)


@pytest.mark.slow  # PPO end to end, twice
def test_the_reward_std_has_a_floor_and_the_gate_reads_rm_pt(tiny_run, tmp_path):
    data, base = tiny_run["data"], tiny_run["base"]
    tok = load_tokenizer(os.path.join(data, "tokenizer.json"))
    rm = lm_to_scalar(load_checkpoint(base, kind="lm")[0])
    with torch.no_grad():
        rm.score_head.weight.mul_(1e-3)  # scores SFT samples almost alike
    weak, strong = str(tmp_path / "weak.pt"), str(tmp_path / "strong.pt")
    save_checkpoint(weak, rm, tok.to_str(), {"script": "test"}, extra={"report": {"val_pair_accuracy": 0.5}})
    save_checkpoint(strong, rm, tok.to_str(), {"script": "test"},
                    extra={"report": {"val_pair_accuracy": 0.9, "auc_correctness": 0.8, "val_score_std": 4.0}})
    argv = ["--sft", base, "--data_dir", data, "--device", "cpu", "--updates", "1", "--questions_per_update", "4",
            "--samples_per_question", "2", "--minibatch_size", "8", "--eval_limit", "4", "--val_samples", "1",
            "--norm_questions", "8"]
    with pytest.raises(common.UserError, match="near chance"):
        train_ppo.main(argv + ["--rm", weak, "--out_dir", str(tmp_path / "a")])
    train_ppo.main(argv + ["--rm", strong, "--out_dir", str(tmp_path / "b")])
    summary = json.load(open(tmp_path / "b" / "summary.json"))
    assert summary["reward_scale"]["std"] < 0.1  # what the RM's scores really spread
    assert summary["reward_std"] == pytest.approx(0.25 * 4.0)  # the floor: a quarter of its held-out spread


# -----------------------------------------------------------------------------
# Step sizes for pretrained weights


def test_warmup_bounds_the_first_step():
    """AdamW's first step moves each parameter by about the learning rate whatever the
    gradient: the warmup's first learning rate is the bound."""
    args = SimpleNamespace(updates=10, critic_warmup_updates=0, ppo_epochs=2, questions_per_update=8,
                           samples_per_question=4, minibatch_size=8, lr=1e-3, critic_lr=1e-2, warmup_steps=10,
                           min_lr_frac=0.1)
    lr_at = ppo_run.lr_schedule(args, 0)
    assert lr_at(0) == pytest.approx((1e-4, 1e-3)) and lr_at(9) == pytest.approx((1e-3, 1e-2))
    last = ppo_run.lr_schedule(args, 9)(ppo_run.steps_per_update(args) - 1)
    assert last[0] == pytest.approx(1e-4, rel=0.05)  # decayed to min_lr_frac by the end


def test_first_step_moves_parameters_by_the_warmup_lr(tiny_run):
    policy, _, critic, batch = models_and_batch(tiny_run)
    before = [p.detach().clone() for p in policy.parameters()]
    stats = run_update(policy, critic, batch, epochs=1, minibatch_size=32, lr=1e-3,
                       lr_at=lambda i: (1e-3 / 10 * (i + 1), 1e-3))
    assert stats["optimizer_steps"] == 1
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(policy.parameters(), before))
    assert 0.5e-4 < moved <= 1e-4 * 1.001


def test_critic_warmup_leaves_the_policy_alone(tiny_run):
    policy, _, critic, batch = models_and_batch(tiny_run)
    p0 = [p.detach().clone() for p in policy.parameters()]
    c0 = [p.detach().clone() for p in critic.parameters()]
    stats = run_update(policy, critic, batch, train_policy=False)
    assert all(torch.equal(p, q) for p, q in zip(policy.parameters(), p0))
    assert any(not torch.equal(p, q) for p, q in zip(critic.parameters(), c0))
    assert stats["policy_loss"] is None and stats["value_loss"] is not None


def test_target_kl_stops_an_update_early(tiny_run):
    policy, _, critic, batch = models_and_batch(tiny_run)
    free = run_update(copy.deepcopy(policy), copy.deepcopy(critic), batch, lr=3e-3, epochs=4)
    assert free["optimizer_steps"] == 16 and not free["kl_stop"]
    stopped = run_update(copy.deepcopy(policy), copy.deepcopy(critic), batch, lr=3e-3, epochs=4, target_kl=1e-4)
    # the first minibatch has ratio 1 and steps; the one that passes the target does not
    assert stopped["kl_stop"] and 1 <= stopped["optimizer_steps"] < 16


# -----------------------------------------------------------------------------
# Memory: the same numbers, fewer bytes


def test_micro_batched_update_equals_the_whole_batch(tiny_run):
    """Accumulated micro-batches give the minibatch's gradient. Measured with SGD, whose step is
    the gradient itself (Adam divides by its running scale, which turns rounding in a near-zero
    gradient into a step of about lr): parameters moved by up to 1.6e-2 agree to 1e-6 in float32."""
    policy, _, critic, batch = models_and_batch(tiny_run)
    results = []
    for micro_batch_size in (None, 3):
        p, c = copy.deepcopy(policy), copy.deepcopy(critic)
        stats = train_ppo.ppo_update(p, c, torch.optim.SGD(p.parameters(), lr=0.1),
                                     torch.optim.SGD(c.parameters(), lr=0.1), batch,
                                     torch.Generator().manual_seed(0),
                                     ppo_run.UpdateSettings(epochs=2, minibatch_size=16, temperature=1.0, clip=0.2,
                                                            value_clip=0.2, grad_clip=1.0,
                                                            micro_batch_size=micro_batch_size))
        results.append((list(p.parameters()) + list(c.parameters()), stats))
    (whole, a), (micro, b) = results
    moved = max(float((p - q).detach().abs().max()) for p, q in zip(whole, list(policy.parameters()) +
                                                           list(critic.parameters())))
    assert moved > 1e-3
    for p, q in zip(whole, micro):
        assert torch.allclose(p, q, atol=1e-6, rtol=0)
    assert a["clip_frac"] == pytest.approx(b["clip_frac"], abs=1e-6)
    assert a["approx_kl"] == pytest.approx(b["approx_kl"], rel=1e-4, abs=1e-7)


def test_chunked_log_probs_equal_the_full_softmax(tiny_run):
    policy, _, _, batch = models_and_batch(tiny_run)
    logits, _ = policy(batch.idx[:, :-1])
    full = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, batch.idx[:, 1:].unsqueeze(-1)).squeeze(-1)
    chunked, entropy = train_ppo.token_logprobs(policy, batch.idx, batch.mask, 0.7, chunk=7)
    assert torch.allclose(chunked, full * batch.mask, atol=1e-5)
    probs = torch.softmax(logits.float() / 0.7, -1)
    full_entropy = -(probs * probs.log()).sum(-1) * batch.mask
    assert torch.allclose(entropy, full_entropy, atol=1e-4)
    # and through backward: the checkpointed chunks give the full softmax's gradient
    g1 = torch.autograd.grad((chunked * batch.advantages).sum(), policy.lm_head.weight)[0]
    logits, _ = policy(batch.idx[:, :-1])
    full = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, batch.idx[:, 1:].unsqueeze(-1)).squeeze(-1)
    g2 = torch.autograd.grad((full * batch.mask * batch.advantages).sum(), policy.lm_head.weight)[0]
    assert torch.allclose(g1, g2, atol=1e-5)


def test_padded_vocabulary_rows_get_no_probability():
    logits = torch.randn(3, 10)
    logp = train_ppo.mask_padded_vocab(logits, 7).log_softmax(-1)
    assert torch.isinf(logp[:, 7:]).all() and torch.allclose(logp[:, :7].exp().sum(-1), torch.ones(3))


def test_gradient_checkpointing_gives_the_same_gradients(tiny_run):
    model, _ = load_checkpoint(tiny_run["base"], kind="lm")
    x = torch.randint(0, model.config.vocab_size, (3, 20))
    calls = []
    model.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    grads, runs = [], []
    for ckpt in (False, True):
        model.grad_checkpointing = ckpt
        model.zero_grad()
        calls.clear()
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        runs.append(len(calls))
    assert runs == [1, 2]  # checkpointed: the block runs again in backward
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_frozen_models_are_kept_in_the_compute_dtype(tiny_run, tmp_path, monkeypatch):
    data, base = tiny_run["data"], tiny_run["base"]
    seen = {}
    real = train_ppo.prepare_batch

    def spy(policy, ref, critic, *a, **kw):
        seen.update(ref=next(ref.parameters()).dtype, policy=next(policy.parameters()).dtype,
                    critic=next(critic.parameters()).dtype)
        return real(policy, ref, critic, *a, **kw)
    monkeypatch.setattr(train_ppo, "prepare_batch", spy)
    train_ppo.main(["--sft", base, "--reward", "exact", "--data_dir", data, "--out_dir", str(tmp_path / "p"),
                    "--device", "cpu", "--dtype", "bfloat16", "--updates", "1", "--questions_per_update", "4",
                    "--samples_per_question", "2", "--minibatch_size", "8", "--eval_limit", "4", "--val_samples", "1"])
    assert seen == {"ref": torch.bfloat16, "policy": torch.float32, "critic": torch.float32}


# -----------------------------------------------------------------------------
# Dropout


def test_ppo_trains_without_dropout(tiny_run):
    """The rollout's log-probs come from the model without dropout; the first minibatch must
    compare the same model with itself (ratio 1), whatever dropout the config names."""
    policy, _, critic, batch = models_and_batch(tiny_run, dropout=0.3)
    stats = run_update(policy, critic, batch, epochs=1, minibatch_size=32, lr=0.0, critic_lr=0.0)
    assert stats["approx_kl"] < 1e-7 and stats["clip_frac"] == 0.0


# -----------------------------------------------------------------------------
# Finished models are weights only


def test_final_checkpoints_carry_no_optimizer_state(tiny_run, tmp_path):
    data, base = tiny_run["data"], tiny_run["base"]
    tok = load_tokenizer(os.path.join(data, "tokenizer.json"))
    out = str(tmp_path / "sft.pt")
    train_sft.main(["--init", base, "--data", sft_rows(tmp_path, tok), "--data_dir", data, "--out", out,
                    "--preset", "tiny", "--max_steps", "4", "--eval_interval", "2", "--device", "cpu"])
    weights_only = str(tmp_path / "weights.pt")
    save_checkpoint(weights_only, load_checkpoint(out, kind="lm")[0], tok.to_str(), {"script": "test"})
    assert os.path.getsize(out) < 1.1 * os.path.getsize(weights_only)  # AdamW's state would triple it
    assert not os.path.exists(out + ".partial")
    ppo = tmp_path / "ppo"
    train_ppo.main(["--sft", out, "--reward", "exact", "--data_dir", data, "--out_dir", str(ppo), "--device", "cpu",
                    "--updates", "1", "--questions_per_update", "4", "--samples_per_question", "2",
                    "--minibatch_size", "8", "--eval_limit", "4", "--val_samples", "1"])
    best = torch.load(ppo / "ppo_best.pt", weights_only=True)
    last = torch.load(ppo / "ppo_last.pt", weights_only=True)
    assert not {"opt_policy", "critic", "optimizer"} & set(best)
    assert {"opt_policy", "opt_critic", "critic", "ppo_state"} <= set(last)  # what --resume needs
    assert os.path.getsize(ppo / "ppo_best.pt") < 1.1 * os.path.getsize(weights_only)


def test_sft_keeps_the_checkpoint_with_the_lowest_held_out_loss(tiny_run, tmp_path, capsys):
    data, base = tiny_run["data"], tiny_run["base"]
    tok = load_tokenizer(os.path.join(data, "tokenizer.json"))
    out = str(tmp_path / "sft.pt")
    train_sft.main(["--init", base, "--data", sft_rows(tmp_path, tok), "--data_dir", data, "--out", out,
                    "--preset", "tiny", "--max_steps", "12", "--eval_interval", "3", "--lr", "3e-2",
                    "--val_frac", "0.3", "--keep", "best", "--device", "cpu"])
    log = [json.loads(x) for x in open(tmp_path / "sft.log.jsonl")]
    evals = [r for r in log if r.get("val_loss") is not None]
    chosen = min(evals, key=lambda r: r["val_loss"])  # the first of equals, as the script keeps
    assert torch.load(out, weights_only=True)["provenance"]["step"] == chosen["step"]
    assert f"step {chosen['step']} of 12, the lowest held-out loss" in capsys.readouterr().out
    assert not os.path.exists(out + ".best") and not os.path.exists(out + ".partial")


# -----------------------------------------------------------------------------
# Stop ids and a padded vocabulary, in PPO's rollouts and log-probs


def test_rollouts_stop_at_every_end_id_and_score_the_sampled_distribution():
    """A checkpoint whose embedding has rows past its tokenizer's vocabulary, and which ends its
    turn with an id of its own: rollouts stop there, and PPO's log-probs are those of the
    distribution the sampler drew from (padding rows masked), so the first ratio is 1."""
    torch.manual_seed(0)
    policy = GPT(GPTConfig(vocab_size=64, block_size=64, n_layer=1, n_head=2, n_embd=32))
    with torch.no_grad():  # an end id of the checkpoint's own, and padding rows, both likely
        policy.lm_head.weight[40:] += 0.3 * torch.randn(24, 32)
    eot, turn_end, n_vocab = 0, 39, 40
    prompts = [[5, 6, 7], [8, 9]]
    ro = train_ppo.rollout(policy, prompts, 4, 1.0, 30, [eot, turn_end], list(range(8)), n_vocab=n_vocab)
    ends = [r[-1] for r, f in zip(ro.responses, ro.finished.tolist()) if f]
    assert turn_end in ends  # finished at the checkpoint's own end id
    assert all(t < n_vocab for r in ro.responses for t in r)  # never a padding id
    ref = copy.deepcopy(policy)
    critic = lm_to_scalar(policy)
    batch = train_ppo.prepare_batch(policy, ref, critic, ro, torch.zeros(8), 0.0,
                                    ppo_run.AdvantageSettings(1.0, 1.0, 0.95, n_vocab=n_vocab))
    for i, r in enumerate(ro.responses):
        on = batch.mask[i] > 0
        assert torch.allclose(batch.old_logp[i][on], torch.tensor(ro.sampler_logp[i]), atol=1e-5)
    unmasked = train_ppo.prepare_batch(policy, ref, critic, ro, torch.zeros(8), 0.0,
                                       ppo_run.AdvantageSettings(1.0, 1.0, 0.95))
    assert not torch.allclose(unmasked.old_logp, batch.old_logp, atol=1e-3)  # the mask matters here
