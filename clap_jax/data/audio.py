"""Audio in records: decode files for preprocessing (through clap_jax.audio.io) and encode/decode record bytes.

Waveforms are float32 mono arrays of shape (num_samples,) in [-1, 1].
Stored formats: ``"pcm16"`` (little-endian int16, exact for 16-bit input) and ``"flac"`` (16-bit FLAC, lossless
w.r.t. 16-bit quantisation, i.e. within 1/32768 of the float input).
"""
from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from clap_jax.audio import io as audio_io
from clap_jax.audio.io import AudioError, read_audio  # noqa: F401  (re-exported: one error type, one decoder)

FORMATS = ("flac", "pcm16")


def load_audio(path: str, sample_rate: int, *, max_seconds: float | None = None,
               trim_db: float | None = None) -> np.ndarray:
    """Decode ``path``, down-mix to mono and resample to ``sample_rate``.

    Returns float32 of shape (num_samples,). ``max_seconds`` keeps only the first that many seconds;
    ``trim_db`` trims leading/trailing audio quieter than ``trim_db`` below peak (librosa.effects.trim).
    Raises AudioError naming ``path`` for unreadable, empty or non-finite audio.
    """
    x = audio_io.decode(path, sample_rate, "mean", max_seconds=max_seconds)
    if trim_db is not None:
        import librosa

        x, _ = librosa.effects.trim(x, top_db=trim_db)
    if max_seconds is not None:
        x = x[: audio_io.num_samples(max_seconds, sample_rate)]
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


def decode_audio_int16(data: bytes, fmt: str, start: int = 0, length: int | None = None) -> np.ndarray:
    """Bytes in ``fmt`` -> int16 (n,) samples ``[start, start+length)`` (all when ``length`` is None): the stored
    values in half float32's bytes; ``int16_to_float`` of them is ``decode_audio``'s floats exactly.

    For PCM only the window is copied; for FLAC the decoder seeks, so long clips are not fully decoded.
    """
    if fmt == "pcm16":
        q = np.frombuffer(data, "<i2")
        q = q[start:] if length is None else q[start:start + length]
        return q.astype(np.int16)  # native byte order, a copy (the record's buffer is not kept)
    if fmt == "flac":
        with sf.SoundFile(io.BytesIO(data)) as f:
            if start:
                f.seek(start)
            return f.read(frames=-1 if length is None else length, dtype="int16")
    raise ValueError(f"unknown audio format {fmt!r}; use one of {FORMATS}")


def int16_to_float(q: np.ndarray) -> np.ndarray:
    """int16 samples -> float32 in [-1, 1): x / 32768 (a power of two: exact, the same bits on host and device)."""
    x = np.asarray(q).astype(np.float32)
    x *= np.float32(1 / 32768)
    return x


def decode_audio(data: bytes, fmt: str, start: int = 0, length: int | None = None) -> np.ndarray:
    """Bytes in ``fmt`` -> float32 (n,) samples ``[start, start+length)`` (all when ``length`` is None)."""
    return int16_to_float(decode_audio_int16(data, fmt, start, length))
