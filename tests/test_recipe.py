"""run.sh's recipe for a pretrained model (INIT=<Hugging Face folder>), end to end on CPU:
a tiny Llama-family model in Hugging Face format, with a tokenizer trained on a little text
that puts a beginning-of-sequence token first and ends texts with </s> as Llama's does, over
GSM8K and a multiple-choice dataset. The questions are the real ones where ../shared/datasets
holds them; otherwise made-up ones in the same layout and split sizes, so a fresh clone
still runs this.

A model with random weights never reaches a given answer, so SML would collect nothing to
train on. The fixture first teaches the tiny model the one skill the recipe's plumbing needs
(a few seconds of train_sft.py): copy the given answer into its explanation, and the
explanation's answer into the answer line. What it then collects is junk, but every stage
has rows to run on.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from sml.checkpoint import save_pretrained

from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("SML_DATASETS") or os.path.join(ROOT, "..", "shared", "datasets")


def made_up_gsm8k(folder):
    """GSM8K's layout and split sizes (7,473 / 1,319), invented questions."""
    os.makedirs(folder)
    for name, n, start in (("train.jsonl", 7473, 0), ("test.jsonl", 1319, 7473)):
        with open(os.path.join(folder, name), "w") as f:
            for i in range(start, start + n):
                a, b = i % 50, i % 7 + 1
                f.write(json.dumps({"question": f"Ann has {a} figs and buys {b} more. How many figs?",
                                    "answer": f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b} figs.\n#### {a + b}"}) + "\n")
    return folder


def made_up_date_understanding(folder):
    """The Fine-tune-CoT layout of date_understanding (258 / 111 questions, options A-F)."""
    os.makedirs(os.path.join(folder, "splits"))
    rows = [{"question": f"Today is 01/{i % 28 + 1:02d}/2020. What is the date tomorrow in MM/DD/YYYY?\n"
                         f"Which choice is true? Answer choices: (A) 01/{i % 28 + 2:02d}/2020, (B) 02/01/2020, "
                         f"(C) 03/01/2020, (D) 04/01/2020, (E) 05/01/2020, (F) 06/01/2020.", "answer": "A"}
            for i in range(369)]
    with open(os.path.join(folder, "date_understanding.json"), "w") as f:
        json.dump(rows, f)
    with open(os.path.join(folder, "splits", "date_understanding__default.json"), "w") as f:
        json.dump({"train": list(range(258)), "test": list(range(258, 369))}, f)
    return folder


def source(key, tmp_path):
    layout = "gsm8k" if key == "gsm8k" else "finetune_cot"
    shared = os.path.join(SHARED, layout)
    if os.path.exists(os.path.join(shared, "train.jsonl" if key == "gsm8k" else f"{key}.json")):
        return shared
    return (made_up_gsm8k if key == "gsm8k" else made_up_date_understanding)(str(tmp_path / "source"))


def llama_tokenizer(texts):
    """Byte-level BPE with <s> / </s>, and <s> put before every text (Llama's post-processor)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return tok


def tiny_llama(folder, texts):
    tok = llama_tokenizer(texts)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tok.get_vocab_size(), block_size=1024, n_layer=2, n_head=4, n_kv_head=2,
                       n_embd=64, norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", mlp_hidden=128, pos_emb="rope",
                       bias=False, tie_embeddings=False, bos_id=0, eos_id=1)
    save_pretrained(GPT(config), tok, folder)
    return tok


KEYS = ["gsm8k", "date_understanding"]


@pytest.fixture(scope="module")
def copying_llama(tmp_path_factory):
    """{"init": its Hugging Face folder, "tok": its tokenizer, "sources": {key: dataset folder}}."""
    import random

    from data.jsonl import load_dataset
    from data.prepare import main as prepare_main
    from data.tasks import get_task
    from sml.checkpoint import load_checkpoint
    from train_sft import main as sft_main
    d = tmp_path_factory.mktemp("recipe")
    sources = {key: source(key, d / key) for key in KEYS}
    texts = [line for src in sources.values() for name in sorted(os.listdir(src)) if name.endswith((".json", ".jsonl"))
             for line in open(os.path.join(src, name)).read()[:100_000].split("\n")]
    random_init = str(d / "random")
    tok = tiny_llama(random_init, texts + ["So the answer is 42. Given answer: B Explanation: It is"] * 20)
    rng, copy_rows = random.Random(0), []
    for key in KEYS:
        data = str(d / f"data-{key}")
        prepare_main(["--task", key, "--source", sources[key], "--allow_modified_source",  # made-up where no copy
                      "--tokenizer_from", random_init, "--out_dir", data])
        task, rows = get_task(key), load_dataset(os.path.join(data, "train.jsonl"))
        for i in range(1000):
            r = rng.choice(rows)
            given = rng.choice([r["answer"]] + task.wrong_answers(r, 2, rng))
            q = r["question"] if i % 10 == 0 else "Q"  # mostly short: the skill is local
            copy_rows += [{"id": f"{key}{i}g", "prompt": f"Question: {q}\nGiven answer: {given}\nExplanation:",
                           "completion": f" It is {given}.\n"},
                          {"id": f"{key}{i}r", "prompt": f"{task.prompt(q)} It is {given}.{task.ANSWER_PREFIX}",
                           "completion": f" {given}.\n"}]
    with open(d / "copy.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in copy_rows)
    sft_main(["--init", random_init, "--data", str(d / "copy.jsonl"), "--data_dir", data, "--out", str(d / "copy.pt"),
              "--max_steps", "200", "--batch_size", "32", "--lr", "1e-2", "--warmup_steps", "20",
              "--eval_interval", "1000", "--eval_limit", "1", "--device", "cpu", "--seed", "0"])
    model, _ = load_checkpoint(str(d / "copy.pt"), kind="lm")
    init = str(d / "tiny-llama")
    save_pretrained(model, tok, init)  # our checkpoint, exported as a Llama folder
    return {"init": init, "tok": tok, "sources": sources}


@pytest.mark.slow  # end to end: CI runs it, -m "not slow" leaves it out
@pytest.mark.parametrize("key", KEYS)
def test_pretrained_recipe_end_to_end(tmp_path, key, copying_llama):
    init, tok, src = copying_llama["init"], copying_llama["tok"], copying_llama["sources"][key]
    run = str(tmp_path / "run")
    made_up = not src.startswith(SHARED)  # not the public files: converted only when allowed, and said
    env = {**os.environ, "INIT": init, "TASK": key, "SOURCE": src, "PRESET": "tiny", "RUN": run, "SHOTS": "2",
           "DATA_ARGS": "--n_val 20" + (" --allow_modified_source" if made_up else ""), "EVAL_ARGS": "--limit 50",
           "PYTHON": sys.executable,
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}  # a machine shared with others: set it lower
    r = subprocess.run(["bash", "run.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    # the world and pretraining were skipped; the data folder speaks the model's tokenizer
    assert not os.path.exists(os.path.join(run, "base.pt")) and "=== pretrain" not in r.stdout
    data = os.path.join(run, "data")
    assert Tokenizer.from_file(os.path.join(data, "tokenizer.json")).to_str() == tok.to_str()
    meta = json.load(open(os.path.join(data, "meta.json")))
    assert meta["counts"]["val"] == 20 and meta["tokenizer_from"] == init
    # SML steps 1-2 ran behind the exemplars, and wrote what SFT and the reward model read
    stats = json.load(open(os.path.join(run, "collect", "stats.json")))
    assert stats["questions"] == 100 and len(stats["exemplars"]) == 2
    assert stats["args"]["shots"] == 2
    assert set(stats["by_hint_type"]) == {"correct", "wrong", "none"}
    records = [json.loads(x) for x in open(os.path.join(run, "collect", "rationales.jsonl"))]
    exemplar_ids = {e.get("id") for e in stats["exemplars"]} - {None}
    assert not exemplar_ids & {r["id"] for r in records}  # an exemplar's question is not collected
    if key == "gsm8k":  # GSM8K's exemplars are its own gold rationales
        assert exemplar_ids
    # every stage's checkpoint, and the table: base (few-shot), SFT, SML, the baselines
    for ckpt in ("sft.pt", "rm.pt", "ppo/ppo_best.pt", "ppo_exact/ppo_best.pt"):
        assert os.path.exists(os.path.join(run, ckpt)), ckpt
    results = json.load(open(os.path.join(run, "results.json")))
    expected = ({"base", "sft", "sml", "ppo_exact", "ppo_random", "rloo", "grpo", "base_tuned", "sft_tuned"}
                | ({"gold"} if key == "gsm8k" else set()))
    if os.path.getsize(os.path.join(run, "collect", "rft.jsonl")):
        expected.add("rft")
    else:  # RFT had nothing to learn from
        assert "RFT: no correct rationale" in r.stdout
    # STaR's iterations (two at PRESET=tiny), until one has nothing to train on
    iterations = [it for it in (1, 2) if os.path.exists(os.path.join(run, f"star{it}.pt"))]
    assert iterations == [1, 2] or f"STaR iteration {len(iterations) + 1}: no rationale" in r.stdout
    expected |= {f"star{it}" for it in iterations}
    assert set(results["table"]) == expected
    for row in results["table"].values():
        assert 0 <= row["accuracy_mean"] <= 1 and row["n_questions"] == 50  # EVAL_ARGS reached every evaluation
    assert json.load(open(os.path.join(run, "eval_base.json")))["shots"] == 2
    assert "shots" not in json.load(open(os.path.join(run, "eval_sft.json")))  # zero-shot after SFT
    md = open(os.path.join(run, "results.md")).read()
    assert "2-shot prompt" in md and "| SML (SFT + PPO, RM reward) |" in md
    assert ("--allow_modified_source" in md) == made_up == ("modified source file: " in r.stdout)

    # SFT examples are the zero-shot prompt, one <s> at the start, the rationale, </s>
    from data.tasks import get_task
    from train_sft import sft_examples
    rows = [json.loads(x) for x in open(os.path.join(run, "collect", "sft.jsonl"))][:3]
    if rows:
        assert rows[0]["prompt"] == get_task(key).prompt(next(r["question"] for r in records
                                                              if r["id"] == rows[0]["id"]))
        for ids, _ in sft_examples(tok, rows, "sft.jsonl", 1024):
            assert ids[0] == 0 and ids.count(0) == 1 and ids[-1] == 1
