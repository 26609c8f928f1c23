"""The baselines and the measures the results table is built on: STaR's data (correct
rationales, and rationalizations for the questions the model got wrong), the mean over k
samples per question with its standard error, the paired test on it, the results table's
numbered rows (STaR iterations, SML rounds), and run.sh's wiring of rounds and iterations."""

import json
import math
import os
import stat
import statistics
import subprocess
import sys

import pytest
import torch

import evaluate
import generate
from sml import rationales
from tools import results
from data.tasks import get_task

TASK = get_task("arithmetic")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rec(qid, hint, rationale, gold="5"):
    final, correct, label, reason = rationales.label_rationale(TASK, gold, hint, rationale, True)
    return {"id": qid, "question": f"question {qid}", "answer": gold, "hint": hint, "rationale": rationale,
            "final_answer": final, "correct": correct, "label": label, "discard_reason": reason}


# --- STaR -------------------------------------------------------------------------------


def test_star_rows_rationalize_exactly_the_questions_the_model_got_wrong():
    records = [
        # a: solved with no answer given; its rationalization is not needed
        rec("a", None, "2 + 3 = 5. So the answer is 5."), rec("a", "5", "ra. So the answer is 5."),
        # b: wrong in every unhinted sample; its rationalizations (deduplicated) come in
        rec("b", None, "2 + 3 = 6. So the answer is 6."), rec("b", "5", "rb. So the answer is 5."),
        rec("b", "5", "rb. So the answer is 5."), rec("b", "7", "lb. So the answer is 7."),  # low: never
        # c: wrong, and no consistent rationalization either: no row
        rec("c", None, "So the answer is 4."), rec("c", "5", "rc. So the answer is 6."),
    ]
    assert [r["label"] for r in records] == ["rft", "high", "discarded", "high", "high", "low",
                                             "discarded", "discarded"]
    rows = generate.build_star_rows(TASK, records)
    assert [(r["id"], r["completion"].strip()) for r in rows] == [("a", "2 + 3 = 5. So the answer is 5."),
                                                                  ("b", "rb. So the answer is 5.")]
    assert all(r["prompt"] == TASK.prompt(f"question {r['id']}") for r in rows)  # no hint in the prompt
    # RFT is the first half only: no rationalization
    assert [r["id"] for r in generate.build_sft_rows(TASK, records, labels=("rft",))] == ["a"]


def test_a_later_star_iteration_gives_no_wrong_answers(monkeypatch):
    """generate.py --m 0: only the correct answer is given (the rationalizations) and the
    unhinted samples; no wrong answer, so no pairs."""
    seen = []

    def stub(model, tok, task, requests, k, *a, **kw):
        seen.extend(h for _, h in requests)
        return [[{"text": "So the answer is 5.", "answer_text": "So the answer is 5.", "final_answer": "5",
                  "finished": True}] * k for _ in requests], {"tokens": 1, "seconds": 1.0}

    monkeypatch.setattr(rationales, "sample_rationales", stub)
    rows = [{"id": f"q{i}", "question": f"question {i}", "answer": "5"} for i in range(3)]
    records, stats = generate.collect(None, None, TASK, rows, k=2, m=0, k_unhinted=2, temperature=1.0, seed=0,
                                      quiet=True)
    assert seen == ["5"] * 3 + [None] * 3
    assert set(stats["by_hint_type"]) == {"correct", "none"} and stats["low"] == 0
    assert generate.get_args(["--ckpt", "x", "--data_dir", "d", "--out_dir", "o", "--m", "0"]).m == 0


# --- the mean over k samples, and the paired test on it ---------------------------------


def test_summary_is_the_mean_over_the_samples_with_its_standard_error():
    preds = [{"correct": True, "sample_correct": [True, True, False, True], "sample_step_errors": [0, 1, 0, None]},
             {"correct": False, "sample_correct": [False, False, False, True], "sample_step_errors": [0, 0, 0, 0]},
             {"correct": True, "sample_correct": [True, True, True, True], "sample_step_errors": [2, 2, 2, 0]}]
    s = rationales.summarize(preds, temperature=1.0, k=4)
    assert s["accuracy"] == pytest.approx(2 / 3)  # maj@4: the prediction
    per_question = [0.75, 0.25, 1.0]
    assert s["sample_accuracy"] == pytest.approx(2 / 3)
    assert s["sample_accuracy_se"] == pytest.approx(statistics.stdev(per_question) / math.sqrt(3))
    # every step right: the share of each question's samples, not its first sample's verdict
    assert s["every_step_right"] == pytest.approx((0.5 + 1.0 + 0.25) / 3)
    assert "mean of 4" in rationales.format_accuracy(s) and "maj@4 66.7%" in rationales.format_accuracy(s)


def test_evaluation_checks_the_steps_of_every_sample(monkeypatch):
    texts = ["2 + 3 = 5. So the answer is 5.", "2 + 3 = 6. So the answer is 6."]

    def stub(model, tok, task, requests, k, *a, **kw):
        return [[{"text": t, "answer_text": t, "final_answer": TASK.extract_answer(t)} for t in texts]
                for _ in requests], {"tokens": 1, "seconds": 1.0}

    monkeypatch.setattr(rationales, "sample_rationales", stub)
    rows = [{"id": "1", "question": "Tom has 2 pens. Tom finds 3 more. How many pens does Tom have now?",
             "answer": "5"}]
    summary, preds = rationales.evaluate(None, None, TASK, rows, temperature=1.0, k=2)
    assert preds[0]["sample_correct"] == [True, False] and preds[0]["sample_step_errors"] == [0, 1]
    assert summary["sample_accuracy"] == 0.5 and summary["every_step_right"] == 0.5


def test_paired_test_by_hand():
    before, after = [0.0, 0.5, 1.0, 0.25, 0.5], [0.5, 0.5, 1.0, 1.0, 0.75]
    t = evaluate.paired_test(before, after)
    diffs = [0.5, 0.0, 0.0, 0.75, 0.25]
    se = statistics.stdev(diffs) / math.sqrt(5)
    assert t["difference"] == pytest.approx(0.3) and t["se"] == pytest.approx(se)
    assert t["p_value"] == pytest.approx(2 * (1 - statistics.NormalDist().cdf(0.3 / se)))
    assert (t["before"], t["after"]) == (pytest.approx(0.45), pytest.approx(0.75))
    assert evaluate.paired_test([1.0, 0.0], [1.0, 0.0])["p_value"] == 1.0  # no difference at all


def test_compare_pairs_the_per_question_means(tmp_path):
    def write(path, samples):
        with open(path, "w") as f:
            for i, s in enumerate(samples):
                f.write(json.dumps({"id": str(i), "correct": sum(s) * 2 > len(s), "sample_correct": s,
                                    "sample_step_errors": [0 if x else 1 for x in s]}) + "\n")
    write(tmp_path / "a.jsonl", [[True, False, False, False]] * 30)
    write(tmp_path / "b.jsonl", [[True, True, True, False]] * 30)
    evaluate.main(["compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--json", str(tmp_path / "c.json")])
    c = json.load(open(tmp_path / "c.json"))
    assert c["sample_accuracy"]["difference"] == pytest.approx(0.5) and c["sample_accuracy"]["p_value"] == 0.0
    assert (c["wrong_to_right"], c["right_to_wrong"]) == (30, 0)  # the majority votes, McNemar
    assert c["every_step_right"]["after"] == pytest.approx(0.75)


# --- the results table ------------------------------------------------------------------


def write_eval(run, key, acc, greedy=None, k=8, temperature=None):
    (run / f"eval_{key}.json").write_text(json.dumps({
        "n": 100, "correct": int(100 * acc), "accuracy": acc + 0.01, "ci95": [0, 1], "k": k,
        "sample_accuracy": acc, "sample_accuracy_se": 0.02, "every_step_right": acc / 2, "pass_at_k": acc + 0.2,
        **({"temperature_sweep": {"split": "val", "chosen": temperature}} if temperature else {})}))
    if greedy is not None:
        (run / f"eval_{key}_greedy.json").write_text(json.dumps({
            "n": 100, "correct": int(100 * greedy), "accuracy": greedy, "ci95": [0, 1], "k": 1,
            "every_step_right": greedy - 0.1}))


def write_compare(run, key, diff, p, greedy=(7, 2, 0.18)):
    test = {"before": 0.5, "after": 0.5 + diff, "difference": diff, "se": 0.01, "p_value": p}
    (run / f"compare_{key}_sml.json").write_text(json.dumps({
        "wrong_to_right": 3, "right_to_wrong": 1, "p_value": 0.6, "sample_accuracy": test, "every_step_right": test}))
    fixed, broken, p_greedy = greedy
    (run / f"compare_{key}_sml_greedy.json").write_text(json.dumps({
        "wrong_to_right": fixed, "right_to_wrong": broken, "p_value": p_greedy, "sample_accuracy": test,
        "every_step_right_mcnemar": {"wrong_to_right": 9, "right_to_wrong": 1, "p_value": 0.02}}))


def test_results_rows_in_order_with_numbered_iterations_and_rounds(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    keys = ["grpo", "star10", "base", "sml_round2", "star2", "sft", "sml", "rft", "star1", "rloo", "ppo_exact",
            "ppo_random"]
    for i, key in enumerate(keys):
        write_eval(run, key, 0.5 + i / 100, greedy=0.4)
    for key, t in (("sft_tuned", 0.4), ("base_tuned", 0.8)):  # controls: no greedy evaluation of their own
        write_eval(run, key, 0.7, temperature=t)
        write_compare(run, key, -0.03, 0.2)
        os.remove(run / f"compare_{key}_sml_greedy.json")
    write_eval(run, "sft_round2", 0.1)  # not a method of the table
    for key in ("sft", "star1", "sml_round2"):
        write_compare(run, key, 0.05, 0.01)
    results.main([str(run)])
    md = (run / "results.md").read_text()
    names = [line.split("|")[1].strip() for line in md.split("## Each method")[0].splitlines()
             if line.startswith("| ") and "---" not in line][1:]
    assert names == ["Base model", "Base model, temperature chosen on val, T = 0.8", "SFT (self-generated)",
                     "SFT, temperature chosen on val, T = 0.4", "SML (SFT + PPO, RM reward)", "SML round 2",
                     "RFT (rejection-sampling fine-tuning)", "STaR iteration 1", "STaR iteration 2",
                     "STaR iteration 10", "SFT + PPO, exact-match reward", "SFT + PPO, random reward",
                     "SFT + RLOO, RM reward", "SFT + GRPO, RM reward"]
    # the headline: greedy accuracy and every step right, McNemar against SML; then the samples
    assert ("| | greedy accuracy (%) | greedy every step right (%) | greedy vs SML: only SML / only method "
            "| greedy every step right vs SML | mean of 8 at T = 1 (%) | SML - method, mean of 8 (points) "
            "| pass@8 (%) | maj@8 (%) | what it is |") in md
    assert ("| STaR iteration 1 | 40.0 | 30.0 | 7 / 2 (p 0.18) | 9 / 1 (p 0.02) | 58.0 ± 2.0 | +5.0 ± 1.0* | 78.0 "
            "| 59.0 |") in md
    assert "| STaR iteration 2 | 40.0 | 30.0 | - | - | 54.0 ± 2.0 | - | 74.0 | 55.0 |" in md
    assert "| SFT, temperature chosen on val, T = 0.4 | - | - | - | - | 70.0 ± 2.0 | -3.0 ± 1.0 | 90.0 | 71.0 |" in md
    assert "| STaR iteration 1 | 50.0 -> 55.0 | +5.0 ± 1.0 | 0.01 | 50.0 -> 55.0 | 0.01 | 7 / 2 | 0.18 |" in md
    table = json.loads((run / "results.json").read_text())["table"]
    assert set(table) == set(keys) | {"sft_tuned", "base_tuned"}
    assert table["star2"]["accuracy_mean"] == pytest.approx(0.54) and table["star2"]["greedy_mean"] == 0.4
    assert table["sft_tuned"]["temperatures"] == [0.4] and table["sft_tuned"]["greedy_mean"] is None


def test_results_say_what_holds_in_every_seed(tmp_path):
    for seed, (diff_rft, p_rft) in enumerate([(0.05, 0.001), (0.04, 0.01), (0.03, 0.2)]):
        run = tmp_path / "run" / f"seed{seed}"
        run.mkdir(parents=True)
        for key in ("base", "sft", "sml", "rft"):
            write_eval(run, key, 0.6, greedy=0.6)
        write_compare(run, "sft", 0.08, 1e-5, greedy=(20, 2, 1e-4))  # SML ahead in every seed
        write_compare(run, "rft", diff_rft, p_rft, greedy=(2, 20 + seed, 1e-4))  # ahead in two seeds only
    results.main([str(tmp_path / "run")])
    md = (tmp_path / "run" / "results.md").read_text()
    assert ("- SFT (self-generated): greedy accuracy: SML ahead; greedy every step right: SML ahead; accuracy, "
            "mean of the samples: SML ahead; every step right, mean of the samples: SML ahead") in md
    assert ("- RFT (rejection-sampling fine-tuning): greedy accuracy: SML behind; greedy every step right: SML "
            "ahead; accuracy, mean of the samples: differs between seeds") in md
    assert "| RFT (rejection-sampling fine-tuning) | 60.0 ± 0.0 | 50.0 ± 0.0 | 2 / 20 (p 0.0001); 2 / 21 " in md
    assert "| RFT (rejection-sampling fine-tuning) (seed2) | 50.0 -> 53.0 |" in md


# --- run.sh's wiring of STaR's iterations and SML's rounds -------------------------------

# A stand-in for python that records each command and writes the outputs run.sh checks for.
FAKE_PYTHON = r'''
import json, os, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\n")
def flag(name):
    return argv[argv.index(name) + 1] if name in argv else None
def touch(path, text="{}\n"):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    open(path, "w").write(text)
script = argv[0]
if script == "data/prepare.py":
    touch(os.path.join(flag("--out_dir"), "meta.json")); touch(os.path.join(flag("--out_dir"), "train.jsonl"))
elif script == "generate.py":  # each file says which collection wrote it
    for name in ("stats.json", "sft.jsonl", "pairs.jsonl", "rft.jsonl", "star.jsonl"):
        touch(os.path.join(flag("--out_dir"), name), json.dumps({"from": flag("--out_dir")}) + "\n")
elif script == "train_ppo.py":
    touch(os.path.join(flag("--out_dir"), "summary.json"))
elif script in ("pretrain.py", "train_sft.py", "train_rm.py"):
    touch(flag("--out"))
elif script == "evaluate.py" and argv[1] == "eval":
    touch(flag("--out")); touch(flag("--summary"))
elif script == "evaluate.py":
    touch(flag("--json"))
'''


def fake_run(tmp_path, **settings):
    """run.sh with a python that records its commands: (the completed process, the run folder,
    the log of commands)."""
    fake = tmp_path / "python"
    fake.write_text(f"#!{sys.executable}" + FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    run, log = tmp_path / "run", tmp_path / "log.jsonl"
    env = {**os.environ, "PYTHON": str(fake), "FAKE_LOG": str(log), "RUN": str(run), **settings}
    return subprocess.run(["bash", "run.sh"], cwd=ROOT, env=env, capture_output=True, text=True), run, log


def test_run_sh_wires_star_iterations_and_sml_rounds(tmp_path):
    r, run, log = fake_run(tmp_path, BASELINES="1", ROUNDS="3", STAR_ITERATIONS="3")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    calls = [json.loads(line) for line in open(log)]

    def one(script, out_flag, out):
        found = [c for c in calls if c[0] == script and out_flag in c and c[c.index(out_flag) + 1] == str(out)]
        assert len(found) == 1, (script, out)
        if script == "evaluate.py":
            return found[0]
        return {a: b for a, b in zip(found[0], found[0][1:]) if a.startswith("--")}  # flag -> what follows

    base = str(run / "base.pt")
    # SML round r collects with round r-1's SML model, pools rounds 1..r's collections, and trains
    # from the base model on the pool: SFT, then the RM and PPO from that SFT model
    collections = [run / "collect"]
    for r_, previous in ((2, run / "ppo" / "ppo_best.pt"), (3, run / "round2" / "ppo" / "ppo_best.pt")):
        rd = run / f"round{r_}"
        assert one("generate.py", "--out_dir", rd / "collect")["--ckpt"] == str(previous)
        collections.append(rd / "collect")
        for name in ("sft.jsonl", "pairs.jsonl"):
            pooled = [json.loads(line)["from"] for line in open(rd / "pooled" / name)]
            assert pooled == [str(c) for c in collections]
        sft = one("train_sft.py", "--out", rd / "sft.pt")
        assert (sft["--init"], sft["--data"]) == (base, str(rd / "pooled" / "sft.jsonl"))
        rm = one("train_rm.py", "--out", rd / "rm.pt")
        assert (rm["--init"], rm["--pairs"]) == (str(rd / "sft.pt"), str(rd / "pooled" / "pairs.jsonl"))
        ppo = one("train_ppo.py", "--out_dir", rd / "ppo")
        assert (ppo["--sft"], ppo["--rm"]) == (str(rd / "sft.pt"), str(rd / "rm.pt"))
        assert one("evaluate.py", "--summary", run / f"eval_sml_round{r_}.json")[3] == str(rd / "ppo" / "ppo_best.pt")
    # STaR iteration i trains the base model on data collected by iteration i-1's model
    assert one("train_sft.py", "--out", run / "star1.pt")["--data"] == str(run / "collect" / "star.jsonl")
    for it in (2, 3):
        collect = one("generate.py", "--out_dir", run / f"star{it}" / "collect")
        assert (collect["--ckpt"], collect["--m"]) == (str(run / f"star{it - 1}.pt"), "0")
        sft = one("train_sft.py", "--out", run / f"star{it}.pt")
        assert (sft["--init"], sft["--data"]) == (base, str(run / f"star{it}" / "collect" / "star.jsonl"))
    assert not any(c[0] == "train_sft.py" and c[c.index("--out") + 1] == str(run / "star4.pt") for c in calls)
    # RLOO and GRPO: SML's SFT model and reward model, another estimator
    for est in ("rloo", "grpo"):
        ppo = one("train_ppo.py", "--out_dir", run / est)
        assert (ppo["--sft"], ppo["--rm"], ppo["--estimator"]) == (str(run / "sft.pt"), str(run / "rm.pt"), est)
    # the control for RL without information: PPO from the same SFT model on a random reward
    ppo = one("train_ppo.py", "--out_dir", run / "ppo_random")
    assert (ppo["--sft"], ppo["--reward"]) == (str(run / "sft.pt"), "random")
    # every SFT stage keeps the checkpoint with the best greedy validation accuracy, as PPO does
    sfts = [c for c in calls if c[0] == "train_sft.py"]
    assert len(sfts) == 7 and all(c[c.index("--keep") + 1] == "val_greedy" for c in sfts)  # SML, its 2 rounds,
    # RFT, STaR x3 (no gold rationales here). The controls for sharpening: the base and SFT models
    # at the temperature chosen on the validation split, evaluated there (no greedy row of their own)
    for key, ckpt in (("base_tuned", base), ("sft_tuned", str(run / "sft.pt"))):
        tuned = one("evaluate.py", "--summary", run / f"eval_{key}.json")
        assert tuned[tuned.index("--ckpt") + 1] == ckpt and "--temperature" not in tuned
        assert tuned[tuned.index("--choose_temperature") + 1:][:5] == ["1", "0.8", "0.6", "0.4", "0.2"]
        assert one("evaluate.py", "--json", run / f"compare_{key}_sml.json")[2] == str(run / f"preds_{key}.jsonl")
        assert not (run / f"compare_{key}_sml_greedy.json").exists()
    # every method is evaluated at k samples and greedily, and compared with SML both ways
    for key in ("sft", "rft", "star1", "star3", "ppo_exact", "ppo_random", "rloo", "grpo", "sml_round2",
                "sml_round3"):
        sampled = one("evaluate.py", "--summary", run / f"eval_{key}.json")
        assert sampled[sampled.index("--k") + 1] == "8" and sampled[sampled.index("--temperature") + 1] == "1"
        greedy = one("evaluate.py", "--summary", run / f"eval_{key}_greedy.json")
        assert greedy[greedy.index("--temperature") + 1] == "0"
        assert one("evaluate.py", "--json", run / f"compare_{key}_sml.json")[2] == str(run / f"preds_{key}.jsonl")
        assert one("evaluate.py", "--json", run / f"compare_{key}_sml_greedy.json")[3] == str(
            run / "preds_sml_greedy.jsonl")


# --- every trained method chooses its checkpoint on greedy validation accuracy -------------


def test_sft_keeps_the_checkpoint_with_the_best_greedy_validation_accuracy(tiny_run, tmp_path, capsys, monkeypatch):
    """--keep val_greedy (run.sh's choice for every SFT stage, as PPO's): each evaluation scores
    the model greedily on the first --val_questions of val.jsonl, logs it, and the checkpoint
    written is the first with the highest score."""
    import train_sft
    data, base = tiny_run["data"], tiny_run["base"]
    rows = [{"id": f"q{i}", "prompt": TASK.prompt(f"Tom has {i} pens. How many pens does Tom have now?"),
             "completion": f" So the answer is {i}."} for i in range(1, 4)]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores, seen = iter([0.25, 0.75, 0.5, 0.75]), []

    def scored(model, tok, task, rows, temperature, k, seed, **kw):  # the tiny base model is right nowhere
        seen.append(([r["id"] for r in rows], temperature, k, model.training))
        return {"accuracy": next(scores)}, []

    monkeypatch.setattr(rationales, "evaluate", scored)
    out = str(tmp_path / "sft.pt")
    train_sft.main(["--init", base, "--data", str(tmp_path / "sft.jsonl"), "--data_dir", data, "--out", out,
                    "--max_steps", "8", "--batch_size", "4", "--eval_interval", "2", "--warmup_steps", "0",
                    "--keep", "val_greedy", "--val_questions", "8", "--device", "cpu"])
    val_ids = [json.loads(x)["id"] for x in open(os.path.join(data, "val.jsonl"))][:8]
    assert seen == [(val_ids, 0.0, 1, False)] * 4  # greedy, on validation questions only
    evals = [json.loads(x) for x in open(tmp_path / "sft.log.jsonl") if "val_score" in x]
    assert [(r["step"], r["val_score"]) for r in evals] == [(2, 0.25), (4, 0.75), (6, 0.5), (8, 0.75)]
    assert torch.load(out, weights_only=True)["provenance"]["step"] == 4  # the first of the best
    assert "step 4 of 8, the best score (0.7500)" in capsys.readouterr().out


# --- a modified copy of a dataset is said, not only recorded ------------------------------


def test_a_modified_source_is_printed_and_shown_beside_the_table(tmp_path, monkeypatch, capsys):
    """data/prepare.py --allow_modified_source prints one line per file that is not the public
    one (and meta.json lists them); results.py shows them under the table."""
    import dataclasses
    from data.datasets import DATASETS
    from data.prepare import main as prepare_main
    src = tmp_path / "src"
    (src / "splits").mkdir(parents=True)
    rows = [{"question": f"Ann has {i} owls and buys 2. How many owls?", "answer": str(i + 2)} for i in range(6)]
    (src / "single_eq.json").write_text(json.dumps(rows))  # made up: neither file is the public one
    (src / "splits" / "single_eq__default.json").write_text(json.dumps({"train": [0, 1, 2, 3], "test": [4, 5]}))
    monkeypatch.setitem(DATASETS, "single_eq", dataclasses.replace(DATASETS["single_eq"], n_train=4, n_test=2))
    run = tmp_path / "run"
    prepare_main(["--task", "single_eq", "--source", str(src), "--allow_modified_source",
                  "--out_dir", str(run / "data")])
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("modified source file: ")]
    names = ["single_eq.json", os.path.join("splits", "single_eq__default.json")]
    assert json.load(open(run / "data" / "meta.json"))["modified_source_files"] == names
    assert [line.split()[3] for line in said] == [str(src / name) for name in names]
    for key in ("base", "sml"):
        write_eval(run, key, 0.5, greedy=0.5)
    results.main([str(run)])
    md = (run / "results.md").read_text()
    assert (f"converted from a modified copy (data/prepare.py --allow_modified_source): {', '.join(names)}"
            in md.split("\n## ")[0])  # beside the table, before the next section
    assert json.loads((run / "results.json").read_text())["modified_source_files"] == {"run": names}


@pytest.mark.parametrize("setting, value, line", [
    ("SEEDS", "abc", "run.sh: error: SEEDS must be a whole number >= 1, got 'abc'"),
    ("SEEDS", "0", "run.sh: error: SEEDS must be a whole number >= 1, got '0'"),
    ("ROUNDS", "0", "run.sh: error: ROUNDS must be a whole number >= 1, got '0'"),
    ("ROUNDS", "abc", "run.sh: error: ROUNDS must be a whole number >= 1, got 'abc'"),
    ("STAR_ITERATIONS", "2.5", "run.sh: error: STAR_ITERATIONS must be a whole number >= 1, got '2.5'"),
    ("EVAL_K", "-8", "run.sh: error: EVAL_K must be a whole number >= 1, got '-8'"),
    ("SEED", "x1", "run.sh: error: SEED must be a whole number >= 0, got 'x1'"),
    ("SHOTS", "four", "run.sh: error: SHOTS must be a whole number >= 0, got 'four'"),
    ("SEEDS", "12345678901234567890", "run.sh: error: SEEDS must be at most 999999999, got '12345678901234567890'"),
    ("BASELINES", "yes", "run.sh: error: BASELINES must be 0 or 1, got 'yes'"),
    ("REDO", "2", "run.sh: error: REDO must be 0 or 1, got '2'"),
    ("PRESET", "huge", "run.sh: error: PRESET must be tiny, default or pretrained, got 'huge'"),
])
def test_run_sh_checks_its_settings_before_any_stage(tmp_path, setting, value, line):
    r, run, log = fake_run(tmp_path, **{setting: value})
    assert (r.returncode, r.stderr, r.stdout) == (2, line + "\n", "")
    assert not log.exists() and not run.exists()  # no stage ran, nothing was written


def test_run_sh_refuses_arguments_as_an_error_line():
    r = subprocess.run(["bash", "run.sh", "SEEDS=3"], cwd=ROOT, capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", "run.sh: error: takes no arguments, only environment "
                                                         "variables (bash run.sh --help)\n")


# --- the controls and measures beside the headline ---------------------------------------


def test_the_temperature_is_chosen_on_the_validation_split_then_the_test_split_is_evaluated(
        tiny_run, tmp_path, monkeypatch):
    """evaluate.py eval --choose_temperature: the mean accuracy over k samples of val.jsonl at each
    temperature, the best (the first of equals) used on the test split; pass@k beside maj@k."""
    on_val = {1.0: 0.5, 0.6: 0.8, 0.4: 0.8, 0.2: 0.7}
    calls = []

    def sampled(model, tok, task, rows, temperature, k, seed, **kw):
        split = rows[0]["id"].split("-")[0]
        calls.append((split, len(rows), temperature, k))
        right = on_val[temperature] if split == "val" else 0.5
        preds = [{"id": r["id"], "correct": i % 2 == 0, "sample_correct": [i % 4 == 0] + [False] * (k - 1),
                  "sample_step_errors": [0] * k} for i, r in enumerate(rows)]
        summary = rationales.summarize(preds, temperature, k)
        summary["sample_accuracy"] = right
        return summary, preds

    monkeypatch.setattr(rationales, "evaluate", sampled)
    summary = tmp_path / "eval.json"
    evaluate.main(["eval", "--ckpt", tiny_run["base"], "--data_dir", tiny_run["data"], "--k", "3", "--limit", "8",
                   "--choose_temperature", "1", "0.6", "0.4", "0.2", "--summary", str(summary), "--device", "cpu"])
    assert calls == [("val", 8, t, 3) for t in (1.0, 0.6, 0.4, 0.2)] + [("test", 8, 0.6, 3)]
    s = json.load(open(summary))
    assert s["temperature"] == 0.6 and s["temperature_sweep"]["chosen"] == 0.6
    assert s["temperature_sweep"]["sample_accuracy"] == {"1.0": 0.5, "0.6": 0.8, "0.4": 0.8, "0.2": 0.7}
    assert s["pass_at_k"] == 2 / 8 and s["accuracy"] == 4 / 8  # any of the 3 right; the vote


def test_compare_tests_greedy_every_step_right_with_mcnemar(tmp_path):
    """One sample per question (greedy): McNemar on every step right too (an unreadable
    rationale, step_errors None, is not right)."""
    def write(path, step_errors):  # one list of the samples' wrong steps per question
        with open(path, "w") as f:
            for i, e in enumerate(step_errors):
                f.write(json.dumps({"id": str(i), "correct": True, "sample_correct": [True] * len(e),
                                    "sample_step_errors": e}) + "\n")
    write(tmp_path / "a.jsonl", [[1], [1], [None], [0], [0], [2], [1], [1]])
    write(tmp_path / "b.jsonl", [[0], [0], [0], [0], [1], [0], [0], [1]])
    evaluate.main(["compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--json", str(tmp_path / "c.json")])
    m = json.load(open(tmp_path / "c.json"))["every_step_right_mcnemar"]
    assert (m["wrong_to_right"], m["right_to_wrong"]) == (5, 1)
    assert m["p_value"] == pytest.approx(2 * (1 + 6) / 2 ** 6)
    write(tmp_path / "a.jsonl", [[0, 1]] * 8)  # k samples: the paired means, no McNemar on the steps
    evaluate.main(["compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--json", str(tmp_path / "c.json")])
    assert "every_step_right_mcnemar" not in json.load(open(tmp_path / "c.json"))
