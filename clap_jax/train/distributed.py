"""The trainer's processes: joining the other hosts (jax.distributed), and stopping together on SIGTERM."""
from __future__ import annotations

import logging
import os
import re
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger("clap_jax.train")


def init_distributed(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, mode: str = "auto") -> None:
    """One process per host (or per GPU). Explicit coordinator flags win, then the environment variables
    JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID; else TPU pods and SLURM are detected from the
    environment and `jax.distributed.initialize()` finds its peers; else single process.

    Under SLURM each process drives the GPUs its task sees (`slurm_local_device_ids`), not only GPU
    `SLURM_LOCALID` (JAX's own SLURM default, right only for one task per GPU on a node whose tasks all see
    every GPU)."""
    if coordinator:
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
        return
    if mode == "none":
        return
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS") and env.get("JAX_NUM_PROCESSES") and env.get("JAX_PROCESS_ID"):
        # a launcher without a cluster manager JAX detects (ssh loops, the launcher tests' stand-ins)
        jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], num_processes=int(env["JAX_NUM_PROCESSES"]),
                                   process_id=int(env["JAX_PROCESS_ID"]))
        return
    multi_tpu = "," in env.get("TPU_WORKER_HOSTNAMES", "")
    slurm = int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env
    if slurm and "SLURM_PROCID" in env and "JAX_COORDINATOR_ADDRESS" not in env:  # a task of an srun step
        ids = slurm_local_device_ids(env)
        log.warning("SLURM task %s of %s on %s: local devices %s", env.get("SLURM_PROCID"), env.get("SLURM_NTASKS"),
                    env.get("SLURMD_NODENAME", "?"), "all visible" if ids is None else ids)
        if ids is None:  # every device the task sees: no cluster detection, which would pick one GPU
            jax.distributed.initialize(slurm_coordinator(env), num_processes=int(env["SLURM_NTASKS"]),
                                       process_id=int(env["SLURM_PROCID"]), cluster_detection_method="deactivate")
        else:
            jax.distributed.initialize(local_device_ids=ids)
        return
    if mode == "force" or multi_tpu or slurm or "JAX_COORDINATOR_ADDRESS" in env:
        jax.distributed.initialize()


def slurm_local_device_ids(env) -> list[int] | None:
    """The local device ids of this SLURM task, None for all it sees: all when SLURM restricted the task's GPUs
    (CUDA_VISIBLE_DEVICES set: the task sees only its own) or when the node runs one task; else (several tasks
    per node, each seeing every GPU) GPU number SLURM_LOCALID. JAX_LOCAL_DEVICE_IDS overrides."""
    if env.get("JAX_LOCAL_DEVICE_IDS"):
        return [int(x) for x in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
    per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]  # e.g. "2(x3)"
    if env.get("CUDA_VISIBLE_DEVICES") or per_node in ("", "1"):
        return None
    return [int(env.get("SLURM_LOCALID", "0"))]


def slurm_coordinator(env) -> str:
    """host:port of SLURM task 0: the first host of SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST), a port derived
    from the job id (JAX_COORDINATOR_PORT overrides): the address every task computes alike."""
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "localhost"
    first = re.split(r",(?![^\[]*\])", nodes)[0]  # 'node[001-004,007],gpu9' -> 'node[001-004,007]'
    if "[" in first:
        prefix, rng = first.split("[", 1)
        first = prefix + re.split(r"[,\-\]]", rng)[0]
    port = env.get("JAX_COORDINATOR_PORT") or str(int(env.get("SLURM_JOB_ID", "0")) % 4096 + 61440)
    return f"{first}:{port}"


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
