"""
The paper's datasets: the Fine-tune-CoT collection (Ho et al. 2023) of 12 reasoning datasets,
read in their original public layouts and written as our JSONL (id, question, answer,
choices?, rationale?) with the collection's default train/test split.

    python data/prepare.py --task gsm8k --source ../shared/datasets/gsm8k --out_dir runs/gsm8k/data
    python data/prepare.py --task gsm8k --out_dir runs/gsm8k/data     # downloads, verifies, caches

Three layouts (--source is a folder in one of them):
  finetune_cot  KEY.json (a JSON list of {"question", "answer", "rationale"?}) and
                splits/KEY__default.json ({"train": [indices], "test": [indices]})
  gsm8k         GSM8K's train.jsonl / test.jsonl: {"question", "answer"}, the answer a worked
                solution ending in "#### <number>"; the split is the original train/test
  aqua          AQuA's train.json / test.json: JSON lines {"question", "options": ["A)21", ...],
                "rationale", "correct"}; train is the collection's 10,000-question subset of the
                97,467 (numpy RandomState(0).choice, the same indices as Fine-tune-CoT's
                splits/aqua__default.json), test is all 254

Rows: the id is "<key>-<index>", the index in Fine-tune-CoT's numbering (for GSM8K and AQuA:
the train file, then the test file). Answers are written normalized by the task ("43.0" ->
"43", "Yes" -> "yes"). Multiple-choice questions keep their options in the question text
("Answer choices: (A) ..., (B) ...", as the collection writes them; AQuA's are written that
way too) and "choices" holds the letters, so the wrong answers given as hints are the other
letters. "rationale" is the dataset's own worked solution where it has one (GSM8K without its
calculator annotations, AQuA, StrategyQA's facts), ending like ours in "So the answer is X.".

The answer types, their extractors and wrong answers are in data/tasks.py (NumberTask,
ChoiceTask, YesNoTask, LettersTask).
"""

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np

from sml import common
from data.jsonl import DataError, iter_jsonl, write_jsonl
from data.tasks import NUMBER_RE, ChoiceTask, LettersTask, NumberTask, YesNoTask, get_task
from sml.hub import copy_download

# Download sources, pinned to commits so that the recorded sizes and hashes stay true.
# SML_DATASETS_URL replaces the host (tests serve a folder laid out like it on 127.0.0.1).
URL_ENV = "SML_DATASETS_URL"
GITHUB_RAW = "https://raw.githubusercontent.com"
GSM8K_DIR = "openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c/grade_school_math/data"
AQUA_DIR = "google-deepmind/AQuA/26b64ed1f22208c6742f47df547dfd65088ec30d"
# Fine-tune-CoT: the unified dataset files of its first commit, the split files of its main branch
FTCOT_DATA_DIR = "itsnamgyu/reasoning-teacher/5a5104aa6bef57a54972439c44d2d05f1b186f01/dataset"
FTCOT_SPLIT_DIR = "itsnamgyu/reasoning-teacher/a2ca4d28d3bbabbd77106b76d06885d1a5eac0d9/data/split"
CACHE_ENV = "SML_CACHE"  # the download cache: $SML_CACHE/datasets, else ~/.cache/sml/datasets


@dataclass(frozen=True)
class SourceFile:
    name: str  # its path in the source folder
    url_path: str  # its path under the URL base
    split: str  # "train" | "test" | "both": what a test-only conversion can do without
    size: int = None  # bytes, where known
    sha256: str = None  # where known
    git_blob: str = None  # its git blob id (sha1 of "blob <size>\0" + content), where known


@dataclass(frozen=True)
class Dataset:
    key: str  # the collection's key, also the --task name
    layout: str  # "finetune_cot" | "gsm8k" | "aqua"
    n_train: int
    n_test: int
    files: tuple
    train_pool: int = None  # AQuA: the questions of the train file its train subset is drawn from


def finetune_cot(key, n_train, n_test, data_size, data_sha256, split_size, split_sha256):
    return Dataset(key, "finetune_cot", n_train, n_test, (
        SourceFile(f"{key}.json", f"{FTCOT_DATA_DIR}/{key}.json", "both", data_size, data_sha256),
        SourceFile(f"splits/{key}__default.json", f"{FTCOT_SPLIT_DIR}/{key}__default.json", "both",
                   split_size, split_sha256)))


# Sizes and sha256 of the public files, measured on copies whose git blob ids equal those in
# the public repositories at the pinned commits. AQuA's train.json (97,467 questions) was not
# at hand: its size and sha256 are unknown and not recorded; it is verified by the git blob id
# that AQuA's repository tree gives for it at the pinned commit.
DATASETS = {d.key: d for d in [
    finetune_cot("single_eq", 356, 152, 104489, "bf023987244f4bdb5ca08e7abfca828f52da463c249623d93cdc72656249be75",
                 6537, "d46feb082615045ea0909c5ed062ef85f29ba95223cbca39e0bfbb1ad1b5e1b7"),
    finetune_cot("addsub", 276, 119, 84449, "f9b2905cb06a7cbfc28033b6af3b0d5785106886fb77569b273b1bc1c6a215de",
                 5068, "1a6f70a39554084978a44439db0b661b039ce4dd2c09572d2ff9f44f5ef668d0"),
    finetune_cot("multiarith", 420, 180, 130525, "bb6d5cfeafda3faf5d3e32988316bbb8af5a6b4bf2a0eeefe6351b810dac087b",
                 7733, "f2f47aeb18026cb3d1909b38b8828693aeaf624af3282d8021dbee32008a1409"),
    Dataset("gsm8k", "gsm8k", 7473, 1319, (
        SourceFile("train.jsonl", f"{GSM8K_DIR}/train.jsonl", "train", 4166206,
                   "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"),
        SourceFile("test.jsonl", f"{GSM8K_DIR}/test.jsonl", "test", 749738,
                   "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"))),
    Dataset("aqua", "aqua", 10000, 254, (
        SourceFile("train.json", f"{AQUA_DIR}/train.json", "train",
                   git_blob="a805bddefde8d70fdb66ff7ab85a1999bdc3eece"),
        SourceFile("test.json", f"{AQUA_DIR}/test.json", "test", 130192,
                   "de41581881ef95c5588c44ddc701c77fd480839241dd422a0d181262af24520c")),
            train_pool=97467),
    finetune_cot("svamp", 700, 300, 224440, "fc570a71363b4be61af178b50937a5ecbc6ca1d8f88aad0830a0f945f5336cf8",
                 12933, "fae6cc3a5c50952da78b66991182be507c8585e6a59954e03bd997488608ab1f"),
    finetune_cot("date_understanding", 258, 111, 112000, "2e4cdd8056f5b0043f4de6b50a569b8d0563e6b217c75aecf4496185baf0843b",
                 4730, "5fbfdd1f0db941dce6accd7f43316eda2a2254f3a80f9a3a045f5a19bfb04578"),
    finetune_cot("tracking_shuffled_objects", 525, 225, 429865, "55050d34ebdf327fe3471deecb70c86ed300002f05f43e0f509763203323c09b",
                 9683, "6f2a4637d6e0692297e5eaa66bf53518445e1fbae1d94f28daae0040b7a1156a"),
    finetune_cot("last_letter_concatenation", 350, 150, 76376, "6a01f778984809496958067b39f88d3c60fa820787ef837d12f90bd3d3a909bb",
                 6433, "a5f7ffe4a1a1e0181cbd9d00259d34f980c0073efe8a3ed25f69433cfb74a3a4"),
    finetune_cot("coin_flip", 350, 150, 128552, "041043a9fa924f3de110a88881cd13ea461ca3c51836671fe5df3e8789dfc653",
                 6433, "a5f7ffe4a1a1e0181cbd9d00259d34f980c0073efe8a3ed25f69433cfb74a3a4"),
    finetune_cot("commonsense_qa", 9741, 1221, 2422798, "95db33ed760423cd37b81dfe44ad7c57dfdc2aa9ceb85d55223a5cf5d6845973",
                 153363, "4cec2867bc6bc201eaa5fc96844870d85356f32b4fa652c75b8b5e42b9fedc76"),
    finetune_cot("strategy_qa", 1603, 687, 729833, "0a1cbb93895d24ed12b2b2df8ade16ea06307beb0c5fb6a4b42ea87e433c01fd",
                 30993, "0857d069a693a83c20466971b7e522b3c90c3258146c9b9461df98e4d2468de1"),
]}

LAYOUTS = {  # what a --source folder holds, for error messages
    "finetune_cot": "Fine-tune-CoT's {key}.json and splits/{key}__default.json",
    "gsm8k": "GSM8K's train.jsonl and test.jsonl",
    "aqua": "AQuA's train.json and test.json",
}


# -----------------------------------------------------------------------------
# Reading the public layouts (every problem is a DataError naming the file, and the line or
# question where there is one)

def read_json(path):
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def read_json_lines(path, fields):
    """[(line number, row)] of a JSON-lines file whose rows have `fields`."""
    rows = []
    for lineno, row in iter_jsonl(path):
        missing = [k for k in fields if not isinstance(row, dict) or k not in row]
        if missing:
            raise DataError(f"{path}:{lineno}: missing field '{missing[0]}'")
        rows.append((lineno, row))
    return rows


def read_finetune_cot(spec, source, test_only):
    """(train, test): lists of (index, where, question, answer, rationale)."""
    data_path = os.path.join(source, f"{spec.key}.json")
    split_path = os.path.join(source, "splits", f"{spec.key}__default.json")
    data, split = read_json(data_path), read_json(split_path)
    if not isinstance(data, list):
        raise DataError(f"{data_path}: expected a JSON list of questions")
    if not (isinstance(split, dict) and all(isinstance(split.get(s), list) for s in ("train", "test"))):
        raise DataError(f"{split_path}: expected {{\"train\": [indices], \"test\": [indices]}}")
    seen = set()
    for s in ("train", "test"):
        for i in split[s]:
            if not isinstance(i, int) or not 0 <= i < len(data):
                raise DataError(f"{split_path}: {s} index {i!r} is not a question of {data_path} "
                                f"(it has {len(data)})")
            if i in seen:
                raise DataError(f"{split_path}: question {i} is listed twice")
            seen.add(i)

    def rows(indices):
        out = []
        for i in indices:
            where = f"{data_path}: question {i}"
            q = data[i]
            if not isinstance(q, dict) or not isinstance(q.get("question"), str) or "answer" not in q:
                raise DataError(f"{where}: expected an object with 'question' and 'answer'")
            out.append((i, where, q["question"], str(q["answer"]), q.get("rationale")))
        return out
    return ([] if test_only else rows(split["train"])), rows(split["test"])


def gsm8k_solution(where, solution):
    """GSM8K's worked solution -> (rationale without calculator annotations, final answer)."""
    m = re.search(r"\n?####\s*(.+?)\s*$", solution)
    if not m:
        raise DataError(f"{where}: the answer has no '#### <number>' line")
    steps = re.sub(r"<<[^>]*>>", "", solution[:m.start()])  # "$<<9*2=18>>18" -> "$18"
    return " ".join(line.strip() for line in steps.splitlines() if line.strip()), m.group(1)


def read_gsm8k(spec, source, test_only):
    out = []
    for name in ("train.jsonl", "test.jsonl"):
        path = os.path.join(source, name)
        if test_only and name == "train.jsonl":
            out.append([])
            continue
        rows, offset = read_json_lines(path, ("question", "answer")), sum(len(o) for o in out)
        split = []
        for k, (lineno, row) in enumerate(rows):
            where = f"{path}:{lineno}"
            rationale, answer = gsm8k_solution(where, row["answer"])
            split.append((offset + k, where, row["question"], answer, rationale))
        out.append(split)
    return out[0], out[1]


def aqua_train_subset(pool, n, seed=0):
    """The indices of AQuA's train questions in the collection's subset: numpy's legacy
    RandomState (its stream is frozen by numpy's compatibility policy), as Fine-tune-CoT drew
    them; sorted, the order of its split file."""
    return sorted(np.random.RandomState(seed).choice(pool, n, replace=False).tolist())


def aqua_question(where, row):
    """AQuA's question and options ("A)21") -> the collection's question text, answer letter."""
    options = row["options"]
    letters = "ABCDEFGHIJ"[:len(options)] if isinstance(options, list) else ""
    texts = []
    for letter, option in zip(letters, options):
        m = re.fullmatch(r"\s*\(?([A-J])\)\s*(.*)", option, re.DOTALL) if isinstance(option, str) else None
        if not m or m.group(1) != letter:
            raise DataError(f"{where}: option {option!r} should start with '{letter})'")
        texts.append(f"({letter}) {m.group(2).strip()}")
    if len(texts) < 2 or row["correct"] not in letters:
        raise DataError(f"{where}: expected options A), B), ... and the correct one among them, "
                        f"got {len(texts)} options and {row['correct']!r}")
    return f"{row['question'].strip()} Answer choices: {', '.join(texts)}.", row["correct"]


def read_aqua(spec, source, test_only):
    train_path, test_path = os.path.join(source, "train.json"), os.path.join(source, "test.json")
    if not test_only and not os.path.exists(train_path):
        raise DataError(f"{train_path}: no such file (AQuA's {spec.train_pool:,}-question train file; "
                        f"download it from github.com/google-deepmind/AQuA, or pass --test_only "
                        f"to convert the test split alone)")
    fields = ("question", "options", "rationale", "correct")

    def rows(path, offset):
        out = []
        for index, (lineno, row) in enumerate(read_json_lines(path, fields)):
            where = f"{path}:{lineno}"
            question, answer = aqua_question(where, row)
            out.append((offset + index, where, question, answer, row["rationale"]))
        return out
    train = []
    if not test_only:
        train = rows(train_path, 0)
        if len(train) != spec.train_pool:
            raise DataError(f"{train_path}: {len(train):,} questions, expected {spec.train_pool:,} "
                            f"(the train subset is drawn by index: another file draws other questions)")
        train = [train[i] for i in aqua_train_subset(spec.train_pool, spec.n_train)]
    return train, rows(test_path, spec.train_pool)


READERS = {"finetune_cot": read_finetune_cot, "gsm8k": read_gsm8k, "aqua": read_aqua}


def make_row(task, key, index, where, question, answer, rationale):
    """Our JSONL row, with the gold answer checked against the task's answer type."""
    gold = task.normalize(answer)
    row = {"id": f"{key}-{index}", "question": question, "answer": gold}
    if isinstance(task, NumberTask) and not NUMBER_RE.fullmatch(gold):
        raise DataError(f"{where}: answer {answer!r} is not a number")
    if isinstance(task, YesNoTask) and gold not in ("yes", "no"):
        raise DataError(f"{where}: answer {answer!r} is not yes or no")
    if isinstance(task, LettersTask) and not re.fullmatch(LettersTask.WORD, gold):
        raise DataError(f"{where}: answer {answer!r} is not a string of letters")
    if isinstance(task, ChoiceTask):
        options = question.split("Answer choices:")[-1] if "Answer choices:" in question else ""
        row["choices"] = re.findall(r"\(([A-J])\)", options)
        if gold not in row["choices"]:
            found = ", ".join(row["choices"]) or "none after 'Answer choices:'"
            raise DataError(f"{where}: answer {answer!r} is not one of the answer choices ({found})")
    if isinstance(rationale, str) and rationale.strip():
        row["rationale"] = task.finish([rationale.strip()], gold)
    return row


def convert(spec, source, test_only=False):
    """(train rows, test rows) of a dataset from a folder in its public layout, with exactly the
    collection's split sizes (train is [] when test_only)."""
    if not os.path.isdir(source):
        raise DataError(f"{source}: no such folder (expected {LAYOUTS[spec.layout].format(key=spec.key)})")
    task = get_task(spec.key)
    train, test = READERS[spec.layout](spec, source, test_only)
    splits = [("test", test, spec.n_test)] + ([] if test_only else [("train", train, spec.n_train)])
    for name, rows, n in splits:
        if len(rows) != n:
            raise DataError(f"{source}: {len(rows):,} {name} questions of {spec.key}, expected {n:,} "
                            f"(not the collection's files?)")
    return ([make_row(task, spec.key, *r) for r in train],
            [make_row(task, spec.key, *r) for r in test])


# -----------------------------------------------------------------------------
# Download, verify, cache (standard library only)

def default_cache_dir():
    return os.path.join(os.environ.get(CACHE_ENV) or os.path.expanduser("~/.cache/sml"), "datasets")


def file_hashes(path):
    """(sha256, git blob id) of a file."""
    h256, hblob = hashlib.sha256(), hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h256.update(chunk)
            hblob.update(chunk)
    return h256.hexdigest(), hblob.hexdigest()


def file_problem(path, size=None, sha256=None, git_blob=None):
    """What is wrong with a file against what is known of it (None: nothing). Only what is
    known is checked; no hash is ever guessed. A recorded hash is the check that refuses a
    file, and is named even when the size already differs (the size is said beside it)."""
    n = os.path.getsize(path)
    wrong_size = f"{n:,} bytes, expected {size:,}" if size is not None and n != size else None
    if sha256 is not None or git_blob is not None:
        got_sha256, got_blob = file_hashes(path)
        for kind, got, recorded in (("sha256", got_sha256, sha256), ("git blob id", got_blob, git_blob)):
            if recorded is not None and got != recorded:
                return f"{kind} {got}, expected {recorded}" + (f" ({wrong_size})" if wrong_size else "")
    return wrong_size


def download_file(url, dest, size=None, sha256=None, git_blob=None, timeout=60):
    """Download url to dest and verify it; a file that fails is not kept. The bytes go to a
    temporary beside dest (common.atomic_file), so a killed download leaves no file under
    dest's name, and the next download sweeps what killed ones left. A host that goes silent
    or sends too slowly ever to finish is an error after `timeout` s (hub.copy_download)."""
    with common.atomic_file(dest, "wb") as f:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                copy_download(response, f, timeout, limit=size)
        except (urllib.error.URLError, OSError) as e:  # offline, refused, 404, timed out, stalled
            reason = getattr(e, "reason", None) or e
            raise DataError(f"could not download {url} ({reason})") from None
        f.flush()
        problem = file_problem(f.name, size, sha256, git_blob)
        if problem:
            raise DataError(f"{url}: {problem}: not the expected file, not kept")


def fetch(spec, cache_dir=None, test_only=False):
    """The source folder of a dataset in the download cache, fetched and verified where a file
    is missing or does not verify. Returns the folder."""
    base = os.environ.get(URL_ENV, GITHUB_RAW).rstrip("/")
    folder = os.path.join(cache_dir or default_cache_dir(), spec.layout)
    for f in spec.files:
        if test_only and f.split == "train":
            continue
        dest = os.path.join(folder, f.name)
        cached_problem = file_problem(dest, f.size, f.sha256, f.git_blob) if os.path.exists(dest) else "missing"
        if cached_problem is None:
            continue
        try:
            download_file(f"{base}/{f.url_path}", dest, f.size, f.sha256, f.git_blob)
        except DataError as e:
            if str(e).startswith("could not download"):  # offline: say how to go on without it
                cached = ("" if cached_problem == "missing"
                          else f"; the cached {dest} is not the recorded file ({cached_problem})")
                raise DataError(f"{e}{cached}; to convert a copy you have, pass --source DIR (a folder with "
                                f"{LAYOUTS[spec.layout].format(key=spec.key)})") from None
            raise
    return folder


def check_source(spec, source, test_only=False, allow_modified=False):
    """The names of --source files that are not the recorded public ones (by sha256, or by git
    blob id where only that is recorded). Unless allow_modified, such a file is refused: a
    changed answer in a test file would otherwise pass silently into the results."""
    modified = []
    for f in spec.files:
        path = os.path.join(source, f.name)
        if (test_only and f.split == "train") or not os.path.isfile(path) or (f.sha256 or f.git_blob) is None:
            continue  # not read, or nothing recorded to check it against (a missing file is convert's to report)
        got_sha256, got_blob = file_hashes(path)
        kind, got, recorded = ("sha256", got_sha256, f.sha256) if f.sha256 else ("git blob id", got_blob, f.git_blob)
        if got != recorded:
            if not allow_modified:
                raise DataError(f"{path}: {kind} {got}, but the public file's recorded {kind} is {recorded}: a "
                                f"modified copy? Pass --allow_modified_source to convert it anyway")
            modified.append(f.name)
    return modified


def prepare(key, out_dir, source=None, cache_dir=None, test_only=False, tokenizer_json=None,
            tokenizer_from=None, n_val=None, allow_modified_source=False):
    """Convert one dataset into out_dir: train.jsonl (unless test_only), test.jsonl, meta.json.
    From --source (its files checked against the recorded hashes: check_source), else from the
    download cache (fetched where needed). With tokenizer_json
    (a pretrained model's) also tokenizer.json and val.jsonl: the last n_val train questions
    (None: a tenth, at most 500), held out of rationale collection, SFT and the reward model
    for PPO's checkpoint choice; train.jsonl keeps the rest. Returns meta."""
    if key not in DATASETS:
        raise DataError(f"unknown dataset '{key}' (choose from: {', '.join(DATASETS)})")
    spec = DATASETS[key]
    downloaded = source is None
    modified = [] if downloaded else check_source(spec, source, test_only, allow_modified_source)
    if downloaded:
        source = fetch(spec, cache_dir, test_only)
    train, test = convert(spec, source, test_only)
    counts = {"train": len(train), "test": len(test)}
    val = None
    if tokenizer_json is not None and not test_only:
        n_val = min(500, len(train) // 10) if n_val is None else n_val
        if not 0 < n_val < len(train):
            raise DataError(f"--n_val {n_val}: the validation split needs 1 to {len(train) - 1} of "
                            f"{key}'s {len(train)} train questions")
        train, val = train[:-n_val], train[-n_val:]
        counts = {"train": len(train), "val": len(val), "test": len(test)}
    os.makedirs(out_dir, exist_ok=True)
    for name, content in (("train.jsonl", None if test_only else train), ("val.jsonl", val),
                          ("tokenizer.json", tokenizer_json)):
        stale = os.path.join(out_dir, name)
        if content is None and os.path.exists(stale):  # from an earlier conversion: would pass for this one's
            os.remove(stale)
    if not test_only:
        write_jsonl(os.path.join(out_dir, "train.jsonl"), train)
    if val is not None:
        write_jsonl(os.path.join(out_dir, "val.jsonl"), val)
    write_jsonl(os.path.join(out_dir, "test.jsonl"), test)
    if tokenizer_json is not None:
        common.write_text(os.path.join(out_dir, "tokenizer.json"), tokenizer_json)
    meta = {"task": key, "answer_type": get_task(key).answer_kind, "source": os.path.abspath(source),
            "downloaded": downloaded, "test_only": test_only, "counts": counts}
    if tokenizer_from is not None:
        meta["tokenizer_from"] = tokenizer_from
    if modified:
        meta["modified_source_files"] = modified
    common.write_json(os.path.join(out_dir, "meta.json"), meta)
    return meta
