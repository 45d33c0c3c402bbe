"""RoBERTa byte-level BPE tokenization as laion_clap does it, from vocabulary files the user gives.

laion_clap tokenizes captions with `roberta-base`'s tokenizer as `tokenizer(text, padding='max_length',
truncation=True, max_length=77)`: `<s> caption </s>` padded with `<pad>` (id 1) on the right to 77 tokens; a
longer caption is cut to 75 tokens between `<s>` and `</s>`. The text tower pools at `<s>` (position 0) and its
position ids count the non-pad tokens, so the padding never reaches the embedding.

Where the BPE files (`vocab.json` + `merges.txt`) come from:
  * `source` a directory holding them (a HF checkpoint directory of roberta-base or of a LAION-CLAP model such
    as laion/clap-htsat-unfused, or your own);
  * `source` the path of a vocab.json with merges.txt beside it;
  * `source` a hub name ('roberta-base'): its files from the local Hugging Face cache only (never the network);
  * no `source`: 'roberta-base' from the local Hugging Face cache when it is there.
No installed package ships RoBERTa's files (GPT-2's BPE files hold the same merges but other ids). The files are
read at the first caption, so audio embeddings need none.
"""
from __future__ import annotations

import functools
import json
import os
from clap_jax.errors import UserError
from clap_jax.text.base import CaptionTokenizer

DEFAULT_HUB_NAME = "roberta-base"
MAX_LENGTH = 77
BOS_ID, PAD_ID, EOS_ID = 0, 1, 2


def _from_hf_cache(name: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:   # pragma: no cover - transformers depends on it
        return None
    try:
        paths = [try_to_load_from_cache(name, f) for f in ("vocab.json", "merges.txt")]
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not in the cache
        return None
    if all(isinstance(p, str) and os.path.isfile(p) for p in paths) and \
            os.path.dirname(paths[0]) == os.path.dirname(paths[1]):
        return os.path.dirname(paths[0])
    return None


def resolve_files(source: str | None) -> tuple[str, str]:
    """`source` (see module docstring) -> (vocab.json, merges.txt) paths; UserError naming what was looked for."""
    how = ("pass RoBERTa's BPE files: a directory holding vocab.json and merges.txt (e.g. a HF roberta-base or "
           "laion/clap-htsat-* checkpoint directory), or a hub name already in the local Hugging Face cache "
           "(CLAP(..., tokenizer=...), --tokenizer)")
    if source is None:
        d = _from_hf_cache(DEFAULT_HUB_NAME)
        if d is None:
            raise UserError(f"RoBERTa tokenizer: no vocabulary given and {DEFAULT_HUB_NAME!r} is not in the local "
                            f"Hugging Face cache; {how}")
    else:
        source = os.fspath(source)
        if os.path.isfile(source):
            d = os.path.dirname(os.path.abspath(source))
        elif os.path.isdir(source):
            d = source
        else:
            d = _from_hf_cache(source)
            if d is None:
                raise UserError(f"{source}: neither a file, a directory, nor a hub name in the local Hugging Face "
                                f"cache (nothing is downloaded); {how}")
    vocab, merges = os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")
    lacking = [os.path.basename(p) for p in (vocab, merges) if not os.path.isfile(p)]
    if lacking:
        raise UserError(f"{d}: no {' and no '.join(lacking)} in this directory; {how}")
    return vocab, merges


@functools.lru_cache(maxsize=4)
def _load(vocab_path: str, merges_path: str):
    try:
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{vocab_path}: unreadable BPE vocabulary ({e})") from e
    want = {"<s>": BOS_ID, "<pad>": PAD_ID, "</s>": EOS_ID}
    wrong = [f"{t}={vocab.get(t)} (expected {i})" for t, i in want.items() if vocab.get(t) != i]
    if not isinstance(vocab, dict) or wrong:
        raise UserError(f"{vocab_path}: not a RoBERTa vocabulary: special tokens {', '.join(wrong)}")
    from transformers import RobertaTokenizer

    try:
        return RobertaTokenizer.from_pretrained(os.path.dirname(vocab_path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - a broken merges file
        raise UserError(f"{merges_path}: unreadable BPE merges ({type(e).__name__}: {e})") from e


class RobertaTokenizer(CaptionTokenizer):
    """Captions -> (input_ids, attention_mask), int32 (N, max_length), as laion_clap (see module docstring).

    >>> tok = RobertaTokenizer("path/to/roberta_dir")
    >>> ids, mask = tok(["a dog barks", "rain"])   # (2, 77)
    """

    pad_id = PAD_ID

    def __init__(self, source: str | None = None, max_length: int = MAX_LENGTH):
        super().__init__(source, max_length)

    def _load_hf(self):
        return _load(*resolve_files(self.source))

    def _encode(self, text: str) -> list[int]:
        return list(self.hf(text, add_special_tokens=True, truncation=True, max_length=self.max_length)["input_ids"])
