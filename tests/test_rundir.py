"""RunDir, the one run-folder convention: a checkpoint stage's and a folder stage's (PPO's) files,
without a model (the stages' own tests run them through their scripts)."""

import json
import os

import pytest

from data.jsonl import append_row
from sml import common
from sml.rundir import RunDir


def ppo_like(out_dir):
    return RunDir.in_folder(str(out_dir), "summary.json", resume_point="ppo_last.pt", best="ppo_best.pt",
                            log="ppo_log.jsonl", what="a PPO run")


def rows(path):
    return [json.loads(line) for line in open(path)]


def test_a_folder_run_resumes_from_its_resume_point_and_keeps_it_when_finished(tmp_path):
    out = tmp_path / "ppo"
    run = ppo_like(out)
    assert run.check([], resume=True) is None  # nothing to continue: a fresh start
    out.mkdir()
    run.start()
    log = run.open_log("update")
    for update in range(3):
        append_row(log, {"update": update})
    log.close()
    (out / "ppo_last.pt").write_text("update 1")
    run.finish(lambda path: common.write_json(path, {"best_update": 1}))
    assert (out / "summary.json").exists() and (out / "ppo_last.pt").exists()  # a longer run continues it
    with pytest.raises(common.UserError, match=r"ppo already holds a PPO run; pass --resume or --overwrite$"):
        run.check([])
    assert run.check([], resume=True) == str(out / "ppo_last.pt")
    run.start(resuming=True)  # resumed or not, the run is no longer finished
    assert not (out / "summary.json").exists()
    run.open_log("update", upto=1).close()
    assert rows(run.log) == [{"update": 0}, {"update": 1}]
    assert run.check([], overwrite=True) is None


def test_a_checkpoint_run_resumes_a_finished_model_and_a_fresh_start_removes_it(tmp_path):
    out = str(tmp_path / "base.pt")
    run = RunDir.for_checkpoint(out)
    assert (run.resume_point, run.best, run.log) == (out + ".partial", out + ".best", str(tmp_path / "base.log.jsonl"))
    with open(run.best, "w") as f:
        f.write("chosen")
    with open(run.resume_point, "w") as f:
        f.write("step 2")
    assert run.check([], resume=True) == run.resume_point
    run.finish()  # the best model takes the finished name; the resume point goes
    assert open(out).read() == "chosen" and not os.path.exists(run.resume_point)
    with pytest.raises(common.UserError, match=r"base\.pt already exists; pass --resume to continue it or "
                                               r"--overwrite to replace it$"):
        run.check([])
    assert run.check([], resume=True) == out  # a finished model, trained further
    run.start(resuming=True)
    assert os.path.exists(out)  # it stays until its successor replaces it
    with pytest.raises(common.UserError, match="is also an input"):
        run.check([out], overwrite=True)
    assert run.check([], overwrite=True) is None
    run.start()
    assert not os.path.exists(out)
