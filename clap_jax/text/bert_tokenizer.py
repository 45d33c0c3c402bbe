"""BERT WordPiece (uncased) tokenization as msclap's version '2022' does it, from a vocabulary the user gives.

msclap 2022 tokenizes each caption with `bert-base-uncased`'s tokenizer as it is: `[CLS] caption [SEP]`, padded
with `[PAD]` (id 0) on the right to 100 tokens, one segment (token types all 0), nothing appended (no
`<|endoftext|>`, which only the GPT-2 family adds). The text tower pools the hidden state of `[CLS]`.

One deliberate difference: msclap does not truncate (a caption over 100 tokens gives a longer row, and a batch of
such rows fails to stack); here it is cut to 100 tokens keeping `[CLS]` first and `[SEP]` last. Captions that fit
are encoded identically.

Where the vocabulary (`vocab.txt`, one WordPiece token a line) comes from:
  * `source` a file: that vocab.txt;
  * `source` a directory holding vocab.txt (a HF checkpoint directory of bert-base-uncased, or your own);
  * `source` a hub name ('bert-base-uncased'): its vocab.txt from the local Hugging Face cache only (never the
    network);
  * no `source`: 'bert-base-uncased' from the local Hugging Face cache when it is there.
The vocabulary is read at the first caption, so a model whose text tower is unused (audio embeddings only) needs
none. A `tokenizer_config.json` next to vocab.txt may turn lower-casing off (`do_lower_case: false`).
"""
from __future__ import annotations

import functools
import json
import os
from clap_jax.errors import UserError
from clap_jax.text.base import CaptionTokenizer

DEFAULT_HUB_NAME = "bert-base-uncased"
MAX_LENGTH = 100
PAD_ID = 0


def _from_hf_cache(name: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:   # pragma: no cover - transformers depends on it
        return None
    try:
        path = try_to_load_from_cache(name, "vocab.txt")
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not in the cache
        return None
    return path if isinstance(path, str) and os.path.isfile(path) else None


def resolve_vocab(source: str | None) -> str:
    """`source` (see module docstring) -> path of a vocab.txt; UserError naming what was looked for."""
    how = ("pass the vocabulary: a vocab.txt, a directory holding it (e.g. a HF bert-base-uncased checkpoint "
           "directory), or a hub name already in the local Hugging Face cache (CLAP(..., tokenizer=...), "
           "--tokenizer)")
    if source is None:
        path = _from_hf_cache(DEFAULT_HUB_NAME)
        if path is None:
            raise UserError(f"BERT tokenizer: no vocabulary given and {DEFAULT_HUB_NAME!r} is not in the local "
                            f"Hugging Face cache; {how}")
        return path
    source = os.fspath(source)
    if os.path.isfile(source):
        return source
    if os.path.isdir(source):
        path = os.path.join(source, "vocab.txt")
        if not os.path.isfile(path):
            raise UserError(f"{source}: no vocab.txt in this directory; {how}")
        return path
    path = _from_hf_cache(source)
    if path is None:
        raise UserError(f"{source}: neither a file, a directory, nor a hub name in the local Hugging Face cache "
                        f"(nothing is downloaded); {how}")
    return path


def _lower_case(vocab_path: str) -> bool:
    cfg = os.path.join(os.path.dirname(vocab_path), "tokenizer_config.json")
    if os.path.isfile(cfg):
        try:
            with open(cfg) as f:
                return bool(json.load(f).get("do_lower_case", True))
        except (OSError, json.JSONDecodeError):
            pass
    return True


def _read_vocab(path: str) -> dict[str, int]:
    try:
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable vocabulary ({e})") from e
    need = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in tokens]
    if need:
        raise UserError(f"{path}: not a BERT WordPiece vocabulary (one token a line): it lacks {', '.join(need)}")
    if tokens[0] != "[PAD]":
        raise UserError(f"{path}: '[PAD]' must be the first token (id 0), as in bert-base-uncased")
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    return vocab


@functools.lru_cache(maxsize=4)
def _load(vocab_path: str):
    vocab = _read_vocab(vocab_path)
    from transformers import BertTokenizer

    return BertTokenizer(vocab=vocab, do_lower_case=_lower_case(vocab_path))


class BertWordPieceTokenizer(CaptionTokenizer):
    """Captions -> (input_ids, attention_mask), int32 (N, max_length), as msclap 2022 (see module docstring).

    >>> tok = BertWordPieceTokenizer("path/to/vocab_dir")
    >>> ids, mask = tok(["a dog barks", "rain"])   # (2, 100)
    """

    pad_id = PAD_ID

    def __init__(self, source: str | None = None, max_length: int = MAX_LENGTH):
        super().__init__(source, max_length)

    def _load_hf(self):
        return _load(resolve_vocab(self.source))

    def _encode(self, text: str) -> list[int]:
        ids = list(self.hf(text, add_special_tokens=True)["input_ids"])
        if len(ids) > self.max_length:
            ids = ids[: self.max_length - 1] + [ids[-1]]   # keep [SEP] last
        return ids
