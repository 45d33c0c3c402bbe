"""The model interface the harness needs (Embedder) and cached, batched embedding of a task's clips/texts.

Any object with these members is an Embedder; `clap_jax.inference.CLAP` is one, and
`clap_jax.eval.fake` has deterministic ones for tests:

  get_audio_embeddings(audio: list[np.ndarray], sample_rate: int, batch_size: int) -> (N, D)
  get_text_embeddings(texts: list[str]) -> (N, D)
  logit_scale: float          (already exp()'d)
  cache_id: str               (optional) identifies the weights for the on-disk cache

Cache layout: <cache_dir>/<cache_id>/<task>/audio-<key>.npy and text-<key>.npy, where key hashes the clip
list (paths, sizes, mtimes) and loader settings, or the texts. A re-run with the same checkpoint and data
loads these instead of running the model.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Protocol, runtime_checkable

import numpy as np

from clap_jax import files
from clap_jax.eval.clips import LoaderConfig, iter_batches



@runtime_checkable
class Embedder(Protocol):
    logit_scale: float

    def get_audio_embeddings(self, audio, sample_rate=None, batch_size=...) -> np.ndarray: ...

    def get_text_embeddings(self, texts) -> np.ndarray: ...


def weights_cache_id(path: str) -> str:
    """Cache id of a weights file/dir: its name plus a hash of absolute path, size and mtime."""
    p = Path(path)
    st = p.stat()
    h = hashlib.sha1(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{p.name}-{h}"


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _clip_fingerprint(paths) -> str:
    items = []
    for p in paths:
        try:
            st = os.stat(p)
            items.append((str(p), st.st_size, st.st_mtime_ns))
        except OSError:
            items.append((str(p), -1, -1))
    return _hash(items)


class EmbeddingCache:
    """Per (checkpoint, task) .npy files; a cache_dir of None disables caching."""

    def __init__(self, cache_dir: Optional[str], cache_id: Optional[str]):
        self.root = Path(cache_dir) / cache_id if cache_dir and cache_id else None
        self.hits = 0
        self.misses = 0

    def path(self, task: str, kind: str, key: str) -> Optional[Path]:
        return self.root / task / f"{kind}-{key}.npy" if self.root else None

    def get(self, task, kind, key, count=True):
        p = self.path(task, kind, key)
        found = p is not None and p.exists()
        if count:
            self.hits += found
            self.misses += not found
        return np.load(p) if found else None

    def put(self, task, kind, key, value: np.ndarray):
        p = self.path(task, kind, key)
        if p is not None:
            p.parent.mkdir(parents=True, exist_ok=True)
            with files.atomic_path(str(p)) as tmp, open(tmp, "wb") as f:
                np.save(f, value)


def _progress(total, desc, enabled):
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="clip", disable=not enabled, leave=False)
    except ImportError:  # tqdm is optional
        class _Null:
            def update(self, n): ...
            def close(self): ...
        return _Null()


def embed_audio(embedder, task_name: str, paths: list, cache: EmbeddingCache, loader: LoaderConfig,
                batch_size: int = 64, workers: int = 4, progress: bool = True, on_error=None):
    """(N, D) audio embeddings of `paths`, from cache or computed in batches; returns (emb, kept_indices).

    kept_indices lists the clips that were embedded (all of them unless on_error dropped unreadable ones).
    """
    key = _hash([_clip_fingerprint(paths), loader.key()])
    cacheable = loader.cacheable
    if cacheable:
        hit = cache.get(task_name, "audio", key)
        if hit is not None:
            kept = cache.get(task_name, "audio_kept", key, count=False)
            return hit, (list(range(len(paths))) if kept is None else kept.tolist())
    bar = _progress(len(paths), f"{task_name}: audio", progress)
    embs, kept = [], []
    try:
        for idx, batch in iter_batches(paths, loader, batch_size, workers, on_error=on_error):
            e = np.asarray(embedder.get_audio_embeddings(list(batch), sample_rate=loader.sample_rate,
                                                         batch_size=batch_size), dtype=np.float32)
            if e.shape[0] != len(idx):
                raise RuntimeError(f"embedder returned {e.shape[0]} audio embeddings for {len(idx)} clips")
            embs.append(e)
            kept += idx
            bar.update(len(idx))
    finally:
        bar.close()
    if not embs:
        raise RuntimeError(f"{task_name}: no clip could be embedded")
    out = np.concatenate(embs)
    if cacheable:
        cache.put(task_name, "audio", key, out)
        if len(kept) != len(paths):
            cache.put(task_name, "audio_kept", key, np.asarray(kept))
    return out, kept


def embed_texts(embedder, task_name: str, texts: list, cache: EmbeddingCache, batch_size: int = 256):
    key = _hash(list(texts))
    hit = cache.get(task_name, "text", key)
    if hit is not None:
        return hit
    parts = [np.asarray(embedder.get_text_embeddings(list(texts[i:i + batch_size])), dtype=np.float32)
             for i in range(0, len(texts), batch_size)]
    out = np.concatenate(parts)
    if out.shape[0] != len(texts):
        raise RuntimeError(f"embedder returned {out.shape[0]} text embeddings for {len(texts)} texts")
    cache.put(task_name, "text", key, out)
    return out
