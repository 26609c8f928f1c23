"""
A byte-level BPE tokenizer trained with the `tokenizers` library on the corpus.

Digits are always one per token (a number's digits are never merged, so "13" is "1", "3"
and arithmetic stays learnable); a digit may carry the space before it (" 1"), which keeps
rationales short. Byte-level, so any text round-trips exactly.
"""

import os

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"


def train_tokenizer(texts, vocab_size=512):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?[0-9]"), behavior="isolated"),  # one digit per piece
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def load_tokenizer(path):
    from data.jsonl import DataError
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file (make it with data/prepare.py)")
    return Tokenizer.from_file(path)
