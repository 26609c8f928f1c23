"""bench.py: the GPU check runs on a CPU at cut shapes (the same code a GPU runs at full ones),
and the PPO memory table prints one row per (rollouts, micro-batch)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(*args):
    r = subprocess.run([sys.executable, "-m", "tools.bench", *args, "--device", "cpu"], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow  # a minute on two cores
def test_gpu_check_runs_at_cut_shapes(tmp_path):
    out = tmp_path / "gpu_check.json"
    bench("--gpu_check", "--cut", "--out", str(out))
    report = json.load(open(out))
    # train_ppo.main as users run it (--rm, bf16): two updates logged, after the reward's scale
    assert [r["update"] for r in report["ppo_entry_path"]["log"] if "rm_score" in r] == [1, 2]
    updates = report["ppo_two_updates"]["updates"]
    assert len(updates) == 2
    for u in updates:
        assert abs(u["first_approx_kl"]) < 1e-6  # the first minibatch compares the policy with itself
        assert u["epoch_clip_frac"][1] > 0  # and by the second epoch the policy has moved
        assert set(u["phases"]) == {"rollout", "scoring", "update"}
    for name in ("qwen2.5-0.5b", "qwen2.5-1.5b"):
        assert report[f"ppo_memory_{name}"]["updates"][0]["phases"]["update"]["peak_gib"] > 0
    assert report["sampling_vs_generate"]["sample_ratio"] > 0 and report["train_mfu"]["mfu"] > 0
    assert [r["rows"] for r in report["sampler_draw"]] == [4] and report["sampler_draw"][0]["race_s_per_step"] > 0


@pytest.mark.slow  # a process per measurement
def test_ppo_table_has_a_row_per_setting():
    out = bench("--ppo", "smollm2-135m", "--ppo_layers", "1", "--ppo_rollouts", "4,8", "--ppo_micro_batch", "2",
                "--ppo_prompt_tokens", "8", "--ppo_rationale_tokens", "4")
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split("|")[1:3] for r in rows] == [[" 4 ", " 2 "], [" 8 ", " 2 "]], out


def test_sampler_compare_times_both_draws_in_one_run(capsys):
    """--sampler_compare: a row per row count, each with the inverse CDF's and the race's time
    and memory and their ratios, measured in the same process."""
    from tools import bench
    bench.main(["--sampler_compare", "--sampler_rows", "2,3", "--sampler_vocab", "1000", "--sampler_steps", "2",
                "--sampler_repeats", "1", "--device", "cpu"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line[:3] in ("| 2", "| 3")]
    assert [r[0].strip() for r in rows] == ["2", "3"] and all(float(r[3]) > 0 for r in rows), rows
