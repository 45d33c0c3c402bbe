"""CLAP contrastive pretraining on a device mesh: `train_and_evaluate`, the run from config to last checkpoint.

    python -m clap_jax.train --config configs/tiny.py --workdir /tmp/clap_tiny
    python -m clap_jax.train --config configs/clap_2023.py:batch_size=256 --workdir gs://bucket/run1 \
        --config.optim.lr=3e-4

Read top to bottom: config checks, logging, mesh, input pipeline, model and optimizer (shape-first init), update
step (compiled once, up front, through the persistent compilation cache), checkpoint load / weight initialisation,
evals, train loop. A `--workdir` holding checkpoints is resumed from its latest step, iterator included. The parts
are in their own modules (config, workdir, progress, data, state, step, checkpoint, distributed).

The loop never waits on the host on an ordinary step: the next batches are made and put on the devices by a helper
thread while the current step runs (`data.prefetch`), metrics are summed on the devices and read at log steps (one
step late), and the processes agree on SIGTERM only every so many steps (`ckpt.preemption_check_every`). The
host reads from the devices only on the step after a log step and at checkpoint, eval, profile and agreement
steps; `debug.guard_host_reads` makes a read on any other step an error.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
from typing import Callable

import jax
from jax.experimental.compilation_cache import compilation_cache
import ml_collections
import numpy as np

from clap_jax import files, hostmem
from clap_jax.errors import UserError
from clap_jax.eval.hook import make_eval_fn
from clap_jax.models import config as model_config
from clap_jax.train import checkpoint as ckpt_lib
from clap_jax.train import config as config_lib
from clap_jax.train import data as data_lib
from clap_jax.train import distributed
from clap_jax.train import flops as flops_lib
from clap_jax.train import objective as objective_lib
from clap_jax.train import progress as progress_lib
from clap_jax.train import sharding as shd
from clap_jax.train import state as state_lib
from clap_jax.train import step as step_lib
from clap_jax.train import workdir as workdir_lib

log = logging.getLogger("clap_jax.train")


def resolve_eval_fn(config, mesh=None, model=None) -> Callable | None:
    """The periodic eval: `config.eval.fn = 'module:function'` (called as function(variables, step) -> {name:
    value}), else zero-shot tasks of clap_jax.eval under `config.eval.data_root` embedded on `mesh`, else the
    objective's loss on `config.eval.heldout_batches` held-out batches, else None."""
    ec = config.eval
    if ec.get("heldout_batches") and not ec.get("fn") and not ec.get("data_root"):
        model = model if model is not None else state_lib.make_model(config)
        return objective_lib.heldout_eval_fn(model, config,
                                             data_lib.heldout_batches(config, mesh, ec.heldout_batches))
    if ec.get("fn"):
        mod, _, fn = ec.fn.partition(":")
        return getattr(importlib.import_module(mod), fn)
    if ec.get("data_root"):
        return make_eval_fn(ec.data_root, config.model, tasks=ec.tasks, batch_size=ec.batch_size,
                            log=lambda msg: log.warning("%s", msg), mesh=mesh)
    return None


def _run_eval(eval_fn, state, step, writer, progress) -> dict:
    """One eval of the current weights: its results go to TensorBoard and the log; its time is not training time
    (steps/s, ETA)."""
    variables = {"params": state["params"], "batch_stats": state["batch_stats"], "constants": state["constants"]}
    t0 = time.time()
    res = eval_fn(variables, step) or {}
    progress.exclude(time.time() - t0)
    writer.scalars(step, {f"eval/{k}": v for k, v in res.items()})
    log.info("eval step %d (%.1fs): %s", step, time.time() - t0, {k: round(float(v), 4) for k, v in res.items()})
    return res


def _checkpoint_manager(config, workdir):
    """The run's checkpoint manager (None without a workdir). Process 0 records the model config first, so that
    `CLAP(workdir)`, the eval and the converter can read this run's weights."""
    if workdir is None:
        return None
    if jax.process_index() == 0:
        files.makedirs(workdir, exist_ok=True)
        workdir_lib.write_workdir_model_config(workdir, config.model)
    return ckpt_lib.make_manager(os.path.join(workdir, "checkpoints"), keep=config.ckpt.keep,
                                 save_every=config.ckpt.every_steps or config.total_steps,
                                 async_save=config.ckpt.async_save)


def _restore(mngr, step, abstract_state, data_iter, workdir) -> dict:
    """The state saved at `step` (the iterator is repositioned in place), or a UserError when this config's state
    does not fit it."""
    try:
        return ckpt_lib.restore(mngr, step, abstract_state, data_iter)
    except Exception as e:  # noqa: BLE001 - e.g. the optimizer changed: its state no longer fits
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"{workdir}/checkpoints/{step}: cannot resume from it with this config ({first}); "
                        f"resume with the config the run was started with, or use a new --workdir") from e


def _use_compile_cache(config, workdir) -> Callable[[], None]:
    """JAX's persistent compilation cache in <workdir>/jax_cache (`train.compile_cache`), so that a rerun or a
    resume loads its programs instead of compiling them; a cache directory already set in JAX (flag, environment,
    jax.config) is kept. Returns the function that puts the previous setting back."""
    if not config.train.compile_cache or workdir is None:
        return lambda: None
    if jax.config.jax_compilation_cache_dir:
        log.info("compilation cache: %s", jax.config.jax_compilation_cache_dir)
        return lambda: None
    if files.is_url(workdir) and not str(workdir).startswith("gs://"):
        log.info("compilation cache: none (JAX keeps it locally or on gs:// only; set jax_compilation_cache_dir)")
        return lambda: None
    path = os.path.join(workdir, "jax_cache")
    compilation_cache.set_cache_dir(path)
    compilation_cache.reset_cache()  # a cache opened earlier in this process would otherwise stay in use
    log.info("compilation cache: %s", path)

    def restore():
        compilation_cache.set_cache_dir(None)
        compilation_cache.reset_cache()
    return restore


class _Profile:
    """A jax.profiler trace of the steps `profile.steps = (first, last)` in <workdir>/profile (TensorBoard's
    profile tab reads it). The trace stops once the last step's work is done on the devices."""

    def __init__(self, config, workdir):
        steps = tuple(config.profile.steps or ())
        self.first, self.last = steps if steps else (0, -1)
        self.dir = os.path.join(workdir, "profile") if workdir is not None else None
        if steps and self.dir is None:
            log.warning("config.profile.steps is set but there is no --workdir to write the trace to: no profile")
        self.on = False

    def covers(self, step: int) -> bool:
        return self.dir is not None and self.first <= step <= self.last

    def before(self, step: int) -> None:
        if self.dir is not None and step == self.first and not self.on:
            jax.profiler.start_trace(self.dir)
            self.on = True

    def after(self, step: int, state) -> None:
        if self.on and step >= self.last:
            self.stop(state)

    def stop(self, state=None) -> None:
        if self.on:
            if state is not None:
                jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.on = False
            log.info("profile of steps %d-%d in %s", self.first, self.last, self.dir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None, *, model=None, data_iter=None,
                       eval_fn: Callable | None = None, mesh=None) -> dict:
    """Train (resuming from `workdir` if it holds checkpoints). Returns a summary dict with per-step losses.

    `model`, `data_iter`, `eval_fn`, `mesh` override what the config would build (tests, notebooks)."""
    # ---------------------------------------------------------------------------------------- config checks
    config_lib.validate_config(config)
    workdir_lib.check_workdir(config, workdir)
    if data_iter is None:
        config_lib.check_data_dirs(config)
    progress_lib.setup_logging()
    log.info("processes %d, devices %d (%d local), kind %s", jax.process_count(), jax.device_count(),
             jax.local_device_count(), jax.devices()[0].device_kind)
    if jax.devices()[0].platform == "cpu":
        log.info("%s", hostmem.describe())

    # ---------------------------------------------------------------------------------------- mesh
    mesh = mesh if mesh is not None else shd.make_mesh(config.mesh)
    log.info("mesh %s", dict(mesh.shape))

    # ---------------------------------------------------------------------------------------- input pipeline
    mngr = _checkpoint_manager(config, workdir)
    latest = mngr.latest_step() if mngr is not None else None
    own_iter = data_iter is None
    restore_data = True
    if own_iter:  # auto worker count: the one the checkpoint's iterator state was made with, if resuming
        saved = ckpt_lib.saved_data_state(mngr, latest) if latest is not None else None
        fits, why = data_lib.saved_state_fits(config, saved) if latest is not None else (True, "")
        if fits:
            data_iter = data_lib.make_data_iterator(
                config, mesh, saved_workers=data_lib.saved_worker_count(saved))
        else:  # elastic resume: another number of hosts or data workers
            data_iter = data_lib.elastic_data_iterator(config, mesh, latest, why)
            restore_data = False

    # ---------------------------------------------------------------------------------------- model & optimizer
    model = model if model is not None else state_lib.make_model(config)
    tx, schedule, init_fn, abstract_state, state_sh = state_lib.abstract_setup(model, config, mesh)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state["params"]))
    log.info("params %.2fM; sharding: %s", n_params / 1e6,
             shd.describe(state_sh["params"], abstract_state["params"]))

    # ---------------------------------------------------------------------------------------- update step
    train_step = step_lib.make_train_step(model, tx, config, mesh, schedule, state_sh["params"])
    restore_cache_setting = _use_compile_cache(config, workdir)
    step_fn, compile_info = step_lib.compile_train_step(train_step, abstract_state, state_sh, mesh, config)
    log.info("train step compiled: %s", {k: round(v, 3) for k, v in compile_info.items()})

    # ---------------------------------------------------------------------------------------- checkpoint load
    if latest is not None:
        state = _restore(mngr, latest, abstract_state, data_iter if restore_data else None, workdir)
        log.info("resumed from %s at step %d", workdir, latest)
    else:
        state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.PRNGKey(config.seed))
        state = state_lib.load_initial_weights(config, state, abstract_state, state_sh)
    start = int(state["step"])

    # ---------------------------------------------------------------------------------------- evals
    eval_fn = eval_fn if eval_fn is not None else resolve_eval_fn(config, mesh, model)
    eval_every = config.eval.every_steps if eval_fn is not None else 0

    # ---------------------------------------------------------------------------------------- train loop
    writer = progress_lib.MetricWriter(workdir)
    progress = progress_lib.Progress(
        config, writer, mesh.size,
        flops_per_example=flops_lib.clap_train_flops_per_example(config.model,
                                                                 model_config.clip_samples(config.model)),
        peak_flops=flops_lib.peak_flops(jax.devices()[0].device_kind, config.get("peak_flops_per_device")))
    preempt = distributed.Preemption(config.ckpt.preemption_check_every, config.ckpt.preemption_check_s)
    preempt.install()
    summary = {"losses": progress.losses, "evals": [], "start_step": start, "stopped": "done",
               "compile": compile_info, "guarded_steps": []}
    batches = data_lib.Prefetcher(data_iter, config.data.prefetch, lambda: preempt.requested,
                                  with_state=mngr is not None, prepare=objective_lib.of(config).prepare)
    profile = _Profile(config, workdir)
    ckpt_every = config.ckpt.every_steps if mngr is not None else 0
    failed = True
    try:
        if eval_every and start == 0:
            summary["evals"].append((0, _run_eval(eval_fn, state, 0, writer, progress)))
        progress.start_clock()
        for step in range(start + 1, config.total_steps + 1):
            is_ckpt = bool(ckpt_every) and step % ckpt_every == 0
            is_eval = bool(eval_every) and step % eval_every == 0
            # the steps where the host reads nothing from the devices: they run under the guard when asked
            quiet = not (is_ckpt or is_eval or progress.reads_at_next_update or profile.covers(step)
                         or preempt.agrees_at(step, sync=is_ckpt))
            guard = jax.transfer_guard_device_to_host("disallow") if quiet and config.debug.guard_host_reads \
                else contextlib.nullcontext()
            with guard:
                done = step - 1
                try:
                    batch = batches.next()  # on the devices already; batches.state: the iterator after it
                except data_lib.WaitInterrupted:  # save what the steps so far did (if any), then stop
                    progress.flush()
                    log.warning("SIGTERM while waiting for data: %s and exiting", f"saving checkpoint at step {done}"
                                if mngr is not None and done > start else "no new step to save")
                    if mngr is not None and done > start:
                        ckpt_lib.save(mngr, done, state, data_iter, force=True, data_state=batches.state)
                    summary["stopped"] = "preempted"
                    break
                profile.before(step)
                state, metrics = step_fn(state, batch)
                progress.update(step, metrics)  # device-side sums; a log window is read one step late
                if is_ckpt:
                    progress.sync()  # a run past its non-finite limit stops here, before saving
                    ckpt_lib.save(mngr, step, state, data_iter, data_state=batches.state)
                if is_eval:
                    summary["evals"].append((step, _run_eval(eval_fn, state, step, writer, progress)))
                profile.after(step, state)
                if preempt.should_stop(step, sync=is_ckpt):  # every process stops at the same step
                    progress.flush()
                    log.warning("SIGTERM: saving checkpoint at step %d and exiting", step)
                    if mngr is not None:
                        ckpt_lib.save(mngr, step, state, data_iter, force=True, data_state=batches.state)
                    summary["stopped"] = "preempted"
                    break
            if quiet and config.debug.guard_host_reads:
                summary["guarded_steps"].append(step)
        progress.flush()
        if mngr is not None and summary["stopped"] == "done":
            ckpt_lib.save(mngr, int(state["step"]), state, data_iter, force=True, data_state=batches.state)
        failed = False
    except progress_lib.NonFiniteError:
        summary["stopped"] = "nonfinite"
        raise
    finally:
        batches.close()
        profile.stop()
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
        restore_cache_setting()
        if own_iter and hasattr(data_iter, "close"):  # Grain worker processes
            data_iter.close()
    summary["end_step"] = int(state["step"])
    summary["state"] = state
    return summary
