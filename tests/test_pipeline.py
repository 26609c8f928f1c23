"""run.sh, the tiny preset end to end, with a second SML round: every stage runs, results.json
has every method's row (the baselines, the controls, STaR's iterations and the round
included), each trained from what it should be and kept where its greedy validation accuracy
was best, the table renders, and a second invocation skips the finished stages."""

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {"base", "sft", "sml", "sml_round2", "rft", "star1", "star2", "gold", "ppo_exact", "rloo", "grpo",
           "base_tuned", "sft_tuned", "ppo_random"}
CONTROLS = {"base_tuned", "sft_tuned"}  # at the temperature chosen on the validation split: no greedy row


def provenance(path):
    return torch.load(path, map_location="cpu", weights_only=True)["provenance"]


@pytest.mark.slow  # end to end: CI runs it, -m "not slow" leaves it out
def test_tiny_pipeline_end_to_end_and_resume(tmp_path):
    run = str(tmp_path / "run")
    # PYTHON: run.sh starts every stage with the interpreter running the tests (a venv need not be active)
    env = {**os.environ, "PRESET": "tiny", "ROUNDS": "2", "RUN": run,
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),  # a machine shared with others: set it lower
           "PYTHON": sys.executable}
    r = subprocess.run(["bash", "run.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    results = json.load(open(os.path.join(run, "results.json")))
    assert set(results["table"]) == METHODS  # every row, baselines included
    for key, row in results["table"].items():
        assert 0 <= row["accuracy_mean"] <= 1 and row["n_questions"] == 100 and row["k"] == 2
        assert 0 <= row["maj@2_mean"] <= row["pass@2_mean"] <= 1
        if key in CONTROLS:
            assert row["temperatures"][0] in (1, 0.8, 0.6, 0.4, 0.2) and row["greedy_mean"] is None
        else:  # (every step right: none where the tiny models' greedy steps cannot be read back)
            assert 0 <= row["greedy_mean"] <= 1 and 0 <= (row["greedy_every_step_right_mean"] or 0) <= 1
    assert set(results["vs_sml"]) == METHODS - {"base", "sml"}
    assert {"rm_pair_accuracy", "rm_auc_correctness", "ppo_best_update"} <= set(results["findings"])
    md = open(os.path.join(run, "results.md")).read()
    assert "| SML (SFT + PPO, RM reward) |" in md and "| SML round 2 |" in md and "| STaR iteration 2 |" in md

    # what each was trained from: round 2 collected by round 1's SML model, then trained from the
    # base model on both rounds' collections; STaR always from the base model on what the previous
    # iteration's model collected
    stats = json.load(open(os.path.join(run, "round2", "collect", "stats.json")))
    assert stats["args"]["ckpt"] == os.path.join(run, "ppo", "ppo_best.pt")
    made = provenance(os.path.join(run, "round2", "sft.pt"))
    assert (made["parent"], made["args"]["data"]) == (os.path.join(run, "base.pt"),
                                                      os.path.join(run, "round2", "pooled", "sft.jsonl"))
    # every SFT stage kept the evaluation with the best greedy validation accuracy (the first of equals)
    for name in ("sft", "rft", "star1", "gold", os.path.join("round2", "sft")):
        evals = [json.loads(x) for x in open(os.path.join(run, name + ".log.jsonl")) if "val_score" in x]
        assert provenance(os.path.join(run, name + ".pt"))["step"] == max(evals, key=lambda e: e["val_score"])["step"]
    assert provenance(os.path.join(run, "round2", "ppo", "ppo_best.pt"))["args"]["rm"] == os.path.join(
        run, "round2", "rm.pt")
    stats = json.load(open(os.path.join(run, "star2", "collect", "stats.json")))
    assert stats["args"]["ckpt"] == os.path.join(run, "star1.pt") and stats["args"]["m"] == 0
    for it, data in ((1, os.path.join(run, "collect")), (2, os.path.join(run, "star2", "collect"))):
        made = provenance(os.path.join(run, f"star{it}.pt"))
        assert made["parent"] == os.path.join(run, "base.pt")
        assert made["args"]["data"] == os.path.join(data, "star.jsonl")
    for est in ("rloo", "grpo"):
        assert json.load(open(os.path.join(run, est, "summary.json")))["estimator"] == est
    before = os.path.getmtime(os.path.join(run, "ppo", "ppo_best.pt"))

    r = subprocess.run(["bash", "run.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(pretrain: " in r.stdout and "exists, skipped" in r.stdout
    assert os.path.getmtime(os.path.join(run, "ppo", "ppo_best.pt")) == before
    assert r.stdout.count("exists, skipped") >= 15
