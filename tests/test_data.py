"""data/: task generators, answer extractors, the corpus, the tokenizer, JSONL validation."""

import json
import random
import re
import subprocess
import sys

import pytest

from sml.common import UserError
from data.jsonl import DataError, append_row, load_dataset, load_pairs, open_log, read_jsonl, read_rows
from data.prepare import main as prepare_main
from data.tasks import WORLD_TASKS, get_task
from data.tokenizer import EOT, load_tokenizer, train_tokenizer

ROOT = __file__.rsplit("/tests/", 1)[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny preset of the arithmetic world, made twice with one seed and once with another."""
    dirs = {}
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        d = tmp_path_factory.mktemp(name)
        prepare_main(["--out_dir", str(d), "--preset", "tiny", "--seed", str(seed)])
        dirs[name] = d
    return dirs


def lines(path):
    return path.read_text().splitlines()


def test_generators_deterministic_by_seed(world):
    for f in ["train.jsonl", "val.jsonl", "test.jsonl", "corpus.jsonl", "tokenizer.json"]:
        assert (world["a"] / f).read_text() == (world["b"] / f).read_text(), f
    assert lines(world["a"] / "test.jsonl") != lines(world["c"] / "test.jsonl")
    for name in WORLD_TASKS:
        task = get_task(name)
        a = [task.make_problem(random.Random(5)) for _ in range(3)]
        b = [task.make_problem(random.Random(5)) for _ in range(3)]
        assert a == b


def test_splits_disjoint_and_corpus_holds_no_split_question(world):
    d = world["a"]
    train = {r["question"] for r in load_dataset(str(d / "train.jsonl"))}
    val = {r["question"] for r in load_dataset(str(d / "val.jsonl"))}
    test = {r["question"] for r in load_dataset(str(d / "test.jsonl"))}
    assert len(train) == 180 and len(val) == 20 and len(test) == 100
    assert not train & test and not train & val and not val & test
    corpus = [json.loads(x)["text"] for x in lines(d / "corpus.jsonl")]
    corpus_questions = {re.match(r"Question: (.*?)\n", t).group(1) for t in corpus}
    assert not corpus_questions & test
    assert not corpus_questions & train and not corpus_questions & val
    # documents both with and without a given answer, in the shared prompt format
    assert any("\nHint: the answer is" in t for t in corpus)
    assert any("\nHint:" not in t for t in corpus)
    assert all(t.startswith("Question: ") and "\nAnswer: " in t for t in corpus)


def test_tokenizer_round_trip_and_digits():
    texts = ['Question: Tom has 12 apples, "quoted" text -3!\nAnswer: 12 - 5 = 7.',
             "The last letter of Hugo is o. So the answer is nbt.", "A coin is heads up?"] * 20
    tok = train_tokenizer(texts, vocab_size=300)
    for t in texts + ["unseen wörds and 98765 tabs\t", "  double  spaces "]:
        assert tok.decode(tok.encode(t).ids) == t
    digits = [t for t in tok.encode("x 12345").tokens if any(c.isdigit() for c in t)]
    assert len(digits) == 5 and all(sum(c.isdigit() for c in t) == 1 for t in digits)
    assert len(tok.encode(EOT).ids) == 1 and tok.token_to_id(EOT) is not None


@pytest.mark.parametrize("text,expected", [
    ("2 + 3 = 5. So the answer is 5.", "5"),
    ("no answer here", None),
    ("So the answer is 5. So the answer is 6.", None),  # two different answers
    ("So the answer is 5. Indeed the answer is 05.", "5"),  # the same answer twice
    ("So the answer is 7. And then some trailing words 9.", "7"),
    ("So the answer is -3.", "-3"),
    ("THE ANSWER IS 4", "4"),
])
def test_arithmetic_extractor(text, expected):
    assert get_task("arithmetic").extract_answer(text) == expected


def test_yes_no_and_text_extractors():
    coin, letters = get_task("coinflip"), get_task("lastletter")
    assert coin.extract_answer("Ann flips: tails. So the answer is No.") == "no"
    assert coin.extract_answer("So the answer is yes. So the answer is no.") is None
    assert coin.answers_match("Yes", "yes") and not coin.answers_match(None, "yes")
    assert coin.extract_answer("So the answer is yes. Again, the answer is YES.") == "yes"
    assert letters.extract_answer("So the answer is nbt. Done") == "nbt"
    assert letters.extract_answer("So the answer is NBT.") == "nbt"
    assert letters.extract_answer("the answer is nbt, or the answer is nbx.") is None
    assert letters.extract_answer("The last letter of Ann is n.") is None
    assert coin.wrong_answers({"answer": "yes"}, 3, random.Random(0)) == ["no"]
    mc = {"answer": "b", "choices": ["a", "b", "c"]}
    assert sorted(coin.wrong_answers(mc, 5, random.Random(0))) == ["a", "c"]


def test_wrong_answers_are_plausible_and_wrong():
    rng = random.Random(0)
    arith, letters = get_task("arithmetic"), get_task("lastletter")
    for answer in ["0", "1", "7", "23"]:
        wrong = arith.wrong_answers({"answer": answer}, 3, rng)
        assert len(set(wrong)) == len(wrong) >= 2 and answer not in wrong
        assert all(0 <= int(w) and abs(int(w) - int(answer)) <= 5 for w in wrong)
    wrong = letters.wrong_answers({"answer": "nbt"}, 4, rng)
    assert len(set(wrong)) == 4 and all(len(w) == 3 and w != "nbt" for w in wrong)
    assert len(letters.wrong_answers({"answer": "n"}, 100, rng)) == 25  # all one-letter changes


def test_careless_arithmetic_never_goes_negative():
    task, rng = get_task("arithmetic"), random.Random(0)
    for _ in range(300):
        prob = task.make_problem(rng)
        text, answer = task.careless_rationale(prob, rng, 1.0)
        assert "-" not in text.replace(" - ", "") and int(answer) >= 0, text
        assert task.extract_answer(text) == answer


def arithmetic_steps(text):
    return [(int(a), op, int(b), int(c)) for a, op, b, c in
            re.findall(r"(-?\d+) ([+-]) (\d+) = (-?\d+)\.", text)]


def wrong_sums(steps):
    """Indices of the steps 'a op b = c' whose c is not a op b."""
    return [i for i, (a, op, b, c) in enumerate(steps) if (a + b if op == "+" else a - b) != c]


def slip_only(name):
    """A world task whose authors only slip: arithmetic's misread phrasings read right (the
    misconception has tests of its own, below)."""
    return get_task(name, misread=0.0) if name == "arithmetic" else get_task(name)


def test_rationalizations_and_careless_solutions():
    rng = random.Random(0)
    slip_steps = set()
    for name in WORLD_TASKS:
        task = slip_only(name)
        for _ in range(50):
            prob = task.make_problem(rng)
            # careless with error rate 0 is the gold rationale
            assert task.careless_rationale(prob, rng, 0.0)[0] == prob["rationale"]
            assert task.extract_answer(prob["rationale"]) == task.normalize(prob["answer"])
            right = task.rationalization(prob, prob["answer"], rng)
            assert right == prob["rationale"]
            wrong = task._wrong_answers(prob["answer"], 1, rng)[0]
            text = task.rationalization(prob, wrong, rng)
            assert task.extract_answer(text) == task.normalize(wrong)
            if name == "arithmetic":  # exactly one wrong step, every later step follows
                steps = arithmetic_steps(text)
                bad = wrong_sums(steps)
                assert len(bad) == 1
                assert all(steps[i][3] == steps[i + 1][0] for i in range(len(steps) - 1))
                assert all(s[3] >= 0 for s in steps)  # the world has no negative counts
                slip_steps.add(bad[0])
            elif name == "lastletter":  # exactly one wrong letter
                said = re.findall(r"The last letter of \w+ is (\w)\.", text)
                assert sum(a != b for a, b in zip(said, prob["letters"])) == 1
            else:  # coin flip: exactly one state that does not follow from the previous one
                assert coin_slips(text, prob["flips"]) == 1
    # an arithmetic author slips where they choose, not always at the last step
    assert len(slip_steps) >= 2


def coin_slips(text, flips):
    states = ["heads"] + re.findall(r": (heads|tails)\.", text)
    return sum((states[i] != states[i + 1]) != flips[i] for i in range(len(flips)))


def test_careless_rationalizers_reach_the_given_answer():
    """With noise, an author arguing for an answer slips on the way and bends a step to get
    there: always the given answer; for the correct one, sometimes through slips that cancel."""
    rng = random.Random(1)
    for name in ["arithmetic", "coinflip"]:
        task, cancelling = slip_only(name), 0
        for _ in range(300):
            prob = task.make_problem(rng)
            for given in [prob["answer"], task._wrong_answers(prob["answer"], 1, rng)[0]]:
                text = task.rationalization(prob, given, rng, noise=0.3)
                assert task.extract_answer(text) == task.normalize(given)
                if name == "arithmetic":
                    steps = arithmetic_steps(text)
                    assert all(steps[i][3] == steps[i + 1][0] for i in range(len(steps) - 1))
                    assert all(s[3] >= 0 for s in steps)
                    slips = len(wrong_sums(steps))
                else:
                    slips = coin_slips(text, prob["flips"])
                    assert slips % 2 == (given != prob["answer"])  # parity decides the answer
                cancelling += given == prob["answer"] and slips >= 2
        assert cancelling > 20, name


def test_step_checker_sees_slips_the_answer_check_cannot():
    rng = random.Random(2)
    for name in WORLD_TASKS:
        task = slip_only(name)
        for _ in range(100):
            prob = task.make_problem(rng)
            q, wrong = prob["question"], task._wrong_answers(prob["answer"], 1, rng)[0]
            assert task.step_errors(q, prob["rationale"]) == 0
            assert task.step_errors(q, task.rationalization(prob, wrong, rng)) == 1  # the bent step
            assert task.step_errors(q, task.assertion(prob, wrong, rng)) == 1  # a conclusion that does not follow
            assert task.step_errors(q, f"So the answer is {prob['answer']}.") is None  # no steps to read
    # a right answer through slips that cancel: the answer check passes it, the step checker does not
    coin, cancelled = get_task("coinflip"), 0
    for _ in range(300):
        prob = coin.make_problem(rng)
        text = coin.rationalization(prob, prob["answer"], rng, noise=0.3)
        assert coin.extract_answer(text) == prob["answer"]
        assert coin.step_errors(prob["question"], text) == coin_slips(text, prob["flips"])
        cancelled += coin.step_errors(prob["question"], text) >= 2
    assert cancelled > 20


def test_jsonl_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"id": "1", "question": "q", "answer": "a"}\n{"id": "2", "question": "q"\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        load_dataset(str(p))
    p.write_text('{"id": "1", "question": "q"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: missing field 'answer'"):
        load_dataset(str(p))
    p.write_text('{"id": "1", "question": "q", "answer": 5}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'answer' should be str"):
        load_dataset(str(p))
    p.write_text('["a list"]\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: expected a JSON object"):
        load_pairs(str(p))
    p.write_text("\n\n")
    with pytest.raises(DataError, match="no rows"):
        read_jsonl(str(p), {"x": str})
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "missing.jsonl"))
    p.write_text('{"id": "1", "question": "q", "answer": "a"}\n\n{"id": "1", "question": "r", "answer": "b"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:3: duplicate id '1' \(first on line 1\)"):
        load_dataset(str(p))
    p.write_text('{"id": "1", "question": "q", "answer": "a", "choices": ["a", 2]}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'choices' should be list\[str\]"):
        load_dataset(str(p))
    p.write_text('{"id": "1", "question": "q", "answer": "a", "rationale": null, "choices": ["a", "b"]}\n')
    assert load_dataset(str(p))[0]["choices"] == ["a", "b"]
    with pytest.raises(DataError, match="missing.json: no such file"):
        load_tokenizer(str(tmp_path / "missing.json"))


def test_a_resumed_log_keeps_the_rows_up_to_its_checkpoint(tmp_path):
    path = str(tmp_path / "run" / "train.log.jsonl")
    with open_log(path) as log:  # a fresh run: the folder is made, the log starts empty
        for step in (1, 2, 3):
            append_row(log, {"step": step})
        assert read_rows(path) == [{"step": 1}, {"step": 2}, {"step": 3}]  # flushed row by row
    with open_log(path, keep=lambda row: row["step"] <= 2) as log:  # resumed from step 2
        append_row(log, {"step": 3, "again": True})
    assert read_rows(path) == [{"step": 1}, {"step": 2}, {"step": 3, "again": True}]
    open_log(path).close()  # a fresh start over an old log
    assert read_rows(path) == []
    open_log(str(tmp_path / "new.log.jsonl"), keep=lambda row: True).close()  # resuming with no log yet
    assert read_rows(str(tmp_path / "new.log.jsonl")) == []


@pytest.mark.slow  # through the CLI, a process per case: CI runs it, -m "not slow" leaves it out
def test_unknown_task_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(ValueError, match="min_people"):
        get_task("coinflip", min_people=3, max_people=2)
    for bad, said in [(["--task", "nope"], "nope"), (["--hint_frac", "1.5"], "--hint_frac"),
                      (["--min_steps", "4", "--max_steps", "2"], "--min_steps"),
                      (["--task", "coinflip", "--max_operand", "5"], "--max_operand"),
                      (["--misread", "1.5"], "--misread"), (["--task", "coinflip", "--tricky", "0.5"], "--tricky"),
                      (["--world", "hard"], "--world")]:
        r = subprocess.run([sys.executable, "data/prepare.py", "--out_dir", str(tmp_path)] + bad,
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode != 0 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_small_question_space_corpus_may_repeat_but_avoids_splits(tmp_path):
    # lastletter with exactly 2 of 40 words has 1,560 questions: fewer than the corpus needs
    prepare_main(["--out_dir", str(tmp_path), "--task", "lastletter", "--min_steps", "2",
                  "--max_steps", "2", "--n_train", "300", "--n_val", "30", "--n_test", "200",
                  "--n_corpus", "3000", "--vocab_size", "300"])
    splits = {r["question"] for f in ["train.jsonl", "val.jsonl", "test.jsonl"]
              for r in load_dataset(str(tmp_path / f))}
    corpus = [json.loads(x)["text"] for x in lines(tmp_path / "corpus.jsonl")]
    questions = {re.match(r"Question: (.*?)\n", t).group(1) for t in corpus}
    assert len(splits) == 500 and len(corpus) == 3000 and not questions & splits


def test_max_operand_sets_the_size_of_the_numbers():
    # every start value and change of a question stays within --max_operand (3 by default)
    for knob in [None, 6]:
        task = get_task("arithmetic", **({} if knob is None else {"max_operand": knob}))
        rng, seen = random.Random(0), set()
        for _ in range(300):
            q = task.make_problem(rng)["question"]
            seen.update(int(n) for n in re.findall(r"\d+", q))
        assert seen == set(range(1, (knob or 3) + 1)), seen


def test_prepare_refuses_to_overwrite(world):
    before = (world["a"] / "train.jsonl").read_text()
    from sml import common
    with pytest.raises(common.UserError, match="already holds"):
        prepare_main(["--out_dir", str(world["a"]), "--preset", "tiny", "--seed", "9"])
    assert (world["a"] / "train.jsonl").read_text() == before


# -----------------------------------------------------------------------------
# The misread world (the default): phrasings most careless authors misread


def written_ops(task, prob, text):
    """Per step of a rationale: (the operation the question's sentence means, the one written)."""
    return [(op, written) for (op, _), (_, written, _, _) in zip(prob["ops"], task.RATIONALE_STEP_RE.findall(text))]


def test_misread_phrasings_at_their_rates_in_the_corpus(tmp_path):
    """A quarter of the changes are tricky phrasings; careless authors apply the other operation
    at 90% of them and never at a plain one; authors told the correct answer read every one right."""
    task, rng = get_task("arithmetic"), random.Random(0)
    tricky = steps = misread = plain_misread = right_misread = 0
    for _ in range(3000):
        prob = task.make_problem(rng)
        steps += len(prob["ops"])
        tricky += sum(prob["tricky"])
        for (op, written), t in zip(written_ops(task, prob, task.careless_rationale(prob, rng, 0.1)[0]), prob["tricky"]):
            misread += t and op != written
            plain_misread += not t and op != written
        right = task.rationalization(prob, prob["answer"], rng)
        right_misread += sum(op != written for op, written in written_ops(task, prob, right))
    assert 0.2 < tricky / steps < 0.27
    assert 0.87 < misread / tricky < 0.93
    assert plain_misread == right_misread == 0
    # and so in prepare.py's corpus: the worked solutions (no hint) misread about 90% of the tricky steps
    prepare_main(["--out_dir", str(tmp_path), "--preset", "tiny", "--seed", "3"])
    seen = wrong = 0
    for d in read_jsonl(tmp_path / "corpus.jsonl", {"text": str}):
        if "Hint:" in d["text"]:
            continue
        question, answer = d["text"].split("\nAnswer: ")
        asked = [(task.VERB_OPS[v], v) for v, _ in task.QUESTION_STEP_RE.findall(question)]
        for (op, verb), (_, written, _, _) in zip(asked, task.RATIONALE_STEP_RE.findall(answer)):
            if verb in ("takes back", "takes", "adds", "puts"):
                seen, wrong = seen + 1, wrong + (op != written)
    assert seen > 500 and 0.85 < wrong / seen < 0.95


def test_every_phrasing_has_its_gold_rationale_and_the_checker_flags_a_misreading():
    task, rng = get_task("arithmetic"), random.Random(1)
    phrasings = task.ADD + task.SUB + task.TRICKY_ADD + task.TRICKY_SUB
    seen, flagged = set(), 0
    for _ in range(2000):
        prob = task.make_problem(rng)
        q = prob["question"]
        seen |= {t for t in phrasings if re.search(t.format(n=r"\w+", a=r"\d+"), q)}
        # the gold rationale: the operation each sentence means, every step right, the answer
        assert [op for op, _ in written_ops(task, prob, prob["rationale"])] == [op for op, _ in prob["ops"]]
        assert task.step_errors(q, prob["rationale"]) == 0
        assert task.extract_answer(prob["rationale"]) == prob["answer"]
        # a misread step, computed right, is one wrong step, and every step after it follows
        misread = task._chain(prob["start"], [(task.OTHER_OP[op] if t else op, a) for (op, a), t
                                              in zip(prob["ops"], prob["tricky"])])[0]
        assert task.step_errors(q, misread) == sum(prob["tricky"])
        flagged += sum(prob["tricky"]) > 0
        assert min(s[3] for s in arithmetic_steps(misread)) >= 0  # no reading goes below zero
    assert seen == set(phrasings) and flagged > 500
    assert task.step_errors("Tom has 3 cups. Tom adds 2 to a gift box. How many cups does Tom have now?",
                            "3 + 2 = 5. So the answer is 5.") == 1
    assert task.step_errors("Tom has 3 cups. Tom adds 2 to a gift box. How many cups does Tom have now?",
                            "3 - 2 = 1. So the answer is 1.") == 0


def test_the_easy_world_is_the_world_before_the_misread_phrasings(tmp_path):
    """--world easy writes the splits and the corpus of the earlier default world byte for byte
    (sha256 of the tiny preset, seed 1, as commit 117ec97 wrote them)."""
    import hashlib
    prepare_main(["--out_dir", str(tmp_path), "--preset", "tiny", "--seed", "1", "--world", "easy"])
    digests = {f: hashlib.sha256((tmp_path / f).read_bytes()).hexdigest()[:16]
               for f in ("train.jsonl", "val.jsonl", "test.jsonl", "corpus.jsonl")}
    assert digests == {"train.jsonl": "d24047cac47358e6", "val.jsonl": "b9ef21911ce1d9bd",
                       "test.jsonl": "51e2be12c0f2f50a", "corpus.jsonl": "ba7df49558f939d3"}
    assert json.loads((tmp_path / "meta.json").read_text())["args"]["noise"] == 0.2


def test_evaluate_world_prints_each_property_with_its_bound(tiny_run, tmp_path, capsys):
    """evaluate.py world: greedy accuracy as evaluate.py eval reads it, the temperature sweep,
    and the shares of the greedy-wrong questions, each with its bound and PASS or FAIL."""
    import evaluate
    out = tmp_path / "world.json"
    flags = ["--data_dir", tiny_run["data"], "--limit", "8", "--device", "cpu"]
    evaluate.main(["world", "--base", tiny_run["base"], "--k", "1", "--k_hinted", "2", "--json", str(out)] + flags)
    printed = capsys.readouterr().out
    props = json.loads(out.read_text())
    evaluate.main(["eval", "--ckpt", tiny_run["base"], "--summary", str(tmp_path / "eval.json")] + flags)
    greedy = json.loads((tmp_path / "eval.json").read_text())
    assert props["greedy"] == greedy["accuracy"] and props["greedy_wrong"] == 8 - greedy["correct"]
    assert set(props["temperatures"]) == {"1.0", "0.8", "0.6", "0.4", "0.2"}
    assert props["temperature_lift"] == max(props["temperatures"].values()) - props["greedy"]
    assert set(props["pass"]) == {"greedy", "temperature_lift", "systematic", "hinted_sound"}  # no --gold
    assert 0 <= props["hinted_sound"] <= props["hinted_sound_any"] <= 1 and 0 <= props["systematic"] <= 1
    for what, ok in props["pass"].items():
        assert evaluate.WORLD_BOUNDS[what][0] in printed and ("PASS" if ok else "FAIL") in printed
    with pytest.raises(UserError, match="nope.pt: no such checkpoint"):  # common.run: one line
        evaluate.main(["world", "--base", str(tmp_path / "nope.pt")] + flags)
