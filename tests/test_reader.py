"""Reading a choice or yes/no answer on the paper's datasets (rationales.read_answers_by_candidates):
the candidate the model prefers after "So the answer is", calibrated against a content-free
prompt, among the row's own answers; the built-in world keeps its greedy answer line. And the
reports that show class balance and name the step checker: the majority class beside every
accuracy (evaluation, results.md), "every equation right" on the numeric datasets."""

import functools
import json
import types

import pytest
import torch

from sml import rationales
from tools import results
from data import fewshot
from data.tasks import TASKS, get_task
from data.tokenizer import encode_after, train_tokenizer
from model import GPT, GPTConfig

LETTERS = "ABCDEF"


@functools.lru_cache(maxsize=None)
def tokenizer():
    """A small byte-level tokenizer in which every answer read here, " yes", " no" and " A" to
    " F" after "So the answer is", is one token."""
    texts = ["Question: Is it? Answer: It is. So the answer is yes.", "So the answer is no.",
             "Answer choices: (A) x, (B) y, (C) z, (D) w, (E) v, (F) u."
             + "".join(f" So the answer is {c}." for c in LETTERS)] * 50
    tok = train_tokenizer(texts, 400)
    assert all(len(answer_ids(tok, c)) == 1 for c in ["yes", "no", *LETTERS])
    return tok


def answer_ids(tok, answer):
    return encode_after(tok, " So the answer is", " " + answer)


class ScoredLM(torch.nn.Module):
    """A language model written as a rule, to say in words what it prefers: after a context,
    the first token of each answer gets the logit that logit_of(the context as text) gives it
    ({answer: logit}), every other token 0. Reads contexts as the batched forward pass gives
    them (left-padded, pad_mask), and counts its forward passes."""

    def __init__(self, tok, logit_of, block_size=4096):
        super().__init__()
        self.tok, self.logit_of, self.passes = tok, logit_of, 0
        self.config = types.SimpleNamespace(block_size=block_size, eos_id=None)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # where its tensors live

    def forward(self, idx, pad_mask=None, last_only=False, **kw):
        assert last_only, "answers are read at the last position"
        self.passes += 1
        logits = torch.zeros(idx.size(0), 1, self.tok.get_vocab_size())
        for r in range(idx.size(0)):
            ids = idx[r][pad_mask[r]] if pad_mask is not None else idx[r]
            for answer, logit in self.logit_of(self.tok.decode(ids.tolist())).items():
                logits[r, 0, answer_ids(self.tok, answer)[0]] = logit
        return logits, None


def asked(text):
    """What follows the last "Question:" of a context: the question being answered and its
    rationale, after any exemplars."""
    return text.split("Question:")[-1]


def read(model, task, rows, texts, exemplars=None, candidates=None):
    """read_answers_by_candidates on one rationale per row, as evaluation calls it."""
    tok = model.tok
    prompts = [rationales.encode_prompt(tok, task, r["question"], None, exemplars, 16, model.config.block_size)
               for r in rows]
    todo = [(i, {"text": t}) for i, t in enumerate(texts)]
    candidates = candidates or rationales.answer_candidates(task, rows)
    return rationales.read_answers_by_candidates(model, tok, task, prompts, [r["question"] for r in rows], todo,
                                                 candidates, exemplars, batch_prompts=8, quiet=True)


def test_calibration_reads_what_the_rationale_raises_not_what_the_model_leans_to():
    """A model that leans to "no" whatever it is asked (Coin Flip with SmolLM2: 6 of 126
    rationales written for "yes" were read back as "yes"). After the even-number rationale
    "no" is still likelier than "yes", but "yes" rose over the content-free prompt and "no"
    did not: the calibrated read is "yes". Without the calibration it would be "no" twice."""
    task = get_task("coin_flip")

    def logit_of(text):
        body = asked(text)
        return {"yes": 1.5 if "even" in body else 0.0, "no": 2.0 + (1.0 if "odd" in body else 0.0)}

    model = ScoredLM(tokenizer(), logit_of)
    rows = [{"question": "A coin is heads up. Ann flips the coin. Bob flips the coin. Is the coin still heads up?"},
            {"question": "A coin is heads up. Ann flips the coin. Is the coin still heads up?"}]
    texts = ["Flipped twice, an even number.", "Flipped once, an odd number."]
    assert read(model, task, rows, texts) == ["yes", "no"]
    # what an uncalibrated reader sees: "no" is the likelier answer after both rationales
    contexts = [model.tok.encode(f"{task.prompt(r['question'])} {t}{task.ANSWER_PREFIX}").ids
                for r, t in zip(rows, texts)]
    raw = rationales.candidate_logprobs(model, contexts, [[answer_ids(model.tok, a) for a in ("yes", "no")]] * 2)
    assert all(no > yes for yes, no in raw)
    # the same behind few-shot exemplars (SML step 2 on a base model): one pass for the
    # content-free prompt, one for the batch
    model.passes = 0
    assert read(model, task, rows, texts, exemplars=fewshot.exemplars(task, [], 2)) == ["yes", "no"]
    assert model.passes == 2


def test_a_choice_is_read_among_the_rows_own_choices():
    """The candidates of a choice question are its row's choices: a model that likes "E" best
    (a letter this question does not offer) reads "B", the offered letter the rationale raises."""
    task = get_task("commonsense_qa")

    def logit_of(text):
        body = asked(text)
        return {"A": 1.0, **({"B": 1.0, "E": 3.0} if "sticky" in body else {})}  # leans to "A"

    model = ScoredLM(tokenizer(), logit_of)
    rows = [{"question": "What holds paper together? Answer choices: (A) water, (B) glue, (C) air.",
             "choices": ["A", "B", "C"]}]
    assert read(model, task, rows, ["Glue is sticky."]) == ["B"]
    assert read(model, task, rows, ["Glue is sticky."], candidates=[list("ABCDE")]) == ["E"]


def test_answer_candidates_only_on_the_choice_and_yes_no_datasets():
    row = {"question": "q", "answer": "B", "choices": ["A", "B", "C", "D"]}
    assert get_task("strategy_qa").answer_candidates(row) == ["yes", "no"]
    assert get_task("aqua").answer_candidates(row) == ["A", "B", "C", "D"]
    with pytest.raises(ValueError, match="choices"):
        get_task("aqua").answer_candidates({"question": "q", "answer": "B"})
    for name in ("arithmetic", "coinflip", "lastletter", "gsm8k", "last_letter_concatenation"):
        assert get_task(name).answer_candidates(row) is None, name  # read as free text
        assert rationales.answer_candidates(get_task(name), [row]) is None
    assert rationales.answer_candidates(get_task("coin_flip"), [row, row]) == [["yes", "no"]] * 2


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_candidate_logprobs_equal_a_forward_pass_per_candidate(pos_emb):
    """The batched, left-padded pass that shares candidate prefixes gives each candidate the
    log-probability a plain forward pass over context + candidate gives it."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=16, pos_emb=pos_emb))
    contexts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    candidates = [[[12], [13, 14]], [[13, 14], [13, 15, 16], [17]], [[18, 19, 20]]]
    got = rationales.candidate_logprobs(model, contexts, candidates)
    for context, cands, scores in zip(contexts, candidates, got):
        for cand, score in zip(cands, scores):
            with torch.no_grad():
                logits, _ = model(torch.tensor([context + cand]))
            steps = logits[0, len(context) - 1:-1].log_softmax(-1)
            assert score == pytest.approx(steps[range(len(cand)), cand].sum().item(), abs=1e-5)


def tiny_gpt(tok):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=256, n_layer=1, n_head=2, n_embd=16))


COIN_ROWS = [{"id": str(i), "question": f"A coin is heads up. {'Ann flips the coin. ' * i}Is the coin still heads up?",
              "answer": "yes" if i % 2 == 0 else "no"} for i in range(4)]


def test_evaluation_completes_a_yes_no_dataset_answer_among_yes_and_no(monkeypatch):
    """A rationale that states no answer (a random model's) is completed by the calibrated
    reader on the paper's yes/no dataset: every prediction is "yes" or "no". The built-in
    world's coin flip keeps its greedy answer line."""
    tok = tokenizer()
    calls = []
    reader = rationales.read_answers_by_candidates
    monkeypatch.setattr(rationales, "read_answers_by_candidates", lambda *a, **kw: calls.append(1) or reader(*a, **kw))
    summary, preds = rationales.evaluate(tiny_gpt(tok), tok, get_task("coin_flip"), COIN_ROWS, temperature=1.0,
                                         max_new_tokens=4, quiet=True)
    assert calls and {p["prediction"] for p in preds} <= {"yes", "no"}
    assert all(p["prediction"] is not None for p in preds)
    calls.clear()
    rationales.evaluate(tiny_gpt(tok), tok, get_task("coinflip"), COIN_ROWS, temperature=1.0, max_new_tokens=4,
                        quiet=True)
    assert not calls


def test_evaluation_reports_the_majority_class_and_names_the_step_check(monkeypatch):
    def stub(model, tok, task, requests, k, *a, **kw):
        text = "48/2 = 24. So the answer is no." if task.name == "gsm8k" else "So the answer is no."
        return [[{"text": text, "answer_text": text, "final_answer": task.extract_answer(text)}]
                for _ in requests], {"tokens": 1, "seconds": 1.0}

    monkeypatch.setattr(rationales, "sample_rationales", stub)
    rows = [{"id": str(i), "question": "q", "answer": "no" if i < 7 else "yes", "choices": ["A", "B"]}
            for i in range(10)]
    summary, _ = rationales.evaluate(None, None, get_task("strategy_qa"), rows)
    assert (summary["accuracy"], summary["majority_class"], summary["majority_class_accuracy"]) == (0.7, "no", 0.7)
    assert "; always 'no', the majority class, scores 70.0%" in rationales.format_accuracy(summary)
    summary, _ = rationales.evaluate(None, None, get_task("gsm8k"), [{"id": "1", "question": "q", "answer": "24"}])
    assert summary["step_check"] == "every equation right" and summary["every_step_right"] == 1.0
    assert "majority_class" not in summary
    assert ", every equation right in 100.0%" in rationales.format_accuracy(summary)
    for name in TASKS:  # only the choice and yes/no tasks have a majority class
        has = "majority_class" in rationales.evaluate(None, None, get_task(name), rows)[0]
        assert has == (get_task(name).answer_kind in ("choice", "yesno")), name


def test_results_list_the_majority_class_and_every_equation_right(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for key, acc, esr in (("base", 0.55, 0.30), ("sft", 0.70, 0.50), ("sml", 0.75, 0.60)):
        (run / f"eval_{key}.json").write_text(json.dumps({
            "n": 100, "correct": int(100 * acc), "accuracy": acc, "ci95": [acc - 0.1, acc + 0.1],
            "every_step_right": esr, "step_check": "every equation right",
            "majority_class": "no", "majority_class_accuracy": 0.62}))
    (run / "compare_sft_sml.json").write_text(json.dumps({
        "wrong_to_right": 9, "right_to_wrong": 4, "p_value": 0.2, "before_accuracy": 0.7, "after_accuracy": 0.75,
        "sample_accuracy": {"before": 0.7, "after": 0.75, "difference": 0.05, "se": 0.02, "p_value": 0.01},
        "every_step_right": {"before": 0.5, "after": 0.6, "difference": 0.1, "se": 0.03, "p_value": 0.001}}))
    results.main([str(run)])
    md = (run / "results.md").read_text()
    assert "| | greedy accuracy (%) | greedy every equation right (%) |" in md  # the task's step check, named
    assert "| SFT (self-generated) | - | - | - | - | 70.0 | +5.0 ± 2.0* |" in md  # no greedy file: no headline
    assert "| Majority class | 62.0 | - | - | - | 62.0 |" in md and "always 'no'" in md
    assert "| every equation right: method -> SML | p |" in md
    assert "| SFT (self-generated) | 70.0 -> 75.0 | +5.0 ± 2.0 | 0.01 | 50.0 -> 60.0 | 0.001 | - | - |" in md
    out = json.loads((run / "results.json").read_text())
    assert out["majority_class"]["answer"] == "no" and out["majority_class"]["accuracy_mean"] == 0.62
    assert set(out["table"]) == {"base", "sft", "sml"}  # the majority class is no row of the table's keys


def test_results_name_a_row_that_fewer_seeds_ran(tmp_path):
    """A method run in only some seeds is a mean over those: the row says how many, and a row of
    one seed shows no ± (a std of one value is not 0)."""
    run = tmp_path / "run"
    for seed, keys in (("seed1", ("base", "sml", "rft")), ("seed2", ("base", "sml"))):
        (run / seed).mkdir(parents=True)
        for key in keys:
            acc = {"base": 0.5, "sml": 0.9, "rft": 0.8}[key] + (0.02 if seed == "seed2" else 0.0)
            for suffix in ("", "_greedy"):
                (run / seed / f"eval_{key}{suffix}.json").write_text(json.dumps({
                    "n": 100, "correct": int(100 * acc), "accuracy": acc, "ci95": [acc - 0.1, acc + 0.1]}))
    results.main([str(run)])
    md = (run / "results.md").read_text()
    assert "| Base model | 51.0 ± 1.4 |" in md and "| SML (SFT + PPO, RM reward) | 91.0 ± 1.4 |" in md
    assert "| RFT (rejection-sampling fine-tuning) (1 of 2 seeds) | 80.0 | - | 80.0 |" in md
