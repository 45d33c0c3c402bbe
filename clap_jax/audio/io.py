"""Audio in, one loader for every user: decode a file (or take an array), resample, choose the channels, and cut
or repeat-pad it to the clip length. Preprocessing, the training pipeline, the eval harness and the `CLAP` class
all use the functions here, so a clip gets the same window whichever way it is read.

Channel modes (`CHANNEL_MODES`):
  mean      average the channels (default)
  concat    msclap: the channels one after another in time (its `reshape(-1)`)
  first     the first channel
Crop modes for clips longer than the target (`CROP_MODES`); shorter clips are always repeat-padded (tiled
ceil(L/n) times and cut to L samples, as msclap does):
  center    the middle window (default for inference and eval: deterministic)
  start     the first window
  random    a uniformly random start in [0, n - L], drawn from the numpy Generator the caller passes (training
            pipeline: seeded per example; eval: seeded per clip from (seed, path); `CLAP`: its own seeded rng)
  unseeded  msclap's `random.randrange(n - L)` from Python's global generator (not reproducible)
Resampling: librosa with soxr 'soxr_hq' (msclap uses torchaudio's windowed sinc). Identical rates are never
touched, so 44.1 kHz input is bit-identical to msclap's path.
"""
from __future__ import annotations

import hashlib
import math
import os
import random as _py_random
import warnings

import numpy as np

from clap_jax.errors import UserError

# librosa's fallback chatter for files soundfile cannot open (the AudioError that follows names the file). Set
# once at import: warnings.catch_warnings is not thread-safe and the eval loader decodes in threads.
warnings.filterwarnings("ignore", message="PySoundFile failed", category=UserWarning)
warnings.filterwarnings("ignore", message=r"librosa\.core\.audio\.__audioread_load", category=FutureWarning)

CHANNEL_MODES = ("mean", "concat", "first")
CROP_MODES = ("center", "start", "random", "unseeded")


class AudioError(UserError, ValueError):
    """An audio file or array that cannot be used; the message names it."""


def read_audio(path: str, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """-> ((channels, samples) float32 in [-1, 1], sample rate). soundfile first (wav, flac, ogg, mp3), then
    librosa/audioread for the rest. `max_seconds` decodes only the beginning. Raises AudioError naming `path`."""
    if not os.path.isfile(path):
        raise AudioError(f"{path}: file not found")
    try:
        import soundfile as sf

        with sf.SoundFile(path) as f:
            sr = f.samplerate
            frames = -1 if max_seconds is None else int(math.ceil(max_seconds * sr))
            data = f.read(frames=frames, dtype="float32", always_2d=True).T   # (C, N)
    except Exception as e_sf:  # noqa: BLE001 - try the slower decoders before giving up
        sf_msg = str(e_sf).strip() or type(e_sf).__name__
        try:
            import librosa

            data, sr = librosa.load(path, sr=None, mono=False, duration=max_seconds)
            data = np.atleast_2d(data).astype(np.float32)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
            msg = str(e).strip() or type(e).__name__
            raise AudioError(f"{path}: cannot decode audio (soundfile: {sf_msg}; audioread: {msg})") from e
    if data.size == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    if not np.all(np.isfinite(data)):
        raise AudioError(f"{path}: audio contains NaN/inf samples")
    return np.ascontiguousarray(data), int(sr)


def as_channels_first(x: np.ndarray, name: str = "array") -> np.ndarray:
    """1-D (N,) or 2-D (C, N) -> (C, N). A 2-D array with many rows and <= 16 columns is read as (N, C)."""
    x = np.asarray(x, np.float32)
    if x.ndim == 1:
        return x[None]
    if x.ndim != 2:
        raise AudioError(f"{name}: expected 1-D (samples,) or 2-D (channels, samples), got shape {x.shape}")
    if x.shape[0] > 16 >= x.shape[1]:
        x = x.T
    if x.shape[0] > 16:
        raise AudioError(f"{name}: shape {x.shape}: cannot tell channels from samples (more than 16 channels?)")
    return x


def to_mono(x: np.ndarray, mode: str = "mean") -> np.ndarray:
    """(C, N) -> (N,) or, for 'concat' (msclap), (C*N,) channel after channel."""
    if mode == "mean":
        return x.mean(axis=0)
    if mode == "concat":
        return x.reshape(-1)
    if mode == "first":
        return x[0]
    raise ValueError(f"channel_mode must be one of {CHANNEL_MODES}, got {mode!r}")


def resample(x: np.ndarray, sr: int, target_sr: int, res_type: str = "soxr_hq") -> np.ndarray:
    """Resample along the last axis (librosa; `res_type` as librosa's)."""
    if sr == target_sr:
        return x
    import librosa

    return librosa.resample(x, orig_sr=sr, target_sr=target_sr, res_type=res_type, axis=-1).astype(np.float32)


def num_samples(seconds: float, sample_rate: int) -> int:
    """Samples in a clip of `seconds` at `sample_rate` (the one place this rounding is written)."""
    return int(round(float(seconds) * int(sample_rate)))


def check_mode(kind: str, value: str) -> str:
    modes = {"crop": CROP_MODES, "channel_mode": CHANNEL_MODES}[kind]
    if value not in modes:
        raise ValueError(f"{kind} must be one of {modes}, got {value!r}")
    return value


def crop_start(n: int, length: int, crop: str = "center", rng: np.random.Generator | None = None) -> int:
    """Start of the `length`-sample window of an `n`-sample clip (0 when the clip is not longer)."""
    if n <= length:
        return 0
    if crop == "center":
        return (n - length) // 2
    if crop == "start":
        return 0
    if crop == "random":
        if rng is None:
            raise ValueError("crop='random' needs a numpy Generator (rng=...)")
        return int(rng.integers(0, n - length + 1))
    if crop == "unseeded":
        return _py_random.randrange(n - length)
    raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}")


def clip_rng(seed: int, key: str) -> np.random.Generator:
    """A Generator that depends only on (seed, key): reproducible random crops in any order or thread."""
    h = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def repeat_pad(x: np.ndarray, length: int) -> np.ndarray:
    """(n,) -> (length,): tile a clip of n <= length samples ceil(length/n) times and cut (msclap); a longer
    clip is cut to its first `length` samples."""
    n = x.shape[0]
    if n == 0:
        raise AudioError("cannot repeat-pad an empty clip")
    if n >= length:
        return x[:length]
    return np.tile(x, math.ceil(length / n))[:length]


def fit_length(x: np.ndarray, length: int, crop: str = "center", rng: np.random.Generator | None = None) -> np.ndarray:
    """(n,) -> (length,): the `crop` window of a longer clip, repeat-padding of a shorter one."""
    start = crop_start(x.shape[0], length, crop, rng)
    return repeat_pad(x[start:start + length], length)


def decode(path: str, target_sr: int, channel_mode: str = "mean", *, max_seconds: float | None = None,
           res_type: str = "soxr_hq") -> np.ndarray:
    """A file -> float32 (n,) at `target_sr` in `channel_mode`. Raises AudioError naming `path`."""
    data, sr = read_audio(path, max_seconds)
    return _to_rate_and_mono(data, sr, target_sr, channel_mode, res_type)


def _to_rate_and_mono(data: np.ndarray, sr: int, target_sr: int, channel_mode: str, res_type: str) -> np.ndarray:
    if channel_mode == "mean":   # resampling is linear: down-mix first, one channel to resample
        y = resample(to_mono(data, "mean"), sr, target_sr, res_type)
    else:                        # msclap resamples the (C, N) tensor, then flattens
        y = to_mono(resample(data, sr, target_sr, res_type), channel_mode)
    return np.ascontiguousarray(y, np.float32)


def load_clip(source, sample_rate: int | None, target_sr: int, length: int, *, channel_mode: str = "mean",
              crop: str = "center", rng: np.random.Generator | None = None, name: str | None = None,
              res_type: str = "soxr_hq") -> np.ndarray:
    """A file path, or an array with its `sample_rate`, -> (length,) float32 at `target_sr`: decoded, resampled,
    channels per `channel_mode`, cut or repeat-padded per `crop` (see the module docstring)."""
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        data, sr = read_audio(name)
        if sample_rate is not None and sample_rate != sr:
            raise AudioError(f"{name}: file is {sr} Hz but sample_rate={sample_rate} was given")
    else:
        name = name or "array"
        if sample_rate is None:
            raise AudioError(f"{name}: arrays need a sample_rate")
        data, sr = as_channels_first(source, name), int(sample_rate)
        if not np.all(np.isfinite(data)):
            raise AudioError(f"{name}: audio contains NaN/inf samples")
        if data.shape[1] == 0:
            raise AudioError(f"{name}: empty audio (0 samples)")
    y = _to_rate_and_mono(data, sr, target_sr, check_mode("channel_mode", channel_mode), res_type)
    return fit_length(y, length, crop, rng)
