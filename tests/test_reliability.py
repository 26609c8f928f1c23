"""Bad flags and paths get one clear line before any work; interrupted writes leave nothing
half-made and never block a rerun."""

import os
import subprocess
import sys

import pytest

import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("argv,flag", [
    (["generate.py", "--ckpt", "c", "--data_dir", "d", "--out_dir", "o", "--k", "0"], "--k"),
    (["generate.py", "--ckpt", "c", "--data_dir", "d", "--out_dir", "o", "--temperature", "-1"], "--temperature"),
    (["generate.py", "--ckpt", "c", "--data_dir", "d", "--out_dir", "o", "--limit", "-1"], "--limit"),
    (["evaluate.py", "eval", "--ckpt", "c", "--data_dir", "d", "--max_new_tokens", "0"], "--max_new_tokens"),
    (["evaluate.py", "eval", "--ckpt", "c", "--data_dir", "d", "--top_k", "-1"], "--top_k"),
    (["evaluate.py", "eval", "--ckpt", "c", "--data_dir", "d", "--top_p", "1.5"], "--top_p"),
    (["evaluate.py", "eval", "--ckpt", "c", "--data_dir", "d", "--batch_prompts", "0"], "--batch_prompts"),
    (["pretrain.py", "--data_dir", "d", "--out", "o.pt", "--max_steps", "0"], "--max_steps"),
    (["pretrain.py", "--data_dir", "d", "--out", "o.pt", "--lr", "nan"], "--lr"),
    (["train_sft.py", "--init", "i", "--data", "x", "--data_dir", "d", "--out", "o", "--batch_size", "0"],
     "--batch_size"),
    (["train_rm.py", "--init", "i", "--pairs", "p", "--data_dir", "d", "--out", "o", "--lr", "-1"], "--lr"),
    (["train_ppo.py", "--sft", "s", "--reward", "exact", "--data_dir", "d", "--out_dir", "o",
      "--minibatch_size", "0"], "--minibatch_size"),
    (["train_ppo.py", "--sft", "s", "--reward", "exact", "--data_dir", "d", "--out_dir", "o", "--gamma", "2"],
     "--gamma"),
    (["data/prepare.py", "--out_dir", "o", "--n_train", "abc"], "--n_train"),
])
def test_numeric_flags_are_checked_at_parse_time(argv, flag):
    r = run(*argv)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and flag in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_an_unreadable_checkpoint_is_one_line_with_no_unsafe_advice(tiny_run, tmp_path):
    bad = tmp_path / "random.pt"
    bad.write_bytes(os.urandom(4096))
    r = run("evaluate.py", "eval", "--ckpt", str(bad), "--data_dir", tiny_run["data"])
    assert r.returncode == 1 and "not a checkpoint of this project" in r.stderr, r.stderr
    assert "weights_only" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # through the CLI, a process per case: CI runs it, -m "not slow" leaves it out
def test_outputs_are_checked_before_any_work(tiny_run, tmp_path):
    data, base = tiny_run["data"], tiny_run["base"]
    # an output that is one of the inputs (the test split), or an existing file
    r = run("evaluate.py", "eval", "--ckpt", base, "--data_dir", data, "--out", os.path.join(data, "test.jsonl"))
    assert r.returncode == 1 and "is also an input" in r.stderr
    existing = tmp_path / "preds.jsonl"
    existing.write_text("keep me\n")
    r = run("evaluate.py", "eval", "--ckpt", base, "--data_dir", data, "--out", str(existing))
    assert r.returncode == 1 and "--overwrite" in r.stderr and existing.read_text() == "keep me\n"
    # an output under a file: refused at once, not after training
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    r = run("train_rm.py", "--init", base, "--pairs", "missing.jsonl", "--data_dir", data,
            "--out", str(blocker / "rm.pt"))
    assert r.returncode == 1 and "is a file" in r.stderr and "Traceback" not in r.stderr


def test_atomic_file_leaves_no_temporary_and_sweeps_dead_ones(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with common.atomic_file(str(target)) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []
    dead = tmp_path / "out.json.tmp999999999"  # a temporary left by a process that is gone
    dead.write_text("stale")
    common.write_json(str(target), {"a": 1})
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_an_interrupted_prepare_is_redone_without_manual_cleanup(tmp_path, monkeypatch):
    from data import prepare
    out = str(tmp_path / "data")
    argv = ["--out_dir", out, "--preset", "tiny", "--seed", "4"]
    real = prepare.write_jsonl

    def killed(path, rows):
        if path.endswith("corpus.jsonl"):
            raise KeyboardInterrupt
        return real(path, rows)
    monkeypatch.setattr(prepare, "write_jsonl", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare.main(argv)
    assert not os.path.exists(out) and os.listdir(tmp_path) == []  # nothing half-made
    monkeypatch.setattr(prepare, "write_jsonl", real)
    prepare.main(argv)  # no --overwrite needed
    assert sorted(os.listdir(out)) == sorted(prepare.OUTPUTS)


def test_reward_model_checkpoint_is_written_last(tiny_run, tmp_path, monkeypatch):
    """run.sh takes rm.pt as the stage's completion mark: killed after the report but before
    the checkpoint, the stage is redone, never skipped with its report missing."""
    import json

    import train_rm
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"q{i}", "prompt": "Question: a\nAnswer:", "chosen": " yes.",
                                         "rejected": " no."}) + "\n" for i in range(8)))
    out, report = tmp_path / "rm.pt", tmp_path / "rm_report.json"

    def killed(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_rm, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        train_rm.main(["--init", tiny_run["base"], "--pairs", str(pairs), "--data_dir", tiny_run["data"],
                       "--out", str(out), "--report", str(report), "--preset", "tiny", "--max_steps", "2",
                       "--auc_questions", "2", "--device", "cpu"])
    assert report.exists() and not out.exists()
    assert [p for p in os.listdir(tmp_path) if ".tmp" in p] == []


def test_run_sh_help_starts_nothing(tmp_path):
    """`bash run.sh --help` prints the recipe's settings; an argument it does not take is an
    error; neither starts a run."""
    env = {**os.environ, "RUN": str(tmp_path / "run")}
    r = subprocess.run(["bash", "run.sh", "--help"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "INIT=" in r.stdout and "PRESET=tiny bash run.sh" in r.stdout
    r = subprocess.run(["bash", "run.sh", "tiny"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "takes no arguments" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # through the CLI, a process per case: CI runs it, -m "not slow" leaves it out
def test_progress_bars_in_a_log_file_write_a_few_lines_not_one_per_step(tiny_run, tmp_path):
    """run.sh sends stderr to a log: there a bar is one line every 30 s. A per-step postfix
    (the loss) that redraws the bar at once wrote a line for every training step."""
    import json
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"id": f"q{i}", "prompt": "Question: a\nAnswer:", "completion": " 2."}) + "\n"
                           for i in range(8)))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"q{i}", "prompt": "Question: a\nAnswer:", "chosen": " yes.",
                                         "rejected": " no."}) + "\n" for i in range(8)))
    common_flags = ["--data_dir", tiny_run["data"], "--preset", "tiny", "--max_steps", "60", "--device", "cpu"]
    for argv in (["train_sft.py", "--init", tiny_run["base"], "--data", str(sft), "--out", str(tmp_path / "sft.pt"),
                  "--eval_interval", "1000", "--eval_limit", "1"],
                 ["train_rm.py", "--init", tiny_run["base"], "--pairs", str(pairs), "--out", str(tmp_path / "rm.pt"),
                  "--report", str(tmp_path / "rm.json"), "--auc_questions", "2"]):
        r = subprocess.run([sys.executable, *argv, *common_flags], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        bar_lines = [x for x in r.stderr.splitlines() if "/60 [" in x]
        assert 1 <= len(bar_lines) <= 5, (argv[0], bar_lines[:8])
