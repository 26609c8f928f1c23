"""
Make the built-in world for one task: the "existing dataset" of the paper (questions and
answers), a held-out test split, the pretraining corpus that stands in for the web, and
the tokenizer.

    python data/prepare.py --task arithmetic --out_dir runs/default/data

Writes into --out_dir (docs/formats.md): train.jsonl (+ the gold rationale, for the upper-bound
baseline only); val.jsonl, held out of collection, SFT and the reward model, which every
checkpoint and temperature choice reads; test.jsonl; corpus.jsonl (worked solutions by careless
authors, and rationalizations that argue for a given answer, right or wrong); tokenizer.json
(byte-level BPE, digits one per token); meta.json. The corpus never holds a question of the
train or test split. The arithmetic world holds a misconception (docs/world.md); --world easy
makes the earlier world without it, byte for byte.

The paper's datasets (--task gsm8k, aqua, commonsense_qa, ...; docs/datasets.md) are converted,
not made, from the public files in --source (else downloaded and verified into a cache); with
--tokenizer_from also the model's tokenizer.json and a validation split from train's end.

    python data/prepare.py --task gsm8k --source ../shared/datasets/gsm8k --out_dir runs/gsm8k/data
    python data/prepare.py --task coin_flip --source ../shared/datasets/finetune_cot \\
        --tokenizer_from SmolLM2-135M-Instruct --out_dir runs/coin_flip/data
"""

import argparse
import os
import random
import sys

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sml import common
from sml import hub
from data import datasets
from data.jsonl import write_jsonl
from data.tasks import TASKS, get_task
from data.tokenizer import train_tokenizer

# The defaults below are the default preset; tiny overrides these (flags given still win).
PRESETS = {"default": {}, "tiny": dict(n_train=200, n_val=20, n_test=100, n_corpus=3000)}
# The arithmetic worlds, each a set of defaults for the corpus's knobs (flags given still win):
# misread, the default: a quarter of the changes are phrased so that most careless authors (90%)
# apply the other operation, so the base model is wrong at greedy on about half the questions,
# the same way each time (docs/world.md); easy: the world before it (no such phrasings, more
# random slips), whose base model is right at greedy and wrong only when sampled hot.
WORLDS = {"misread": dict(noise=0.1, tricky=0.25, misread=0.9), "easy": dict(noise=0.2, tricky=0.0, misread=0.9)}
NOISE = 0.2  # the other tasks' careless authors
# Everything this script writes into --out_dir (the built-in world; a dataset writes some of them)
OUTPUTS = ["train.jsonl", "val.jsonl", "test.jsonl", "corpus.jsonl", "tokenizer.json", "meta.json"]
# Ceilings far above any use, so that a slip of the keyboard (10**12) is one line, not a run
# that never ends: questions per split, corpus documents, steps of a problem, vocabulary
QUESTIONS = common.number(int, low=1, high=1_000_000)
DOCUMENTS = common.number(int, low=1, high=10_000_000)
STEPS = common.number(int, low=1, high=100)


def add_dataset_args(p):
    """The flags of a conversion of one of the paper's datasets."""
    g = p.add_argument_group("the paper's datasets (--task gsm8k, aqua, ...: converted, not made)")
    # Defaults suppressed: absent unless given, so that the built-in world's meta.json (which
    # records every argument) holds none of these.
    g.add_argument("--source", default=argparse.SUPPRESS,
                   help="a folder with the dataset in its public layout (see data/datasets.py); "
                        "without it the public files are downloaded and verified into --cache_dir")
    g.add_argument("--allow_modified_source", action="store_true", default=argparse.SUPPRESS,
                   help="convert --source files whose sha256 differs from the public file's recorded one "
                        "(refused unless given; meta.json then lists them)")
    g.add_argument("--cache_dir", default=argparse.SUPPRESS,
                   help=f"download cache (default: ${datasets.CACHE_ENV}/datasets or ~/.cache/sml/datasets)")
    g.add_argument("--test_only", action="store_true", default=argparse.SUPPRESS,
                   help="write the test split alone (AQuA's large train file is not needed)")
    g.add_argument("--tokenizer_from", default=argparse.SUPPRESS,
                   help="the pretrained model (a Hugging Face folder or hub id) whose tokenizer.json "
                        "the data folder takes; the validation split is then the last --n_val train "
                        "questions (default: a tenth, at most 500)")


def get_args(argv=None):
    p = common.ArgumentParser(description=__doc__)
    g = p.add_argument_group("what to make")
    g.add_argument("--task", default="arithmetic", help=f"one of: {', '.join(TASKS)}")
    g.add_argument("--out_dir", required=True,
                   help="written as a whole, when everything in it is made; a folder that holds other files "
                        "than these is refused")
    g.add_argument("--preset", default="default", choices=sorted(PRESETS), help=common.preset_help(PRESETS))
    g.add_argument("--n_train", type=QUESTIONS, default=5000, help="train questions (answers only are used by SML), "
                   "the validation split included")
    # 2,000 questions: what PPO's checkpoint choice needs for a standard error under a point. Most
    # of the error is which questions are hard, not sampling noise, so more questions help more
    # than more samples of each. Collection reads only the first 2,500 train questions.
    g.add_argument("--n_val", type=QUESTIONS, default=2000, help="of those, the last ones, held out as the validation split")
    g.add_argument("--n_test", type=QUESTIONS, default=1000, help="held-out test questions")
    g.add_argument("--n_corpus", type=DOCUMENTS, default=60000, help="pretraining documents")
    g.add_argument("--seed", type=common.SEED, default=1337)
    g.add_argument("--overwrite", action="store_true", help="replace files already in --out_dir")
    g = p.add_argument_group("the corpus (the stand-in for the web)")
    g.add_argument("--world", default="misread", choices=sorted(WORLDS),
                   help="arithmetic: the world whose defaults --noise, --tricky and --misread take: "
                        + "; ".join(f"{w}: " + ", ".join(f"{k} {v}" for k, v in d.items()) for w, d in WORLDS.items()))
    g.add_argument("--noise", type=float, default=None,
                   help=f"careless authors: chance that a step is wrong (arithmetic: the --world's; else {NOISE})")
    g.add_argument("--tricky", type=float, default=None,
                   help="arithmetic: chance that a change is phrased the way most careless authors misread "
                        "as the other operation (\"adds 2 to a gift box\" takes 2 away)")
    g.add_argument("--misread", type=float, default=None,
                   help="arithmetic: share of careless authors (and of those arguing for a wrong answer) who "
                        "misread such a phrasing; told the correct answer, authors read it right")
    g.add_argument("--hint_frac", type=float, default=0.5,
                   help="share of documents that argue for a given answer")
    g.add_argument("--hint_wrong_frac", type=float, default=0.5,
                   help="of those, the share whose given answer is wrong")
    g.add_argument("--ignore_hint_frac", type=float, default=0.1,
                   help="of those, the share whose author ignores the given answer and just "
                        "solves carelessly")
    g.add_argument("--rationalize_noise", type=float, default=0.0,
                   help="of the rationalizations, the chance that a step slips on the way (a step "
                        "is then bent to reach the given answer, so a right answer can come from "
                        "two slips that cancel: right for the wrong reason)")
    g.add_argument("--assert_frac", type=float, default=0.0,
                   help="of the rationalizations for a wrong answer, the share that does the steps "
                        "right and asserts the given answer; the rest slip at one step to reach it")
    g.add_argument("--vocab_size", type=common.number(int, low=1, high=1_000_000), default=512)
    g = p.add_argument_group("task difficulty (the number of steps of a problem)")
    g.add_argument("--min_steps", type=STEPS, default=None,
                   help="fewest steps: operations (arithmetic), people (coinflip), words (lastletter)")
    g.add_argument("--max_steps", type=STEPS, default=None, help="most steps")
    g.add_argument("--max_operand", type=int, default=None,
                   help="arithmetic: the largest start value and change (3 unless told)")
    add_dataset_args(p)
    args = p.parse_args(argv)
    if args.task in datasets.DATASETS:
        if "n_val" not in vars(common.flags_given(p, argv)):
            args.n_val = None
        return args
    for k in ("source", "allow_modified_source", "cache_dir", "test_only", "tokenizer_from"):
        if hasattr(args, k):
            p.error(f"--{k} is for the paper's datasets ({', '.join(datasets.DATASETS)})")
    common.apply_preset(p, args, argv, PRESETS)
    for k, v in (WORLDS[args.world] if args.task == "arithmetic" else dict(noise=NOISE)).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.task != "arithmetic":
        for k in ("tricky", "misread"):
            if getattr(args, k) is not None:
                p.error(f"--{k} is for --task arithmetic only")
    # bad numbers get one clear line, not a traceback from deep inside a generator
    if args.n_val >= args.n_train:
        p.error(f"--n_val ({args.n_val}) must be smaller than --n_train ({args.n_train})")
    for k in ("noise", "hint_frac", "hint_wrong_frac", "ignore_hint_frac", "rationalize_noise",
              "assert_frac", "tricky", "misread"):
        if getattr(args, k) is not None and not 0 <= getattr(args, k) <= 1:
            p.error(f"--{k} must be between 0 and 1")
    if args.max_operand is not None and args.task != "arithmetic":
        p.error("--max_operand is for --task arithmetic only")
    if args.min_steps is not None and args.max_steps is not None and args.min_steps > args.max_steps:
        p.error("--min_steps must not exceed --max_steps")
    return args


# Each task calls its steps by their own name: --min_steps/--max_steps map onto these knobs.
STEP_KNOBS = {"arithmetic": ("min_steps", "max_steps"), "coinflip": ("min_people", "max_people"),
              "lastletter": ("min_words", "max_words")}


def task_knobs(args):
    names = STEP_KNOBS.get(args.task, ())
    knobs = {knob: getattr(args, arg) for knob, arg in zip(names, ("min_steps", "max_steps"))
             if getattr(args, arg) is not None}
    if args.max_operand is not None:
        knobs["max_operand"] = args.max_operand
    if args.task == "arithmetic":
        knobs.update(tricky=args.tricky, misread=args.misread)
    return knobs


def draw_problems(task, rng, n, seen, what, distinct=True):
    """n problems whose questions are not in `seen`, by rejection (generators are cheap).
    distinct=True: also distinct from each other, and they join `seen`."""
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 10000:
            raise ValueError(f"could not find {n} new {what} questions; the task's question "
                             f"space is too small for these sizes (try fewer, or more steps)")
        prob = task.make_problem(rng)
        if prob["question"] not in seen:
            if distinct:
                seen.add(prob["question"])
            out.append(prob)
    return out


def corpus_document(task, prob, rng, args):
    """One document of the web stand-in, in the exact prompt format the scripts use."""
    if rng.random() >= args.hint_frac:  # a worked solution, no answer given
        text, _ = task.careless_rationale(prob, rng, args.noise)
        return f"{task.prompt(prob['question'])} {text}"
    wrong = rng.random() < args.hint_wrong_frac
    hint = task._wrong_answers(prob["answer"], 1, rng)[0] if wrong else prob["answer"]
    if rng.random() < args.ignore_hint_frac:
        text, _ = task.careless_rationale(prob, rng, args.noise)
    elif wrong and rng.random() < args.assert_frac:
        text = task.assertion(prob, hint, rng)
    else:
        text = task.rationalization(prob, hint, rng, args.rationalize_noise)
    return f"{task.prompt(prob['question'], hint)} {text}"


def prepare_dataset(args):
    """One of the paper's datasets, converted into --out_dir (data/datasets.py does the work),
    all at once like the built-in world: a killed conversion leaves no train.jsonl alone."""
    tokenizer_from = getattr(args, "tokenizer_from", None)
    inputs = [getattr(args, "source", None), getattr(args, "cache_dir", None), tokenizer_from]
    common.check_output(args.out_dir, args.overwrite, inputs, folder=True, outputs=OUTPUTS)
    tokenizer_json = hub.tokenizer_json_of(tokenizer_from) if tokenizer_from else None
    with common.atomic_folder(args.out_dir, OUTPUTS) as tmp:
        meta = datasets.prepare(args.task, tmp, getattr(args, "source", None),
                                getattr(args, "cache_dir", None), getattr(args, "test_only", False),
                                tokenizer_json=tokenizer_json, tokenizer_from=tokenizer_from, n_val=args.n_val,
                                allow_modified_source=getattr(args, "allow_modified_source", False))
    n = meta["counts"]
    train = "no train (--test_only)" if meta["test_only"] else f"{n['train']} train"
    val = f", {n['val']} val" if "val" in n else ""
    print(f"{args.task}: {train}{val}, {n['test']} test ({meta['answer_type']} answers)"
          f"{', tokenizer of ' + tokenizer_from if tokenizer_from else ''} -> {args.out_dir}")
    for name in meta.get("modified_source_files", []):  # --allow_modified_source: said, not only recorded
        print(f"modified source file: {os.path.join(args.source, name)} is not the public file (not its "
              f"recorded hash), converted anyway (--allow_modified_source; meta.json lists it)")


def main(argv=None):
    args = get_args(argv)
    if args.task in datasets.DATASETS:
        return prepare_dataset(args)
    task = get_task(args.task, **task_knobs(args))
    common.check_output(args.out_dir, args.overwrite, folder=True, outputs=OUTPUTS)

    rng = random.Random(args.seed)
    seen = set()
    test = draw_problems(task, rng, args.n_test, seen, "test")
    train = draw_problems(task, rng, args.n_train, seen, "train")
    # The corpus avoids every split question, but may solve one question more than once
    # (the web holds several authors' attempts at a popular problem). Insisting on
    # distinct questions would run short problems out (coinflip has 6,240 two-person
    # questions) and skew the corpus towards long ones.
    corpus_probs = draw_problems(task, rng, args.n_corpus, seen, "corpus", distinct=False)
    corpus = [{"text": corpus_document(task, prob, rng, args)}
              for prob in common.progress(corpus_probs, desc="corpus", leave=False)]

    def split_rows(probs, prefix):
        return [{"id": f"{prefix}-{i}", "question": p["question"], "answer": p["answer"],
                 "rationale": p["rationale"]} for i, p in enumerate(probs)]

    tok = train_tokenizer((d["text"] for d in corpus[:20000]), args.vocab_size)
    # The validation split is the tail of the train draw, so the train questions, the corpus
    # and the base model do not depend on its size.
    train, val = train[:-args.n_val], train[-args.n_val:]
    meta = {"task": args.task, "task_knobs": task_knobs(args), "args": vars(args),
            "counts": {"train": len(train), "val": len(val), "test": len(test), "corpus": len(corpus)}}
    with common.atomic_folder(args.out_dir, OUTPUTS) as tmp:  # an interrupted run leaves nothing half-made
        write_jsonl(os.path.join(tmp, "train.jsonl"), split_rows(train, "train"))
        write_jsonl(os.path.join(tmp, "val.jsonl"), split_rows(val, "val"))
        write_jsonl(os.path.join(tmp, "test.jsonl"), split_rows(test, "test"))
        write_jsonl(os.path.join(tmp, "corpus.jsonl"), corpus)
        common.write_text(os.path.join(tmp, "tokenizer.json"), tok.to_str(pretty=True))
        common.write_json(os.path.join(tmp, "meta.json"), meta)
    print(f"{args.task}: {len(train)} train, {len(val)} val, {len(test)} test, {len(corpus)} corpus documents, "
          f"vocab {tok.get_vocab_size()} -> {args.out_dir}")


if __name__ == "__main__":
    common.run(main)
