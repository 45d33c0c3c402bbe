"""Audio in: read a file (or take an array), make it mono, resample to the model rate, fit it to the clip length.

msclap's behaviour and ours:
  * channels: msclap concatenates channels in time (`reshape(-1)`); we average them (`channel_mode='mean'`) by
    default, msclap's way is `channel_mode='concat'`.
  * length: clips of n <= L samples are tiled ceil(L/n) times and cut to L (repeat-padding, as msclap); longer
    clips are cropped: msclap takes a uniformly random start (`crop='random'`, seeded here), we default to the
    centre (`crop='center'`) so embeddings are deterministic; `crop='start'` takes the beginning.
  * resampling: msclap uses torchaudio's windowed-sinc; we use librosa (soxr 'soxr_hq'). Identical rates are never
    touched, so 44.1 kHz input is bit-identical to msclap's path.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

from clap_jax.errors import UserError

# librosa's fallback chatter for files soundfile cannot open (the AudioError that follows names the file). Set
# once at import: warnings.catch_warnings is not thread-safe and the eval loader decodes in threads.
warnings.filterwarnings("ignore", message="PySoundFile failed", category=UserWarning)
warnings.filterwarnings("ignore", message=r"librosa\.core\.audio\.__audioread_load", category=FutureWarning)

CHANNEL_MODES = ("mean", "concat", "first")
CROP_MODES = ("center", "start", "random")


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


def fit_length(x: np.ndarray, length: int, crop: str = "center", rng: np.random.Generator | None = None) -> np.ndarray:
    """(n,) -> (length,): repeat-pad when n <= length (msclap), else crop per `crop`."""
    n = x.shape[0]
    if n == 0:
        raise AudioError("cannot repeat-pad an empty clip")
    if length >= n:
        return np.tile(x, math.ceil(length / n))[:length]
    if crop == "center":
        start = (n - length) // 2
    elif crop == "start":
        start = 0
    elif crop == "random":
        start = int((rng or np.random.default_rng()).integers(0, n - length))  # msclap: randrange(n - L)
    else:
        raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}")
    return x[start:start + length]


def load_clip(source, sample_rate: int | None, target_sr: int, length: int, *, channel_mode: str = "mean",
              crop: str = "center", rng: np.random.Generator | None = None, name: str | None = None) -> np.ndarray:
    """A file path, or an array with its `sample_rate`, -> (length,) float32 mono at `target_sr`."""
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
    mono = to_mono(resample(data, sr, target_sr), channel_mode)  # resample per channel first, as msclap
    return fit_length(mono, length, crop, rng).astype(np.float32)
