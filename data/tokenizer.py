"""
A byte-level BPE tokenizer trained with the `tokenizers` library on the corpus.

Digits are always one per token (a number's digits are never merged, so "13" is "1", "3"
and arithmetic stays learnable); a digit may carry the space before it (" 1"), which keeps
rationales short. Byte-level, so any text round-trips exactly.
"""

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from data.jsonl import DataError
from sml.hub import read_tokenizer

EOT = "<|endoftext|>"
# The end-of-text token of a pretrained model's tokenizer, by family: GPT-2, Qwen and SmolLM
# write <|endoftext|>, Llama 3 <|end_of_text|>, Llama 2 and Mistral </s>, Gemma <eos>.
END_OF_TEXT = (EOT, "<|end_of_text|>", "</s>", "<eos>")


def eot_id(tok):
    """The id of the token that ends every text here: a pretraining document, an SFT
    completion, a sampled rationale. Ours is <|endoftext|>; a pretrained tokenizer's is the
    first of END_OF_TEXT it has (fine-tuning teaches the model to write it)."""
    for t in END_OF_TEXT:
        if (i := tok.token_to_id(t)) is not None:
            return i
    raise DataError(f"the tokenizer has no end-of-text token (none of {', '.join(END_OF_TEXT)})")


def stop_ids(tok, config):
    """The ids a sampled text ends at: the tokenizer's end-of-text (eot_id) and every
    end-of-sequence id the checkpoint declares (config.eos_id: an id or a list, from its
    config.json / generation_config.json). An instruct model ends its turn with its own
    (Qwen's <|im_end|>, Llama 3's <|eot_id|>) and would otherwise run on to the budget."""
    declared = config.eos_id if isinstance(config.eos_id, list) else [config.eos_id]
    ids = [eot_id(tok)]
    for i in declared:
        if i is not None and i not in ids:
            ids.append(i)
    return ids


def decode_sampled(tok, ids, end_ids):
    """The text of sampled token ids, without the end id the sample stopped at (one of
    stop_ids'): it ends the text and is no part of it."""
    return tok.decode(ids[:-1] if ids and ids[-1] in end_ids else ids)


def encode_after(tok, before, text):
    """The ids of `text` as the tokenizer writes it after `before` in one string: the tokens a
    model given `before` should go on with (an SFT target, a pair's side, a rationale before
    its answer line). Encoding `text` alone is not always the same: a SentencePiece-style
    tokenizer (Llama 2, Mistral, TinyLlama) starts every string it encodes with a word
    marker, so " It is" alone is "▁", "▁It", "▁is", where after "Answer:" it is "▁It", "▁is".
    Where the two strings' tokens merge across the boundary, `text` alone is the best there is."""
    head = tok.encode(before, add_special_tokens=False).ids
    whole = tok.encode(before + text, add_special_tokens=False).ids
    if whole[:len(head)] == head:
        return whole[len(head):]
    return tok.encode(text, add_special_tokens=False).ids


def newline_ids(tok):
    """Every token whose text holds a line break. A few-shot prompt puts each rationale on
    one line, so a pretrained model has finished one when it writes any of these."""
    texts = tok.decode_batch([[i] for i in range(tok.get_vocab_size())], skip_special_tokens=False)
    return [i for i, t in enumerate(texts) if "\n" in t]


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
    """A data folder's tokenizer.json; a missing or malformed one is a DataError naming the file."""
    return read_tokenizer(path, DataError, "make it with data/prepare.py")
