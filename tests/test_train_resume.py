"""End-to-end trainer runs in subprocesses (the CLI, stand-in model, 8 CPU devices):
- SIGKILL after a checkpoint, restart: losses from the checkpoint on equal an uninterrupted run bit for bit;
- SIGTERM: a checkpoint at the current step and a clean exit (code 0), then the run completes, still exact;
- 2 processes x 4 devices over localhost (jax.distributed, gloo) reach the same losses as 1 process x 8."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from _train_helpers import COMPILE_CACHE, ROOT

STEPS = 16
CONFIG = [f"--config={ROOT}/configs/tiny.py:ckpt_every=4", f"--config.total_steps={STEPS}",
          "--config.data.num_classes=4"]


def _env(devices=8):
    # A compilation cache shared by the runs of this module: identical programs compile once.
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_COMPILATION_CACHE_DIR=COMPILE_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return env


def _start(workdir, out, extra=(), devices=8):
    cmd = [sys.executable, os.path.join(ROOT, "tests", "_train_runner.py"), *CONFIG, f"--workdir={workdir}",
           f"--losses_out={out}", *extra]
    return subprocess.Popen(cmd, env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(p, timeout=180):
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:]
    return out


def _steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


def _wait_for_checkpoint(p, workdir, after, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        s = [x for x in _steps(workdir) if x > after]
        if s:
            return s[0]
        if p.poll() is not None:
            raise AssertionError("run ended before a checkpoint: " + p.stdout.read()[-3000:])
        time.sleep(0.02)
    raise AssertionError("no checkpoint in time")


def _losses(path):
    with open(path) as f:
        d = json.load(f)
    return {int(k): v for k, v in d["losses"].items()}, d


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    _finish(_start(d / "wd", d / "losses.json"))
    losses, meta = _losses(d / "losses.json")
    assert sorted(losses) == list(range(1, STEPS + 1)) and meta["stopped"] == "done"
    assert all(np.isfinite(v) for v in losses.values())
    return losses


def test_sigkill_then_sigterm_then_resume_is_bit_exact(reference, tmp_path):
    wd = tmp_path / "wd"
    # 1) killed hard right after its first checkpoint appears
    p = _start(wd, tmp_path / "a.json")
    first = _wait_for_checkpoint(p, wd, 0)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    kept = _steps(wd)
    assert kept and kept[-1] < STEPS
    # 2) restarted: resumes from its latest checkpoint; SIGTERM once it has written a newer one
    p = _start(wd, tmp_path / "b.json")
    _wait_for_checkpoint(p, wd, kept[-1])
    p.send_signal(signal.SIGTERM)
    _finish(p)
    lb, mb = _losses(tmp_path / "b.json")
    assert mb["start_step"] == kept[-1], (mb, kept)
    if mb["stopped"] == "preempted":  # (the run may have finished before the signal landed)
        assert _steps(wd)[-1] == mb["end_step"] < STEPS
    for s, v in lb.items():
        assert v == reference[s], (s, v, reference[s])       # bit for bit
    # 3) restarted again: completes from where SIGTERM left it
    p = _start(wd, tmp_path / "c.json")
    _finish(p)
    lc, mc = _losses(tmp_path / "c.json")
    assert mc["start_step"] == mb["end_step"] and mc["end_step"] == STEPS
    assert lc and all(lc[s] == reference[s] for s in lc), {s: (lc[s], reference[s]) for s in lc}
    assert first <= kept[-1]


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(reference, tmp_path):
    """launch/local_multiprocess.sh: 2 processes x 4 CPU devices, jax.distributed over localhost (gloo)."""
    env = dict(_env(), NUM_PROCESSES="2", DEVICES_PER_PROCESS="4", PORT=str(_free_port()),
               LOG_DIR=str(tmp_path), ENTRY=f"{sys.executable} {ROOT}/tests/_train_runner.py")
    r = subprocess.run(["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"), *CONFIG,
                        f"--workdir={tmp_path / 'wd'}", f"--losses_out={tmp_path / 'losses.json'}"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    losses, meta = _losses(tmp_path / "losses.json")
    assert "processes 2, devices 8 (4 local)" in (tmp_path / "process_0.log").read_text()
    assert "processes 2" not in (tmp_path / "process_1.log").read_text()   # only process 0 logs
    assert meta["end_step"] == STEPS and sorted(losses) == sorted(reference)
    np.testing.assert_allclose([losses[s] for s in sorted(losses)], [reference[s] for s in sorted(losses)],
                               rtol=2e-5)
    assert STEPS in [int(x) for x in os.listdir(tmp_path / "wd" / "checkpoints") if x.isdigit()]
