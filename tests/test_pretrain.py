"""pretrain.py: the loss drops, DDP matches one process, resume, bad input."""

import json
import os
import subprocess
import sys

import pytest

from data.prepare import main as prepare_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, env=None):
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def losses(log_path):
    with open(log_path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    prepare_main(["--out_dir", str(d), "--preset", "tiny", "--seed", "3"])
    return str(d)


def test_tiny_pretraining_loss_drops_and_resume_continues(data_dir, tmp_path):
    out = str(tmp_path / "base.pt")
    r = run(sys.executable, "pretrain.py", "--data_dir", data_dir, "--out", out, "--preset", "tiny",
            "--max_steps", "40", "--eval_interval", "20", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    recs = losses(str(tmp_path / "base.log.jsonl"))
    assert len(recs) == 40
    assert recs[-1]["val_loss"] < 0.6 * recs[0]["loss"]
    # running again without --resume / --overwrite refuses and keeps the checkpoint
    before = os.path.getmtime(out)
    r = run(sys.executable, "pretrain.py", "--data_dir", data_dir, "--out", out, "--preset", "tiny",
            "--device", "cpu")
    assert r.returncode != 0 and "already exists" in r.stderr and os.path.getmtime(out) == before
    # --resume continues from step 40 to 50 with the same data order
    r = run(sys.executable, "pretrain.py", "--data_dir", data_dir, "--out", out, "--preset", "tiny",
            "--max_steps", "50", "--eval_interval", "20", "--device", "cpu", "--resume")
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    recs = losses(str(tmp_path / "base.log.jsonl"))
    assert [x["step"] for x in recs][-10:] == list(range(41, 51))


@pytest.mark.slow  # end to end: CI runs it, -m "not slow" leaves it out
def test_two_process_ddp_matches_one_process(data_dir, tmp_path):
    """The same global batch split over 2 processes (gloo on CPU) or 2 micro-batches in one
    process gives the same losses."""
    common = ["--data_dir", data_dir, "--preset", "tiny", "--max_steps", "6", "--eval_interval", "3",
              "--batch_size", "16", "--device", "cpu"]
    one = str(tmp_path / "one.pt")
    r = run(sys.executable, "pretrain.py", *common, "--out", one, "--grad_accum", "2")
    assert r.returncode == 0, r.stderr
    two = str(tmp_path / "two.pt")
    r = run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "pretrain.py", *common, "--out", two)
    assert r.returncode == 0, r.stderr
    a = [x["loss"] for x in losses(str(tmp_path / "one.log.jsonl"))]
    b = [x["loss"] for x in losses(str(tmp_path / "two.log.jsonl"))]
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, rel=1e-4)
    assert a[-1] < a[0]


def test_bad_input(tmp_path):
    r = run(sys.executable, "pretrain.py", "--data_dir", str(tmp_path / "nowhere"), "--out",
            str(tmp_path / "x.pt"))
    assert r.returncode != 0 and "nowhere/tokenizer.json: no such file" in r.stderr
    assert "Traceback" not in r.stderr
    r = run(sys.executable, "pretrain.py", "--help")
    assert r.returncode == 0 and "--resume" in r.stdout


@pytest.mark.slow  # end to end: CI runs it, -m "not slow" leaves it out
def test_interrupted_run_resumes_to_the_same_log_and_weights(data_dir, tmp_path, monkeypatch):
    """Killed after step 25 (the .partial checkpoint holds step 20, the log 25 rows), a run
    restarted with --resume drops the log rows after its checkpoint and ends exactly where an
    uninterrupted run ends; until then nothing has the finished checkpoint's name."""
    import torch

    from sml import common
    import pretrain
    argv = ["--data_dir", data_dir, "--preset", "tiny", "--max_steps", "30", "--eval_interval", "10",
            "--device", "cpu", "--seed", "5"]
    whole, cut = str(tmp_path / "whole.pt"), str(tmp_path / "cut.pt")
    pretrain.main(argv + ["--out", whole])

    real_lr = common.cosine_lr

    def killed_at_26(step, *a, **kw):
        if step == 25:
            raise KeyboardInterrupt
        return real_lr(step, *a, **kw)
    monkeypatch.setattr(common, "cosine_lr", killed_at_26)
    with pytest.raises(KeyboardInterrupt):
        pretrain.main(argv + ["--out", cut])
    monkeypatch.setattr(common, "cosine_lr", real_lr)
    assert not os.path.exists(cut) and os.path.exists(cut + ".partial")
    assert len(losses(str(tmp_path / "cut.log.jsonl"))) == 25
    pretrain.main(argv + ["--out", cut, "--resume"])
    assert os.path.exists(cut) and not os.path.exists(cut + ".partial")

    def log(name):
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in losses(str(tmp_path / name))]
    assert log("cut.log.jsonl") == log("whole.log.jsonl")
    a, b = (torch.load(p, weights_only=True)["model"] for p in (whole, cut))
    assert all(torch.equal(a[k], b[k]) for k in a)
