"""Shared fixtures: a tiny world and a tiny base model, made once per test session."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """{"data": data_dir, "base": checkpoint}: the tiny arithmetic world, 40 pretraining steps
    (the tests below write arithmetic examples by hand)."""
    from data.prepare import main as prepare_main
    from pretrain import main as pretrain_main
    d = tmp_path_factory.mktemp("tiny_run")
    data = str(d / "data")
    prepare_main(["--out_dir", data, "--task", "arithmetic", "--preset", "tiny", "--seed", "7"])
    base = str(d / "base.pt")
    pretrain_main(["--data_dir", data, "--out", base, "--preset", "tiny", "--max_steps", "40",
                   "--device", "cpu", "--seed", "7"])
    return {"data": data, "base": base, "dir": str(d)}
