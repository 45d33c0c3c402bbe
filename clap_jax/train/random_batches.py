"""Random batches for tests and benchmarks (`config.data.kind = 'random'`): deterministic, in memory, with the
data pipeline's contract, so the trainer runs without a dataset on disk.

Yields {'audio': (B, samples) float32, 'input_ids': (B, L) int32, 'attention_mask': (B, L) int32} as global
jax Arrays split over the batch axes of the mesh, and supports `get_state()` / `set_state()` like a Grain
`DatasetIterator`. Batch k is a pure function of (seed, k), so the same global batch comes out whatever the
number of processes or devices, and restoring the state resumes the exact sequence.

With `num_classes > 0` the pairs carry a learnable signal: example of class c is a tone at a class-specific
pitch (plus noise) captioned by a class-specific token, so a small model's contrastive loss falls within minutes
(the demo). With `num_classes == 0` audio is noise and captions random tokens (throughput / tests).
"""
from __future__ import annotations

import numpy as np
import jax

EOT, PAD = 50256, 0


def make_global_batch(seed: int, index: int, batch_size: int, num_samples: int, text_len: int,
                      num_classes: int, sample_rate: int = 44100, vocab_size: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, index])
    ids = np.zeros((batch_size, text_len), np.int32)
    mask = np.zeros((batch_size, text_len), np.int32)
    if num_classes > 0:
        cls = rng.integers(0, num_classes, batch_size)
        t = np.arange(num_samples, dtype=np.float32) / sample_rate
        freqs = 200.0 * 2.0 ** (cls / 2.0)                     # half-octave steps from 200 Hz
        phase = rng.uniform(0, 2 * np.pi, (batch_size, 1))
        audio = 0.5 * np.sin(2 * np.pi * freqs[:, None] * t[None] + phase)
        audio += 0.05 * rng.standard_normal((batch_size, num_samples))
        # "a sound of class <c>": a fixed prefix, the class token, end-of-text.
        prefix = [64, 2128, 286]
        for i, c in enumerate(cls):
            toks = prefix + [1000 + int(c), EOT]
            ids[i, :len(toks)] = toks
            mask[i, :len(toks)] = 1
    else:
        audio = 0.1 * rng.standard_normal((batch_size, num_samples))
        lens = rng.integers(2, max(3, min(text_len, 20)), batch_size)
        for i, n in enumerate(lens):
            ids[i, :n - 1] = rng.integers(1, EOT, n - 1)
            ids[i, n - 1] = EOT
            mask[i, :n] = 1
    if vocab_size is not None and vocab_size <= EOT:   # a smaller vocabulary (BERT's): ids wrapped into it
        ids = np.where(mask > 0, ids % vocab_size, PAD).astype(np.int32)
    return {"audio": audio.astype(np.float32), "input_ids": ids, "attention_mask": mask}


class RandomBatches:
    """Infinite iterator of global batches; state = number of batches already produced."""

    def __init__(self, *, batch_size: int, num_samples: int, text_len: int = 77, num_classes: int = 0,
                 seed: int = 0, sharding: jax.sharding.Sharding | None = None, vocab_size: int | None = None):
        self.kw = dict(batch_size=batch_size, num_samples=num_samples, text_len=text_len, num_classes=num_classes,
                       vocab_size=vocab_size)
        self.seed, self.sharding, self._index = seed, sharding, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = make_global_batch(self.seed, self._index, **self.kw)
        self._index += 1
        if self.sharding is None:
            return batch
        return {k: jax.make_array_from_callback(v.shape, self.sharding, lambda idx, v=v: v[idx])
                for k, v in batch.items()}

    def get_state(self) -> dict:
        return {"index": self._index, "seed": self.seed}

    def set_state(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"data iterator state has seed {state['seed']}, this run uses {self.seed}")
        self._index = int(state["index"])
