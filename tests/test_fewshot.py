"""The project's own few-shot exemplars (data/fewshot.py): for dataset tasks only, in each
dataset's question format, answers as the task reads them back, rationales that reason to the
answer without stating it, and questions of our own (none copied from the datasets)."""

import json
import os
import re

import pytest

from data.fewshot import MATH, WRITTEN
from data.tasks import ANSWER_STATED_RE, DATASET_TASKS, get_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("SML_DATASETS") or os.path.join(ROOT, "..", "shared", "datasets")
FTCOT = os.path.join(SHARED, "finetune_cot")

EXEMPLARS = [(key, i, ex) for key, exs in WRITTEN.items() for i, ex in enumerate(exs)]
IDS = [f"{key}-{i}" for key, i, _ in EXEMPLARS]


def options(question):
    """{"A": "orange ball", ...}: the answer choices written in a question."""
    line = question[question.rindex("Answer choices:"):]
    return dict(re.findall(r"\(([A-F])\) (.+?)(?=, \([A-F]\) |\.$)", line))


def last_sentence(text):
    return re.split(r"(?<=[.!?])\s+", text.strip())[-1]


def test_keys_are_dataset_tasks():
    assert WRITTEN
    for key in WRITTEN:
        assert key in DATASET_TASKS, key
    for key in ("gsm8k", "strategy_qa"):  # these take the train split's gold rationales
        assert key not in WRITTEN
    # AQuA too, where its train file is at hand; a test-only conversion uses the written ones
    for key in ("single_eq", "addsub", "multiarith", "svamp"):
        assert WRITTEN[key] is MATH


def test_counts_and_varied_answers():
    for key, exs in WRITTEN.items():
        assert 3 <= len(exs) <= 4 if key == "tracking_shuffled_objects" else len(exs) == 4, key
        assert len({ex["question"] for ex in exs}) == len(exs), key
        if get_task(key).answer_kind in ("choice", "letters", "number"):
            assert len({ex["answer"] for ex in exs}) >= min(len(exs), 3), key
    assert sorted(ex["answer"] for ex in WRITTEN["coin_flip"]) == ["no", "no", "yes", "yes"]
    assert any("." in ex["answer"] for ex in MATH)  # one decimal answer


@pytest.mark.parametrize("key,i,ex", EXEMPLARS, ids=IDS)
def test_exemplar_reads_back(key, i, ex):
    assert set(ex) == {"question", "rationale", "answer"}
    assert all(isinstance(v, str) and v.strip() for v in ex.values())
    rationale, answer = ex["rationale"], ex["answer"]
    assert "\n" not in rationale and rationale == rationale.strip()
    assert "answer is" not in rationale.lower() and "answer:" not in rationale.lower()
    assert not ANSWER_STATED_RE.search(rationale), rationale
    assert 1 <= len(re.findall(r"[.!?](?=\s|$)", rationale)) <= 4, rationale
    task = get_task(key)
    assert task.normalize(answer) == answer  # written as the dataset writes it
    assert task.extract_answer(rationale + " So the answer is " + answer + ".") == task.normalize(answer)
    assert task.extract_answer(rationale + " So the answer is " + answer + ".") is not None
    if task.answer_kind == "choice":
        assert f"({answer})" in ex["question"]
        opts = options(ex["question"])
        assert list(opts) == list("ABCDEF"[:len(opts)]) and answer in opts
        assert ex["question"].endswith(f"({list(opts)[-1]}) {opts[list(opts)[-1]]}.")
        assert opts[answer].lower() in last_sentence(rationale).lower()  # it reaches that option
        assert not re.search(rf"\({answer}\)", rationale)  # no letter stated in the rationale
    if task.answer_kind == "number":
        assert re.search(rf"(?<![\d.]){re.escape(answer)}(?![\d]|\.\d)", rationale), rationale
        assert answer in last_sentence(rationale)


def test_question_formats():
    for ex in WRITTEN["coin_flip"]:
        q = ex["question"]
        assert q.startswith("A coin is heads up. ")
        assert q.endswith('Is the coin still heads up? Note that "flip" here means "reverse".')
        people = re.findall(r"(\w+) (?:flips|does not flip) the coin\.", q)
        assert len(people) == 4
    for ex in WRITTEN["last_letter_concatenation"]:
        assert re.fullmatch(r'Take the last letters of each words in "[A-Z][a-z]+( [A-Z][a-z]+){3}" '
                            r"and concatenate them\.", ex["question"]), ex["question"]
    for ex in WRITTEN["date_understanding"]:
        first, second = ex["question"].split("\n")
        assert first.endswith(" in MM/DD/YYYY?")
        assert second.startswith("Which choice is true? Answer choices: (A) ")
        assert len(options(ex["question"])) in (5, 6)
        assert all(re.fullmatch(r"\d\d/\d\d/\d{4}", d) for d in options(ex["question"]).values())
    for ex in WRITTEN["tracking_shuffled_objects"]:
        q = ex["question"]
        assert q.startswith("Alice, Bob, and Claire are ") and " \n\n" in q
        assert q.count("\n") == 3 and "\nWhich choice is true? Answer choices: (A) " in q
        assert len(options(q)) == 3
    for ex in WRITTEN["commonsense_qa"]:
        assert "\n" not in ex["question"] and len(options(ex["question"])) == 5
        assert re.search(r"\? Answer choices: \(A\) ", ex["question"])
    for ex in MATH:
        assert "\n" not in ex["question"] and ex["question"].endswith("?")


@pytest.mark.parametrize("ex", WRITTEN["coin_flip"])
def test_coin_flip_parity(ex):
    flips = ex["question"].count(" flips the coin.")
    assert ex["answer"] == ("yes" if flips % 2 == 0 else "no")
    end = last_sentence(ex["rationale"])
    assert ("heads up" in end) != ("tails up" in end), end
    assert ("heads up" in end) == (ex["answer"] == "yes")
    assert re.search(rf"\b{flips} times?\b", ex["rationale"])
    assert ("even" if flips % 2 == 0 else "odd") in ex["rationale"]


@pytest.mark.parametrize("ex", WRITTEN["last_letter_concatenation"])
def test_last_letters(ex):
    words = re.search(r'"([^"]*)"', ex["question"]).group(1).split()
    assert ex["answer"] == "".join(w[-1] for w in words).lower()
    assert ", ".join(w[-1].lower() for w in words[:-1]) in ex["rationale"]
    assert last_sentence(ex["rationale"]).rstrip(".").endswith(ex["answer"])


@pytest.mark.parametrize("ex", WRITTEN["tracking_shuffled_objects"])
def test_tracking_swaps(ex):
    """Play the swaps: the options are what Alice, Bob and Claire hold at the start."""
    q = ex["question"]
    players = ["Alice", "Bob", "Claire"]
    holding = dict(zip(players, options(q).values()))
    swaps = re.findall(r"(?:First|Then|Finally), (\w+) and (\w+) (?:swap|trade|switch)", q)
    assert len(swaps) == 3
    for a, b in swaps:
        holding[a], holding[b] = holding[b], holding[a]
    who = re.search(r"At the end of the \w+, (\w+) (?:has|is)", q).group(1)
    assert options(q)[ex["answer"]] == holding[who]


def dataset_questions(key):
    if key == "aqua":  # AQuA's own layout: JSON lines, its test and dev files
        folder = os.path.join(os.path.dirname(FTCOT), "aqua")
        return {json.loads(line)["question"] for name in ("test.json", "dev.json")
                for line in open(os.path.join(folder, name)) if line.strip()}
    rows = json.load(open(os.path.join(FTCOT, f"{key}.json")))
    return {r["question"] for r in rows}


def squash(text):
    return " ".join(text.lower().split())


def test_questions_are_our_own():
    if not os.path.isdir(FTCOT):
        pytest.skip(f"no shared dataset copies at {FTCOT} (set SML_DATASETS)")
    for key, exs in WRITTEN.items():
        theirs = dataset_questions(key)
        assert theirs, key
        squashed = {squash(q) for q in theirs}
        for ex in exs:
            assert ex["question"] not in theirs, (key, ex["question"])
            assert squash(ex["question"]) not in squashed, (key, ex["question"])
    prompts = os.path.join(FTCOT, "few_shot_cot_prompts.json")
    if os.path.exists(prompts):  # and none copied from Wei et al.'s exemplars
        wei = squash(" ".join(v["prompt"] for v in json.load(open(prompts)).values()))
        for _, _, ex in EXEMPLARS:
            assert squash(ex["question"]) not in wei, ex["question"]
