"""CLAP contrastive pretraining on a device mesh.

    python -m clap_jax.train --config configs/tiny.py --workdir /tmp/clap_tiny
    python -m clap_jax.train --config configs/clap_2023.py:batch_size=256 --workdir gs://bucket/run1 \
        --config.optim.lr=3e-4

Read top to bottom: config checks, logging, distributed init, mesh, input pipeline, model and optimizer
(shape-first init), update step (compiled once, up front), checkpoint load / weight initialisation, evals,
train loop. A `--workdir` holding checkpoints is resumed from its latest step, iterator included.
"""
from __future__ import annotations

import importlib
import logging
import os
import queue
import signal
import threading
import time
from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np
from clu import metrics as clu_metrics

from clap_jax.data import pipeline
from clap_jax.errors import UserError
from clap_jax.models import config as model_config
from clap_jax.train import checkpoint as ckpt_lib
from clap_jax.train import config as config_lib
from clap_jax.train import flops as flops_lib
from clap_jax.train import sharding as shd
from clap_jax.train import state as state_lib
from clap_jax.train import step as step_lib
from clap_jax.train import workdir as workdir_lib
from clap_jax.train.random_batches import RandomBatches

log = logging.getLogger("clap_jax.train")


BATCH_KEYS = ("audio", "input_ids", "attention_mask")


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps."""


# ============================================================================================ logging

class MetricWriter:
    """Scalars to TensorBoard event files (clu writers when TensorFlow is present, else tensorboard's own event
    writer) and to the Python log. Only process 0 writes; other processes get a no-op."""

    def __init__(self, workdir: str | None):
        self._clu = self._tb = None
        if workdir is None or jax.process_index() != 0:
            return
        try:
            from clu import metric_writers  # needs tensorflow
            self._clu = metric_writers.create_default_writer(workdir, just_logging=False, asynchronous=False)
        except ImportError:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
            self._tb = EventFileWriter(workdir)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._clu is not None:
            self._clu.write_scalars(step, values)
        elif self._tb is not None:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            summ = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                                              for k, v in values.items()])
            self._tb.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summ))

    def flush(self):
        if self._clu is not None:
            self._clu.flush()
        elif self._tb is not None:
            self._tb.flush()

    def close(self):
        if self._clu is not None:
            self._clu.close()
        elif self._tb is not None:
            self._tb.close()


class _NoLibraryTracebacks(logging.Filter):
    """orbax logs its writer threads' errors with a traceback (hundreds of lines for one full disk) before it
    re-raises them to us; the error we then report says it in one line. `--debug` keeps them."""

    def filter(self, record):
        if record.exc_info and "orbax" in (record.pathname or ""):
            record.msg, record.args = f"{record.getMessage()} (traceback with --debug)", None
            record.exc_info = record.exc_text = None
        return True


def setup_logging() -> None:
    """Our progress lines at INFO on process 0 only; library chatter (orbax, absl) at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname).1s %(message)s", force=True)
    from clap_jax.errors import debug_requested
    if not debug_requested():
        for handler in logging.getLogger().handlers:
            handler.addFilter(_NoLibraryTracebacks())
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
        pass
    log.setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)


# ============================================================================================ distributed

def init_distributed(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, mode: str = "auto") -> None:
    """One process per host. Explicit coordinator flags win; else TPU pods and SLURM are detected from the
    environment and `jax.distributed.initialize()` finds its peers; else single process."""
    if coordinator:
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
        return
    if mode == "none":
        return
    env = os.environ
    multi_tpu = "," in env.get("TPU_WORKER_HOSTNAMES", "")
    slurm = int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env
    if mode == "force" or multi_tpu or slurm or "JAX_COORDINATOR_ADDRESS" in env:
        jax.distributed.initialize()


# ============================================================================================ input pipeline

def make_real_pipeline(config, mesh, sharding) -> Iterator[dict]:
    """=== THE REAL PIPELINE (config.data.kind == 'tfrecord'): clap_jax.data.pipeline ===

    Returns an iterator of dict batches {'audio': (B, samples) f32, 'input_ids': (B, L) i32,
    'attention_mask': (B, L) i32} as global jax Arrays split over ('data', 'fsdp') (= `sharding`), where
    B = config.batch_size, with `get_state()` / `set_state()` (Grain DatasetIterator protocol) so that the checkpoint
    holds its position. Each process reads its own share of the records (per-host batch B / process_count).
    """
    del sharding  # make_iterator builds the same NamedSharding(mesh, P(('data', 'fsdp')))
    per_host = config.batch_size // jax.process_count()
    dc = config.data
    return pipeline.make_iterator(
        list(dc.dirs), per_host_batch_size=per_host, mesh=mesh, data_axes=shd.BATCH_AXES,
        weights=list(dc.weights) if dc.weights else None, seed=dc.seed, num_epochs=None,
        sample_rate=config.model.audio.sample_rate, duration=config.model.audio.duration,
        text_length=config.model.text.max_length, worker_count=dc.num_workers,
        max_consecutive_bad=dc.max_consecutive_bad_records)


def make_data_iterator(config, mesh) -> Iterator[dict]:
    sharding = shd.batch_sharding(mesh)
    if config.data.kind == "random":
        return RandomBatches(batch_size=config.batch_size, num_samples=model_config.clip_samples(config.model),
                                text_len=config.model.text.max_length, num_classes=config.data.num_classes,
                                seed=config.data.seed, sharding=sharding)
    return make_real_pipeline(config, mesh, sharding)


# ============================================================================================ evals

def resolve_eval_fn(config, mesh=None) -> Callable | None:
    """The periodic eval: `config.eval.fn = 'module:function'` (called as function(variables, step) -> {name:
    value}), else zero-shot tasks of clap_jax.eval under `config.eval.data_root` embedded on `mesh`, else None."""
    ec = config.eval
    if ec.get("fn"):
        mod, _, fn = ec.fn.partition(":")
        return getattr(importlib.import_module(mod), fn)
    if ec.get("data_root"):
        from clap_jax.eval.hook import make_eval_fn
        return make_eval_fn(ec.data_root, config.model, tasks=ec.tasks, batch_size=ec.batch_size,
                            log=lambda msg: log.warning("%s", msg), mesh=mesh)
    return None


# ============================================================================================ train loop

class _Preemption:
    """SIGTERM sets a flag; the loop saves and exits at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._prev = None

    def install(self):
        try:
            self._prev = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread
            self._prev = None

    def _handler(self, signum, frame):
        self.requested = True

    def uninstall(self):
        if self._prev is not None:
            signal.signal(signal.SIGTERM, self._prev)

    def any_process(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils
        return bool(np.any(multihost_utils.process_allgather(np.array([self.requested]))))


class _WaitInterrupted(Exception):
    """SIGTERM arrived while the loop was waiting for the next batch."""


class _Fetcher:
    """`next(data_iter)` in a helper thread, so that the loop can stop waiting when SIGTERM arrives: a pipeline that
    is slow, stalled or skipping bad records would otherwise hold the run past the scheduler's grace period. The
    thread is a daemon (a fetch abandoned on SIGTERM never holds up the exit); batches still come one at a time,
    in order, so the iterator's state is the same as with a plain `next()`."""

    POLL_S = 0.2

    def __init__(self, data_iter, preempt: "_Preemption"):
        self._it, self._preempt = data_iter, preempt
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
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="clap_jax_data", daemon=True)
            self._thread.start()
        self._req.put(True)
        while True:
            try:
                ok, value = self._res.get(timeout=self.POLL_S)
            except queue.Empty:
                if self._preempt.requested:  # this process's own flag: no collective while others may be stepping
                    raise _WaitInterrupted from None
                continue
            if ok:
                return value
            raise value

    def close(self):
        if self._thread is not None:
            self._req.put(False)  # ends the thread after any fetch in flight


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None, *, model=None, data_iter=None,
                       eval_fn: Callable | None = None, mesh=None) -> dict:
    """Train (resuming from `workdir` if it holds checkpoints). Returns a summary dict with per-step losses.

    `model`, `data_iter`, `eval_fn`, `mesh` override what the config would build (tests, notebooks)."""
    # ---------------------------------------------------------------------------------------- config checks
    config_lib.validate_config(config)
    workdir_lib.check_workdir(config, workdir)
    if data_iter is None:
        config_lib.check_data_dirs(config)
    setup_logging()
    log.info("processes %d, devices %d (%d local), kind %s", jax.process_count(), jax.device_count(),
             jax.local_device_count(), jax.devices()[0].device_kind)
    if jax.devices()[0].platform == "cpu":
        from clap_jax import hostmem
        log.info("%s", hostmem.describe())

    # ---------------------------------------------------------------------------------------- mesh
    mesh = mesh if mesh is not None else shd.make_mesh(config.mesh)
    log.info("mesh %s", dict(mesh.shape))
    n_dev = mesh.size

    # ---------------------------------------------------------------------------------------- input pipeline
    own_iter = data_iter is None
    data_iter = data_iter if data_iter is not None else make_data_iterator(config, mesh)

    # ---------------------------------------------------------------------------------------- model & optimizer
    model = model if model is not None else state_lib.make_model(config)
    tx, schedule, init_fn, abstract_state, state_sh = state_lib.abstract_setup(model, config, mesh)
    rng = jax.random.PRNGKey(config.seed)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state["params"]))
    log.info("params %.2fM; sharding: %s", n_params / 1e6,
             shd.describe(state_sh["params"], abstract_state["params"]))

    # ---------------------------------------------------------------------------------------- update step
    train_step = step_lib.make_train_step(model, tx, config, mesh, schedule, state_sh["params"])
    step_fn, compile_info = step_lib.compile_train_step(train_step, abstract_state, state_sh, mesh, config)
    log.info("train step compiled: %s", {k: round(v, 3) for k, v in compile_info.items()})

    # ---------------------------------------------------------------------------------------- checkpoint load
    mngr = None
    if workdir is not None:
        if jax.process_index() == 0:  # lets `CLAP(workdir)`, the eval and the converter read this run's weights
            os.makedirs(workdir, exist_ok=True)
            workdir_lib.write_workdir_model_config(workdir, config.model)
        mngr = ckpt_lib.make_manager(os.path.join(workdir, "checkpoints"), keep=config.ckpt.keep,
                                     save_every=config.ckpt.every_steps or config.total_steps,
                                     async_save=config.ckpt.async_save)
    latest = mngr.latest_step() if mngr is not None else None
    if latest is not None:
        try:
            state = ckpt_lib.restore(mngr, latest, abstract_state, data_iter)
        except Exception as e:  # noqa: BLE001 - e.g. the optimizer changed: its state no longer fits
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise UserError(f"{workdir}/checkpoints/{latest}: cannot resume from it with this config ({first}); "
                            f"resume with the config the run was started with, or use a new --workdir") from e
        log.info("resumed from %s at step %d", workdir, latest)
    else:
        state = jax.jit(init_fn, out_shardings=state_sh)(rng)
        state = state_lib.load_initial_weights(config, state, abstract_state, state_sh)
    start = int(state["step"])

    # ---------------------------------------------------------------------------------------- evals
    eval_fn = eval_fn if eval_fn is not None else resolve_eval_fn(config, mesh)

    def run_eval(step):
        nonlocal t_window
        variables = {"params": state["params"], "batch_stats": state["batch_stats"], "constants": state["constants"]}
        t0 = time.time()
        res = eval_fn(variables, step) or {}
        t_window += time.time() - t0  # eval time is not training time (steps/s, ETA)
        writer.scalars(step, {f"eval/{k}": v for k, v in res.items()})
        log.info("eval step %d (%.1fs): %s", step, time.time() - t0, {k: round(float(v), 4) for k, v in res.items()})
        summary["evals"].append((step, res))

    # ---------------------------------------------------------------------------------------- train loop
    writer = MetricWriter(workdir)
    flops_ex = flops_lib.clap_train_flops_per_example(config.model, model_config.clip_samples(config.model))
    peak = flops_lib.peak_flops(jax.devices()[0].device_kind, config.get("peak_flops_per_device"))
    preempt = _Preemption()
    preempt.install()
    summary = {"losses": {}, "evals": [], "start_step": start, "stopped": "done", "compile": compile_info}
    window: dict[str, clu_metrics.Average] = {}
    t_window, steps_window = time.time(), 0
    pending = None  # metrics of the last step, read one step late so the host never stalls the device

    def handle(step, metrics):
        nonlocal t_window, steps_window
        m = jax.device_get(metrics)
        summary["losses"][step] = float(m["loss"])
        for k, v in m.items():  # clu metrics: running averages over the log window
            avg_k = clu_metrics.Average.from_model_output(np.asarray(v, np.float32))
            window[k] = window[k].merge(avg_k) if k in window else avg_k
        steps_window += 1
        if int(m["nan_streak"]) >= config.nan.max_consecutive:
            raise NonFiniteError(
                f"{int(m['nan_streak'])} consecutive non-finite steps at step {step} (config.nan.max_consecutive="
                f"{config.nan.max_consecutive}); stopping. The last checkpoint holds the last good state.")
        if step % config.log.every_steps == 0 or step == config.total_steps:
            dt = time.time() - t_window
            sps = steps_window / dt if dt > 0 else float("nan")
            avg = {k: float(v.compute()) for k, v in window.items()}
            avg.update(nan_streak=float(m["nan_streak"]), nan_total=float(m["nan_total"]))
            eps_dev = sps * config.batch_size / n_dev
            mfu = eps_dev * flops_ex / peak if peak else None
            eta = (config.total_steps - step) / sps if sps > 0 else float("inf")
            writer.scalars(step, {**{f"train/{k}": v for k, v in avg.items()}, "perf/steps_per_s": sps,
                                  "perf/examples_per_s_per_device": eps_dev, **({"perf/mfu": mfu} if mfu else {})})
            log.info("step %d/%d | loss %.4f acc a2t %.3f t2a %.3f | scale %.2f lr %.2e gnorm %.3g | %.2f steps/s "
                     "%.1f ex/s/dev | ETA %s | MFU %s%s", step, config.total_steps, avg["loss"], avg["acc_a2t"],
                     avg["acc_t2a"], avg["logit_scale"], avg["lr"], avg["grad_norm"], sps, eps_dev,
                     flops_lib.fmt_duration(eta),
                     f"{100 * mfu:.1f}%" if mfu else "n/a",
                     f" | skipped {int(m['nan_total'])}" if m["nan_total"] else "")
            window.clear()
            t_window, steps_window = time.time(), 0

    fetcher = _Fetcher(data_iter, preempt)
    failed = True
    try:
        if eval_fn is not None and start == 0 and config.eval.every_steps:
            run_eval(0)
        t_window = time.time()
        for step in range(start + 1, config.total_steps + 1):
            data_state = data_iter.get_state() if mngr is not None else None  # before the fetch: see below
            try:
                batch = fetcher.next()
            except _WaitInterrupted:  # save what the steps so far did (if any), then stop
                if pending is not None:
                    handle(*pending)
                    pending = None
                done = step - 1
                log.warning("SIGTERM while waiting for data: %s and exiting", f"saving checkpoint at step {done}"
                            if mngr is not None and done > start else "no new step to save")
                if mngr is not None and done > start:
                    ckpt_lib.save(mngr, done, state, data_iter, force=True, data_state=data_state)
                summary["stopped"] = "preempted"
                break
            batch = {k: batch[k] for k in BATCH_KEYS}  # pipelines may carry more (ids, dataset index)
            state, metrics = step_fn(state, batch)
            if pending is not None:
                handle(*pending)
            pending = (step, metrics)
            if mngr is not None and config.ckpt.every_steps and step % config.ckpt.every_steps == 0:
                ckpt_lib.save(mngr, step, state, data_iter)
            if eval_fn is not None and config.eval.every_steps and step % config.eval.every_steps == 0:
                run_eval(step)
            if preempt.any_process():
                handle(*pending)
                pending = None
                log.warning("SIGTERM: saving checkpoint at step %d and exiting", step)
                if mngr is not None:
                    ckpt_lib.save(mngr, step, state, data_iter, force=True)
                summary["stopped"] = "preempted"
                break
        if pending is not None:
            handle(*pending)
        if mngr is not None and summary["stopped"] == "done":
            ckpt_lib.save(mngr, int(state["step"]), state, data_iter, force=True)
        failed = False
    except NonFiniteError:
        summary["stopped"] = "nonfinite"
        raise
    finally:
        fetcher.close()
        if mngr is not None:
            try:
                ckpt_lib.finish(mngr)  # waits for the background save: a disk-full error surfaces here too
            except Exception as e:  # noqa: BLE001
                if not failed:
                    raise
                log.warning("while stopping after an error: checkpoint manager: %s", str(e).splitlines()[:1])
        writer.flush()
        writer.close()
        preempt.uninstall()
        if own_iter and hasattr(data_iter, "close"):  # Grain worker processes
            data_iter.close()
    summary["end_step"] = int(state["step"])
    summary["state"] = state
    return summary
