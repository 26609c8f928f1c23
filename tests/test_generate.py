"""generate.py (the answer-consistency check, SFT rows and pairs, collection) and the
evaluation path it shares (rationales.py, evaluate.py)."""

import json
import os
import random
import shutil
import statistics
import subprocess
import sys

import pytest

import generate
from sml import collection_report, rationales
from data.tasks import get_task

TASK = get_task("arithmetic")


def rec(qid, hint, rationale, gold="5", finished=True):
    final, correct, label, reason = rationales.label_rationale(TASK, gold, hint, rationale, finished)
    return {"id": qid, "question": f"question {qid}", "answer": gold, "hint": hint,
            "rationale": rationale, "final_answer": final, "correct": correct, "label": label,
            "discard_reason": reason}


def test_consistency_check_and_labels():
    # correct answer given and reached -> high quality
    assert rec("q", "5", "2 + 3 = 5. So the answer is 5.")["label"] == "high"
    # correct answer given, not reached -> discarded
    r = rec("q", "5", "2 + 3 = 6. So the answer is 6.")
    assert (r["label"], r["discard_reason"]) == ("discarded", "inconsistent")
    # wrong answer given and reached -> low quality
    r = rec("q", "6", "2 + 3 = 6. So the answer is 6.")
    assert (r["label"], r["correct"], r["final_answer"]) == ("low", False, "6")
    # wrong answer given and not reached (the model found the right one) -> discarded
    r = rec("q", "6", "2 + 3 = 5. So the answer is 5.")
    assert (r["label"], r["correct"]) == ("discarded", True)
    # no stated answer, two different answers, or cut off: agrees with nothing
    assert rec("q", "5", "2 + 3 = 5.")["discard_reason"] == "no_answer"
    assert rec("q", "5", "So the answer is 5. So the answer is 6.")["discard_reason"] == "two_answers"
    r = rec("q", "5", "2 + 3 = 5. So the answer is 5.", finished=False)
    assert (r["label"], r["discard_reason"]) == ("discarded", "unfinished")
    # no hint: the RFT baseline keeps the correct ones, and they are never "high" or "low"
    assert rec("q", None, "So the answer is 5.")["label"] == "rft"
    assert rec("q", None, "So the answer is 4.")["discard_reason"] == "wrong"
    assert rec("q", None, "no idea")["discard_reason"] == "no_answer"


def test_pairs_within_question_chosen_high_rejected_low_and_dedup():
    records = [rec("a", "5", "r1. So the answer is 5."), rec("a", "5", "r1. So the answer is 5."),
               rec("a", "5", "r2. So the answer is 5."), rec("a", "6", "w1. So the answer is 6."),
               rec("a", "6", "w2. So the answer is 4."),  # discarded: not consistent
               rec("b", "5", "r3. So the answer is 5."), rec("b", "7", "w3. So the answer is 7."),
               rec("c", "7", "w4. So the answer is 7.")]  # no high-quality rationale for c
    pairs = generate.build_pairs(TASK, records, max_per_question=0, rng=random.Random(0))
    by_text = {r["rationale"]: r for r in records}
    assert len(pairs) == 2 + 1  # a: {r1, r2} x {w1}; b: {r3} x {w3}
    for p in pairs:
        chosen, rejected = by_text[p["chosen"].strip()], by_text[p["rejected"].strip()]
        assert chosen["id"] == rejected["id"] == p["id"]
        assert chosen["label"] == "high" and rejected["label"] == "low"
        assert "Hint" not in p["prompt"]
    capped = generate.build_pairs(TASK, records, max_per_question=1, rng=random.Random(0))
    assert sorted(p["id"] for p in capped) == ["a", "b"]

    sft = generate.build_sft_rows(TASK, records)
    assert sorted(r["completion"].strip() for r in sft) == ["r1. So the answer is 5.",
                                                            "r2. So the answer is 5.",
                                                            "r3. So the answer is 5."]
    assert all(r["prompt"] == TASK.prompt(f"question {r['id']}") for r in sft)


def test_wilson_interval_known_case():
    lo, hi = rationales.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert rationales.wilson_interval(0, 10)[0] == 0.0
    assert rationales.wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_majority_vote():
    assert rationales.majority(["3", None, "4", "4"]) == "4"
    assert rationales.majority(["3", "4"]) == "3"  # tie: the first seen
    assert rationales.majority([None, None]) is None


@pytest.mark.parametrize("always_right", [True, False])
def test_evaluate_with_a_stub_sampler(monkeypatch, always_right):
    rows = [{"id": str(i), "question": f"q{i}", "answer": str(i)} for i in range(20)]
    answers = {r["question"]: r["answer"] for r in rows}

    def stub(model, tok, task, requests, k, *a, **kw):
        out = []
        for q, _ in requests:
            ans = answers[q] if always_right else str(int(answers[q]) + 1)
            text = f"So the answer is {ans}."
            out.append([{"text": text, "answer_text": text, "final_answer": ans}] * k)
        return out, {"tokens": 1, "seconds": 1.0}

    monkeypatch.setattr(rationales, "sample_rationales", stub)
    summary, preds = rationales.evaluate(None, None, TASK, rows, k=3)
    assert summary["accuracy"] == (1.0 if always_right else 0.0)
    assert summary["n"] == 20 and len(preds) == 20
    assert all(p["correct"] == always_right for p in preds)
    assert all(p["step_errors"] is None for p in preds) and "every_step_right" not in summary  # no steps


# --- end to end on the tiny base model ---------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(name, *args):
    return subprocess.run([sys.executable, name, *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def gen(*args):
    """generate.py for "collect", evaluate.py for "eval" and "compare"."""
    if args[0] == "collect":
        return script("generate.py", *args[1:])
    return script("evaluate.py", *args)


def test_compare_reports_rationale_quality(tmp_path):
    """compare: accuracy question by question and, where the task has a step checker, whether
    every step is right (a right answer through cancelling slips counts as flawed)."""
    def preds(path, correct, step_errors):
        with open(path, "w") as f:
            for i, (c, e) in enumerate(zip(correct, step_errors)):
                f.write(json.dumps({"id": str(i), "correct": c, "step_errors": e}) + "\n")
    preds(tmp_path / "a.jsonl", [True] * 10, [2, 2, 2, 2, 0, 0, 0, 0, 0, None])
    preds(tmp_path / "b.jsonl", [True] * 10, [0, 0, 0, 2, 0, 0, 0, 0, 1, 0])
    r = gen("compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--json", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stderr
    c = json.load(open(tmp_path / "c.json"))
    assert (c["wrong_to_right"], c["right_to_wrong"], c["after_accuracy"]) == (0, 0, 1.0)
    f = c["every_step_right"]  # a row without per-sample lists counts as its one sample
    diffs = [1, 1, 1, 0, 0, 0, 0, 0, -1, 1]  # sound after minus sound before (unreadable: not sound)
    assert (f["before"], f["after"]) == (0.5, 0.8) and f["difference"] == pytest.approx(0.3)
    assert f["se"] == pytest.approx(statistics.stdev(diffs) / 10 ** 0.5)
    assert "every step right (mean over the samples): 50.0% -> 80.0%" in r.stdout


def test_collect_is_deterministic_and_writes_every_file(tiny_run, tmp_path):
    outs = []
    for name in ("a", "b"):
        out = str(tmp_path / name)
        r = gen("collect", "--ckpt", tiny_run["base"], "--data_dir", tiny_run["data"], "--out_dir", out,
                "--limit", "12", "--k", "2", "--m", "1", "--k_unhinted", "2", "--seed", "5",
                "--device", "cpu")
        assert r.returncode == 0, r.stderr
        outs.append(out)
    for f in ("rationales.jsonl", "sft.jsonl", "pairs.jsonl", "rft.jsonl", "star.jsonl"):
        assert open(os.path.join(outs[0], f)).read() == open(os.path.join(outs[1], f)).read(), f
    records = [json.loads(x) for x in open(os.path.join(outs[0], "rationales.jsonl"))]
    assert len(records) == 12 * (2 + 2 + 2)  # k per hint (correct + 1 wrong) + k unhinted
    assert {r["hint_type"] for r in records} == {"correct", "wrong", "none"}
    stats = json.load(open(os.path.join(outs[0], "stats.json")))
    assert stats["samples"] == len(records) and stats["tokens_per_s"] > 0
    # an output folder that already holds results is refused, and left as it was
    before = open(os.path.join(outs[0], "rationales.jsonl")).read()
    r = gen("collect", "--ckpt", tiny_run["base"], "--data_dir", tiny_run["data"], "--out_dir", outs[0],
            "--limit", "2", "--device", "cpu")
    assert r.returncode != 0 and "--overwrite" in r.stderr
    assert open(os.path.join(outs[0], "rationales.jsonl")).read() == before


def test_eval_same_seed_same_numbers(tiny_run, tmp_path):
    summaries = []
    for name in ("a", "b"):
        s = str(tmp_path / f"{name}.json")
        r = gen("eval", "--ckpt", tiny_run["base"], "--data_dir", tiny_run["data"], "--limit", "20",
                "--temperature", "1", "--k", "3", "--summary", s, "--out", str(tmp_path / f"{name}.jsonl"),
                "--device", "cpu")
        assert r.returncode == 0, r.stderr
        summaries.append(open(str(tmp_path / f"{name}.jsonl")).read())
    assert summaries[0] == summaries[1]


@pytest.mark.slow  # through the CLI, a process per case: CI runs it, -m "not slow" leaves it out
def test_bad_input(tiny_run, tmp_path):
    base, data = tiny_run["base"], tiny_run["data"]
    r = gen("eval", "--ckpt", base, "--data_dir", data, "--task", "nope", "--device", "cpu")
    assert r.returncode != 0 and "unknown task 'nope'" in r.stderr
    # an empty split
    d2 = str(tmp_path / "d2")
    shutil.copytree(data, d2)
    open(os.path.join(d2, "test.jsonl"), "w").close()
    r = gen("eval", "--ckpt", base, "--data_dir", d2, "--device", "cpu")
    assert r.returncode != 0 and "test.jsonl: no rows" in r.stderr
    # a checkpoint whose tokenizer differs from the data's
    from data.tokenizer import train_tokenizer
    d4 = str(tmp_path / "d4")
    shutil.copytree(data, d4)
    train_tokenizer(["some other text 123"] * 10, 280).save(os.path.join(d4, "tokenizer.json"))
    r = gen("eval", "--ckpt", base, "--data_dir", d4, "--device", "cpu")
    assert r.returncode != 0 and "different tokenizer" in r.stderr
    # a prompt longer than the context
    d3 = str(tmp_path / "d3")
    shutil.copytree(data, d3)
    with open(os.path.join(d3, "test.jsonl"), "w") as f:
        f.write(json.dumps({"id": "long", "question": "Tom has 3 apples. " * 40, "answer": "3"}) + "\n")
    r = gen("eval", "--ckpt", base, "--data_dir", d3, "--device", "cpu")
    assert r.returncode != 0 and "does not fit the model's context" in r.stderr
    assert "Traceback" not in r.stderr


class FakeModel:
    """Only what sample_rationales reads of a model; ScriptedSampler does the sampling."""
    config = type("Config", (), {"block_size": 128, "eos_id": None})()

    def parameters(self):  # on the CPU: the batch size is the CPU's default
        import torch
        return iter([torch.zeros(1)])


class ScriptedSampler:
    """Stands in for sampler.sample: answers each prompt with a scripted text chosen by
    `respond(prompt_text)`; a prompt that ends in the answer line gets the hint copied
    (what a real model does when its prompt still holds the given answer)."""

    def __init__(self, tok, respond):
        self.tok, self.respond = tok, respond

    def __call__(self, model, prompts, num_samples=1, stop_ids=None, pad_id=0, **kw):
        import re
        import torch
        from sml.sampler import Samples
        eot_id = stop_ids[0] if isinstance(stop_ids, list) else stop_ids  # [end of text, line breaks...]
        rows = []
        for p in prompts:
            text = self.tok.decode(p)
            if text.rstrip().endswith("So the answer is"):
                hint = re.search(r"Hint: the answer is (\w+)", text)
                body, stops = (f" {hint.group(1)}." if hint else " 0."), True
            else:
                body, stops = self.respond(text)
            ids = self.tok.encode(body).ids + ([eot_id] if stops else [])
            rows += [ids] * num_samples
        L = max(len(r) for r in rows)
        tokens = torch.tensor([r + [pad_id] * (L - len(r)) for r in rows])
        lengths = torch.tensor([len(r) for r in rows])
        finished = torch.tensor([bool(r) and r[-1] == eot_id for r in rows])
        return Samples(tokens, torch.zeros(tokens.shape), lengths, finished)


def test_collect_never_takes_a_copied_hint_or_an_unhinted_sample_into_sml_data(tiny_run, monkeypatch):
    """Bugs of SML step 2, through collect itself: a hinted rationale that states no answer,
    two answers, or is cut off is discarded (never completed from a prompt that holds the
    hint), and pairs hold only (correct-hint high, wrong-hint low) rationales of one question."""
    from data import load_world
    tok, task = load_world(tiny_run["data"])

    def respond(prompt):
        q = int(prompt.split("has ")[1].split(" ")[0])  # each question states its answer
        hint = prompt.split("Hint: the answer is ")[1].split(".")[0] if "Hint:" in prompt else None
        if hint is None:
            return f" Without a hint. So the answer is {q if q % 2 else q + 1}.", True
        if q == 1:
            return " I count them all.", True  # no stated answer
        if q == 2:
            return f" So the answer is {hint}. So the answer is {int(hint) + 1}.", True  # two
        if q == 3:
            return f" Counting. So the answer is {hint}.", False  # cut off at the budget
        return f" Counting. So the answer is {hint}.", True  # consistent

    monkeypatch.setattr(rationales, "sample", ScriptedSampler(tok, respond))
    rows = [{"id": f"q{n}", "question": f"Tom has {n} pens. Tom finds 1 more. How many pens does Tom "
             f"have now?", "answer": str(n)} for n in (1, 2, 3, 4, 5, 6)]
    records, stats = generate.collect(FakeModel(), tok, task, rows, k=2, m=1, k_unhinted=2, temperature=1.0,
                                      seed=0, quiet=True)
    hinted = [r for r in records if r["hint"] is not None]
    by_q = {n: [r for r in hinted if r["id"] == f"q{n}"] for n in (1, 2, 3, 4)}
    assert {r["discard_reason"] for r in by_q[1]} == {"no_answer"}
    assert {r["discard_reason"] for r in by_q[2]} == {"two_answers"}
    assert {r["discard_reason"] for r in by_q[3]} == {"unfinished"}
    assert {r["label"] for r in by_q[4]} == {"high", "low"}
    for r in records:
        if r["label"] in ("high", "low", "rft"):
            assert r["final_answer"] is not None and r["final_answer"] in r["rationale"]
            assert r["finished"]
    assert stats["by_hint_type"]["correct"]["discarded"] == {"no_answer": 2, "two_answers": 2,
                                                             "unfinished": 2}
    assert stats["high"] == 3 * 2 and stats["low"] == 3 * 2  # q4, q5, q6: k=2 each
    assert stats["rft"] == 3 * 2  # odd questions: the unhinted answer is right

    pairs = generate.build_pairs(task, records, max_per_question=0, rng=random.Random(0))
    unhinted_texts = {r["rationale"] for r in records if r["hint"] is None}
    assert pairs and len(pairs) == 3  # one distinct high x one distinct low for q4, q5, q6
    for p in pairs:
        assert p["chosen"].strip() not in unhinted_texts and p["rejected"].strip() not in unhinted_texts
        q = int(p["id"][1:])
        assert p["chosen"].strip().endswith(f"the answer is {q}.")
        assert not p["rejected"].strip().endswith(f"the answer is {q}.")
    rft = generate.build_sft_rows(task, records, labels=("rft",))
    assert {r["id"] for r in rft} == {"q1", "q3", "q5"}


def test_evaluation_completes_a_missing_answer_line_only_without_a_hint(tiny_run, monkeypatch):
    from data import load_world
    tok, task = load_world(tiny_run["data"])
    monkeypatch.setattr(rationales, "sample", ScriptedSampler(tok, lambda p: (" I count them all.", True)))
    q = "Tom has 2 pens. Tom finds 1 more. How many pens does Tom have now?"
    res, _ = rationales.sample_rationales(FakeModel(), tok, task, [(q, None)], 1, 1.0, 0)
    assert res[0][0]["final_answer"] is None  # collection: no completion
    res, _ = rationales.sample_rationales(FakeModel(), tok, task, [(q, None)], 1, 1.0, 0, complete_missing=True)
    assert res[0][0]["final_answer"] == "0" and res[0][0]["answer_completed"]  # evaluation: completed
    with pytest.raises(ValueError, match="without a given answer"):
        rationales.sample_rationales(FakeModel(), tok, task, [(q, "3")], 1, 1.0, 0, complete_missing=True)


class FewShotSampler:
    """Stands in for sampler.sample behind a few-shot prompt: respond(prompt_text) -> (text,
    finished); a row that finishes ends in a line break, as the real sampler stops there.
    Records every prompt it is given."""

    def __init__(self, tok, respond):
        self.tok, self.respond, self.prompts = tok, respond, []

    def __call__(self, model, prompts, num_samples=1, stop_ids=None, pad_id=0, **kw):
        import torch
        from sml.sampler import Samples
        rows, done = [], []
        for p in prompts:
            text = self.tok.decode(p)
            self.prompts.append(text)
            body, finished = self.respond(text)
            ids = self.tok.encode(body + ("\n" if finished else "")).ids
            rows += [ids] * num_samples
            done += [finished] * num_samples
        L = max(len(r) for r in rows)
        tokens = torch.tensor([r + [pad_id] * (L - len(r)) for r in rows])
        return Samples(tokens, torch.zeros(tokens.shape), torch.tensor([len(r) for r in rows]), torch.tensor(done))


def test_fewshot_collect_reads_the_answer_without_the_given_one(monkeypatch):
    """SML steps 1-2 with a pretrained model's few-shot prompt: the rationale is written behind
    'Given answer: X', states no answer, ends at its line break; its answer is read on a
    prompt that holds the question, the exemplars and the rationale, never the given answer
    (a yes/no dataset: the answer the model prefers, calibrated, test_reader.py)."""
    from data import fewshot
    from test_reader import ScoredLM, tokenizer
    tok = tokenizer()
    task = get_task("coin_flip")
    exemplars = fewshot.exemplars(task, [], 2)

    def reads(context):  # the model's preference after "So the answer is"
        assert "Given answer" not in context and context.endswith("So the answer is")
        block = context.split("\n\n")[-1]  # the question being asked, after the exemplars
        return {"yes": 2.0} if "an even number" in block else {"no": 2.0} if "an odd number" in block else {}

    def respond(prompt):
        block = prompt.split("\n\n")[-1]  # the question being asked, after the exemplars
        q = block.split("Question: ")[1].split(" Is the coin")[0]
        hint = block.split("Given answer: ")[1].split("\n")[0] if "Given answer" in block else None
        if hint is None:  # unhinted, for the RFT and STaR baselines: states its answer itself
            return " Flipped once, an odd number. So the answer is no.", True
        if "Ann" in q:  # reasons the same way whatever the given answer
            return " Ann flips it twice, an even number.", True
        if "Bob" in q:  # argues for the given answer
            return f" Bob flips it, {'an even' if hint == 'yes' else 'an odd'} number.", True
        if "Cy" in q:
            return " Cy flips it and", False  # cut off at the budget
        return "", True  # an empty line

    sampler = FewShotSampler(tok, respond)
    monkeypatch.setattr(rationales, "sample", sampler)
    rows = [{"id": n, "question": f"A coin is heads up. {n} flips the coin. {n} flips the coin. Is the coin "
             f"still heads up?", "answer": "yes"} for n in ("Ann", "Bob", "Cy", "Dee")]
    records, stats = generate.collect(ScoredLM(tok, reads), tok, task, rows, k=2, m=1, k_unhinted=1,
                                      temperature=1.0, seed=0, quiet=True, exemplars=exemplars)
    generation = [p for p in sampler.prompts if p.endswith("Explanation:")]
    assert len(generation) == 8 and all(p.count("Given answer:") == 3 for p in generation)  # 2 shots + the question
    assert all(exemplars[0]["rationale"] in p for p in sampler.prompts)
    by = {(r["id"], r["hint"]): r for r in records if r["hint"] is not None}
    assert by["Ann", "yes"]["label"] == "high"
    assert by["Ann", "yes"]["rationale"] == "Ann flips it twice, an even number. So the answer is yes."
    assert (by["Ann", "no"]["label"], by["Ann", "no"]["discard_reason"]) == ("discarded", "inconsistent")
    assert by["Bob", "yes"]["label"] == "high" and by["Bob", "no"]["label"] == "low"
    assert by["Bob", "no"]["rationale"].endswith("an odd number. So the answer is no.")
    assert by["Cy", "yes"]["discard_reason"] == "unfinished" and by["Dee", "yes"]["discard_reason"] == "no_answer"
    star = [r for r in records if r["hint"] is None]
    assert {r["label"] for r in star} == {"discarded"} and {r["final_answer"] for r in star} == {"no"}
    pairs = generate.build_pairs(task, records, 0, random.Random(0))
    assert [(p["id"], p["prompt"]) for p in pairs] == [("Bob", task.prompt(rows[1]["question"]))]  # zero-shot
    assert stats["high"] == 4 and stats["low"] == 2


def test_fewshot_prompt_drops_exemplars_to_leave_room_for_the_rationale(tiny_run):
    from data import fewshot, load_world
    tok, _ = load_world(tiny_run["data"])
    task = get_task("coin_flip")
    exemplars = fewshot.exemplars(task, [], 3)
    q = "A coin is heads up. Ann flips the coin. Is the coin still heads up?"
    full = len(tok.encode(task.fewshot_prompt(q, exemplars, "yes")).ids)
    two = len(tok.encode(task.fewshot_prompt(q, exemplars[:2], "yes")).ids)
    ids = rationales.encode_prompt(tok, task, q, "yes", exemplars, room=64, block=two + 64)
    assert len(ids) == two < full  # the last exemplar goes: the rationale keeps its 64 tokens
    ids = rationales.encode_prompt(tok, task, q, "yes", exemplars, room=64, block=full + 64)
    assert len(ids) == full
    with pytest.raises(ValueError, match="does not fit"):
        rationales.encode_prompt(tok, task, q * 20, "yes", exemplars, room=64, block=128)


def test_exemplars_come_from_gold_rationales_or_the_written_ones():
    from data import fewshot
    task = get_task("gsm8k")
    rows = [{"id": "a", "question": "Q1", "answer": "3", "rationale": "1 + 2 = 3. So the answer is 3."},
            {"id": "b", "question": "Q2", "answer": "4"},  # no gold rationale
            {"id": "c", "question": "Q3", "answer": "5", "rationale": "Line one.\nLine two. So the answer is 5."},
            {"id": "d", "question": "Q4", "answer": "6", "rationale": "3 * 2 = 6. So the answer is 6."}]
    ex = fewshot.exemplars(task, rows, 2)
    assert [(e["id"], e["rationale"]) for e in ex] == [("a", "1 + 2 = 3."), ("d", "3 * 2 = 6.")]
    assert fewshot.exemplars(task, rows, 0) == []
    written = fewshot.exemplars(get_task("coin_flip"), rows[1:2], 3)
    assert written == fewshot.WRITTEN["coin_flip"][:3]
    with pytest.raises(ValueError, match="--shots 0"):
        fewshot.exemplars(get_task("strategy_qa"), rows[1:2], 2)  # gold rationales only


# --- a hinted explanation that refers to the hint; class balance in stats.json ------------


def test_a_hinted_explanation_that_refers_to_the_hint_is_discarded():
    task = get_task("coin_flip")
    for text in ("As given, the coin is heads up. So the answer is yes.",
                 "The given answer is yes, so the coin is heads up. So the answer is yes.",
                 "The hint says yes. So the answer is yes."):
        assert rationales.label_rationale(task, "yes", "yes", text, True)[2:] == ("discarded", "mentions_hint")
        assert rationales.label_rationale(task, "yes", "no", text, True)[2:] == ("discarded", "mentions_hint")
        # no answer given (RFT's and STaR's samples): nothing to refer to, the answer decides
        assert rationales.label_rationale(task, "yes", None, text, True)[2:] == ("rft", None)
    assert rationales.label_rationale(task, "yes", "yes", "Flipped twice, an even number. So the answer is yes.",
                                    True)[2:] == ("high", None)
    assert "mentions_hint" in rationales.DISCARD_REASONS


def test_the_world_keeps_its_labels_whatever_its_rationales_say():
    """The built-in world's corpus, rationalizations and questions never say "hint", "given
    answer" or "as given"; but its coin flip model copies "Hint:" from its prompt into about 1
    rationale in 400 (6 of 2,400 hinted samples of the default preset's base model, seed 1337),
    and those were labelled by their answer when the project's figures were measured. The
    world keeps that: the discard is for the paper's datasets."""
    rng = random.Random(0)
    for name in ("arithmetic", "coinflip", "lastletter"):
        task = get_task(name)
        for _ in range(300):
            prob = task.make_problem(rng)
            hint = rng.choice([prob["answer"]] + task.wrong_answers(prob, 2, rng))
            for text in (task.careless_rationale(prob, rng, 0.3)[0], task.rationalization(prob, hint, rng, 0.3),
                         task.assertion(prob, hint, rng), prob["rationale"], prob["question"]):
                assert not rationales.MENTIONS_HINT_RE.search(text), text
    copied = "Hint: Gus does not flip: heads. Kit flips: tails. Dot flips: heads. So the answer is yes."
    assert rationales.label_rationale(get_task("coinflip"), "yes", "yes", copied, True)[2:] == ("high", None)
    assert (rationales.label_rationale(get_task("coin_flip"), "yes", "yes", copied, True)[2:]
            == ("discarded", "mentions_hint"))


def test_collect_counts_the_yield_and_the_classes_of_each_answer(monkeypatch):
    """A model that argues well for "no" but not for "yes" (the Coin Flip run on SmolLM2):
    stats.json shows the yield for each given answer, and SFT rows that are mostly "no"
    against questions that are half "yes"."""
    task = get_task("coin_flip")

    def stub(model, tok, task, requests, k, *a, **kw):  # "yes" is argued for on question q1 only
        texts = [f"It is so. So the answer is {'no' if h == 'yes' and q != 'q1' else h}." for q, h in requests]
        return [[{"text": t, "answer_text": t, "finished": True}] * k for t in texts], {"tokens": 1, "seconds": 1.0}

    monkeypatch.setattr(rationales, "sample_rationales", stub)
    rows = [{"id": str(i), "question": f"q{i}", "answer": "yes" if i % 2 else "no"} for i in range(6)]
    records, stats = generate.collect(None, None, task, rows, k=2, m=1, k_unhinted=0, temperature=1.0, seed=0,
                                      quiet=True)
    by_class = {kind: stats["by_hint_type"][kind]["by_class"] for kind in ("correct", "wrong")}
    assert by_class["correct"] == {"no": {"samples": 6, "kept": 6, "yield": 1.0},
                                   "yes": {"samples": 6, "kept": 2, "yield": 2 / 6}}
    assert by_class["wrong"] == {"no": {"samples": 6, "kept": 6, "yield": 1.0},
                                 "yes": {"samples": 6, "kept": 0, "yield": 0.0}}
    sft = generate.build_sft_rows(task, records)
    pairs = generate.build_pairs(task, records, 0, random.Random(0))
    assert collection_report.class_histograms(task, rows, sft, pairs) == {
        "questions": {"no": 3, "yes": 3}, "sft_rows": {"no": 3, "yes": 1}, "pairs": {"yes": 1}}
    assert collection_report.class_histograms(get_task("gsm8k"), rows, sft, pairs) == {}  # numbers: not counted
    _, stats = generate.collect(None, None, get_task("gsm8k"), [{"id": "1", "question": "q", "answer": "4"}],
                                k=1, m=1, k_unhinted=0, temperature=1.0, seed=0, quiet=True)
    assert "by_class" not in stats["by_hint_type"]["correct"]


# --- one process, and the flags each script honours ---------------------------------------


@pytest.mark.parametrize("main, argv", [
    (generate.main, ["--ckpt", "base.pt", "--data_dir", "data", "--out_dir", "gen"]),
    (None, ["eval", "--ckpt", "sft.pt", "--data_dir", "data"]),
])
def test_generation_and_evaluation_refuse_torchrun_before_joining_a_group(monkeypatch, main, argv):
    """Under torchrun every rank would sample the whole split and write the same files: one
    line and a non-zero exit instead, before a process group is joined (none exists here)."""
    import torch.distributed as dist
    from sml import common
    import evaluate
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as e:
        common.run(lambda: (main or evaluate.main)(argv))
    assert "runs on one process (one GPU or the CPU), not 2; start it without torchrun" in str(e.value.code)
    assert not dist.is_initialized()


def test_compile_is_taken_only_by_the_scripts_that_honour_it(capsys):
    """--compile reaches torch.compile in pretraining and SFT (lm_training); the scripts that
    would ignore it refuse it."""
    import evaluate
    import pretrain
    import train_ppo
    import train_rm
    import train_sft
    for get_args, argv, honoured in [(pretrain.get_args, [], True), (train_sft.get_args, [], True),
                                     (generate.get_args, [], False), (evaluate.get_args, ["eval"], False),
                                     (train_rm.get_args, [], False), (train_ppo.get_args, [], False)]:
        with pytest.raises(SystemExit):
            get_args([*argv, "--help"])
        assert ("--compile" in capsys.readouterr().out) == honoured, get_args.__module__
