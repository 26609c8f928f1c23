"""JSONL files the scripts share: validated reading (errors say file:line: what is wrong)
and atomic writing."""

import json
import os


class DataError(Exception):
    pass


def read_jsonl(path, required, optional=None):
    """Rows of a JSONL file; every row must be an object with the `required` fields (name ->
    type) and may have the `optional` ones. Blank lines are skipped."""
    optional = optional or {}
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for name, typ in {**required, **optional}.items():
                if name not in row:
                    if name in required:
                        raise DataError(f"{path}:{lineno}: missing field '{name}'")
                elif not isinstance(row[name], typ) and not (name in optional and row[name] is None):
                    raise DataError(f"{path}:{lineno}: field '{name}' should be "
                                    f"{typ.__name__}, got {type(row[name]).__name__}")
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def load_dataset(path):
    """A dataset split: id, question, answer; optional gold rationale and choices."""
    rows = read_jsonl(path, {"id": str, "question": str, "answer": str},
                      {"rationale": str, "choices": list})
    seen = set()
    for lineno, row in enumerate(rows, 1):
        if row["id"] in seen:
            raise DataError(f"{path}: duplicate id {row['id']!r}")
        seen.add(row["id"])
    return rows


def load_sft(path):
    return read_jsonl(path, {"prompt": str, "completion": str})


def load_pairs(path):
    return read_jsonl(path, {"prompt": str, "chosen": str, "rejected": str})


def write_jsonl(path, rows):
    """Write to a temporary name, then rename: a reader never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
