"""Bad flags and paths get one clear line before any work; interrupted writes leave nothing
half-made and never block a rerun."""

import json
import os
import subprocess
import sys

import pytest

from sml import common

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


# -----------------------------------------------------------------------------
# Data loss: a script never deletes or replaces a file it reads, or one it did not write


def copy_world(tiny_run, folder):
    """A run folder of our own (the shared one must survive a script that misbehaves):
    folder/data and folder/base.pt."""
    import shutil
    os.makedirs(folder, exist_ok=True)
    shutil.copytree(tiny_run["data"], os.path.join(folder, "data"))
    shutil.copy(tiny_run["base"], os.path.join(folder, "base.pt"))
    return os.path.join(folder, "data"), os.path.join(folder, "base.pt")


def test_an_out_dir_that_holds_other_files_is_refused_and_left_alone(tmp_path):
    """prepare.py's folder is written as a whole; it used to replace a folder holding the
    user's files (notes.txt, sub/model.pt) and delete them."""
    from data import prepare
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("mine\n")
    (out / "sub" / "model.pt").write_text("mine too\n")
    for extra in ([], ["--overwrite"]):
        with pytest.raises(common.UserError, match=r"holds notes\.txt, sub, which this script does not write"):
            prepare.main(["--out_dir", str(out), "--preset", "tiny", "--seed", "4", *extra])
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "sub" / "model.pt").read_text() == "mine too\n"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_loss_that_is_not_finite_is_one_line_naming_the_step_and_the_last_checkpoint():
    common.check_loss(2.5, "at step 3", "base.pt.partial")  # finite: nothing to say
    for loss in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(common.UserError, match=r"^loss is (nan|-?inf) at update 4; try a lower --lr "
                                                   r"\(the last good checkpoint is ppo_last\.pt\)$"):
            common.check_loss(loss, "at update 4", "ppo_last.pt")
    with pytest.raises(common.UserError, match=r"^loss is nan; try a lower --lr$"):
        common.check_loss(float("nan"))


def test_atomic_folder_replaces_only_a_folder_of_its_own_outputs(tmp_path):
    target = tmp_path / "out"
    with common.atomic_folder(str(target), ["a.txt", "b.txt"]) as tmp:
        common.write_text(os.path.join(tmp, "a.txt"), "1")
        common.write_text(os.path.join(tmp, "b.txt"), "1")
    with common.atomic_folder(str(target), ["a.txt", "b.txt"]) as tmp:  # a rerun: the whole set replaced
        common.write_text(os.path.join(tmp, "a.txt"), "2")
    assert os.listdir(target) == ["a.txt"] and (target / "a.txt").read_text() == "2"
    with pytest.raises(common.UserError, match=r"now holds notes\.txt, which this run did not write"):
        with common.atomic_folder(str(target), ["a.txt", "b.txt"]) as tmp:
            common.write_text(os.path.join(tmp, "a.txt"), "3")
            (target / "notes.txt").write_text("written while the run ran")
    assert sorted(os.listdir(target)) == ["a.txt", "notes.txt"] and (target / "a.txt").read_text() == "2"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_folder_interrupted_while_it_replaces_leaves_the_old_folder_or_the_new(tmp_path, monkeypatch):
    """A run killed while the earlier outputs are being removed must not leave a folder under
    the real name that holds some of them (a collection with its stats.json and half its files)."""
    class Killed(BaseException):
        pass
    target, outputs = tmp_path / "out", ["a.txt", "b.txt"]
    with common.atomic_folder(str(target), outputs) as tmp:
        for name in outputs:
            common.write_text(os.path.join(tmp, name), "old")
    real_rmtree, calls = common.shutil.rmtree, []

    def rmtree_killed_after_one_file(folder, *args, **kw):
        calls.append(folder)
        if len(calls) > 1:
            return real_rmtree(folder, *args, **kw)
        first = next(os.path.join(d, f) for d, _, files in sorted(os.walk(folder)) for f in sorted(files))
        os.remove(first)
        raise Killed()
    monkeypatch.setattr(common.shutil, "rmtree", rmtree_killed_after_one_file)
    with pytest.raises(Killed):
        with common.atomic_folder(str(target), outputs) as tmp:
            for name in outputs:
                common.write_text(os.path.join(tmp, name), "new")
    assert sorted(os.listdir(target)) == outputs
    assert {(target / name).read_text() for name in outputs} in ({"old"}, {"new"})


def test_an_out_dir_that_holds_the_inputs_is_refused(tiny_run, tmp_path):
    """generate.py --out_dir the run folder, with --overwrite, used to delete base.pt and the data."""
    import generate
    data, base = copy_world(tiny_run, str(tmp_path / "run"))
    before = sorted(os.listdir(tmp_path / "run"))
    with pytest.raises(common.UserError, match="an input of this run"):
        generate.main(["--ckpt", base, "--data_dir", data, "--out_dir", str(tmp_path / "run"), "--overwrite",
                       "--limit", "2", "--k", "1", "--m", "1", "--k_unhinted", "0", "--device", "cpu"])
    assert sorted(os.listdir(tmp_path / "run")) == before and sorted(os.listdir(data)) == sorted(
        os.listdir(tiny_run["data"]))


@pytest.mark.parametrize("case", ["rm report on the test split", "rm out on its pairs", "sft out on its data",
                                  "pretrain out on the corpus", "eval out and summary the same"])
def test_outputs_aimed_at_an_input_are_refused_before_any_work(tiny_run, tmp_path, monkeypatch, case):
    """--report on the data folder's test.jsonl (no --overwrite), --out on the SFT data or on
    the corpus (with --overwrite), --out and --summary the same file: each used to replace
    the input, or the other output (the reward model's --out on its --pairs was refused already)."""
    import evaluate
    from sml import lm_training
    import pretrain
    import train_rm
    import train_sft
    data, base = copy_world(tiny_run, str(tmp_path / "run"))
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"id": f"q{i}", "prompt": "Question: a\nAnswer:", "completion": " 2.",
                                       "chosen": " yes.", "rejected": " no."}) + "\n" for i in range(8)))
    inputs = [os.path.join(data, f) for f in os.listdir(data)] + [str(sft), base]
    originals = {p: open(p, "rb").read() for p in inputs}

    def no_work(*a, **kw):
        raise AssertionError("work started before the outputs were checked")
    for module in (train_rm, lm_training, evaluate):
        monkeypatch.setattr(module, "load_checkpoint", no_work)
    monkeypatch.setattr(pretrain, "train_lm", no_work)
    flags = ["--preset", "tiny", "--max_steps", "2", "--device", "cpu"]
    same = str(tmp_path / "eval.json")
    script, argv, said = {
        "rm report on the test split": (train_rm, ["--init", base, "--pairs", str(sft), "--data_dir", data,
                                                   "--out", str(tmp_path / "rm.pt"),
                                                   "--report", os.path.join(data, "test.jsonl"), *flags],
                                        "is in .*an input folder of this run"),
        "rm out on its pairs": (train_rm, ["--init", base, "--pairs", str(sft), "--data_dir", data, "--out", str(sft),
                                           "--overwrite", *flags], "is also an input"),
        "sft out on its data": (train_sft, ["--init", base, "--data", str(sft), "--data_dir", data, "--out", str(sft),
                                            "--overwrite", *flags], "is also an input"),
        "pretrain out on the corpus": (pretrain, ["--data_dir", data, "--out", os.path.join(data, "corpus.jsonl"),
                                                  "--overwrite", *flags], "is in .*an input folder of this run"),
        "eval out and summary the same": (evaluate, ["eval", "--ckpt", base, "--data_dir", data, "--out", same,
                                                     "--summary", same, "--limit", "2", "--device", "cpu"],
                                          "--out and --summary are the same file")}[case]
    with pytest.raises(common.UserError, match=said):
        script.main(argv)
    assert all(open(p, "rb").read() == content for p, content in originals.items())
    assert not os.path.exists(same)


def tiny_dataset_source(folder):
    """A made-up GSM8K in its public layout (12 train, 2 test questions) and a spec for it with
    no recorded hashes (the public files' would not match)."""
    import dataclasses

    from data.datasets import DATASETS
    os.makedirs(folder)
    for name, n in (("train.jsonl", 12), ("test.jsonl", 2)):
        with open(os.path.join(folder, name), "w") as f:
            f.writelines(json.dumps({"question": f"Ann has {i} figs and buys 1. How many?",
                                     "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}) + "\n" for i in range(n))
    spec = DATASETS["gsm8k"]
    return dataclasses.replace(spec, n_train=12, n_test=2, files=tuple(
        dataclasses.replace(f, sha256=None, git_blob=None, size=None) for f in spec.files))


def test_an_interrupted_dataset_conversion_leaves_nothing_and_is_redone(tmp_path, monkeypatch):
    """prepare.py --tokenizer_from on a dataset, killed after train.jsonl: that file used to be
    left alone in --out_dir, and the rerun refused to replace it without --overwrite."""
    from data import datasets, prepare
    from data.tokenizer import train_tokenizer
    monkeypatch.setitem(datasets.DATASETS, "gsm8k", tiny_dataset_source(str(tmp_path / "src")))
    os.makedirs(tmp_path / "model")
    train_tokenizer(["Ann has 3 figs"] * 5, 270).save(str(tmp_path / "model" / "tokenizer.json"))
    out = tmp_path / "out"
    argv = ["--task", "gsm8k", "--source", str(tmp_path / "src"), "--tokenizer_from", str(tmp_path / "model"),
            "--out_dir", str(out)]
    real = datasets.write_jsonl

    def killed(path, rows):
        if path.endswith("test.jsonl"):
            raise KeyboardInterrupt
        return real(path, rows)
    monkeypatch.setattr(datasets, "write_jsonl", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare.main(argv)
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["model", "src"]
    monkeypatch.setattr(datasets, "write_jsonl", real)
    prepare.main(argv)  # no --overwrite needed
    assert sorted(os.listdir(out)) == ["meta.json", "test.jsonl", "tokenizer.json", "train.jsonl", "val.jsonl"]


def test_a_fresh_start_over_a_finished_checkpoint_removes_it_first(tiny_run, tmp_path, monkeypatch):
    """The finished checkpoint is the stage's done-mark (run.sh skips a stage whose output
    exists): replaced with --overwrite and killed midway, the old one must not say "done"
    beside the new run's log."""
    import pretrain
    out = tmp_path / "base.pt"
    out.write_bytes(open(tiny_run["base"], "rb").read())

    def killed(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(pretrain, "train_lm", killed)
    with pytest.raises(KeyboardInterrupt):
        pretrain.main(["--data_dir", tiny_run["data"], "--out", str(out), "--overwrite", "--preset", "tiny",
                       "--device", "cpu"])
    assert not out.exists()


def test_a_reward_model_rerun_removes_the_old_checkpoint_before_its_report(tiny_run, tmp_path, monkeypatch):
    """rm.pt says the stage is done (run.sh skips it): rerun with --overwrite and killed after
    the report, the old rm.pt used to stay beside the new report."""
    import train_rm
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"q{i}", "prompt": "Question: a\nAnswer:", "chosen": " yes.",
                                         "rejected": " no."}) + "\n" for i in range(8)))
    out, report = tmp_path / "rm.pt", tmp_path / "rm_report.json"
    out.write_text("an earlier run's reward model")

    def killed(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_rm, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        train_rm.main(["--init", tiny_run["base"], "--pairs", str(pairs), "--data_dir", tiny_run["data"],
                       "--out", str(out), "--report", str(report), "--overwrite", "--preset", "tiny",
                       "--max_steps", "2", "--auc_questions", "2", "--auc_samples", "1", "--device", "cpu"])
    assert report.exists() and not out.exists()


def test_an_eval_rerun_removes_the_old_summary_before_its_predictions(tiny_run, tmp_path, monkeypatch):
    """The summary, written last, says an eval stage is done; a rerun with --overwrite killed
    after its predictions used to leave the old summary beside them."""
    import evaluate
    summary, preds = tmp_path / "eval.json", tmp_path / "preds.jsonl"
    summary.write_text('{"accuracy": 0.5}\n')

    def killed(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluate, "write_jsonl", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate.main(["eval", "--ckpt", tiny_run["base"], "--data_dir", tiny_run["data"], "--limit", "2",
                       "--out", str(preds), "--summary", str(summary), "--overwrite", "--device", "cpu"])
    assert not summary.exists()


@pytest.mark.parametrize("resume", [False, True])
def test_a_ppo_rerun_removes_summary_json_before_it_writes(tiny_run, tmp_path, monkeypatch, resume):
    """summary.json says a PPO run is finished: a rerun into its folder, fresh (--overwrite) or
    continued (--resume, e.g. with more --updates), removes it before anything else happens."""
    from dataclasses import asdict

    import train_ppo
    from sml import ppo_run
    from sml.checkpoint import load_checkpoint, save_checkpoint
    out = tmp_path / "ppo"
    out.mkdir()
    (out / "summary.json").write_text('{"best_update": 4}\n')
    model, ckpt = load_checkpoint(tiny_run["base"])  # stands in for a finished run's resume point
    save_checkpoint(str(out / "ppo_last.pt"), model, ckpt["tokenizer"], {"step": 4},
                    extra={"critic_config": asdict(model.config), "critic": {}})

    def killed(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(ppo_run, "checked_config" if resume else "start", killed)  # the first step after the choice
    with pytest.raises(KeyboardInterrupt):
        train_ppo.main(["--sft", tiny_run["base"], "--reward", "exact", "--data_dir", tiny_run["data"],
                        "--out_dir", str(out), "--resume" if resume else "--overwrite", "--preset", "tiny",
                        "--device", "cpu"])
    assert not (out / "summary.json").exists()


def test_an_output_that_cannot_be_written_is_found_before_any_work(tiny_run, tmp_path, monkeypatch):
    """An output under a folder no file can be made in (/proc) was found when the results were
    written, after the training."""
    import train_rm
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "q0", "prompt": "Question: a\nAnswer:", "chosen": " yes.",
                                 "rejected": " no."}) + "\n")

    def no_work(*a, **kw):
        raise AssertionError("work started before the outputs were checked")
    monkeypatch.setattr(train_rm, "load_checkpoint", no_work)
    for out, report in (("/proc/sml-test/rm.pt", None), (str(tmp_path / "rm.pt"), "/proc/sml-test/rm.json")):
        with pytest.raises(common.UserError, match="/proc/sml-test/.*cannot be written"):
            train_rm.main(["--init", tiny_run["base"], "--pairs", str(pairs), "--data_dir", tiny_run["data"],
                           "--out", out, *(["--report", report] if report else []), "--device", "cpu"])


# -----------------------------------------------------------------------------
# One clear line, before any work


def one_line_parse_error(capsys, parse, argv):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    return err


BIG = str(10 ** 12)


@pytest.mark.parametrize("script,argv,said", [
    ("pretrain", ["--lr", "1e300"], "--lr: must be at most 10"),
    ("train_sft", ["--lr", "1e300"], "--lr: must be at most 10"),
    ("train_rm", ["--lr", "11"], "--lr: must be at most 10"),
    ("train_ppo", ["--critic_lr", "1e300"], "--critic_lr: must be at most 10"),
    ("train_sft", ["--val_frac", "1"], "--val_frac: must be less than 1"),
    ("train_rm", ["--val_frac", "1"], "--val_frac: must be less than 1"),
    ("pretrain", ["--seed", str(10 ** 20)], "--seed: must be at most 4294967295"),
    ("prepare", ["--seed", str(10 ** 20)], "--seed: must be at most 4294967295"),
    ("generate", ["--k", BIG], "--k: must be at most 1000"),
    ("generate", ["--k_unhinted", BIG], "--k_unhinted: must be at most 1000"),
    ("evaluate", ["--k", BIG], "--k: must be at most 1000"),
    ("train_rm", ["--auc_samples", BIG], "--auc_samples: must be at most 1000"),
    ("train_ppo", ["--samples_per_question", BIG], "--samples_per_question: must be at most 1000"),
    ("train_ppo", ["--val_samples", BIG], "--val_samples: must be at most 1000"),
    ("bench", ["--questions", BIG], "--questions: must be at most 10000"),
    ("bench", ["--k", BIG], "--k: must be at most 1000"),
    ("bench", ["--hf_layers", BIG], "--hf_layers: must be at most 100"),
    ("bench", ["--batch_size", BIG], "--batch_size: must be at most 4096"),  # its training benchmark's rows
    ("prepare", ["--n_train", BIG], "--n_train: must be at most 1000000"),
    ("prepare", ["--n_test", BIG], "--n_test: must be at most 1000000"),
    ("prepare", ["--n_corpus", BIG], "--n_corpus: must be at most 10000000"),
    ("prepare", ["--max_steps", BIG], "--max_steps: must be at most 100"),
    ("prepare", ["--vocab_size", BIG], "--vocab_size: must be at most 1000000"),
    ("pretrain", ["--n_layer", BIG], "--n_layer: must be at most 100000"),
    ("pretrain", ["--n_embd", BIG], "--n_embd: must be at most 100000"),
    ("pretrain", ["--block_size", BIG], "--block_size: must be at most 100000"),
    ("pretrain", ["--n_layer", "1000", "--n_embd", "10000"], "about 1200.0B parameters; at most 2B"),
    ("pretrain", ["--n_head", "3"], "--n_head 3 does not divide --n_embd 128"),
    ("pretrain", ["--n_head", "200", "--n_embd", "64"], "--n_head 200 does not divide --n_embd 64"),
])
def test_out_of_range_flags_are_one_line_at_parse_time(capsys, script, argv, said):
    """Each used to run: into a traceback (AdamW's overflow, torch's seed), for ever, out of
    memory, into a Rust panic (the tokenizer's vocabulary), or silently wrong (heads of width 0)."""
    import importlib
    module = importlib.import_module({"prepare": "data.prepare", "bench": "tools.bench"}.get(script, script))
    required = {"pretrain": ["--data_dir", "d", "--out", "o.pt"],
                "train_sft": ["--init", "i", "--data", "x", "--data_dir", "d", "--out", "o"],
                "train_rm": ["--init", "i", "--pairs", "p", "--data_dir", "d", "--out", "o"],
                "train_ppo": ["--sft", "s", "--reward", "exact", "--data_dir", "d", "--out_dir", "o"],
                "generate": ["--ckpt", "c", "--data_dir", "d", "--out_dir", "o"],
                "evaluate": ["eval", "--ckpt", "c", "--data_dir", "d"], "prepare": ["--out_dir", "o"],
                "bench": []}[script]
    parse = module.main if script == "bench" else module.get_args  # bench parses in main, first thing
    assert said in one_line_parse_error(capsys, parse, required + argv)


def test_device_cuda_without_cuda_is_one_line(monkeypatch):
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(common.UserError, match=f"--device {device}: CUDA is not available"):
            common.setup_runtime(device)
    with pytest.raises(common.UserError, match="--device gpu: not a device"):
        common.setup_runtime("gpu")


def test_a_meta_json_without_a_task_is_one_line(tiny_run, tmp_path):
    import shutil

    from data import load_world
    from data.jsonl import DataError
    data = tmp_path / "data"
    shutil.copytree(tiny_run["data"], data)
    (data / "meta.json").write_text('{"counts": {}}\n')
    with pytest.raises(DataError, match=r"meta\.json: no 'task' field"):
        load_world(str(data))


def test_files_that_are_not_utf8_are_one_line_naming_the_file_and_line(tmp_path):
    from data.jsonl import DataError, read_jsonl
    bad = tmp_path / "sft.jsonl"
    bad.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n')  # Latin-1
    with pytest.raises(DataError, match=rf"{bad}:2: not UTF-8"):
        read_jsonl(str(bad), {"prompt": str, "completion": str})
    meta = tmp_path / "meta.json"
    meta.write_bytes(b'{"task": "arithm\xe9tic"}\n')
    with pytest.raises(common.UserError, match=rf"{meta}: not UTF-8"):
        common.read_json(str(meta))


def test_a_truncated_eval_summary_is_one_line_naming_it(tmp_path):
    from tools import results
    (tmp_path / "eval_base.json").write_text('{"accuracy": 0.5, "n"')  # cut short
    with pytest.raises(common.UserError, match=r"eval_base\.json:1: not valid JSON"):
        results.main([str(tmp_path)])


def test_a_reward_model_killed_before_its_checkpoint_completes_with_the_same_command(tiny_run, tmp_path,
                                                                                       monkeypatch):
    """Killed between rm_report.json and rm.pt, the same command used to be refused ("already
    exists; pass --overwrite"), and the killed process's rm.pt.tmpPID stayed. The report without
    its checkpoint is stale; temporaries of dead processes go; nothing else is touched."""
    import train_rm
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"q{i}", "prompt": "Question: a\nAnswer:", "chosen": " yes.",
                                         "rejected": " no."}) + "\n" for i in range(8)))
    out, report = tmp_path / "rm.pt", tmp_path / "rm_report.json"
    argv = ["--init", tiny_run["base"], "--pairs", str(pairs), "--data_dir", tiny_run["data"], "--out", str(out),
            "--report", str(report), "--preset", "tiny", "--max_steps", "2", "--auc_questions", "2",
            "--auc_samples", "1", "--device", "cpu"]
    dead = tmp_path / "rm.pt.tmp999999999"  # no process has this id: the killed run's half checkpoint
    mine = tmp_path / f"rm.pt.tmp{os.getpid()}x"  # not a temporary of this script: stays
    other = tmp_path / "notes.json.tmp999999999"  # beside no output of this run: stays

    def killed(*a, **kw):
        dead.write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(train_rm, "save_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            train_rm.main(argv)
    assert report.exists() and not out.exists() and dead.exists()
    mine.write_text("keep")
    other.write_text("keep")
    train_rm.main(argv)  # the same command, no --overwrite
    assert out.exists() and "kept_step" in json.loads(report.read_text())
    assert not dead.exists() and mine.read_text() == "keep" and other.read_text() == "keep"
    # a file at --report that is no report of this script is never replaced without --overwrite
    out.unlink()
    report.write_text('{"my": "notes"}\n')
    with pytest.raises(common.UserError, match="already exists; pass --overwrite"):
        train_rm.main(argv)
    assert report.read_text() == '{"my": "notes"}\n'


def sft_and_pairs(folder):
    rows = [{"id": f"q{i}", "prompt": "Question: a\nAnswer:", "completion": " 2.", "chosen": " yes.",
             "rejected": " no."} for i in range(8)]
    path = os.path.join(folder, "rows.jsonl")
    with open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("case", ["pretrain batch", "pretrain 2B model", "sft batch", "rm batch", "rm micro-batch"])
def test_counts_that_exhaust_memory_are_one_line_naming_the_flag(tiny_run, tmp_path, monkeypatch, case):
    """They ended in the allocator's traceback (or, for a model of 1.96B parameters in a 7 GiB
    process, in one after minutes). Refused before anything is allocated, on what the process
    can have (here said to be 4 GiB)."""
    from sml import lm_training
    import pretrain
    import train_rm
    import train_sft
    monkeypatch.setattr(common, "available_memory", lambda device: (4 * 2**30, "a test's limit"))

    def no_work(*a, **kw):
        raise AssertionError("allocated before the memory check")
    monkeypatch.setattr(pretrain, "GPT", no_work)
    monkeypatch.setattr(lm_training, "configure_optimizer", no_work)
    monkeypatch.setattr(train_rm, "lm_to_scalar", no_work)
    data, base, rows = tiny_run["data"], tiny_run["base"], sft_and_pairs(str(tmp_path))
    out = ["--out", str(tmp_path / "out.pt"), "--device", "cpu"]
    script, argv, flag = {
        "pretrain batch": (pretrain, ["--data_dir", data, "--batch_size", "1000000000000", *out], "--batch_size"),
        "pretrain 2B model": (pretrain, ["--data_dir", data, "--n_layer", "39", "--n_head", "16", "--n_embd", "2048",
                                         *out], "--n_layer 39, --n_embd 2048"),
        "sft batch": (train_sft, ["--init", base, "--data", rows, "--data_dir", data, "--batch_size",
                                  "1000000000000", *out], "--batch_size 1000000000000"),
        "rm batch": (train_rm, ["--init", base, "--pairs", rows, "--data_dir", data, "--batch_size",
                                "1000000000000", *out], "--batch_size 1000000000000"),
        "rm micro-batch": (train_rm, ["--init", base, "--pairs", rows, "--data_dir", data, "--batch_size",
                                      "100000000", "--micro_batch_size", "50000000", *out],
                           "--batch_size 100000000 / --micro_batch_size 50000000")}[case]
    with pytest.raises(common.UserError, match=f"^{flag}.* GiB .*more than the 4.0 GiB .*a test's limit") as e:
        script.main(argv)
    assert "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "out.pt")


def test_what_the_process_can_have_reads_its_address_space_limit(monkeypatch):
    """RLIMIT_AS (ulimit -v) less the address space already taken is one of the limits."""
    import resource
    free, _ = common.available_memory("cpu")
    taken = common._meminfo("VmSize")
    monkeypatch.setattr(resource, "getrlimit", lambda what: (taken + 2**30, resource.RLIM_INFINITY))
    assert common.available_memory("cpu") == (min(free, 2**30), "RLIMIT_AS, the address-space limit of ulimit -v")


def test_an_allocation_that_fails_anyway_is_one_line(monkeypatch, capsys):
    """The estimate is rough: what it lets through and the allocator still refuses is one line,
    not torch's traceback (common.run, every script's error boundary)."""
    import torch
    monkeypatch.setattr(sys, "argv", ["pretrain.py"])
    with pytest.raises(SystemExit) as e:
        common.run(lambda: torch.empty(2**50))  # 4 PiB
    assert str(e.value).startswith("pretrain.py: error: out of memory (") and "\n" not in str(e.value)
    assert "--batch_size" in str(e.value)
    with pytest.raises(RuntimeError, match="something else"):  # other errors are not hidden
        common.run(lambda: (_ for _ in ()).throw(RuntimeError("something else")))


@pytest.mark.slow  # a process with a real address-space limit
def test_a_2b_model_in_a_small_process_is_one_line(tiny_run):
    """pretrain.py --n_layer 39 --n_head 16 --n_embd 2048 (1.96B parameters, under the 2B cap) in
    a 3 GiB process ended in "DefaultCPUAllocator: can't allocate memory"."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
    r = subprocess.run([sys.executable, "pretrain.py", "--data_dir", tiny_run["data"], "--out", "/nonexistent/x.pt",
                        "--n_layer", "39", "--n_head", "16", "--n_embd", "2048", "--device", "cpu"], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=limit)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "RLIMIT_AS" in lines[0], r.stderr
    assert lines[0].startswith("pretrain.py: error: --n_layer 39, --n_embd 2048: training needs about 29.")


@pytest.mark.parametrize("script", ["pretrain", "train_rm"])
def test_a_warmup_longer_than_the_run_is_said(tiny_run, tmp_path, capsys, script):
    """--max_steps 5 --warmup_steps 1000 exited 0 without a word, the learning rate never near --lr."""
    import pretrain
    import train_rm
    data, out = tiny_run["data"], str(tmp_path / "out.pt")
    if script == "pretrain":
        pretrain.main(["--data_dir", data, "--out", out, "--preset", "tiny", "--max_steps", "5",
                       "--warmup_steps", "1000", "--device", "cpu"])
    else:
        train_rm.main(["--init", tiny_run["base"], "--pairs", sft_and_pairs(str(tmp_path)), "--data_dir", data,
                       "--out", out, "--preset", "tiny", "--max_steps", "5", "--warmup_steps", "1000",
                       "--auc_questions", "0", "--device", "cpu"])
    said = [line for line in capsys.readouterr().out.splitlines() if "--warmup_steps" in line]
    assert said == ["note: --warmup_steps 1000 is longer than the run (5 steps): the learning rate rises to 0.5% "
                    "of --lr and never decays"]
