"""The equation checker of the numeric datasets (data/tasks.py: read_equations, and
NumberTask.step_errors, which evaluation reports as "every equation right"): what it reads,
what it computes, and, on GSM8K's gold rationales, that it reads right what GSM8K's calculator
annotations say is right and finds the errors planted in them."""

import json
import os
import re

import pytest

from data.datasets import gsm8k_solution
from data.tasks import DATASET_TASKS, NumberTask, WORLD_TASKS, get_task, read_equations

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("SML_DATASETS") or os.path.join(ROOT, "..", "shared", "datasets")
GSM8K_TRAIN = os.path.join(SHARED, "gsm8k", "train.jsonl")
NUMERIC = ["gsm8k", "svamp", "multiarith", "addsub", "single_eq"]


@pytest.mark.parametrize("text, expected", [
    ("Natalia sold 48/2 = 24 clips in May.", [("48/2 = 24", True)]),
    ("She has $20 - $10 = $10 left, and 0.2 x 50 = $10.", [("$20 - $10 = $10", True), ("0.2 x 50 = $10", True)]),
    ("4 × 6 = 24 and 24 ÷ 8 = 3 and 5x2=10", [("4 × 6 = 24", True), ("24 ÷ 8 = 3", True), ("5 x 2 = 10", True)]),
    ("Mary added 7 stickers/page * 6 pages= 42 stickers.", [("7 * 6 = 42", True)]),
    ("3 large stickers + 42 stickers = 45 stickers", [("3 + 42 = 45", True)]),
    ("He earns $8/hour * 5 hours = $40.", [("$8 * 5 = $40", True)]),
    ("(5 + 3) * 2 = 16 = 4 * 4", [("( 5 + 3 ) * 2 = 16", True), ("16 = 4 * 4", True)]),
    ("So 2(50+100+120)=540 eggs", [("2 * ( 50 + 100 + 120 ) = 540", True)]),
    ("(48 / 2 = 24)", [("48 / 2 = 24", True)]),
    ("5 + 3 = 8 + 2 = 10", [("5 + 3 = 8 + 2", True), ("8 + 2 = 10", True)]),  # a running calculation
    ("5 + 3 = 8 + 2", [("5 + 3 = 8 + 2", False)]),  # ... ends in an "=", else it claims 8 = 10
    ("10 / 3 = 3.33, 2/3 = 0.66, 17/3 = 5 and 2/3 loads", [("10 / 3 = 3.33", True), ("2/3 = 0.66", True),
                                                           ("17/3 = 5", True)]),
    ("1,040 / 4 = 260 and 1,000,000 * 2 = 2,000,000", [("1,040 / 4 = 260", True),
                                                       ("1,000,000 * 2 = 2,000,000", True)]),
    ("100% - 40% = 60%, 20 + 10 = 30%, 15 / 60 * 100% = 25%", [("100% - 40% = 60%", True),
                                                               ("20 + 10 = 30%", True),
                                                               ("15 / 60 * 100% = 25%", True)]),
    ("He can bake 2/ 1/5 = 10 cupcakes", [("2 / 1/5 = 10", True)]),
    ("it is 365 – 1 = 364 days; 10 -7 = 3; -5 + 3 = -2", [("365 – 1 = 364", True), ("10 - 7 = 3", True),
                                                         ("-5 + 3 = -2", True)]),
    ("33 * 16 = $528 3 * 10 = $30", [("33 * 16 = $528", True), ("3 * 10 = $30", True)]),  # two lines joined
    ("Gail keeps 24 / 2 = 12 two-inch fish", [("24 / 2 = 12", True)]),
    # wrong as written
    ("The team season record is 11,480 because 10 x 1,248 = 11,480", [("10 x 1,248 = 11,480", False)]),
    ("So 3 * 4 = 13. Then 13 + 1 = 14.", [("3 * 4 = 13", False), ("13 + 1 = 14", True)]),
    ("10 / 3 = 3.3333, not 10 / 3 = 3.35", [("10 / 3 = 3.3333", True), ("10 / 3 = 3.35", False)]),
    ("7 / 2 = 5", [("7 / 2 = 5", False)]),
    # not read: a variable, an unreadable side, nothing computed, a mixed number, a time, 1/0
    ("2x + 5 = 25, x * 3 + 5 = 20, 1.2Y = 192, 8/3 = 24/Y, Let x = 10", []),
    ("24 = 24, 4 = 6 * 15, Total = 90", []),
    ("1 1/2 + 2 = 3 1/2 and 250 x 12 = 3 000 grams", []),
    ("At 6:00+18 hours = 00:00 it lands. 7/0 = 3. 5 times 3 = 15. 3-day trip", []),
])
def test_reads_equations_as_written(text, expected):
    assert read_equations(text) == expected


def test_a_side_is_computed_not_evaluated_as_code():
    # only numbers, + - * / and brackets are read; anything else ends the math
    assert read_equations("__import__('os') = 1 + 1 = 2") == [("1 + 1 = 2", True)]
    assert read_equations("2 ** 3 = 8") == []
    assert read_equations("0.1 + 0.2 = 0.3") == [("0.1 + 0.2 = 0.3", True)]  # exact, not floating point


@pytest.mark.parametrize("key", NUMERIC)
def test_step_errors_of_the_numeric_datasets(key):
    task = get_task(key)
    assert isinstance(task, NumberTask) and task.STEP_CHECK == "every equation right"
    assert task.step_errors("q", "48/2 = 24 clips in May. 48+24 = 72 clips in all. So the answer is 72.") == 0
    assert task.step_errors("q", "48/2 = 24 clips in May. 48+24 = 73 clips in all. So the answer is 73.") == 1
    assert task.step_errors("q", "48/2 = 25 clips in May. 48+25 = 73 clips. So the answer is 73.") == 1  # carried on
    # a rationale without an equation has no steps to check: None, not "every step right"
    assert task.step_errors("q", "She sold half as many in May. So the answer is 72.") is None
    assert task.step_errors("q", "24 = 24. So the answer is 24.") is None


def test_only_the_numeric_datasets_check_equations():
    text = "48/2 = 25 clips. So the answer is 25."
    for key, task_class in DATASET_TASKS.items():
        if key not in NUMERIC:
            assert task_class().step_errors("q", text) is None, key
            assert task_class.STEP_CHECK == "every step right"
    # the built-in world keeps its own step checkers: "5 - 2 = 4." is one wrong step there, the
    # question decides the rest
    arithmetic = get_task("arithmetic")
    q = "Tom has 5 pens. Tom loses 2. How many pens does Tom have now?"
    assert arithmetic.step_errors(q, "5 - 2 = 4. So the answer is 4.") == 1
    assert arithmetic.step_errors(q, "7 - 2 = 5. So the answer is 5.") == 1  # started from the wrong count
    assert set(WORLD_TASKS) == {"arithmetic", "coinflip", "lastletter"}


# A few worked solutions in GSM8K's raw format, written for this test: the calculator
# annotation <<a=b>> says what the equation after it is. Always run, with or without the
# shared copy of GSM8K.
WRITTEN = [
    "Ann bakes 12*3 = <<12*3=36>>36 muffins.\nShe sells 36-9 = <<36-9=27>>27 of them.\n#### 27",
    "The pens cost $2.50 x 4 = $<<2.50*4=10>>10.\nWith the $5 pad she pays 10 + 5 = $<<10+5=15>>15.\n#### 15",
    "Each friend gets 100 / 3 = <<100/3=33.33>>33.33 dollars.\n#### 33.33",
    "He reads 20 pages/day * 7 days = <<20*7=140>>140 pages.\nThat is 140/2 = <<140/2=70>>70 pages twice.\n#### 70",
]


def gold_and_planted(solutions):
    """(annotated equations, [(errors in the gold rationale, errors once the result written
    after one annotation is off by 1)]) for every annotation whose result the text writes
    after an "=" (where the text also writes the equation)."""
    annotations, plants = [], []
    for solution in solutions:
        annotations += re.findall(r"<<([^>]*)>>", solution)
        gold = NumberTask().step_errors("", gsm8k_solution("gold", solution)[0])
        for m in re.finditer(r"=\s*\$?<<[^>]*>>\$?(\d[\d,]*(?:\.\d+)?)", solution):
            written = m.group(1).replace(",", "")
            wrong = str(int(written) + 1) if "." not in written else str(float(written) + 1)
            planted = solution[:m.start(1)] + wrong + solution[m.end(1):]
            plants.append((gold, NumberTask().step_errors("", gsm8k_solution("planted", planted)[0])))
    return annotations, plants


def test_written_gold_rationales_are_right_and_planted_errors_found():
    task = NumberTask()
    rationales = [gsm8k_solution("written", s)[0] for s in WRITTEN]
    assert [task.step_errors("", r) for r in rationales] == [0, 0, 0, 0]
    assert sum(len(read_equations(r)) for r in rationales) == 7  # one per annotation
    annotations, plants = gold_and_planted(WRITTEN)
    assert len(plants) == 7 and all(after == gold + 1 for gold, after in plants)
    assert all(holds for a in annotations for _, holds in read_equations(a))


@pytest.mark.skipif(not os.path.exists(GSM8K_TRAIN), reason=f"no shared copy of GSM8K at {GSM8K_TRAIN}")
def test_gsm8k_gold_rationales_read_right_and_planted_errors_found():
    """On GSM8K's 7,473 train rationales as the project stores them (annotations removed,
    data/datasets.py): the checker finds 24,054 equations (the annotations number 23,716)
    in 7,249 rationales and reads 99.81% of them as right. The 45 others are GSM8K's own
    slips ("10 x 1,248 = 11,480", "4+4+6 = 18", "8*3 = 240" for 80*3) or dollars written
    as cents ("$2.50 - $2.24 = 26 cents"). Every calculator annotation it reads, 23,350
    (the rest are "12=12", nothing computed), holds. A result off by one planted after an
    annotation's "=" raises the count by exactly one in 96.7% of 3,133 plants (the first
    1,000 rationales); the others are equations it cannot read ("10ml of oil per wheel = 20ml")."""
    with open(GSM8K_TRAIN) as f:
        solutions = [json.loads(line)["answer"] for line in f]
    assert len(solutions) == 7473
    read = [read_equations(gsm8k_solution("gsm8k", s)[0]) for s in solutions]
    equations = [holds for found in read for _, holds in found]
    assert sum(bool(found) for found in read) >= 7200 and len(equations) >= 24000
    assert sum(equations) / len(equations) >= 0.997
    annotated = [found for s in solutions for a in re.findall(r"<<([^>]*)>>", s) if (found := read_equations(a))]
    assert len(annotated) >= 23300 and all(holds for found in annotated for _, holds in found)
    _, plants = gold_and_planted(solutions[:1000])
    assert len(plants) >= 3000
    found = [(after or 0) - (gold or 0) for gold, after in plants]
    assert set(found) == {0, 1}  # never counted twice, never lost another
    assert found.count(1) / len(found) >= 0.96
