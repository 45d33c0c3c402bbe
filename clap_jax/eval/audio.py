"""Clip loading for evaluation: decode, channel handling, resample to 44.1 kHz, fixed 7-s window.

msclap (CLAPWrapper, config_2023.yml) resamples to 44.1 kHz, flattens channels with reshape(-1) (no down-mix),
tiles short clips (repeat-padding) and takes an unseeded random 7-s crop of long clips. Here:

  channels   "mean" (default: mono down-mix) or "flatten" (msclap: [L..., R...])
  crop       "center" (default), "start", "seeded" (random offset from hash(seed, path): reproducible)
             or "random" (msclap: unseeded)
Short clips are always repeat-padded as msclap does.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from clap_jax.audio import io as audio_io


SAMPLE_RATE = 44100
DURATION = 7.0


class ClipError(audio_io.AudioError):
    """A clip that cannot be decoded; the message names the file."""


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    sample_rate: int = SAMPLE_RATE
    duration: float = DURATION
    crop: str = "center"          # center | start | seeded | random
    channels: str = "mean"        # mean | flatten
    seed: int = 0
    resampler: str = "soxr_hq"    # librosa res_type (msclap uses torchaudio's sinc Resample)

    def __post_init__(self):
        if self.crop not in ("center", "start", "seeded", "random"):
            raise ValueError(f"crop must be center|start|seeded|random, not {self.crop!r}")
        if self.channels not in ("mean", "flatten"):
            raise ValueError(f"channels must be mean|flatten, not {self.channels!r}")

    def key(self) -> str:
        """Cache key part: every setting that changes the samples (random crops are not cacheable)."""
        seed = self.seed if self.crop == "seeded" else ""
        return f"sr{self.sample_rate}-d{self.duration}-{self.crop}{seed}-{self.channels}-{self.resampler}"


def decode(path: str, sample_rate: int, channels: str, resampler: str = "soxr_hq") -> np.ndarray:
    """Decode a file to float32 at sample_rate: mono (mean) or channels flattened msclap-style."""
    try:
        data, sr = audio_io.read_audio(path)                       # (C, N)
    except audio_io.AudioError as e:
        raise ClipError(f"cannot read audio clip {e}") from None
    # per channel, before flattening (msclap resamples the (C, N) tensor, then reshapes)
    y = audio_io.resample(data, sr, sample_rate, res_type=resampler)
    return np.ascontiguousarray(audio_io.to_mono(y, "mean" if channels == "mean" else "concat"), np.float32)


def fix_length(y: np.ndarray, n: int, crop: str, seed: int = 0, path: str = "") -> np.ndarray:
    """Repeat-pad clips shorter than n samples (msclap tiling), crop longer ones by the crop rule."""
    if len(y) < n:
        y = np.tile(y, int(np.ceil(n / len(y))))
        return y[:n]
    extra = len(y) - n
    if extra == 0 or crop == "start":
        start = 0
    elif crop == "center":
        start = extra // 2
    elif crop == "seeded":
        h = hashlib.sha1(f"{seed}:{path}".encode()).digest()
        start = int.from_bytes(h[:8], "little") % (extra + 1)
    else:  # "random": msclap's unseeded crop (random.randrange(n_samples - n), as in CLAPWrapper)
        start = random.randrange(extra)
    return y[start:start + n]


def load_clip(path: str, cfg: LoaderConfig = LoaderConfig()) -> np.ndarray:
    y = decode(path, cfg.sample_rate, cfg.channels, cfg.resampler)
    return fix_length(y, int(round(cfg.duration * cfg.sample_rate)), cfg.crop, cfg.seed, str(path))


def iter_batches(paths, cfg: LoaderConfig, batch_size: int, workers: int = 4, on_error=None):
    """Yield (indices, stacked (B, T) float32 array) in order, decoding with a thread pool while the caller
    embeds the previous batch (one batch is prefetched).

    on_error(path, exc) -> None decides about unreadable clips: by default the ClipError propagates; a callback
    that returns normally drops the clip (its index is left out of the batch indices).
    """
    paths = list(paths)
    chunks = [list(range(i, min(i + batch_size, len(paths)))) for i in range(0, len(paths), batch_size)]

    def load_one(i):
        try:
            return load_clip(paths[i], cfg)
        except ClipError as e:
            if on_error is None:
                raise
            on_error(paths[i], e)
            return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = [pool.submit(load_one, i) for i in chunks[0]] if chunks else []
        for c, idx in enumerate(chunks):
            current = pending
            pending = [pool.submit(load_one, i) for i in chunks[c + 1]] if c + 1 < len(chunks) else []
            arrays = [f.result() for f in current]
            keep = [(i, a) for i, a in zip(idx, arrays) if a is not None]
            if keep:
                yield [i for i, _ in keep], np.stack([a for _, a in keep])
