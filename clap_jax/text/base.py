"""What every caption tokenizer shares: the `source` / `max_length` arguments, the transformers tokenizer loaded at
first use (`hf`), and the batch encoding into right-padded `(input_ids, attention_mask)` int32 arrays.

A subclass sets `pad_id` (the id padding fills `input_ids` with), implements `_load_hf()` (build the transformers
tokenizer from `self.source`) and `_encode(text)` (one caption -> its ids, at most `max_length` of them), and may
set `skip_special_tokens` (whether `decode` drops special tokens).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class CaptionTokenizer:
    """Captions -> (input_ids, attention_mask), both int32 of shape (N, max_length), padded on the right."""

    pad_id: int = 0
    skip_special_tokens: bool = True

    def __init__(self, source: str | None, max_length: int):
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.source = source
        self.max_length = max_length
        self._tok = None

    def _load_hf(self):
        raise NotImplementedError

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    @property
    def hf(self):
        """The transformers tokenizer (loaded at first use)."""
        if self._tok is None:
            self._tok = self._load_hf()
        return self._tok

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode_one(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"caption must be a str, got {type(text).__name__}: {text!r}")
        return self._encode(text)

    def __call__(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(input_ids, attention_mask)``, both int32 of shape (len(texts), max_length)."""
        if isinstance(texts, str):
            texts = [texts]
        ids = np.full((len(texts), self.max_length), self.pad_id, np.int32)
        mask = np.zeros((len(texts), self.max_length), np.int32)
        for i, t in enumerate(texts):
            row = self.encode_one(t)
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=self.skip_special_tokens)
