"""Clip loading for evaluation: clap_jax.audio.io's loader with the eval settings, and batches decoded in threads.

Defaults: the model's own rate and clip length, channels averaged, long clips centre-cropped; `crop='random'` is
seeded per clip from (seed, path) so it is reproducible in any order; `'unseeded'` and `channels='concat'` are
msclap's own behaviour (CLAPWrapper). Short clips are always repeat-padded as msclap does.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from clap_jax.audio import io as audio_io


class ClipError(audio_io.AudioError):
    """A clip that cannot be decoded; the message names the file."""


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    sample_rate: int = 44100
    duration: float = 7.0
    crop: str = "center"          # clap_jax.audio.io.CROP_MODES
    channels: str = "mean"        # clap_jax.audio.io.CHANNEL_MODES
    seed: int = 0                 # for crop='random'
    resampler: str = "soxr_hq"    # librosa res_type (msclap uses torchaudio's sinc Resample)

    def __post_init__(self):
        audio_io.check_mode("crop", self.crop)
        audio_io.check_mode("channel_mode", self.channels)

    @property
    def num_samples(self) -> int:
        return audio_io.num_samples(self.duration, self.sample_rate)

    @property
    def cacheable(self) -> bool:
        return self.crop != "unseeded"

    def key(self) -> str:
        """Cache key part: every setting that changes the samples."""
        seed = self.seed if self.crop == "random" else ""
        return f"sr{self.sample_rate}-d{self.duration}-{self.crop}{seed}-{self.channels}-{self.resampler}"


def load_clip(path: str, cfg: LoaderConfig = LoaderConfig()) -> np.ndarray:
    rng = audio_io.clip_rng(cfg.seed, str(path)) if cfg.crop == "random" else None
    try:
        return audio_io.load_clip(str(path), None, cfg.sample_rate, cfg.num_samples, channel_mode=cfg.channels,
                                  crop=cfg.crop, rng=rng, res_type=cfg.resampler)
    except audio_io.AudioError as e:
        raise ClipError(f"cannot read audio clip {e}") from None


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
