"""Deterministic stand-ins for the CLAP model, for tests and for trying the harness without weights.

ToneEmbedder: "understands" audio made of pure tones. It is given {frequency_hz: [texts]}; a clip's embedding
is the sum of the text embeddings of every known frequency present in its spectrum. A test that writes each
class as a tone and maps that tone to the class prompt gets a perfect zero-shot classifier (and retriever),
through the whole pipeline: files -> decode -> resample -> 7-s window -> embed -> score.

RandomEmbedder: embeddings are hashes of the samples / text, so scores sit at chance.
"""
from __future__ import annotations

import hashlib

import numpy as np


def _unit(seed_bytes: bytes, dim: int) -> np.ndarray:
    rng = np.random.default_rng(np.frombuffer(hashlib.sha1(seed_bytes).digest()[:8], dtype=np.uint64)[0])
    v = rng.standard_normal(dim)
    return v / np.linalg.norm(v)


class RandomEmbedder:
    def __init__(self, dim: int = 256, logit_scale: float = 100.0, cache_id: str = "random"):
        self.dim, self.logit_scale, self.cache_id = dim, logit_scale, cache_id
        self.audio_calls = 0

    def get_text_embeddings(self, texts):
        return np.stack([_unit(b"text:" + t.encode(), self.dim) for t in texts]).astype(np.float32)

    def get_audio_embeddings(self, audio, sample_rate=None, batch_size=64):
        self.audio_calls += 1
        return np.stack([_unit(b"audio:" + np.asarray(a, np.float32).tobytes(), self.dim)
                         for a in audio]).astype(np.float32)


class ToneEmbedder(RandomEmbedder):
    def __init__(self, tones: dict, dim: int = 512, logit_scale: float = 100.0, cache_id: str = "tone",
                 rel_threshold: float = 0.2, tolerance_hz: float = 5.0):
        super().__init__(dim, logit_scale, cache_id)
        self.tones = {float(f): list(t) for f, t in tones.items()}
        self.rel_threshold = rel_threshold
        self.tolerance_hz = tolerance_hz   # tones should be > 2 * tolerance apart; covers repeat-padding sidebands

    def detect(self, y: np.ndarray, sample_rate: int) -> list:
        """Known frequencies whose spectral peak is at least rel_threshold of the strongest one."""
        spec = np.abs(np.fft.rfft(np.asarray(y, np.float64) * np.hanning(len(y))))
        hz_per_bin = sample_rate / len(y)
        freqs = sorted(self.tones)
        mags = []
        for f in freqs:
            lo, hi = int((f - self.tolerance_hz) / hz_per_bin), int((f + self.tolerance_hz) / hz_per_bin) + 1
            mags.append(spec[max(0, lo):hi].max() if lo < len(spec) else 0.0)
        mags = np.asarray(mags)
        if not len(mags) or mags.max() <= 1e-3 * len(y):
            return []
        return [f for f, m in zip(freqs, mags) if m >= self.rel_threshold * mags.max()]

    def get_audio_embeddings(self, audio, sample_rate=None, batch_size=64):
        self.audio_calls += 1
        out = []
        for y in audio:
            found = self.detect(y, sample_rate)
            if not found:
                out.append(_unit(b"audio:" + np.asarray(y, np.float32).tobytes(), self.dim))
                continue
            v = sum(self.get_text_embeddings(self.tones[f]).sum(0) for f in found)
            out.append(v / np.linalg.norm(v))
        return np.stack(out).astype(np.float32)
