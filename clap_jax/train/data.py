"""The trainer's input: an iterator of global batches on the mesh, and a prefetcher that keeps the next ones ready.

Every iterator yields {'audio': (B, samples) int16 or f32, 'input_ids': (B, L) i32, 'attention_mask': (B, L) i32}
as global jax Arrays split over the batch axes ('data', 'fsdp'), B = config.batch_size, and has `get_state()` /
`set_state()` (Grain's DatasetIterator protocol) so that a checkpoint holds its position. The real pipeline sends
audio as stored (int16, half the bytes); `Prefetcher` turns it into the model's float32 on the devices.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Callable, Iterator

import jax
import jax.numpy as jnp

from clap_jax.audio import fusion as fusion_lib
from clap_jax.data import pipeline
from clap_jax.models import config as model_config
from clap_jax.train import sharding as shd
from clap_jax.train.random_batches import RandomBatches

BATCH_KEYS = ("audio", "input_ids", "attention_mask")  # what the train step takes; pipelines may carry more
log = logging.getLogger("clap_jax.train")


def num_workers(config, saved: int | None = None) -> int:
    """`config.data.num_workers`, with -1 (auto) resolved to `saved` (the count a checkpoint's iterator state was
    made with: a resume needs the same) or else min(8, cores // 2): decoding and tokenizing in their own processes
    leaves the main process's core to dispatching steps."""
    n = config.data.num_workers
    if n != -1:
        return n
    return saved if saved is not None else min(8, (os.cpu_count() or 1) // 2)


def make_real_pipeline(config, mesh, saved_workers: int | None = None) -> Iterator[dict]:
    """=== THE REAL PIPELINE (config.data.kind == 'tfrecord'): clap_jax.data.pipeline ===

    Each process reads its own share of the records (per-host batch B / process_count); the pipeline assembles
    the global batch over the mesh's batch axes."""
    per_host = config.batch_size // jax.process_count()
    dc = config.data
    if dc.get("tasks"):
        return make_task_mixture(config, mesh, saved_workers)
    return pipeline.make_iterator(
        list(dc.dirs), per_host_batch_size=per_host, mesh=mesh, data_axes=shd.BATCH_AXES,
        weights=list(dc.weights) if dc.weights else None, seed=dc.seed, num_epochs=None,
        sample_rate=config.model.audio.sample_rate, duration=config.model.audio.duration,
        text_length=config.model.text.max_length, worker_count=num_workers(config, saved_workers),
        max_consecutive_bad=dc.max_consecutive_bad_records, audio_dtype="int16",
        tokenizer=dc.get("tokenizer"), tokenizer_family=config.model.get("family", pipeline.DEFAULT_FAMILY),
        fusion=fusion_lib.settings(config.model))


def heldout_batches(config, mesh, num_batches: int) -> list[dict]:
    """`num_batches` global batches the run never trains on, the same at every call: the 'eval' split of the
    TFRecord directories (first caption, clip start, in order), or random batches of another seed."""
    if config.data.kind == "random":
        it = RandomBatches(batch_size=config.batch_size, num_samples=model_config.clip_samples(config.model),
                           text_len=config.model.text.max_length, num_classes=config.data.num_classes,
                           seed=config.data.seed + 1_000_003, sharding=shd.batch_sharding(mesh),
                           vocab_size=config.model.text.get("vocab_size"))
        it = _with_fusion_views(it, config, mesh)
    else:
        dc = config.data
        it = pipeline.make_iterator(
            list(dc.dirs[:1]), per_host_batch_size=config.batch_size // jax.process_count(), mesh=mesh,
            data_axes=shd.BATCH_AXES, split="eval", seed=dc.seed, num_epochs=None, shuffle=False, crop="start",
            caption="first", sample_rate=config.model.audio.sample_rate, duration=config.model.audio.duration,
            text_length=config.model.text.max_length, worker_count=0, audio_dtype="int16",
            tokenizer=dc.get("tokenizer"), tokenizer_family=config.model.get("family", pipeline.DEFAULT_FAMILY),
            fusion=fusion_lib.settings(config.model))
    return [next(it) for _ in range(num_batches)]


def make_task_mixture(config, mesh, saved_workers: int | None = None):
    """Multi-task prompt/answer training (`config.data.tasks`; its records' captions are the answers, the task's
    prompt goes first), mixed by the tasks' weights. `data.task_mix` 'batch': one pipeline per task that has
    data, each batch from the task the sampler draws for it (clap_jax.data.multitask); 'example': one pipeline
    over every task's directories, each record drawn by weight (a task's weight split evenly over its
    directories), so every batch holds several tasks."""
    from clap_jax.data import multitask

    dc = config.data
    tasks = [multitask.Task.from_config(dict(t)) for t in dc.tasks]
    tasks = [t for t in tasks if t.dirs and t.weight > 0]
    log.info("task mixture (%s): %s", dc.get("task_mix", "batch"),
             ", ".join(f"{t.name} ({t.weight:g})" for t in tasks))
    if dc.get("task_mix", "batch") == "example":
        dirs = [d for t in tasks for d in t.dirs]
        return pipeline.make_iterator(
            dirs, weights=[t.weight / len(t.dirs) for t in tasks for _ in t.dirs],
            prompt=[t.prompt for t in tasks for _ in t.dirs],
            per_host_batch_size=config.batch_size // jax.process_count(), mesh=mesh, data_axes=shd.BATCH_AXES,
            seed=dc.seed, num_epochs=None, sample_rate=config.model.audio.sample_rate,
            duration=config.model.audio.duration, text_length=config.model.text.max_length,
            worker_count=num_workers(config, saved_workers), max_consecutive_bad=dc.max_consecutive_bad_records,
            audio_dtype="int16", tokenizer=dc.get("tokenizer"),
            tokenizer_family=config.model.get("family", pipeline.DEFAULT_FAMILY))
    its = [pipeline.make_iterator(
        list(t.dirs), per_host_batch_size=config.batch_size // jax.process_count(), mesh=mesh,
        data_axes=shd.BATCH_AXES, seed=dc.seed + 7919 * i, num_epochs=None,
        sample_rate=config.model.audio.sample_rate, duration=config.model.audio.duration,
        text_length=config.model.text.max_length, worker_count=num_workers(config, saved_workers),
        max_consecutive_bad=dc.max_consecutive_bad_records, audio_dtype="int16", tokenizer=dc.get("tokenizer"),
        tokenizer_family=config.model.get("family", pipeline.DEFAULT_FAMILY), prompt=t.prompt)
        for i, t in enumerate(tasks)]
    return multitask.MixtureIterator(its, [t.weight for t in tasks], seed=dc.seed)


def make_data_iterator(config, mesh, saved_workers: int | None = None, seed: int | None = None) -> Iterator[dict]:
    """The iterator `config.data.kind` names: 'random' (tests, benchmarks) or 'tfrecord' (the real pipeline;
    `saved_workers`: the worker count of the state it will be restored from, if any; `seed`: replaces
    config.data.seed)."""
    if seed is not None:
        config = config.copy_and_resolve_references()
        config.data.seed = seed
    if config.data.kind == "random":
        return _with_fusion_views(
            RandomBatches(batch_size=config.batch_size, num_samples=model_config.clip_samples(config.model),
                          text_len=config.model.text.max_length, num_classes=config.data.num_classes,
                          seed=config.data.seed, sharding=shd.batch_sharding(mesh),
                          vocab_size=config.model.text.get("vocab_size")), config, mesh)
    return make_real_pipeline(config, mesh, saved_workers)


def _with_fusion_views(it, config, mesh):
    """Random batches for a model with LAION feature fusion carry its fusion input (clap_jax.train.laion)."""
    if fusion_lib.settings(config.model) is None:
        return it
    from clap_jax.train.laion import FusionViews

    return FusionViews(it, config.model, mesh)


# ------------------------------------------------------------------------------------------ elastic resume

def saved_state_fits(config, saved) -> tuple[bool, str]:
    """Whether this process can restore the data-iterator state `saved` (this process's file of a checkpoint,
    None when the checkpoint has none for it), and why not. It cannot when the run was saved with another
    number of processes (no file of this process's name) or, for the real pipeline, another explicit
    `data.num_workers` (Grain's state is per worker), or for a task mixture another `data.task_mix` (one state
    per task pipeline, or one of a single pipeline)."""
    if saved is None:
        return False, (f"the checkpoint holds none for process {jax.process_index()} of {jax.process_count()}: "
                       f"it was saved by a different number of processes")
    if config.data.kind != "random" and config.data.get("tasks") and isinstance(saved, dict):
        mix = config.data.get("task_mix", "batch")
        was = "batch" if "tasks" in saved else "example"
        if mix != was:
            return False, f"it was saved with data.task_mix={was!r}, this run has {mix!r}"
    count = saved_worker_count(saved)
    if config.data.kind != "random" and count is not None:
        want = num_workers(config, count)
        if want != count:
            return False, f"it was saved with {count} data workers, this run has {want}"
    return True, ""


def saved_worker_count(saved) -> int | None:
    """The data-worker count a saved iterator state was made with: the pipeline's own, or for a task mixture
    (clap_jax.data.multitask.MixtureIterator: {'index', 'tasks'}) that of its task pipelines."""
    if not isinstance(saved, dict):
        return None
    if "worker_count" in saved:
        return saved["worker_count"]
    tasks = saved.get("tasks")
    if isinstance(tasks, list) and tasks and isinstance(tasks[0], dict):
        return tasks[0].get("worker_count")
    return None


def elastic_data_iterator(config, mesh, step: int, reason: str) -> Iterator[dict]:
    """A data iterator for a resume at `step` whose saved iterator state cannot be restored (`reason`): the
    position is re-derived from the step. The random batches continue exactly (batch k is a function of the
    seed and k); the real pipeline starts a new shuffle from a seed derived from (data.seed, step), so no
    record order of the first run is replayed, but the sample order differs from an uninterrupted run."""
    log.warning("resuming at step %d without the saved data-iterator state (%s): the iterator is re-derived from "
                "the step, and the sample order differs from that of an uninterrupted run", step, reason)
    if config.data.kind == "random":
        it = make_data_iterator(config, mesh)
        it.set_state({"index": step, "seed": config.data.seed})
        return it
    return make_data_iterator(config, mesh, seed=derived_seed(config.data.seed, step))


def derived_seed(seed: int, step: int) -> int:
    """The real pipeline's seed after an elastic resume at `step` (31 bits, reproducible)."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(step), 0x5E5]).generate_state(1)[0] >> 1)


@jax.jit
def _audio_to_float(audio):
    # x / 32768 with a power of two: exact, the same bits as the host's conversion (audio.int16_to_float)
    return audio.astype(jnp.float32) * jnp.float32(1 / 32768)


def to_model_batch(batch: dict, keys=BATCH_KEYS) -> dict:
    """The train step's inputs from an iterator's batch: `keys` only (the objective's; BATCH_KEYS for CLAP),
    int16 audio made float32 on the devices (a jitted elementwise op: each device converts its own rows, the
    sharding is kept)."""
    out = {k: batch[k] for k in keys}
    if out["audio"].dtype == jnp.int16:
        out["audio"] = _audio_to_float(out["audio"])
    return out


class WaitInterrupted(Exception):
    """A stop was requested (SIGTERM) while the loop was waiting for the next batch."""


class Prefetcher:
    """The iterator's batches, made in a helper thread `depth` steps ahead of the loop and put on the devices
    (`to_model_batch`) while the current step runs; each comes with the iterator's state right after it was
    drawn, so that a checkpoint after step N records the position after batch N however far the thread has read
    ahead. `depth=0`: a batch is drawn only when the loop asks for it.

    The wait for a batch can be cut short: a pipeline that is slow, stalled or skipping bad records would
    otherwise hold the run past the scheduler's grace period. `stop_requested()` is polled while waiting; it must
    be this process's own flag, with no collective, since the other processes may be stepping. The thread is a
    daemon (a fetch abandoned on SIGTERM never holds up the exit). Batches come in order, one `next()` at a
    time, so the iterator's states are those of plain `next()` calls."""

    POLL_S = 0.2

    def __init__(self, data_iter, depth: int, stop_requested: Callable[[], bool], with_state: bool = True,
                 prepare: Callable[[dict], dict] = to_model_batch):
        self._it, self._stop_requested, self._with_state, self._prepare = data_iter, stop_requested, with_state, prepare
        self._credits = threading.Semaphore(depth)  # batches the thread may draw before the loop asks for more
        self._res: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._thread = None
        # the position before the first batch: what a stop before that batch arrives must record
        self.state = data_iter.get_state() if with_state else None

    def _run(self):
        while True:
            while not self._credits.acquire(timeout=self.POLL_S):
                if self._closed.is_set():
                    return
            if self._closed.is_set():
                return
            try:
                batch = next(self._it)
                state = self._it.get_state() if self._with_state else None
                self._res.put((True, self._prepare(batch), state))
            except BaseException as e:  # noqa: BLE001 - handed to the loop, which raises it
                self._res.put((False, e, None))
                return

    def next(self) -> dict:
        """The next batch (on the devices); `self.state` is then the iterator's position after it. Raises
        WaitInterrupted if a stop is requested first, or what the iterator raised."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="clap_jax_data", daemon=True)
            self._thread.start()
        self._credits.release()  # one more batch may be drawn: the one replacing this one in the queue
        while True:
            try:
                ok, value, state = self._res.get(timeout=self.POLL_S)
            except queue.Empty:
                if self._stop_requested():
                    raise WaitInterrupted from None
                continue
            if not ok:
                raise value
            self.state = state
            return value

    def close(self, timeout: float = 5.0):
        """Stop the thread and wait for a fetch in flight: a daemon thread still inside XLA (putting a batch on the
        devices) when the interpreter shuts down aborts the process. A fetch stalled in the pipeline is left after
        `timeout` (it holds no XLA call, and the daemon thread does not hold up the exit)."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout)
