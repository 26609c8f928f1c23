"""
One convention for what a stage writes, so that a run killed at any moment is continued
(--resume), redone by the same command, or refused in one line, and never taken for finished:

  done          written last: the stage is finished (run.sh skips a stage whose output exists);
                removed first when a run starts afresh into it
  resume_point  what --resume continues exactly (optimizer state included)
  log           one JSON row per step; a resumed run keeps the rows up to its resume point
  best          the chosen model so far
Every output is checked before any work: none is an input, and a finished one is replaced only
with --resume or --overwrite.

    run = RunDir.for_checkpoint(out)       # pretrain/SFT: out, out.partial, out.best, out.log.jsonl
    run = RunDir.in_folder(out_dir, "summary.json", resume_point="ppo_last.pt", best="ppo_best.pt",
                           log="ppo_log.jsonl", what="a PPO run")                      # PPO
    run = RunDir(out, beside={"--report": report}, report_keys=KEYS)  # train_rm: no resume point
    run = RunDir.whole_folder(out_dir, OUTPUTS)   # generate: `with run.write() as tmp:` fills it

    source = run.check(inputs, overwrite, resume)   # before any work; what to resume from, or None
    ... load the model from `source`, or the stage's initial one ...
    run.start(resuming=source is not None)          # the done marker goes (kept if it is the model resumed)
    log = run.open_log("step", start_step if source else None)
    ... every eval: save run.best, run.resume_point; the stage's own checkpoint format ...
    run.finish(lambda path: write_it(path))         # or run.finish(): run.best takes the done name
The layout of each stage's files: docs/formats.md.
"""

import contextlib
import json
import os
from dataclasses import dataclass, field

from sml import common
from data.jsonl import open_log


@dataclass
class RunDir:
    done: str  # the finished marker: the model itself (done_is_model) or a summary beside it
    resume_point: str | None = None
    best: str | None = None
    log: str | None = None
    done_is_model: bool = True  # a finished model can be resumed (trained further), and replaces the resume point
    folder: str | None = None  # a stage that writes into a folder (PPO's --out_dir, generate's)
    outputs: tuple | None = None  # a folder written as a whole: its file names (nothing else may be there)
    what: str | None = None  # a folder's refusal names what it holds ("a PPO run")
    flag: str = "--out"  # the done marker's flag, named when two outputs are the same file
    beside: dict = field(default_factory=dict)  # {flag: path} written before the done marker (None: not asked)
    report_keys: set | None = None  # a JSON file beside holding these keys is ours (a stale report)

    @classmethod
    def for_checkpoint(cls, out):
        """A stage whose output is one checkpoint (pretraining, SFT): `out` when finished,
        `out`.partial the resume point, `out`.best the chosen weights, `out` - .pt + .log.jsonl."""
        return cls(out, out + ".partial", out + ".best", os.path.splitext(out)[0] + ".log.jsonl")

    @classmethod
    def in_folder(cls, out_dir, done, resume_point=None, best=None, log=None, what="a run"):
        """A stage that writes named files into out_dir (PPO); `done` is a summary written last,
        removed on every start, resumed or fresh. A finished run keeps its resume point, which
        a longer run continues. Other files in out_dir are left alone."""
        join = (lambda name: os.path.join(out_dir, name) if name else None)
        return cls(join(done), join(resume_point), join(best), join(log), done_is_model=False, folder=out_dir,
                   what=what)

    @classmethod
    def whole_folder(cls, out_dir, outputs, done="stats.json"):
        """A stage whose folder appears all at once (generate.py): `outputs` are its only files."""
        return cls(os.path.join(out_dir, done), done_is_model=False, folder=out_dir, outputs=tuple(outputs))

    # -------------------------------------------------------------------------
    # Before any work

    def check(self, inputs=(), overwrite=False, resume=False):
        """Refuse (one line) an output that is an input, cannot be written, or holds a run that
        neither --resume nor --overwrite lets us touch. Returns the file --resume continues:
        the resume point, or a finished model to train further; None: start afresh."""
        if self.outputs is not None:
            common.check_output(self.folder, overwrite, inputs, folder=True, outputs=list(self.outputs))
            return None
        if self.folder:
            common.check_output(self.folder, True, inputs, folder=True)
        else:
            stale = [path for path in self.beside.values() if self.is_stale_report(path)]
            common.check_outputs({self.flag: self.done, **self.beside},
                                 overwrite or bool(stale) or self.resume_point is not None, inputs)
            with contextlib.suppress(FileNotFoundError):  # another process (DDP) may sweep one first
                common.sweep_dead_temporaries([self.done, *self.beside.values()])
            for path in stale:
                print(f"{path}: a report without its checkpoint (a run stopped before {self.done}); it is replaced")
        # a run that can be resumed: its resume point (a folder) or its finished model (a file)
        guard = self.resume_point if self.folder or not self.resume_point else self.done
        if guard and os.path.exists(guard) and not (resume or overwrite):
            raise common.UserError(f"{self.folder} already holds {self.what}; pass --resume or --overwrite"
                                   if self.folder else f"{self.done} already exists; pass --resume to continue "
                                   f"it or --overwrite to replace it")
        return self.resume_source() if resume else None

    def resume_source(self):
        """What --resume continues: the resume point, else a finished model; None: nothing."""
        for path in (self.resume_point, self.done if self.done_is_model and self.resume_point else None):
            if path and os.path.exists(path):
                return path
        return None

    def is_stale_report(self, path):
        """A report of this stage without its done marker: a run killed between the two. The
        rerun replaces it without --overwrite; a file there that is not such a report is never
        touched."""
        if not self.report_keys or not path or os.path.exists(self.done) or not os.path.isfile(path):
            return False
        try:
            with open(path, encoding="utf-8") as f:
                report = json.load(f)
        except (OSError, ValueError):
            return False
        return isinstance(report, dict) and self.report_keys <= report.keys()

    # -------------------------------------------------------------------------
    # The run

    def start(self, resuming=False):
        """The done marker goes before the run does anything: a run killed midway must not leave
        an earlier run's saying "done". A finished model being trained further stays until its
        successor replaces it."""
        if resuming and self.done_is_model:
            return
        with contextlib.suppress(FileNotFoundError):  # another DDP process may remove it first
            os.remove(self.done)

    def open_log(self, key="step", upto=None):
        """The log opened for append_row: empty (upto None), or a resumed run's rows with
        row[key] <= upto (its resume point's step), so that it ends as an uninterrupted run's."""
        return open_log(self.log, None if upto is None else (lambda row: row[key] <= upto))

    def finish(self, write=None):
        """The done marker, written last: write(path) writes it; without `write` the best model
        takes its name. A finished model replaces the resume point, which is removed then."""
        if write is None:
            os.replace(self.best, self.done)
        else:
            write(self.done)
        if self.done_is_model and self.resume_point and os.path.exists(self.resume_point):
            os.remove(self.resume_point)  # our own unfinished checkpoint, now finished

    def write(self):
        """A folder written as a whole: a context manager yielding the temporary folder to fill."""
        return common.atomic_folder(self.folder, list(self.outputs))
