"""The trainer's processes: joining the other hosts (jax.distributed), and stopping together on SIGTERM."""
from __future__ import annotations

import os
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils


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


class Preemption:
    """SIGTERM sets a flag; the loop saves and exits at the next step boundary where the processes agree.

    `requested` is this process's flag. `should_stop(step, sync)` is what the loop asks after each step: one
    process reads its flag (free). Several processes must stop at the same step, so they agree with a collective
    (an all-gather, which waits for the devices to finish the queued steps) at the same steps everywhere: at
    `sync` steps (checkpoint steps, where the loop waits for the devices anyway) and every `every` steps; `every=0` (auto) spaces them about `target_s` seconds of training apart, each process proposing an
    interval from its own step time and all taking the smallest, so the next agreement step is the same on all.

    (JAX's own `multihost_utils.reached_preemption_sync_point` needs its preemption service to own SIGTERM,
    which leaves no Python handler to cut short a wait for data or to serve one process; so the flag is ours.)"""

    MAX_EVERY = 1000

    def __init__(self, every: int = 0, target_s: float = 2.0):
        self.requested = False
        self._prev = None
        self.every, self.target_s = every, target_s
        self._next_check = 1     # the first step after the start agrees (and measures the step time from there)
        self._last = None        # (step, time) of the last agreement
        self.checks = 0          # agreements made (tests)

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

    def agrees_at(self, step: int, sync: bool = False) -> bool:
        """Whether `should_stop(step, sync)` makes a collective (waits for the devices)."""
        return jax.process_count() > 1 and (sync or step >= self._next_check)

    def should_stop(self, step: int, sync: bool = False) -> bool:
        if jax.process_count() == 1:
            return self.requested
        if not self.agrees_at(step, sync):
            return False
        now = time.monotonic()
        if self.every:
            propose = self.every
        elif self._last is None or step <= self._last[0]:
            propose = 1
        else:
            per_step = (now - self._last[1]) / (step - self._last[0])
            propose = int(min(self.MAX_EVERY, max(1, self.target_s / max(per_step, 1e-6))))
        got = multihost_utils.process_allgather(np.array([int(self.requested), propose], np.int64))
        got = np.asarray(got).reshape(-1, 2)
        self._next_check = step + int(got[:, 1].min())
        self._last = (step, time.monotonic())
        self.checks += 1
        return bool(got[:, 0].any())

    def any_process(self) -> bool:
        """Whether any process has its flag set (a collective: call it at the same step everywhere)."""
        if jax.process_count() == 1:
            return self.requested
        return bool(np.any(multihost_utils.process_allgather(np.array([self.requested]))))
