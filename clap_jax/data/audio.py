"""Audio helpers of the data layer: decode files, encode/decode record bytes, msclap crop / repeat-pad.

Waveforms are float32 mono arrays of shape (num_samples,) in [-1, 1].
Stored formats: ``"pcm16"`` (little-endian int16, exact for 16-bit input) and ``"flac"`` (16-bit FLAC, lossless
w.r.t. 16-bit quantisation, i.e. within 1/32768 of the float input).
"""
from __future__ import annotations

import io
import math
import os
import warnings

import numpy as np
import soundfile as sf

FORMATS = ("flac", "pcm16")


class AudioError(ValueError):
    """Audio that cannot be used; the message names the file and the problem."""


def load_audio(path: str, sample_rate: int, *, max_seconds: float | None = None,
               trim_db: float | None = None) -> np.ndarray:
    """Decode ``path``, down-mix to mono and resample to ``sample_rate``.

    Returns float32 of shape (num_samples,). ``max_seconds`` keeps only the first that many seconds;
    ``trim_db`` trims leading/trailing audio quieter than ``trim_db`` below peak (librosa.effects.trim).
    Raises AudioError naming ``path`` for unreadable, empty or non-finite audio.
    """
    if not os.path.isfile(path):
        raise AudioError(f"{path}: file not found")
    try:
        with sf.SoundFile(path) as f:
            sr = f.samplerate
            frames = -1 if max_seconds is None else int(math.ceil(max_seconds * sr))
            x = f.read(frames=frames, dtype="float32", always_2d=True)
        x = x.mean(axis=1)
    except Exception as e:  # noqa: BLE001 - try the slower decoders (mp3/m4a via audioread) before giving up
        sf_msg = str(e).strip() or type(e).__name__
        try:
            import librosa

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x, sr = librosa.load(path, sr=None, mono=True, duration=max_seconds)
        except Exception as e2:  # noqa: BLE001 - any decoder failure is a bad file, reported not fatal
            e2_msg = str(e2).strip() or type(e2).__name__
            raise AudioError(f"{path}: cannot decode audio (soundfile: {sf_msg}; audioread: {e2_msg})") from e2
    if x.size == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{path}: audio contains NaN/inf samples")
    if sr != sample_rate:
        import librosa

        x = librosa.resample(x, orig_sr=sr, target_sr=sample_rate, res_type="soxr_hq")
    if trim_db is not None:
        import librosa

        x, _ = librosa.effects.trim(x, top_db=trim_db)
    if max_seconds is not None:
        x = x[: int(round(max_seconds * sample_rate))]
    return np.ascontiguousarray(x, np.float32)


def to_int16(x: np.ndarray) -> np.ndarray:
    """float32 (n,) in [-1, 1] -> int16 (n,), rounding and clipping."""
    return np.clip(np.round(np.asarray(x, np.float32) * 32768.0), -32768, 32767).astype(np.int16)


def encode_audio(x: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """float32 (n,) -> bytes in ``fmt`` ('flac' or 'pcm16'). Deterministic."""
    q = to_int16(x)
    if fmt == "pcm16":
        return q.astype("<i2").tobytes()
    if fmt == "flac":
        buf = io.BytesIO()
        sf.write(buf, q, sample_rate, format="FLAC", subtype="PCM_16")
        return buf.getvalue()
    raise ValueError(f"unknown audio format {fmt!r}; use one of {FORMATS}")


def decode_audio(data: bytes, fmt: str, start: int = 0, length: int | None = None) -> np.ndarray:
    """Bytes in ``fmt`` -> float32 (n,) samples ``[start, start+length)`` (all when ``length`` is None).

    For PCM only the window is converted; for FLAC the decoder seeks, so long clips are not fully decoded.
    """
    if fmt == "pcm16":
        q = np.frombuffer(data, "<i2")
        q = q[start:] if length is None else q[start:start + length]
        x = q.astype(np.float32)
        x *= np.float32(1 / 32768)
        return x
    if fmt == "flac":
        with sf.SoundFile(io.BytesIO(data)) as f:
            if start:
                f.seek(start)
            x = f.read(frames=-1 if length is None else length, dtype="int16").astype(np.float32)
        x *= np.float32(1 / 32768)
        return x
    raise ValueError(f"unknown audio format {fmt!r}; use one of {FORMATS}")


def crop_start(num_samples: int, target: int, rng: np.random.Generator) -> int:
    """msclap crop: a uniformly random start in [0, num_samples - target] for long clips, 0 otherwise."""
    return int(rng.integers(0, num_samples - target + 1)) if num_samples > target else 0


def repeat_pad(x: np.ndarray, target: int) -> np.ndarray:
    """msclap repeat-padding: a clip of n <= target samples is tiled ceil(target/n) times and cut to target.

    (n,) -> (target,). Longer input is cut to its first ``target`` samples (crop beforehand for a random window).
    """
    n = x.shape[0]
    if n == 0:
        raise AudioError("cannot repeat-pad an empty clip")
    if n < target:
        x = np.tile(x, int(math.ceil(target / n)))
    return np.ascontiguousarray(x[:target], np.float32)
