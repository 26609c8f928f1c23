"""run.sh, the tiny preset end to end: every stage runs, results.json has every row, the
table renders, and a second invocation skips the finished stages."""

import json
import os
import subprocess
import sys

import pytest

from results import ROWS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # end to end: CI runs it, -m "not slow" leaves it out
def test_tiny_pipeline_end_to_end_and_resume(tmp_path):
    run = str(tmp_path / "run")
    # PYTHON: run.sh starts every stage with the interpreter running the tests (a venv need not be active)
    env = {**os.environ, "PRESET": "tiny", "RUN": run, "OMP_NUM_THREADS": "2", "PYTHON": sys.executable}
    r = subprocess.run(["bash", "run.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    results = json.load(open(os.path.join(run, "results.json")))
    assert set(results["table"]) == {key for key, _, _ in ROWS}  # every row, baselines included
    for row in results["table"].values():
        assert 0 <= row["accuracy_mean"] <= 1 and row["n_questions"] == 100
    assert {"rm_pair_accuracy", "rm_auc_correctness", "ppo_wrong_to_right", "ppo_right_to_wrong"} <= set(
        results["findings"])
    md = open(os.path.join(run, "results.md")).read()
    assert "| SML (SFT + PPO, RM reward) |" in md and "## Findings" in md
    before = os.path.getmtime(os.path.join(run, "ppo", "ppo_best.pt"))

    r = subprocess.run(["bash", "run.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(pretrain: " in r.stdout and "exists, skipped" in r.stdout
    assert os.path.getmtime(os.path.join(run, "ppo", "ppo_best.pt")) == before
    assert r.stdout.count("exists, skipped") >= 15
