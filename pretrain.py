"""
Pretrain the base model from scratch on the built-in corpus.

The paper starts from a pretrained LLM that already writes imperfect chains of thought.
Here that starting point is made on one machine: a small GPT reads a corpus of worked
solutions by careless authors and of rationalizations that argue for a given answer
(data/prepare.py), and so learns to write rationales that are right only part of the
time and to follow a given answer: the two abilities SML needs.

The training loop is lm_training.train_lm, shared with train_sft.py: supervised fine-tuning
is the same next-token loss, with the prompt tokens masked out.

    python pretrain.py --data_dir runs/default/data --out runs/default/base.pt
    torchrun --standalone --nproc_per_node=2 pretrain.py ...   # DDP
"""

import os

from sml import common
from data.jsonl import read_jsonl
from data.tokenizer import eot_id, load_tokenizer
from sml.lm_training import check_lengths, micro_batch_size, start_or_resume, train_lm
from model import GPT, GPTConfig

# The defaults below are the default preset; tiny overrides these (flags given still win).
PRESETS = {"default": {},
           "tiny": dict(n_layer=2, n_head=2, n_embd=64, max_steps=60, warmup_steps=10, eval_interval=30)}
# A model trained from scratch here has at most this many parameters (weights, gradients and
# AdamW's two moments: 16 bytes each, 32 GB): a typo in a size is one line, not an allocator's crash.
MAX_PARAMS = 2_000_000_000
SIZE = common.number(int, low=1, high=100_000)


def get_args(argv=None):
    p = common.ArgumentParser(description=__doc__)
    g = p.add_argument_group("input / output")
    g.add_argument("--data_dir", required=True, help="folder with corpus.jsonl and tokenizer.json")
    g.add_argument("--out", required=True, help="checkpoint to write (e.g. runs/default/base.pt)")
    g.add_argument("--init", default=None,
                   help="continue pretraining this checkpoint (ours, or a Hugging Face folder or hub id) "
                        "instead of a fresh model; the model flags below are then ignored")
    g.add_argument("--resume", action="store_true", help="continue from --out's .partial checkpoint if there is one")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    g.add_argument("--preset", default="default", choices=sorted(PRESETS), help=common.preset_help(PRESETS))
    g = p.add_argument_group("model")
    g.add_argument("--n_layer", type=SIZE, default=3)
    g.add_argument("--n_head", type=SIZE, default=4, help="attention heads; they split --n_embd evenly")
    g.add_argument("--n_embd", type=SIZE, default=128)
    g.add_argument("--block_size", type=SIZE, default=128, help="context length")
    g = p.add_argument_group("optimisation")
    g.add_argument("--max_steps", type=common.COUNT, default=1000)
    g.add_argument("--batch_size", type=common.COUNT, default=32, help="documents per optimizer step (global)")
    g.add_argument("--grad_accum", type=common.COUNT, default=1, help="micro-batches per step and process")
    g.add_argument("--lr", type=common.LEARNING_RATE, default=3e-3)
    g.add_argument("--warmup_steps", type=common.NONNEG, default=50)
    g.add_argument("--weight_decay", type=common.NONNEG_FLOAT, default=0.1)
    g.add_argument("--grad_clip", type=common.POSITIVE, default=1.0)
    g = p.add_argument_group("logging")
    g.add_argument("--eval_interval", type=common.COUNT, default=200, help="eval loss and checkpoint every N steps")
    g.add_argument("--eval_docs", type=common.NONNEG, default=500, help="held-out documents for eval loss")
    common.add_runtime_args(p)
    args = p.parse_args(argv)
    common.apply_preset(p, args, argv, PRESETS)
    if args.init is None:
        check_model_size(p, args)
    return args


def check_model_size(p, args):
    """Heads split the width evenly (--n_head above --n_embd would give heads of width 0: a model
    with no attention that trains without a word), and the model fits MAX_PARAMS."""
    if args.n_embd % args.n_head:
        p.error(f"--n_head {args.n_head} does not divide --n_embd {args.n_embd}: each head gets an equal share "
                f"of the width")
    params = approx_params(args)
    if params > MAX_PARAMS:
        p.error(f"--n_layer {args.n_layer}, --n_embd {args.n_embd}, --block_size {args.block_size}: about "
                f"{params / 1e9:.1f}B parameters; at most {MAX_PARAMS / 1e9:.0f}B here")


def approx_params(args, vocab_size=0):
    """The parameters of the model the flags describe: 12 d^2 a block, the token (tied with the
    output layer) and position embeddings."""
    return 12 * args.n_layer * args.n_embd ** 2 + (vocab_size + args.block_size) * args.n_embd


def check_memory(config, args, rt):
    """Before a fresh model is built: its weights, gradients and AdamW's state, and a micro-batch
    of at least one token a row, fit in what the process can have (lm_training checks again with
    the documents' lengths, once they are read)."""
    micro = micro_batch_size(args.batch_size, rt, args.grad_accum)
    need = common.training_memory(config, approx_params(args, config.vocab_size), micro, 1, rt.dtype.itemsize)
    common.check_training_memory(need, rt.device, f"--n_layer {args.n_layer}, --n_embd {args.n_embd}",
                                 f"--batch_size {args.batch_size}")


# -----------------------------------------------------------------------------


def tokenize_docs(tok, texts, eot_id):
    """Each corpus document + end-of-text, loss on every token."""
    encs = tok.encode_batch(texts)
    return [(e.ids + [eot_id], [1] * (len(e.ids) + 1)) for e in encs]


def main(argv=None):
    args = get_args(argv)
    rt = common.setup_runtime(args.device, args.dtype)
    common.seed_everything(args.seed)
    tok = load_tokenizer(os.path.join(args.data_dir, "tokenizer.json"))
    corpus_path = os.path.join(args.data_dir, "corpus.jsonl")
    config = GPTConfig(vocab_size=tok.get_vocab_size(), block_size=args.block_size,
                       n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    if args.init is None:
        check_memory(config, args, rt)
    model, start_step, resume_state = start_or_resume(args.out, args.resume, args.overwrite,
                                                   args.init or (lambda: GPT(config)), tok.to_str(),
                                                   inputs=[args.data_dir])
    docs = read_jsonl(corpus_path, {"text": str})
    eot = eot_id(tok)
    examples = tokenize_docs(tok, [d["text"] for d in docs], eot)
    # Hold out a few documents for the eval loss (corpus order is already shuffled).
    n_val = min(args.eval_docs, len(examples) // 10)
    train_examples, val_examples = examples[n_val:], examples[:n_val]
    check_lengths(examples, model.config.block_size, corpus_path + " document")
    common.print0(rt, f"{model.num_params() / 1e6:.2f}M parameters, {len(train_examples)} documents, "
                      f"{sum(len(e[0]) for e in train_examples) / len(train_examples):.1f} tokens each")
    train_lm(model, rt, train_examples, val_examples, eot, args.out, tok.to_str(),
             {"script": "pretrain.py", "args": vars(args), "parent": args.init},
             max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
             weight_decay=args.weight_decay, grad_clip=args.grad_clip, eval_interval=args.eval_interval,
             seed=args.seed, grad_accum=args.grad_accum, compile=args.compile, start_step=start_step,
             resume_state=resume_state, desc="pretrain")
    common.cleanup_runtime(rt)


if __name__ == "__main__":
    common.run(main)
