"""What a run reports while it trains: the log setup, TensorBoard scalars, and the per-step progress line.

`Progress` takes each step's metrics (device arrays) and reads them one step late, so that the host never waits
for the device; it averages them over the log window, writes them every `config.log.every_steps` steps with
steps/s, examples/s/device, ETA and MFU, and stops the run (NonFiniteError) after too many non-finite steps.
"""
from __future__ import annotations

import logging
import time

import jax
import numpy as np
from absl import logging as absl_logging
from clu import metrics as clu_metrics

from clap_jax.errors import debug_requested
from clap_jax.train import flops as flops_lib

log = logging.getLogger("clap_jax.train")


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps."""


class MetricWriter:
    """Scalars to TensorBoard event files (clu writers when TensorFlow is present, else tensorboard's own event
    writer) and to the Python log. Only process 0 writes; other processes get a no-op."""

    def __init__(self, workdir: str | None):
        self._clu = self._tb = None
        if workdir is None or jax.process_index() != 0:
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
    if not debug_requested():
        for handler in logging.getLogger().handlers:
            handler.addFilter(_NoLibraryTracebacks())
    absl_logging.set_verbosity(absl_logging.WARNING)
    log.setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)


class Progress:
    """Per-step metrics -> running averages, the progress line and TensorBoard scalars of each log window.

    `update(step, metrics)` keeps this step's metrics and reads the previous step's; `flush()` reads the last
    one. `losses` holds every step's loss. Time spent outside training steps (evals) is left out of the rates
    with `exclude(seconds)`."""

    def __init__(self, config, writer: MetricWriter, n_devices: int, flops_per_example: float,
                 peak_flops: float | None):
        self.config, self.writer = config, writer
        self.n_devices, self.flops_per_example, self.peak_flops = n_devices, flops_per_example, peak_flops
        self.losses: dict[int, float] = {}
        self._window: dict[str, clu_metrics.Average] = {}
        self._pending = None  # (step, metrics) of the last step, not yet read from the device
        self.start_clock()

    def start_clock(self) -> None:
        """The log window's clock starts now (at the first step, after any step-0 eval)."""
        self._t_window, self._steps_window = time.time(), 0

    def exclude(self, seconds: float) -> None:
        self._t_window += seconds

    def update(self, step: int, metrics: dict) -> None:
        if self._pending is not None:
            self._read(*self._pending)
        self._pending = (step, metrics)

    def flush(self) -> None:
        if self._pending is not None:
            self._read(*self._pending)
            self._pending = None

    def _read(self, step: int, metrics: dict) -> None:
        m = jax.device_get(metrics)
        self.losses[step] = float(m["loss"])
        for k, v in m.items():  # clu metrics: running averages over the log window
            avg_k = clu_metrics.Average.from_model_output(np.asarray(v, np.float32))
            self._window[k] = self._window[k].merge(avg_k) if k in self._window else avg_k
        self._steps_window += 1
        limit = self.config.nan.max_consecutive
        if int(m["nan_streak"]) >= limit:
            raise NonFiniteError(
                f"{int(m['nan_streak'])} consecutive non-finite steps at step {step} (config.nan.max_consecutive="
                f"{limit}); stopping. The last checkpoint holds the last good state.")
        if step % self.config.log.every_steps == 0 or step == self.config.total_steps:
            self.log_line(step, m)

    def log_line(self, step: int, last: dict) -> None:
        """Write the window's averages and rates (TensorBoard and the log), then start a new window. `last`: this
        step's metrics on the host (the non-finite counters are reported as they are now, not averaged)."""
        c = self.config
        dt = time.time() - self._t_window
        sps = self._steps_window / dt if dt > 0 else float("nan")
        avg = {k: float(v.compute()) for k, v in self._window.items()}
        avg.update(nan_streak=float(last["nan_streak"]), nan_total=float(last["nan_total"]))
        eps_dev = sps * c.batch_size / self.n_devices
        mfu = eps_dev * self.flops_per_example / self.peak_flops if self.peak_flops else None
        eta = (c.total_steps - step) / sps if sps > 0 else float("inf")
        self.writer.scalars(step, {**{f"train/{k}": v for k, v in avg.items()}, "perf/steps_per_s": sps,
                                   "perf/examples_per_s_per_device": eps_dev, **({"perf/mfu": mfu} if mfu else {})})
        log.info("step %d/%d | loss %.4f acc a2t %.3f t2a %.3f | scale %.2f lr %.2e gnorm %.3g | %.2f steps/s "
                 "%.1f ex/s/dev | ETA %s | MFU %s%s", step, c.total_steps, avg["loss"], avg["acc_a2t"],
                 avg["acc_t2a"], avg["logit_scale"], avg["lr"], avg["grad_norm"], sps, eps_dev,
                 flops_lib.fmt_duration(eta), f"{100 * mfu:.1f}%" if mfu else "n/a",
                 f" | skipped {int(last['nan_total'])}" if last["nan_total"] else "")
        self._window.clear()
        self.start_clock()
