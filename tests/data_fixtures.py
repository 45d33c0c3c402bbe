"""Small generated datasets for the tests (no downloads): clips, manifests, preprocessed TFRecords."""
from __future__ import annotations

import json
import os

import numpy as np
import soundfile as sf

from clap_jax.audio import io as audio_io


def write_clip(path: str, seconds: float, sample_rate: int, seed: int = 0, channels: int = 1,
               subtype: str = "PCM_16") -> np.ndarray:
    """Write a tone + noise clip; returns the int16-exact float32 samples written, shape (n,) or (n, channels)."""
    rng = np.random.default_rng(seed)
    n = audio_io.num_samples(seconds, sample_rate)
    t = np.arange(n) / sample_rate
    x = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.05 * rng.standard_normal(n)
    x = np.stack([x * (c + 1) / channels for c in range(channels)], 1) if channels > 1 else x
    q = np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)
    sf.write(path, q, sample_rate, subtype=subtype)
    return q.astype(np.float32) / 32768


def make_manifest_dataset(root: str, n: int, seconds: float | list[float] = 0.5, sample_rate: int = 8000,
                          source: str = "toy", seed: int = 0) -> str:
    """Write ``n`` clips and a JSONL manifest into ``root``; returns the manifest path.

    Row i: id ``{source}-{i}``, two captions ``"{source} clip {i}"`` and ``"another caption {i}"``.
    """
    os.makedirs(root, exist_ok=True)
    man = os.path.join(root, f"{source}.jsonl")
    with open(man, "w") as f:
        for i in range(n):
            secs = seconds[i % len(seconds)] if isinstance(seconds, list) else seconds
            write_clip(os.path.join(root, f"{source}-{i}.wav"), secs, sample_rate, seed=seed * 100003 + i)
            f.write(json.dumps({"id": f"{source}-{i}", "path": f"{source}-{i}.wav",
                                "captions": [f"{source} clip {i}", f"another caption {i}"], "source": source}) + "\n")
    return man


def make_tfrecord_dataset(out: str, n: int, seconds: float | list[float] = 0.5, sample_rate: int = 8000,
                          audio_format: str = "pcm16", examples_per_shard: int = 8, source: str = "toy",
                          seed: int = 0) -> dict:
    """Clips + manifest in ``out/raw``, preprocessed into ``out``; returns the dataset metadata."""
    from clap_jax.data import preprocess

    man = make_manifest_dataset(os.path.join(out, "raw"), n, seconds, sample_rate, source, seed)
    opts = preprocess.Options(sample_rate=sample_rate, audio_format=audio_format,
                              examples_per_shard=examples_per_shard, min_seconds=0.01)
    return preprocess.run([man], out, root=os.path.join(out, "raw"), opts=opts, workers=1, progress=False)
