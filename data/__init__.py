"""The built-in reasoning world and the paper's datasets: tasks, the tokenizer, JSONL I/O, and
load_world, what every script opens a data folder with."""

import os

from sml.common import read_json
from data.jsonl import DataError, load_dataset
from data.tasks import get_task
from data.tokenizer import load_tokenizer


def load_world(data_dir, task_name=None):
    """(tokenizer, task) of a data folder made by data/prepare.py; the task is the one its
    meta.json names unless task_name is given. Raises DataError with the path on bad input."""
    tok = load_tokenizer(os.path.join(data_dir, "tokenizer.json"))
    if task_name is None:
        meta_path = os.path.join(data_dir, "meta.json")
        if not os.path.exists(meta_path):
            raise DataError(f"{meta_path}: no such file (pass --task)")
        meta = read_json(meta_path)
        if not isinstance(meta, dict) or not isinstance(meta.get("task"), str):
            raise DataError(f"{meta_path}: no 'task' field (the task's name, as data/prepare.py writes it)")
        task_name = meta["task"]
    return tok, get_task(task_name)


def load_val_split(data_dir, limit=0, who="this script"):
    """The validation split (data/prepare.py writes it, held out of collection, SFT and the reward
    model), its first `limit` questions (0: all): every decision a run makes reads it, never the
    test split. `who` names what needs it, in the error a missing file gives."""
    path = os.path.join(data_dir, "val.jsonl")
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file; {who} reads the validation split that data/prepare.py writes")
    rows = load_dataset(path)
    return rows[:limit] if limit else rows
