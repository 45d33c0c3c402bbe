"""The trainer's input: an iterator of global batches on the mesh, and a fetch that SIGTERM can interrupt.

Every iterator yields {'audio': (B, samples) f32, 'input_ids': (B, L) i32, 'attention_mask': (B, L) i32} as global
jax Arrays split over the batch axes ('data', 'fsdp'), B = config.batch_size, and has `get_state()` /
`set_state()` (Grain's DatasetIterator protocol) so that a checkpoint holds its position.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import jax

from clap_jax.data import pipeline
from clap_jax.models import config as model_config
from clap_jax.train import sharding as shd
from clap_jax.train.random_batches import RandomBatches

BATCH_KEYS = ("audio", "input_ids", "attention_mask")  # what the train step takes; pipelines may carry more


def make_real_pipeline(config, mesh) -> Iterator[dict]:
    """=== THE REAL PIPELINE (config.data.kind == 'tfrecord'): clap_jax.data.pipeline ===

    Each process reads its own share of the records (per-host batch B / process_count); the pipeline assembles
    the global batch over the mesh's batch axes."""
    per_host = config.batch_size // jax.process_count()
    dc = config.data
    return pipeline.make_iterator(
        list(dc.dirs), per_host_batch_size=per_host, mesh=mesh, data_axes=shd.BATCH_AXES,
        weights=list(dc.weights) if dc.weights else None, seed=dc.seed, num_epochs=None,
        sample_rate=config.model.audio.sample_rate, duration=config.model.audio.duration,
        text_length=config.model.text.max_length, worker_count=dc.num_workers,
        max_consecutive_bad=dc.max_consecutive_bad_records)


def make_data_iterator(config, mesh) -> Iterator[dict]:
    """The iterator `config.data.kind` names: 'random' (tests, benchmarks) or 'tfrecord' (the real pipeline)."""
    if config.data.kind == "random":
        return RandomBatches(batch_size=config.batch_size, num_samples=model_config.clip_samples(config.model),
                             text_len=config.model.text.max_length, num_classes=config.data.num_classes,
                             seed=config.data.seed, sharding=shd.batch_sharding(mesh))
    return make_real_pipeline(config, mesh)


class WaitInterrupted(Exception):
    """A stop was requested (SIGTERM) while the loop was waiting for the next batch."""


class Fetcher:
    """`next(data_iter)` in a helper thread, so that the loop can stop waiting when SIGTERM arrives: a pipeline that
    is slow, stalled or skipping bad records would otherwise hold the run past the scheduler's grace period. The
    thread is a daemon (a fetch abandoned on SIGTERM never holds up the exit); batches still come one at a time,
    in order, so the iterator's state is the same as with a plain `next()`.

    `stop_requested()` is polled while waiting; it must be this process's own flag, with no collective, since the
    other processes may be stepping."""

    POLL_S = 0.2

    def __init__(self, data_iter, stop_requested: Callable[[], bool]):
        self._it, self._stop_requested = data_iter, stop_requested
        self._req: queue.Queue = queue.Queue()
        self._res: queue.Queue = queue.Queue()
        self._thread = None

    def _run(self):
        while self._req.get():
            try:
                self._res.put((True, next(self._it)))
            except BaseException as e:  # noqa: BLE001 - handed to the loop, which raises it
                self._res.put((False, e))

    def next(self):
        """The next batch; raises WaitInterrupted if a stop is requested first, or what the iterator raised."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="clap_jax_data", daemon=True)
            self._thread.start()
        self._req.put(True)
        while True:
            try:
                ok, value = self._res.get(timeout=self.POLL_S)
            except queue.Empty:
                if self._stop_requested():
                    raise WaitInterrupted from None
                continue
            if ok:
                return value
            raise value

    def close(self):
        if self._thread is not None:
            self._req.put(False)  # ends the thread after any fetch in flight
