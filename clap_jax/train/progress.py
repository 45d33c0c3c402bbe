"""What a run reports while it trains: the log setup, TensorBoard scalars, and the per-step progress line.

`Progress` adds each step's metrics (device arrays) into sums kept on the devices (a small jitted update, no
transfer), and reads them at log steps only, one step late (while the next step runs), with every step's loss as
one array. It writes the log window's averages every `config.log.every_steps` steps with steps/s,
examples/s/device, ETA and MFU, and stops the run (NonFiniteError) after too many non-finite steps; `sync()` reads
at once (before a checkpoint, so that a run past its non-finite limit never saves).
"""
from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging as absl_logging

from clap_jax import files
from clap_jax.errors import debug_requested
from clap_jax.train import flops as flops_lib

log = logging.getLogger("clap_jax.train")


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps."""


class MetricWriter:
    """Scalars to TensorBoard event files (clu writers when TensorFlow is present, else tensorboard's own event
    writer) and to the Python log. Only process 0 writes; other processes get a no-op.

    A workdir in object storage (gs://, s3://): the event file is written locally (tensorboard's writer, in a
    temporary directory) and uploaded whole to the workdir at most every `UPLOAD_EVERY_S` seconds and at
    `flush`/`close`, one put each (object stores cannot append; an events file of scalars stays small). A crash
    loses at most that interval of scalars; a resumed run writes a new events file beside the old ones."""

    UPLOAD_EVERY_S = 30.0

    def __init__(self, workdir: str | None):
        self._clu = self._tb = None
        self._remote = self._local = None
        if workdir is None or jax.process_index() != 0:
            return
        if files.is_url(workdir):
            import tempfile

            from tensorboard.summary.writer.event_file_writer import EventFileWriter
            self._remote, self._local = str(workdir), tempfile.mkdtemp(prefix="clap_jax_events_")
            self._tb = EventFileWriter(self._local)
            self._uploaded = time.monotonic()
            return
        try:
            from clu import metric_writers  # imports tensorflow, an optional dependency
            self._clu = metric_writers.create_default_writer(workdir, just_logging=False, asynchronous=False)
        except ImportError:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
            self._tb = EventFileWriter(workdir)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._clu is not None:
            self._clu.write_scalars(step, values)
        elif self._tb is not None:
            from tensorboard.compat.proto import event_pb2, summary_pb2  # only on the fallback path, as above
            summ = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                                              for k, v in values.items()])
            self._tb.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summ))
            if self._remote is not None and time.monotonic() - self._uploaded >= self.UPLOAD_EVERY_S:
                self.flush()

    def _upload(self) -> None:
        import os

        for name in os.listdir(self._local):
            files.upload(os.path.join(self._local, name), files.join(self._remote, name))
        self._uploaded = time.monotonic()

    def flush(self):
        if self._clu is not None:
            self._clu.flush()
        elif self._tb is not None:
            self._tb.flush()
            if self._remote is not None:
                self._upload()

    def close(self):
        if self._clu is not None:
            self._clu.close()
        elif self._tb is not None:
            self._tb.close()
            if self._remote is not None:
                import shutil

                self._upload()
                shutil.rmtree(self._local, ignore_errors=True)
                self._remote = None


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
    if not debug_requested():
        for handler in logging.getLogger().handlers:
            handler.addFilter(_NoLibraryTracebacks())
    absl_logging.set_verbosity(absl_logging.WARNING)
    log.setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)


_LAST = ("nan_streak", "nan_total")  # counters reported as they stand at the log step, not averaged


def _start_sums(metrics, capacity: int) -> dict:
    """The device-side sums of a window that starts with this step's `metrics`."""
    return {"sums": {k: v.astype(jnp.float32) for k, v in metrics.items() if k not in _LAST},
            "n": jnp.int32(1),
            "losses": jnp.zeros((capacity,), jnp.float32).at[0].set(metrics["loss"].astype(jnp.float32)),
            "nan_streak_max": metrics["nan_streak"],
            "last": {k: metrics[k] for k in _LAST}}


def _add_step(acc, metrics):
    return {"sums": {k: acc["sums"][k] + metrics[k].astype(jnp.float32) for k in acc["sums"]},
            "n": acc["n"] + 1,
            "losses": acc["losses"].at[acc["n"]].set(metrics["loss"].astype(jnp.float32)),
            "nan_streak_max": jnp.maximum(acc["nan_streak_max"], metrics["nan_streak"]),
            "last": {k: metrics[k] for k in _LAST}}


class Progress:
    """Per-step metrics -> sums on the devices -> the progress line and TensorBoard scalars of each log window.

    `update(step, metrics)` adds this step into the device sums (and reads the previous log window's, if it is
    waiting); `sync()` (alias `flush()`) reads everything now. `losses` holds every step's loss
    (filled at each read). `reads_at_next_update` says whether `update` will read from the devices (for the
    loop's transfer guard). Time spent outside training steps (evals) is left out of the rates with
    `exclude(seconds)`."""

    def __init__(self, config, writer: MetricWriter, n_devices: int, flops_per_example: float,
                 peak_flops: float | None):
        self.config, self.writer = config, writer
        self.n_devices, self.flops_per_example, self.peak_flops = n_devices, flops_per_example, peak_flops
        self.losses: dict[int, float] = {}
        # the steps between two reads fit the loss buffer: a read at least every log step
        capacity = config.log.every_steps
        self._start = jax.jit(lambda m: _start_sums(m, capacity))
        self._add = jax.jit(_add_step, donate_argnums=(0,))
        self._acc = self._acc_first = self._acc_last = None  # device sums of the steps not read yet, their steps
        self._pending = None                          # (first step, last step, sums) of a log window, to read
        self._window_sums: dict[str, float] = {}      # host: this log window's sums read so far
        self._window_n = 0
        self.start_clock()

    def start_clock(self) -> None:
        """The log window's clock starts now (at the first step, after any step-0 eval)."""
        self._t_window, self._steps_window = time.time(), 0

    def exclude(self, seconds: float) -> None:
        self._t_window += seconds

    @property
    def reads_at_next_update(self) -> bool:
        return self._pending is not None

    def update(self, step: int, metrics: dict) -> None:
        """Add `step`'s metrics (call it after dispatching the step: a waiting log window is read while the
        step runs)."""
        if self._pending is not None:
            self._read(*self._pending, log_step=True)
            self._pending = None
        if self._acc is None:
            self._acc, self._acc_first = self._start(metrics), step
        else:
            self._acc = self._add(self._acc, metrics)
        self._acc_last = step
        self._steps_window += 1
        if self._is_log_step(step):
            self._pending, self._acc = (self._acc_first, step, self._acc), None

    def sync(self) -> None:
        """Read every step so far now (waits for the devices)."""
        if self._pending is not None:
            self._read(*self._pending, log_step=True)
            self._pending = None
        if self._acc is not None:
            acc, self._acc = self._acc, None
            self._read(self._acc_first, self._acc_last, acc, log_step=False)

    flush = sync

    def _is_log_step(self, step: int) -> bool:
        return step % self.config.log.every_steps == 0 or step == self.config.total_steps

    def _read(self, first: int, last: int, acc, log_step: bool) -> None:
        m = jax.device_get(acc)  # one transfer: sums, counters and the window's per-step losses
        n = int(m["n"])
        for i, loss in enumerate(np.asarray(m["losses"][:n])):
            self.losses[first + i] = float(loss)
        for k, v in m["sums"].items():
            self._window_sums[k] = self._window_sums.get(k, 0.0) + float(v)
        self._window_n += n
        limit = self.config.nan.max_consecutive
        if int(m["nan_streak_max"]) >= limit:
            raise NonFiniteError(
                f"{int(m['nan_streak_max'])} consecutive non-finite steps by step {last} "
                f"(config.nan.max_consecutive={limit}); stopping. The last checkpoint holds the last good state.")
        if log_step:
            self.log_line(last, m["last"])

    def log_line(self, step: int, last: dict) -> None:
        """Write the window's averages and rates (TensorBoard and the log), then start a new window. `last`: this
        step's metrics on the host (the non-finite counters are reported as they are now, not averaged)."""
        c = self.config
        dt = time.time() - self._t_window
        sps = self._steps_window / dt if dt > 0 else float("nan")
        avg = {k: v / max(self._window_n, 1) for k, v in self._window_sums.items()}
        avg.update(nan_streak=float(last["nan_streak"]), nan_total=float(last["nan_total"]))
        eps_dev = sps * c.batch_size / self.n_devices
        mfu = eps_dev * self.flops_per_example / self.peak_flops if self.peak_flops else None
        eta = (c.total_steps - step) / sps if sps > 0 else float("inf")
        self.writer.scalars(step, {**{f"train/{k}": v for k, v in avg.items()}, "perf/steps_per_s": sps,
                                   "perf/examples_per_s_per_device": eps_dev, **({"perf/mfu": mfu} if mfu else {})})
        if "acc_a2t" not in avg:   # another objective (prefix_lm: token accuracy)
            log.info("step %d/%d | loss %.4f %s | lr %.2e gnorm %.3g | %.2f steps/s %.1f ex/s/dev | ETA %s | "
                     "MFU %s%s",
                     step, c.total_steps, avg["loss"],
                     " ".join(f"{k} {avg[k]:.3f}" for k in ("token_acc", "logit_scale") if k in avg),
                     avg["lr"], avg["grad_norm"], sps, eps_dev, flops_lib.fmt_duration(eta),
                     f"{100 * mfu:.1f}%" if mfu else "n/a",
                     f" | skipped {int(last['nan_total'])}" if last["nan_total"] else "")
        else:
            log.info("step %d/%d | loss %.4f acc a2t %.3f t2a %.3f | scale %.2f lr %.2e gnorm %.3g | %.2f steps/s "
                     "%.1f ex/s/dev | ETA %s | MFU %s%s", step, c.total_steps, avg["loss"], avg["acc_a2t"],
                     avg["acc_t2a"], avg["logit_scale"], avg["lr"], avg["grad_norm"], sps, eps_dev,
                     flops_lib.fmt_duration(eta), f"{100 * mfu:.1f}%" if mfu else "n/a",
                     f" | skipped {int(last['nan_total'])}" if last["nan_total"] else "")
        self._window_sums, self._window_n = {}, 0
        self.start_clock()
