"""The paper's datasets (data/datasets.py) and their answer types (data/tasks.py): converters of
the public layouts with the collection's exact split, extractors for answers as real models
write them, wrong answers to give as hints, and the download path against a loopback server.

The shared copies (../shared/datasets beside the clone, or $SML_DATASETS) are used where
present; small fixtures of our own in each layout always run, so a clone without them still
tests the converters."""

import dataclasses
import functools
import hashlib
import http.server
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from sml.common import UserError

from data import datasets
from data.datasets import DATASETS, aqua_train_subset, convert, download_file, fetch, file_problem
from data.jsonl import DataError, load_dataset
from data.prepare import main as prepare_main
from data.tasks import TASKS, WORLD_TASKS, get_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("SML_DATASETS") or os.path.join(ROOT, "..", "shared", "datasets")
needs_shared = pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "finetune_cot")),
                                  reason=f"no shared dataset copies at {SHARED} (set SML_DATASETS)")

# The issue's table, written out again here so that a slip in the specs shows
TABLE = {"single_eq": ("number", 356, 152), "addsub": ("number", 276, 119),
         "multiarith": ("number", 420, 180), "gsm8k": ("number", 7473, 1319),
         "aqua": ("choice", 10000, 254), "svamp": ("number", 700, 300),
         "date_understanding": ("choice", 258, 111), "tracking_shuffled_objects": ("choice", 525, 225),
         "last_letter_concatenation": ("letters", 350, 150), "coin_flip": ("yesno", 350, 150),
         "commonsense_qa": ("choice", 9741, 1221), "strategy_qa": ("yesno", 1603, 687)}


def shared_source(key):
    layout = DATASETS[key].layout
    return os.path.join(SHARED, layout)


def check_rows(key, rows):
    """What every converted row must be: our format, a gold answer the task reads back."""
    task = get_task(key)
    for r in rows:
        assert set(r) <= {"id", "question", "answer", "choices", "rationale"}
        assert r["id"].startswith(f"{key}-") and r["question"].strip()
        assert task.normalize(r["answer"]) == r["answer"]
        assert task.extract_answer(f"So the answer is {r['answer']}.") == r["answer"]
        if task.answer_kind == "choice":
            assert r["answer"] in r["choices"] and len(r["choices"]) >= 3
        else:
            assert "choices" not in r
        if "rationale" in r:
            assert task.extract_answer(r["rationale"]) == r["answer"]


# -----------------------------------------------------------------------------
# The shared copies: every dataset, exactly the collection's split

def test_every_dataset_is_a_task_with_the_tables_answer_type():
    assert set(DATASETS) == set(TABLE) and not set(DATASETS) & set(WORLD_TASKS)
    for key, (kind, n_train, n_test) in TABLE.items():
        assert key in TASKS and get_task(key).name == key and get_task(key).answer_kind == kind
        assert (DATASETS[key].n_train, DATASETS[key].n_test) == (n_train, n_test)


@needs_shared
@pytest.mark.parametrize("key", sorted(TABLE))
def test_shared_copy_converts_with_the_collections_split(key):
    _, n_train, n_test = TABLE[key]
    test_only = key == "aqua"  # AQuA's train file is not among the shared copies
    train, test = convert(DATASETS[key], shared_source(key), test_only=test_only)
    assert (len(train), len(test)) == ((0 if test_only else n_train), n_test)
    ids = [r["id"] for r in train + test]
    assert len(set(ids)) == len(ids)  # so train and test are disjoint too
    check_rows(key, train + test)
    if DATASETS[key].layout == "finetune_cot":  # the rows are the split file's questions, in order
        split = json.load(open(os.path.join(SHARED, "finetune_cot", "splits", f"{key}__default.json")))
        data = json.load(open(os.path.join(SHARED, "finetune_cot", f"{key}.json")))
        for name, rows in (("train", train), ("test", test)):
            assert [int(r["id"].rsplit("-", 1)[1]) for r in rows] == split[name]
            assert [r["question"] for r in rows] == [data[i]["question"] for i in split[name]]
    if key == "gsm8k":  # the original train, then test
        assert train[0]["id"] == "gsm8k-0" and test[0]["id"] == "gsm8k-7473"
        assert "<<" not in train[0]["rationale"] and "####" not in train[0]["rationale"]


@needs_shared
def test_shared_files_are_the_recorded_ones():
    checked = 0
    for spec in DATASETS.values():
        for f in spec.files:
            path = os.path.join(shared_source(spec.key), f.name)
            if os.path.exists(path):
                assert file_problem(path, f.size, f.sha256, f.git_blob) is None, path
                checked += 1
    assert checked == 2 * 10 + 2 + 1  # ten Fine-tune-CoT pairs, GSM8K's two, AQuA's test


def test_aqua_train_subset_is_the_collections():
    picked = aqua_train_subset(97467, 10000)
    assert len(set(picked)) == 10000 and picked == sorted(picked)
    assert picked[:10] == [9, 17, 23, 25, 26, 41, 48, 51, 52, 54]  # splits/aqua__default.json's
    split_file = os.path.join(SHARED, "finetune_cot", "splits", "aqua__default.json")
    if os.path.exists(split_file):
        split = json.load(open(split_file))
        assert picked == split["train"] and split["test"] == list(range(97467, 97467 + 254))


# -----------------------------------------------------------------------------
# Fixtures of our own in each layout (invented rows)

def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def finetune_cot_fixture(folder, key, rows, train, test):
    write(os.path.join(folder, f"{key}.json"), json.dumps(rows))
    write(os.path.join(folder, "splits", f"{key}__default.json"), json.dumps({"train": train, "test": test}))
    return dataclasses.replace(DATASETS[key], n_train=len(train), n_test=len(test))


FIXTURES = {
    "single_eq": [{"question": "Ann has 3 owls and buys 2. How many owls?", "answer": "5.0"},
                  {"question": "A cat costs $1,200.50 and a hat $10. Total?", "answer": "1210.5"},
                  {"question": "Bo had 9 figs and ate 12. How many now?", "answer": "-3"}],
    "commonsense_qa": [{"question": "Where is a fish? Answer choices: (A) sky, (B) sea, (C) tree, (D) car, (E) moon.",
                        "answer": "B"},
                       {"question": "What is cold? Answer choices: (A) ice, (B) fire, (C) sun, (D) tea, (E) soup.",
                        "answer": "A"},
                       {"question": "What barks? Answer choices: (A) cow, (B) fish, (C) dog, (D) owl, (E) bee.",
                        "answer": "C"}],
    "strategy_qa": [{"question": "Can owls swim far?", "answer": "No", "rationale": "Owls are birds that fly."},
                    {"question": "Is ice cold?", "answer": "Yes", "rationale": "Ice is frozen water."},
                    {"question": "Is the sun a star?", "answer": "yes", "rationale": ""}],
    "last_letter_concatenation": [
        {"question": 'Take the last letters of each words in "Ann Bob" and concatenate them.', "answer": "nb"},
        {"question": 'Take the last letters of each words in "Cy Dee" and concatenate them.', "answer": "ye"},
        {"question": 'Take the last letters of each words in "Rosé Kim" and concatenate them.', "answer": "éM"}],
}


@pytest.mark.parametrize("key", sorted(FIXTURES))
def test_finetune_cot_fixture_converts(tmp_path, key):
    spec = finetune_cot_fixture(str(tmp_path), key, FIXTURES[key], train=[2, 0], test=[1])
    train, test = convert(spec, str(tmp_path))
    assert [r["id"] for r in train] == [f"{key}-2", f"{key}-0"] and [r["id"] for r in test] == [f"{key}-1"]
    assert [r["question"] for r in train + test] == [FIXTURES[key][i]["question"] for i in (2, 0, 1)]
    check_rows(key, train + test)
    answers = [r["answer"] for r in train + test]
    assert answers == {"single_eq": ["-3", "5", "1210.5"], "commonsense_qa": ["C", "B", "A"],
                       "strategy_qa": ["yes", "no", "yes"],
                       "last_letter_concatenation": ["ém", "nb", "ye"]}[key]
    if key == "commonsense_qa":
        assert all(r["choices"] == list("ABCDE") for r in train + test)
    if key == "strategy_qa":  # the facts become the rationale; an empty one is no rationale
        assert "rationale" not in train[0]
        assert train[1]["rationale"] == "Owls are birds that fly. So the answer is no."
    # the exact split is checked: one question more or less is an error, not a quiet run
    for n_train, n_test in [(1, 1), (2, 2)]:
        with pytest.raises(DataError, match=r"expected [12] "):
            convert(dataclasses.replace(spec, n_train=n_train, n_test=n_test), str(tmp_path))
    assert convert(spec, str(tmp_path), test_only=True)[0] == []


def test_finetune_cot_bad_input_is_one_clear_error(tmp_path):
    d = str(tmp_path)
    rows = FIXTURES["commonsense_qa"]
    cases = [  # (rows, split, what the error says)
        (rows, {"train": [0, 5], "test": [1]}, r"train index 5 is not a question of .*commonsense_qa\.json"),
        (rows, {"train": [0, 1], "test": [1]}, r"question 1 is listed twice"),
        (rows, {"train": [0]}, r"expected \{\"train\""),
        ([{**rows[0], "answer": "F"}] + rows[1:], {"train": [0, 2], "test": [1]},
         r"commonsense_qa\.json: question 0: answer 'F' is not one of the answer choices \(A, B, C, D, E\)"),
        ([{"question": "No options here", "answer": "A"}] + rows[1:], {"train": [0, 2], "test": [1]},
         r"none after 'Answer choices:'"),
    ]
    for data, split, said in cases:
        write(os.path.join(d, "commonsense_qa.json"), json.dumps(data))
        write(os.path.join(d, "splits", "commonsense_qa__default.json"), json.dumps(split))
        spec = dataclasses.replace(DATASETS["commonsense_qa"], n_train=2, n_test=1)
        with pytest.raises(DataError, match=said):
            convert(spec, d)
    write(os.path.join(d, "commonsense_qa.json"), '[{"question": "q",\n "answer": }]')
    with pytest.raises(DataError, match=r"commonsense_qa\.json:2: not valid JSON"):
        convert(spec, d)
    os.remove(os.path.join(d, "commonsense_qa.json"))
    with pytest.raises(DataError, match=r"commonsense_qa\.json: no such file"):
        convert(spec, d)
    with pytest.raises(DataError, match="no such folder"):
        convert(spec, os.path.join(d, "nowhere"))
    write(os.path.join(d, "single_eq.json"), json.dumps([{"question": "q", "answer": "five"}] * 2))
    write(os.path.join(d, "splits", "single_eq__default.json"), json.dumps({"train": [0], "test": [1]}))
    with pytest.raises(DataError, match=r"question 0: answer 'five' is not a number"):
        convert(dataclasses.replace(DATASETS["single_eq"], n_train=1, n_test=1), d)


def gsm8k_fixture(folder):
    row = lambda q, steps, a: json.dumps({"question": q, "answer": "\n".join(steps + [f"#### {a}"])})
    write(os.path.join(folder, "train.jsonl"), "\n".join([
        row("Ann has 2 bags of 3 figs. How many figs?", ["2 * 3 = <<2*3=6>>6 figs."], "6"),
        row("A car costs 1,000 dollars and a bike 250. Total?", ["1000 + 250 = $<<1000+250=1250>>1,250"], "1,250"),
    ]) + "\n")
    write(os.path.join(folder, "test.jsonl"), row("Bo has 5 and loses 7. How many?", ["5 - 7 = -2"], "-2") + "\n")
    return dataclasses.replace(DATASETS["gsm8k"], n_train=2, n_test=1)


def test_gsm8k_fixture_converts(tmp_path):
    spec = gsm8k_fixture(str(tmp_path))
    train, test = convert(spec, str(tmp_path))
    assert [r["id"] for r in train + test] == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]  # train, then test
    assert [r["answer"] for r in train + test] == ["6", "1250", "-2"]
    assert train[0]["rationale"] == "2 * 3 = 6 figs. So the answer is 6."  # no calculator annotations
    check_rows("gsm8k", train + test)
    write(str(tmp_path / "test.jsonl"), '{"question": "q", "answer": "no final line"}\n')
    with pytest.raises(DataError, match=r"test\.jsonl:1: the answer has no '#### <number>' line"):
        convert(spec, str(tmp_path))
    write(str(tmp_path / "test.jsonl"), '{"question": "q", "answer": "x\\n#### 1"}\n{"question": "q"\n')
    with pytest.raises(DataError, match=r"test\.jsonl:2: not valid JSON"):
        convert(spec, str(tmp_path))
    write(str(tmp_path / "test.jsonl"), '{"question": "q"}\n')
    with pytest.raises(DataError, match=r"test\.jsonl:1: missing field 'answer'"):
        convert(spec, str(tmp_path))


def aqua_line(i, correct="C"):
    return json.dumps({"question": f"What is {i} + 1?", "options": ["A)0", "B) 1", f"C){i + 1}", "D)99", "E)None"],
                       "rationale": f"{i} + 1 = {i + 1}.\nANSWER: {correct}", "correct": correct})


def test_aqua_fixture_converts_and_its_train_file_may_be_missing(tmp_path, monkeypatch):
    d = str(tmp_path)
    write(os.path.join(d, "train.json"), "\n".join(aqua_line(i) for i in range(8)) + "\n")
    write(os.path.join(d, "test.json"), "\n".join(aqua_line(i, "C") for i in (20, 21)) + "\n")
    spec = dataclasses.replace(DATASETS["aqua"], n_train=3, n_test=2, train_pool=8)
    train, test = convert(spec, d)
    picked = aqua_train_subset(8, 3)
    assert [r["id"] for r in train] == [f"aqua-{i}" for i in picked]  # the seed-0 subset, by index
    assert [r["id"] for r in test] == ["aqua-8", "aqua-9"]  # test after the whole train file
    assert test[0]["question"] == "What is 20 + 1? Answer choices: (A) 0, (B) 1, (C) 21, (D) 99, (E) None."
    assert test[0]["choices"] == list("ABCDE") and test[0]["answer"] == "C"
    check_rows("aqua", train + test)
    with pytest.raises(DataError, match=r"train\.json: 8 questions, expected 9"):
        convert(dataclasses.replace(spec, train_pool=9), d)
    write(os.path.join(d, "test.json"), aqua_line(1).replace('"B) 1"', '"X) 1"') + "\n")
    with pytest.raises(DataError, match=r"test\.json:1: option 'X\) 1' should start with 'B\)'"):
        convert(spec, d)
    write(os.path.join(d, "test.json"), "\n".join(aqua_line(i, "C") for i in (20, 21)) + "\n")
    # no train file: a clear error naming it, or the test split alone when asked for
    os.remove(os.path.join(d, "train.json"))
    with pytest.raises(DataError, match=r"train\.json: no such file \(AQuA's .*--test_only"):
        convert(spec, d)
    assert [len(s) for s in convert(spec, d, test_only=True)] == [0, 2]
    # the same through prepare.py (made-up files: not the recorded ones)
    monkeypatch.setitem(DATASETS, "aqua", spec)
    source = ["--source", d, "--allow_modified_source"]
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"train\.json: no such file"):
        prepare_main(["--task", "aqua", *source, "--out_dir", str(out)])
    prepare_main(["--task", "aqua", *source, "--out_dir", str(out), "--test_only"])
    assert sorted(os.listdir(out)) == ["meta.json", "test.jsonl"]
    assert len(load_dataset(str(out / "test.jsonl"))) == 2


def test_prepare_writes_our_jsonl_and_meta(tmp_path, monkeypatch):
    src, out = str(tmp_path / "src"), tmp_path / "out"
    monkeypatch.setitem(DATASETS, "gsm8k", gsm8k_fixture(src))
    source = ["--source", src, "--allow_modified_source"]  # made-up files: not the recorded ones
    prepare_main(["--task", "gsm8k", *source, "--out_dir", str(out)])
    assert sorted(os.listdir(out)) == ["meta.json", "test.jsonl", "train.jsonl"]  # no corpus, no tokenizer
    assert [r["answer"] for r in load_dataset(str(out / "train.jsonl"))] == ["6", "1250"]
    meta = json.load(open(out / "meta.json"))
    assert meta["task"] == "gsm8k" and meta["counts"] == {"train": 2, "test": 1}
    assert meta["source"] == os.path.abspath(src) and not meta["downloaded"]
    with pytest.raises(UserError, match="already holds"):
        prepare_main(["--task", "gsm8k", *source, "--out_dir", str(out)])
    # --test_only over a full conversion leaves no stale train.jsonl behind
    prepare_main(["--task", "gsm8k", *source, "--out_dir", str(out), "--test_only", "--overwrite"])
    assert sorted(os.listdir(out)) == ["meta.json", "test.jsonl"]


def test_prepare_with_a_pretrained_tokenizer_writes_it_and_a_validation_split(tmp_path, monkeypatch):
    """--tokenizer_from: the model's tokenizer.json, and val.jsonl carved from the end of train."""
    from data.tokenizer import train_tokenizer
    src, model, out = str(tmp_path / "src"), tmp_path / "model", tmp_path / "out"
    rows = [{"question": f"Ann has {i} owls and buys 2. How many owls?", "answer": str(i + 2)} for i in range(30)]
    monkeypatch.setitem(DATASETS, "single_eq", finetune_cot_fixture(src, "single_eq", rows, list(range(20)),
                                                                    list(range(20, 30))))
    source = ["--source", src, "--allow_modified_source"]  # made-up files: not the recorded ones
    os.makedirs(model)
    train_tokenizer(["Ann has 3 owls"] * 5, 270).save(str(model / "tokenizer.json"))
    prepare_main(["--task", "single_eq", *source, "--out_dir", str(out), "--tokenizer_from", str(model)])
    assert open(out / "tokenizer.json").read() == open(model / "tokenizer.json").read()
    train, val = load_dataset(str(out / "train.jsonl")), load_dataset(str(out / "val.jsonl"))
    assert [r["id"] for r in train + val] == [f"single_eq-{i}" for i in range(20)]  # a tenth: the last 2
    assert len(val) == 2 and json.load(open(out / "meta.json"))["counts"] == {"train": 18, "val": 2, "test": 10}
    prepare_main(["--task", "single_eq", *source, "--out_dir", str(out), "--tokenizer_from", str(model),
                  "--n_val", "5", "--overwrite"])
    assert len(load_dataset(str(out / "val.jsonl"))) == 5 and len(load_dataset(str(out / "train.jsonl"))) == 15
    with pytest.raises(DataError, match="--n_val 20: the validation split needs 1 to 19"):
        prepare_main(["--task", "single_eq", *source, "--out_dir", str(tmp_path / "o2"),
                      "--tokenizer_from", str(model), "--n_val", "20"])
    # without the tokenizer, no validation split either: a stale one goes
    prepare_main(["--task", "single_eq", *source, "--out_dir", str(out), "--overwrite"])
    assert sorted(os.listdir(out)) == ["meta.json", "test.jsonl", "train.jsonl"]


@pytest.mark.slow  # through the CLI, a process per case: CI runs it, -m "not slow" leaves it out
def test_prepare_bad_arguments_are_one_line(tmp_path):
    for args, said in [(["--task", "gsm8k", "--source", str(tmp_path / "nowhere")], "no such folder"),
                       (["--task", "arithmetic", "--source", str(tmp_path)], "--source is for the paper's datasets"),
                       (["--task", "arithmetic", "--tokenizer_from", str(tmp_path)], "--tokenizer_from is for the paper's"),
                       (["--task", "gsm8k", "--tokenizer_from", str(tmp_path / "nowhere")], "no such folder")]:
        r = subprocess.run([sys.executable, "data/prepare.py", "--out_dir", str(tmp_path / "out")] + args,
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode != 0 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("prepare.py: error: ")
    assert not (tmp_path / "out").exists()


@needs_shared
def test_prepare_from_the_shared_copy(tmp_path):
    out = tmp_path / "gsm8k"
    prepare_main(["--task", "gsm8k", "--source", shared_source("gsm8k"), "--out_dir", str(out)])
    assert len(load_dataset(str(out / "train.jsonl"))) == 7473
    assert len(load_dataset(str(out / "test.jsonl"))) == 1319


# -----------------------------------------------------------------------------
# Extractors: answers as real models write them; None where unreadable, never a guess

NUMBER_CASES = [
    ("The answer is $1,234.50.", "1234.5"), ("18 dollars", "18"), ("42.0", "42"), ("-3", "-3"),
    ("So the answer is 18.", "18"), ("The answer is 1,000 apples.", "1000"), ("#### 72", "72"),
    ("Answer: 0.5", "0.5"), ("The final answer is 50%.", "50"), ("The answer is -$7.", "-7"),
    ("The answer is 5. Wait, no: the answer is 6.", "6"),  # the last statement counts
    ("He has 3 + 4 = 7 apples. Then 7 * 2 = 14.", "14"),  # none stated: the last number
    ("She ate 10-3 of them, 7 left", "7"),  # a hyphen between numbers is no minus sign
    ("The answer is 18.\n\nQ: Tom has 5 pens.", "18"),
    # unreadable: None, never the next number in sight
    ("The answer is unclear. She has 5.", None), ("The answer is 1/2.", None),
    ("I do not know.", None), ("The answer is", None), ("", None), ("The answer is v2.", None),
]
CHOICE_CASES = [
    ("(B)", "B"), ("b", "B"), ("The answer is (B).", "B"), ("So the answer is c.", "C"),
    ("The answer is: (d) dog", "D"), ("Answer: E", "E"), ("The answer is option A.", "A"),
    ("The answer is I think (C).", "C"), ("The answer is (A). Not (B).", "A"),
    ("The answer is B. So the answer is (D).", "D"), ("(B) 21, because 3 * 7 = 21.", "B"),
    ("Dogs bark, so it is (C).", "C"), ("A.", "A"),
    ("The answer is a cat.", None),  # an article, not option (A)
    ("The answer is none of them.", None), ("(A) is wrong, so it is (B).", None),  # two, no statement
    ("A dog barks.", None), ("It barks.", None), ("The answer is (Z).", None),
]
YESNO_CASES = [
    ("Yes,", "yes"), ("No.", "no"), ("So the answer is yes.", "yes"), ("The answer is: No", "no"),
    ("Yes, owls can swim. So the answer is no.", "no"), ('The answer is "yes".', "yes"),
    ("Owls are birds. So yes.", "yes"), ("YES", "yes"),
    ("No one knows for sure.", None), ("Yes, but no.", None), ("The answer is maybe.", None),
    ("Owls know no fear.", None), ("Yesterday it rained.", None),
]
LETTERS_CASES = [
    ('The answer is "yajo".', "yajo"), ("So the answer is YAJO.", "yajo"), ("yajo", "yajo"),
    ("The answer is méyl.", "méyl"), ("Answer: nb", "nb"),
    ("The last letters are y, a, j, o.", None), ("The answer is 42.", None), ("", None),
]


@pytest.mark.parametrize("key,cases", [("gsm8k", NUMBER_CASES), ("aqua", CHOICE_CASES),
                                       ("strategy_qa", YESNO_CASES), ("last_letter_concatenation", LETTERS_CASES)])
def test_extractors(key, cases):
    task = get_task(key)
    wrong = [(text, task.extract_answer(text), want) for text, want in cases if task.extract_answer(text) != want]
    assert not wrong, wrong


def test_numbers_compare_as_numbers():
    task = get_task("svamp")
    for a, b in [("18.0", "18"), ("1,000", "1000"), ("1234.50", "1234.5"), ("$5", "5"), ("-0", "0"),
                 ("0.50", "0.5")]:
        assert task.answers_match(a, b) and task.answers_match(b, a), (a, b)
    for a, b in [("18", "18.01"), ("1000", "100"), ("-3", "3"), ("18", None)]:
        assert not task.answers_match(a, b), (a, b)
    choice, yesno = get_task("commonsense_qa"), get_task("coin_flip")
    assert choice.answers_match("(b)", "B") and not choice.answers_match("A", "B")
    assert yesno.answers_match("Yes", "yes") and not yesno.answers_match("yes", "no")


def test_the_built_in_tasks_extract_as_before():
    # the dataset tasks' reading is theirs alone: the toy world still wants one "the answer is"
    # statement, and two different ones are None
    assert get_task("arithmetic").extract_answer("So the answer is 5. So the answer is 6.") is None
    assert get_task("arithmetic").extract_answer("18 dollars") is None
    assert get_task("gsm8k").extract_answer("So the answer is 5. So the answer is 6.") == "6"


# -----------------------------------------------------------------------------
# Wrong answers given as hints (SML step 1)

@pytest.mark.parametrize("gold,low,high", [("0", 0, 100), ("7", 0, 100), ("100", 0, 100), ("43.0", 0, 100),
                                           ("0.5", 0, 100), ("101", 100, 999), ("1234", 1000, 9999),
                                           ("1,234.5", 1000, 9999), ("-3", -9, -1), ("-250", -999, -100)])
def test_number_wrong_answers(gold, low, high):
    """The paper's rule: random integers in 0-100 other than the gold one; outside 0-100,
    integers of the gold answer's own sign and number of digits."""
    task, rng = get_task("gsm8k"), random.Random(0)
    seen = set()
    for _ in range(30):
        wrong = task.wrong_answers({"answer": gold}, 4, rng)
        assert len(wrong) == len(set(wrong)) == 4
        for w in wrong:
            assert w == str(int(w)) and low <= int(w) <= high and not task.answers_match(w, gold)
        seen.update(wrong)
    assert len(seen) >= min(20, high - low)  # random, not always the same few
    assert len(task.wrong_answers({"answer": "-3"}, 50, rng)) == 8  # all there are


def test_other_wrong_answers():
    rng = random.Random(0)
    choice = get_task("commonsense_qa")
    for gold in "ABCDE":
        wrong = choice.wrong_answers({"answer": gold, "choices": list("ABCDE")}, 4, rng)
        assert sorted(wrong) == sorted(set("ABCDE") - {gold})
    assert len(choice.wrong_answers({"answer": "B", "choices": list("ABC")}, 1, rng)) == 1
    yesno = get_task("strategy_qa")
    assert yesno.wrong_answers({"answer": "Yes"}, 3, rng) == ["no"]
    assert yesno.wrong_answers({"answer": "no"}, 3, rng) == ["yes"]
    letters = get_task("last_letter_concatenation")
    wrong = letters.wrong_answers({"answer": "yajo"}, 5, rng)
    assert len(set(wrong)) == 5 and "yajo" not in wrong
    assert all(len(w) == 4 and sum(a != b for a, b in zip(w, "yajo")) == 1 for w in wrong)


@needs_shared
def test_wrong_answers_on_every_shared_question():
    rng = random.Random(0)
    for key in ["single_eq", "addsub", "svamp", "date_understanding", "coin_flip", "last_letter_concatenation"]:
        task = get_task(key)
        _, test = convert(DATASETS[key], shared_source(key))
        for row in test:
            wrong = task.wrong_answers(row, 3, rng)
            assert wrong and not any(task.answers_match(w, row["answer"]) for w in wrong), (key, row, wrong)


# -----------------------------------------------------------------------------
# Download: a loopback server stands in for the public hosts

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(folder it serves, base URL); the URL base of the specs points at it."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv(datasets.URL_ENV, base)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    yield root, base
    httpd.shutdown()
    httpd.server_close()


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on leaving: nothing listens there


def test_download_verifies_size_and_hashes(server, tmp_path):
    root, base = server
    body = b'[{"question": "q", "answer": "1"}]\n'
    (root / "f.json").write_bytes(body)
    sha256 = hashlib.sha256(body).hexdigest()
    blob = hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()  # what `git hash-object` says
    dest = str(tmp_path / "cache" / "f.json")
    download_file(f"{base}/f.json", dest, len(body), sha256, blob)
    assert open(dest, "rb").read() == body
    os.remove(dest)
    download_file(f"{base}/f.json", dest, git_blob=blob)  # AQuA's train file: only its git blob id known
    os.remove(dest)
    for kw, said in [({"size": len(body) + 1}, r"\d+ bytes, expected"), ({"sha256": "0" * 64}, "sha256 .*, expected"),
                     ({"git_blob": "0" * 40}, "git blob id .*, expected")]:
        with pytest.raises(DataError, match=f"f.json: {said}.*not kept"):
            download_file(f"{base}/f.json", dest, **kw)
        assert os.listdir(tmp_path / "cache") == []  # neither the file nor a partial one
    with pytest.raises(DataError, match="could not download .*missing.json"):
        download_file(f"{base}/missing.json", dest)


def serve_like_the_public_hosts(root, spec, source):
    for f in spec.files:
        path = root / f.url_path
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(source, f.name), path)


def test_download_of_a_wrong_file_is_an_error(server, tmp_path):
    root, _ = server
    spec = DATASETS["single_eq"]
    finetune_cot_fixture(str(tmp_path / "fixture"), "single_eq", FIXTURES["single_eq"], [0, 1], [2])
    serve_like_the_public_hosts(root, spec, str(tmp_path / "fixture"))  # not the public bytes
    with pytest.raises(DataError, match=r"single_eq\.json: sha256 \w+, expected \w+ \(\d+ bytes, expected 104,489\)"
                                        r".*not kept"):
        fetch(spec, str(tmp_path / "cache"))


@needs_shared
def test_download_verify_cache_convert(server, tmp_path):
    root, _ = server
    spec, cache, out = DATASETS["coin_flip"], str(tmp_path / "cache"), str(tmp_path / "out")
    serve_like_the_public_hosts(root, spec, shared_source("coin_flip"))
    meta = datasets.prepare("coin_flip", out, cache_dir=cache)
    assert meta["downloaded"] and meta["counts"] == {"train": 350, "test": 150}
    assert os.path.exists(os.path.join(cache, "finetune_cot", "splits", "coin_flip__default.json"))
    shutil.rmtree(root / "itsnamgyu")  # the host is gone: the verified cache is enough
    assert datasets.prepare("coin_flip", out, cache_dir=cache)["counts"]["test"] == 150


def test_offline_says_how_to_pass_source(tmp_path):
    env = {**os.environ, datasets.URL_ENV: f"http://127.0.0.1:{closed_port()}", datasets.CACHE_ENV: str(tmp_path)}
    r = subprocess.run([sys.executable, "data/prepare.py", "--task", "gsm8k", "--out_dir", str(tmp_path / "out")],
                       cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prepare.py: error: could not download")
    assert "pass --source DIR" in lines[0] and "train.jsonl and test.jsonl" in lines[0]


def test_consistency_check_reads_dataset_answers_as_stated():
    """SML step 2 on a dataset task: the answer must be stated once; the extractor's fallback
    (the last number) never makes a rationale consistent."""
    from sml import rationales
    task = get_task("gsm8k")
    label = lambda text, hint: rationales.label_rationale(task, "18", hint, text, True)[2:]
    assert label("3 * 6 = 18. The answer is $18.00.", "18") == ("high", None)
    assert label("3 * 6 = 19. The answer is 19 dollars.", "19") == ("low", None)
    assert label("3 * 6 = 18, so 18 in all.", "18") == ("discarded", "no_answer")
    assert label("The answer is 18. No, the answer is 19.", "18") == ("discarded", "two_answers")
