"""The trainer's processes: joining the other hosts (jax.distributed), and stopping together on SIGTERM."""
from __future__ import annotations

import os
import signal

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
    """SIGTERM sets a flag; the loop saves and exits at the next step boundary. `requested` is this process's
    flag; `any_process()` asks every process (a collective: call it at the same step everywhere), so that all of
    them stop at the same step."""

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
        return bool(np.any(multihost_utils.process_allgather(np.array([self.requested]))))
