"""JSONL files the scripts share: validated reading (errors say file:line: what is wrong)
and atomic writing."""

import json
import os

from sml.common import UserError, atomic_file


class DataError(UserError):
    """A missing or malformed data file; the message names the file and line."""


def _is(value, typ):
    """isinstance that also understands list[str]."""
    if getattr(typ, "__origin__", None) is list:
        return isinstance(value, list) and all(isinstance(v, typ.__args__[0]) for v in value)
    return isinstance(value, typ)


def iter_jsonl(path):
    """(line number, parsed value) for every non-blank line; a missing file, or a line that is
    not UTF-8 or not JSON, is a DataError naming the file and line."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:  # decoded line by line, so that a bad byte is reported with its line
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {e.start} of the line)") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def read_rows(path):
    """Every value of a JSON-lines file, unchecked: a log or a record of timings (a data file is
    read with read_jsonl, which checks its fields)."""
    return [row for _, row in iter_jsonl(path)]


def read_jsonl(path, required, optional=None, unique=None):
    """Rows of a JSONL file; every row must be an object with the `required` fields (name ->
    type, e.g. str or list[str]) and may have the `optional` ones (which may also be null).
    `unique` names a field no two rows may share. Blank lines are skipped."""
    optional = optional or {}
    rows, first_seen = [], {}
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for name, typ in {**required, **optional}.items():
            if name not in row:
                if name in required:
                    raise DataError(f"{path}:{lineno}: missing field '{name}'")
            elif not _is(row[name], typ) and not (name in optional and row[name] is None):
                raise DataError(f"{path}:{lineno}: field '{name}' should be "
                                f"{typ if hasattr(typ, '__origin__') else typ.__name__}, got {type(row[name]).__name__}")
        if unique is not None:
            key = row[unique]
            if key in first_seen:
                raise DataError(f"{path}:{lineno}: duplicate {unique} {key!r} "
                                f"(first on line {first_seen[key]})")
            first_seen[key] = lineno
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def load_dataset(path):
    """A dataset split: id, question, answer; optional gold rationale and choices."""
    return read_jsonl(path, {"id": str, "question": str, "answer": str},
                      {"rationale": str, "choices": list[str]}, unique="id")


def load_sft(path):
    return read_jsonl(path, {"prompt": str, "completion": str})


def load_pairs(path):
    return read_jsonl(path, {"prompt": str, "chosen": str, "rejected": str})


def write_jsonl(path, rows):
    """Write to a temporary name, then rename: a reader never sees half a file."""
    with atomic_file(path) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def open_log(path, keep=None):
    """A training run's log, one JSON row per step, opened for append_row. A fresh run (keep
    None) starts it empty; a resumed run keeps the rows of the existing log that keep(row)
    accepts (those up to the checkpoint it resumes from) and drops the rest, so that its log
    ends up as an uninterrupted run's. The log is rewritten atomically, like every output."""
    kept = [row for row in read_rows(path) if keep(row)] if keep is not None and os.path.exists(path) else []
    write_jsonl(path, kept)
    return open(path, "a")


def append_row(log, row):
    """One row of an open log, flushed at once: a reader (or a run killed now) sees every step
    that finished."""
    log.write(json.dumps(row) + "\n")
    log.flush()
