"""train_sft.py and train_rm.py: what gets a loss, what a score is read from, the splits."""

import json
import os
import subprocess
import sys

import pytest
import torch

import data
import train_rm
import train_sft
from sml import common
from data.tokenizer import EOT, load_tokenizer
from sml.checkpoint import load_checkpoint
from model import GPT, IGNORE_INDEX, GPTConfig, configure_optimizer
from sml import reward_report
from sml.lm_training import make_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args):
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def write_rows(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def test_prompt_and_padding_get_no_loss(tiny_run):
    tok = load_tokenizer(os.path.join(tiny_run["data"], "tokenizer.json"))
    rows = [{"prompt": "Question: Tom has 3 apples. How many apples does Tom have now?\nAnswer:",
             "completion": " So the answer is 3."},
            {"prompt": "Question: Ann has 4 pens.\nAnswer:", "completion": " 4 + 1 = 5."}]
    examples = train_sft.sft_examples(tok, rows, "x.jsonl", block_size=128)
    idx, tgt = make_batch(examples, [0, 1], tok.token_to_id(EOT), "cpu")
    for r, row in enumerate(rows):
        n_prompt = len(tok.encode(row["prompt"]).ids)
        n_completion = len(tok.encode(row["completion"]).ids) + 1  # + end-of-text
        # targets are shifted by one: position j predicts token j + 1
        assert (tgt[r, :n_prompt - 1] == IGNORE_INDEX).all()            # the prompt
        assert (tgt[r, n_prompt - 1:n_prompt - 1 + n_completion] != IGNORE_INDEX).all()
        assert (tgt[r, n_prompt - 1 + n_completion:] == IGNORE_INDEX).all()  # the padding
        assert int((tgt[r] != IGNORE_INDEX).sum()) == n_completion
    # the shorter row really is padded, so the last assertion above was not vacuous
    assert len(examples[1][0]) < len(examples[0][0])


def test_sft_on_one_example_drives_its_loss_near_zero(tiny_run, tmp_path):
    row = {"id": "q1", "prompt": "Question: Mia has 7 cups. Mia loses 2. How many cups does Mia have now?\n"
           "Answer:", "completion": " 7 - 2 = 5. So the answer is 5."}
    data = write_rows(tmp_path / "one.jsonl", [row])
    out = str(tmp_path / "sft.pt")
    r = run("train_sft.py", "--init", tiny_run["base"], "--data", data, "--data_dir", tiny_run["data"],
            "--out", out, "--preset", "tiny", "--max_steps", "60", "--batch_size", "4", "--lr", "3e-3",
            "--val_frac", "0", "--eval_limit", "4", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    tok = load_tokenizer(os.path.join(tiny_run["data"], "tokenizer.json"))
    model, ckpt = load_checkpoint(out, kind="lm")
    assert ckpt["provenance"]["parent"] == tiny_run["base"]
    model.eval()
    idx, tgt = make_batch(train_sft.sft_examples(tok, [row], data, 128), [0], tok.token_to_id(EOT), "cpu")
    with torch.no_grad():
        _, loss = model(idx, tgt)
    assert loss.item() < 0.05
    assert "test accuracy after SFT" in r.stdout


def test_reward_model_learns_a_one_token_difference():
    # chosen and rejected differ in one token; the RM must learn to rank them
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=16, block_size=16, n_layer=1, n_head=2, n_embd=32, kind="scalar")
    rm = GPT(cfg)
    opt = configure_optimizer(rm, 3e-3, 0.0)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(60):
        prompts = [torch.randint(3, 16, (int(n),), generator=g).tolist()
                   for n in torch.randint(2, 8, (16,), generator=g)]
        chosen = [p + [1, 0] for p in prompts]     # ... GOOD <eot>
        rejected = [p + [2, 0] for p in prompts]   # ... BAD <eot>
        scores = train_rm.batch_scores(rm, chosen + rejected, "cpu", pad_id=0)
        loss = train_rm.bradley_terry_loss(scores[:16], scores[16:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[0] > 0.6 and sum(losses[-5:]) / 5 < 0.1
    # ... and ranks the right way round on prompts it never saw (a sign-flipped loss falls
    # just as well, but ranks rejected above chosen)
    with torch.no_grad():
        prompts = [torch.randint(3, 16, (int(n),), generator=g).tolist()
                   for n in torch.randint(2, 8, (32,), generator=g)]
        scores = train_rm.batch_scores(rm.eval(), [p + [1, 0] for p in prompts] + [p + [2, 0] for p in prompts],
                                       "cpu", pad_id=0)
    assert (scores[:32] > scores[32:]).all()
    one, zero = torch.tensor([1.0]), torch.tensor([0.0])
    assert train_rm.bradley_terry_loss(one, zero) < train_rm.bradley_terry_loss(zero, one)


def test_score_is_read_at_the_last_real_token_whatever_the_padding():
    torch.manual_seed(0)
    rm = GPT(GPTConfig(vocab_size=16, block_size=32, n_layer=1, n_head=2, n_embd=32, kind="scalar")).eval()
    seq = [5, 6, 7, 8, 0]
    with torch.no_grad():
        alone = rm(torch.tensor([seq]))[0][0, -1]
        for longer in ([1] * 6, [1] * 20):  # padded to 6, then to 20 tokens
            batch = train_rm.batch_scores(rm, [seq, longer], "cpu", pad_id=3)
            assert torch.allclose(batch[0], alone, atol=1e-5)


def test_held_out_split_is_disjoint_by_question():
    pairs = [{"id": f"q{i % 37}", "prompt": f"p{i % 37}", "chosen": "a", "rejected": "b"} for i in range(400)]
    train, val = common.split_by_question(pairs, 0.2, seed=3)
    assert {p["id"] for p in train}.isdisjoint({p["id"] for p in val})
    assert len(train) + len(val) == len(pairs) and val and train
    assert common.split_by_question(pairs, 0.2, seed=3) == (train, val)


def test_auc():
    assert reward_report.auc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert reward_report.auc([0.0], [1.0]) == 0.0
    assert reward_report.auc([1.0], [1.0]) == 0.5


@pytest.mark.slow  # through the CLI, a process per case: CI runs it, -m "not slow" leaves it out
def test_bad_input(tiny_run, tmp_path):
    base, data = tiny_run["base"], tiny_run["data"]
    # a malformed line in sft.jsonl: file and line
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Question: a\\nAnswer:", "completion": " x"}\n{"prompt": 3}\n')
    r = run("train_sft.py", "--init", base, "--data", str(bad), "--data_dir", data,
            "--out", str(tmp_path / "s.pt"), "--device", "cpu")
    assert r.returncode != 0 and f"{bad}:2:" in r.stderr and "Traceback" not in r.stderr
    # an empty pairs file
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = run("train_rm.py", "--init", base, "--pairs", str(empty), "--data_dir", data,
            "--out", str(tmp_path / "rm.pt"), "--device", "cpu")
    assert r.returncode != 0 and "no rows" in r.stderr and "Traceback" not in r.stderr
    # a completion longer than the context
    long = write_rows(tmp_path / "long.jsonl", [{"prompt": "Question: a\nAnswer:", "completion": " 1 + 1 = 2." * 60}])
    r = run("train_sft.py", "--init", base, "--data", long, "--data_dir", data,
            "--out", str(tmp_path / "s.pt"), "--device", "cpu")
    assert r.returncode != 0 and "longer than the model's context" in r.stderr
    pairs = write_rows(tmp_path / "pairs.jsonl",
                       [{"id": f"q{i}", "prompt": "Question: a\nAnswer:", "chosen": " yes. So the answer is 1.",
                         "rejected": " no. So the answer is 2."} for i in range(8)])
    long_pairs = write_rows(tmp_path / "long_pairs.jsonl",
                            [{"prompt": "Question: a\nAnswer:", "chosen": " 1 + 1 = 2." * 60, "rejected": " no"}])
    r = run("train_rm.py", "--init", base, "--pairs", long_pairs, "--data_dir", data,
            "--out", str(tmp_path / "rm.pt"), "--device", "cpu")
    assert r.returncode != 0 and "longer than the model's context" in r.stderr
    # a reward model where a language model is expected, and the reverse
    rm_out = str(tmp_path / "rm.pt")
    r = run("train_rm.py", "--init", base, "--pairs", pairs, "--data_dir", data, "--out", rm_out,
            "--preset", "tiny", "--max_steps", "2", "--auc_questions", "2", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = run("train_sft.py", "--init", rm_out, "--data", long, "--data_dir", data,
            "--out", str(tmp_path / "s2.pt"), "--device", "cpu")
    assert r.returncode != 0 and "scalar" in r.stderr and "Traceback" not in r.stderr
    r = run("train_rm.py", "--init", rm_out, "--pairs", pairs, "--data_dir", data,
            "--out", str(tmp_path / "rm2.pt"), "--device", "cpu")
    assert r.returncode != 0 and "scalar" in r.stderr and "Traceback" not in r.stderr
    # an existing output is not overwritten
    before = open(rm_out, "rb").read()
    r = run("train_rm.py", "--init", base, "--pairs", pairs, "--data_dir", data, "--out", rm_out, "--device", "cpu")
    assert r.returncode != 0 and "--overwrite" in r.stderr and open(rm_out, "rb").read() == before


def sentencepiece_style_tokenizer():
    """A tokenizer in the format of Llama 2's, Mistral's and TinyLlama's tokenizer.json: a
    normalizer puts a word marker "▁" before the text and in place of every space, and a
    beginning-of-sequence token starts every encoding."""
    import random

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    rng = random.Random(0)
    words = "Ann Bob has figs buys more How many It is So the answer Question Answer".split()
    texts = [" ".join(rng.choice(words) + rng.choice(["", ":", ".", "?"]) for _ in range(12)) for _ in range(2000)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(texts + ["0 1 2 3 4 5 6 7 8 9\n"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def test_a_completion_is_encoded_as_it_follows_its_prompt_with_a_sentencepiece_tokenizer(monkeypatch):
    """SFT targets, reward-model pairs and the rationale before an answer line must be the
    tokens the model writes after the prompt. Encoded on its own, a completion gets an extra
    word marker from a SentencePiece-style tokenizer, which SFT would then teach."""
    from sml import rationales
    from data.tasks import get_task
    from sml.sampler import Samples
    tok = sentencepiece_style_tokenizer()
    prompt, completion = "Question: Ann has 3 figs. How many?\nAnswer:", " It is 3. So the answer is 3."
    whole, eos = tok.encode(prompt + completion).ids, tok.token_to_id("</s>")
    alone = tok.encode(completion, add_special_tokens=False).ids
    assert len(tok.encode(prompt).ids) + len(alone) != len(whole)  # the trap is there: an extra "▁"

    (ids, mask), = train_sft.sft_examples(tok, [{"id": "a", "prompt": prompt, "completion": completion}], "x", 256)
    n_prompt = len(tok.encode(prompt).ids)
    assert ids == whole + [eos] and mask == [0] * n_prompt + [1] * (len(whole) - n_prompt + 1)
    assert train_rm.encode_pair_side(tok, prompt, completion) == whole + [eos]

    # the answer-reading pass appends the rationale and the answer line to the prompt
    task, seen = get_task("arithmetic"), []

    def sampler(model, prompts, **kw):
        seen.extend(prompts)
        return Samples(torch.tensor([[eos]] * len(prompts)), torch.zeros(len(prompts), 1),
                       torch.ones(len(prompts), dtype=torch.long), torch.ones(len(prompts), dtype=torch.bool))
    monkeypatch.setattr(rationales, "sample", sampler)
    model = type("M", (), {"config": type("C", (), {"block_size": 256, "eos_id": None})()})()
    question = "Ann has 3 figs. How many?"
    prompt_ids = tok.encode(task.prompt(question)).ids
    rationales.read_answer_lines(model, tok, task, [prompt_ids], [question], [(0, {"text": "It is 3."})], 8, [eos],
                                 one_line=False, quiet=True)
    assert seen == [tok.encode(task.prompt(question) + " It is 3." + task.ANSWER_PREFIX).ids]


def test_an_answer_line_ends_at_any_end_id_the_checkpoint_declares(monkeypatch):
    """The answer line a model writes is read without the end id it stopped at: the tokenizer's
    end-of-text, or an end-of-turn id the checkpoint declares (as collection reads a rationale)."""
    from sml import rationales
    from data.tasks import get_task
    from data.tokenizer import train_tokenizer
    from sml.sampler import Samples
    tok = train_tokenizer(["So the answer is 3! It is 3."] * 5, vocab_size=280)
    end_of_turn = tok.token_to_id("!")  # an ordinary token, declared as the checkpoint's end id
    written = tok.encode(" 3", add_special_tokens=False).ids + [end_of_turn]

    def sampler(model, prompts, **kw):
        assert end_of_turn in kw["stop_ids"]
        return Samples(torch.tensor([written] * len(prompts)), torch.zeros(len(prompts), len(written)),
                       torch.full((len(prompts),), len(written)), torch.ones(len(prompts), dtype=torch.bool))
    monkeypatch.setattr(rationales, "sample", sampler)
    model = type("M", (), {"config": type("C", (), {"block_size": 256, "eos_id": end_of_turn})()})()
    task, question = get_task("arithmetic"), "Ann has 3 figs. How many?"
    lines = rationales.read_answer_lines(model, tok, task, [tok.encode(task.prompt(question)).ids], [question],
                                         [(0, {"text": "It is 3."})], 8, [tok.token_to_id(EOT), end_of_turn],
                                         one_line=False, quiet=True)
    assert lines == [" 3"]


def rm_argv(tiny_run, tmp_path, *extra):
    pairs = write_rows(tmp_path / "pairs.jsonl",
                       [{"id": f"q{i}", "prompt": "Question: a\nAnswer:", "chosen": " yes. So the answer is 1.",
                         "rejected": " no. So the answer is 2."} for i in range(8)])
    return ["--init", tiny_run["base"], "--pairs", pairs, "--data_dir", tiny_run["data"],
            "--out", str(tmp_path / "rm.pt"), "--report", str(tmp_path / "rm.json"), "--preset", "tiny",
            "--max_steps", "2", "--auc_samples", "1", "--device", "cpu", *extra]


def test_auc_questions_0_measures_no_auc_and_the_ppo_gate_reads_it_as_not_measured(tiny_run, tmp_path):
    """It used to train the whole model, then fail in torch.cat on an empty list, saving nothing."""
    train_rm.main(rm_argv(tiny_run, tmp_path, "--auc_questions", "0"))
    report = json.loads((tmp_path / "rm.json").read_text())
    assert report["auc_correctness"] is None and "auc_samples" not in report and "val_pair_accuracy" in report
    _, ckpt = load_checkpoint(str(tmp_path / "rm.pt"), kind="scalar")
    assert ckpt["report"] == report
    reward_report.check_reward_model({**report, "val_pair_accuracy": 0.9}, "rm.pt", allow_weak=False)  # not refused


def test_the_report_reads_validation_questions_never_the_test_split(tiny_run, tmp_path, monkeypatch):
    """PPO's gate decides on the report's AUC: it was computed on test.jsonl."""
    read = []
    load = reward_report.load_dataset

    def spy(path, *a, **kw):
        read.append(os.path.basename(path))
        return load(path, *a, **kw)
    monkeypatch.setattr(reward_report, "load_dataset", spy)
    monkeypatch.setattr(data, "load_dataset", spy)  # data.load_val_split's reader
    train_rm.main(rm_argv(tiny_run, tmp_path, "--auc_questions", "3"))
    report = json.loads((tmp_path / "rm.json").read_text())
    assert "val.jsonl" in read and "test.jsonl" not in read, read
    assert report["auc_samples"] == 3  # 3 validation questions x 1 sample


def test_under_torchrun_the_reward_model_refuses_in_one_line(tiny_run, tmp_path, monkeypatch):
    """Every process used to train the same model and write the same files."""
    from sml import common

    def no_work(*a, **kw):
        raise AssertionError("work started")
    monkeypatch.setattr(common, "setup_runtime", no_work)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(common.UserError, match="not 2; start it without torchrun"):
        train_rm.main(rm_argv(tiny_run, tmp_path, "--auc_questions", "2"))
    assert not os.path.exists(tmp_path / "rm.pt")
