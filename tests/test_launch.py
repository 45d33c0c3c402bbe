"""The launchers executed, not printed: stand-ins for `gcloud`, `uv`, `sbatch`/`srun`/`scontrol` (tests/standins/,
first on PATH) run the commands the scripts generate as local processes, a TPU pod's or a SLURM job's hosts played
by 2 processes x 4 CPU devices over localhost (jax.distributed + gloo), the trainer with its stand-in model.

- launch/tpu_pod.sh: create, setup (archive without .git / runs/, venv, runtime deps + jax[tpu] only), launch
  (detached, a log per worker) trains like one process with 8 devices, with the periodic eval on the global
  mesh giving every host the same numbers; `stop` (SIGTERM to the workers, as a preemption) leaves a checkpoint
  and no process behind, stale TPU holders included, and a relaunch resumes bit for bit; multi-slice commands
  (queued resource, DCN mesh flag);
- a run started on 2 x 4 resumes on 1 x 8 (elastic: the iterator re-derived from the step, with a warning);
- launch/slurm_gpu.sbatch: every task sees all devices of its node, a log per rank, SIGUSR1 before the time
  limit -> save -> `scontrol requeue` -> the requeued job resumes bit for bit;
- launch/multi_gpu_host.sh: one process on all 8 local devices (the reference run)."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time

import jax
import numpy as np
import pytest

from _train_helpers import COMPILE_CACHE, ROOT

STEPS = 8
CONFIG = "configs/tiny.py:ckpt_every=4,fsdp"  # FSDP: the periodic eval gets params sharded over both hosts
EXTRA = f"--config.total_steps={STEPS} --config.data.num_classes=4"
STANDINS = os.path.join(ROOT, "tests", "standins")
# the processes agree on SIGTERM after every step, and a step takes at least 1.5 s: a signal sent after the
# checkpoint of step 4 lands before the end (without the delay a fast machine finished all 8 steps first)
AGREE_EVERY_STEP = "--config.ckpt.preemption_check_every=1 --step_seconds=1.5"


EVAL_ENTRY = "tests/standins/train_eval_runner.py"   # the periodic eval embeds with the stand-in model too


def _eval_flags(root):
    return f"--config.eval.data_root={root} --config.eval.every_steps={STEPS} --config.eval.batch_size=8"


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    import eval_fixtures as fx

    d = tmp_path_factory.mktemp("eval")
    fx.builtin(fx.Writer(d))
    return d


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(root, **kw):
    env = dict(os.environ, PATH=f"{STANDINS}:{os.environ['PATH']}", STANDIN_ROOT=str(root), PYTHONPATH=ROOT,
               JAX_COMPILATION_CACHE_DIR=COMPILE_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_PLATFORMS", None)
    env.update({k: str(v) for k, v in kw.items()})
    return env


def _sh(args, env, timeout=120, check=True):
    r = subprocess.run(["bash", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"{args}: {r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _losses(path):
    with open(path) as f:
        d = json.load(f)
    return {int(k): v for k, v in d["losses"].items()}, d


def _steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


def _wait(cond, what, timeout=150):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------------------------------- reference run

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """launch/multi_gpu_host.sh: one process driving all 8 local devices (CPU devices standing in for GPUs)."""
    d = tmp_path_factory.mktemp("ref")
    env = _env(d, PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8", LOG_DIR=d,
               ENTRY="tests/_train_runner.py", CONFIG=CONFIG, WORKDIR=d / "wd",
               EXTRA=f"{EXTRA} --losses_out={d / 'losses.json'}")
    _sh(["launch/multi_gpu_host.sh", "run"], env, timeout=180)
    log = (d / "train.log").read_text()
    assert "processes 1, devices 8 (8 local)" in log
    losses, meta = _losses(d / "losses.json")
    assert sorted(losses) == list(range(1, STEPS + 1)) and meta["stopped"] == "done"
    return losses, log


# ----------------------------------------------------------------------------------------------- TPU pod

@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    """A 2-worker "slice" created and set up through launch/tpu_pod.sh."""
    root = tmp_path_factory.mktemp("pod")
    env = _env(root, TPU_NAME="clap-test", ZONE="us-test1-a", ACCELERATOR="v5p-16", RUNTIME="v2-alpha-tpuv5",
               STANDIN_TPU_WORKERS=2, STANDIN_DEVICES=4, ENTRY="tests/_train_runner.py", CONFIG=CONFIG,
               GRACE=60, ACCEL_DEVICES=root / "accel0", LIBTPU_LOCKFILE=root / "libtpu_lockfile")
    _sh(["launch/tpu_pod.sh", "create"], env)
    _sh(["launch/tpu_pod.sh", "setup"], env, timeout=180)
    return root, env


def _worker_home(root, w, node="clap-test"):
    return root / "nodes" / node / f"w{w}"


def _launch(pod, workdir, out, extra="", **kw):
    root, env = pod
    env = dict(env, STANDIN_PORT=str(_free_port()), WORKDIR=str(workdir),
               EXTRA=f"{EXTRA} --losses_out={out} {extra}", **kw)
    return _sh(["launch/tpu_pod.sh", "launch"], env)


def _exit_codes(root):
    rcs = [_worker_home(root, w) / "clap_logs" / "train.rc" for w in (0, 1)]
    return [int(p.read_text()) for p in rcs] if all(p.exists() for p in rcs) else None


def _wait_exit(root, timeout=180):
    return _wait(lambda: _exit_codes(root), "both workers to exit", timeout)


@pytest.fixture(scope="module")
def pod_run(pod, eval_root):
    """An uninterrupted 2 x 4 run through the launcher, with periodic evals: the bit-exact reference of the
    resumes below."""
    root, env = pod
    wd, out = root / "wd_full", root / "full.json"
    _launch(pod, wd, out, extra=_eval_flags(eval_root), ENTRY=EVAL_ENTRY)
    assert _wait_exit(root) == [0, 0]
    losses, meta = _losses(out)
    logs = [(_worker_home(root, w) / "clap_logs" / "train.log").read_text() for w in (0, 1)]
    return wd, losses, meta, logs


def test_tpu_setup_ships_an_archive_and_installs_runtime_deps_only(pod):
    root, env = pod
    calls = [json.loads(x) for x in (root / "calls.jsonl").read_text().splitlines()]
    assert any(c[2:4] == ["tpu-vm", "create"] and "--accelerator-type" in c for c in calls)
    scp = [c for c in calls if c[3:4] == ["scp"]]
    assert scp and scp[0][4].endswith(".tgz") and "--worker=all" in scp[0]
    for w in (0, 1):
        code = _worker_home(root, w) / "clap_jax"
        assert (code / "clap_jax" / "train" / "train.py").exists() and (code / "launch" / "tpu_vm_worker.sh").exists()
        assert not (code / ".git").exists() and not (code / "runs").exists()
        assert (_worker_home(root, w) / "clap_venv" / "bin" / "python").exists()
    uv = [json.loads(x) for x in (root / "uv_calls.jsonl").read_text().splitlines()]
    assert ["venv", "--python", "3.11", "clap_venv"] in uv
    installs = [c for c in uv if c[:2] == ["pip", "install"]]
    assert len(installs) == 2 and all(c[-1].endswith("clap_jax[tpuvm]") for c in installs)
    assert not any("torch" in a or "msclap" in a or "[test]" in a for c in installs for a in c)
    # the tpuvm extra is jax[tpu] at the jax release installed here (the one the tests run)
    setup_py = open(os.path.join(ROOT, "setup.py")).read()
    assert re.search(r'TPU_VM = \["jax\[tpu\]==' + re.escape(jax.__version__) + r'"\]', setup_py)
    assert re.search(r'GPU = \["jax\[cuda12\]==' + re.escape(jax.__version__) + r'"\]', setup_py)


def test_tpu_launch_trains_like_one_process(pod, pod_run, reference):
    root, env = pod
    wd, losses, meta, _ = pod_run
    reference, _ = reference
    assert meta["end_step"] == STEPS and sorted(losses) == sorted(reference)
    np.testing.assert_allclose([losses[s] for s in sorted(losses)], [reference[s] for s in sorted(losses)],
                               rtol=2e-5)
    log0 = (_worker_home(root, 0) / "clap_logs" / "train.log").read_text()
    log1 = (_worker_home(root, 1) / "clap_logs" / "train.log").read_text()
    assert "processes 2, devices 8 (4 local)" in log0 and f"step {STEPS}/{STEPS}" in log0
    assert "exited with code 0" in log1                       # a log per worker
    status = _sh(["launch/tpu_pod.sh", "status"], env).stdout
    assert "worker 0: exited with code 0" in status and "worker 1: exited with code 0" in status, status
    logs = _sh(["launch/tpu_pod.sh", "logs"], dict(env, LINES="3")).stdout
    assert "===== worker 0" in logs and "===== worker 1" in logs


def _eval_lines(log):
    """{(task, metrics)} of the '[eval] task: metrics (n clips, time ...)' lines every process logs."""
    return [m.groups() for m in re.finditer(r"\[eval\] (\w+): (.*?) \(\d+ clips", log)]


def test_multihost_eval_same_numbers_on_every_host(pod, pod_run):
    """The periodic eval on 2 hosts: embedded on the global mesh (FSDP-sharded params), every host gets the same
    numbers; process 0 writes them."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    root, _ = pod
    wd, _, _, (log0, log1) = pod_run
    e0, e1 = _eval_lines(log0), _eval_lines(log1)
    tasks = {"builtin_tones", "builtin_mix", "builtin_captions"}
    assert len(e0) == 2 * len(tasks) and {t for t, _ in e0} == tasks, log0[-3000:]   # at steps 0 and STEPS
    assert e0 == e1
    assert f"eval step {STEPS} (" in log0 and "eval step" not in log1       # process 0 reports ...
    tags = set()
    for f in os.listdir(wd):
        if f.startswith("events.out.tfevents"):
            tags |= {v.tag for ev in EventFileLoader(str(wd / f)).Load() for v in ev.summary.value}
    assert {"eval/builtin_tones/acc", "eval/builtin_mix/mAP"} <= tags, tags   # ... and writes them


def _gone(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_tpu_stop_preempts_leaves_no_process_and_relaunch_resumes_bit_exact(pod, pod_run):
    """`stop` is a preemption: SIGTERM to every worker's run (as a host shutdown sends it), the trainer saves and
    exits, nothing is left behind (a stale holder of the TPU included); a relaunch resumes bit for bit."""
    root, env = pod
    _, full, _, _ = pod_run
    wd = root / "wd_preempt"
    _launch(pod, wd, root / "a.json", extra=AGREE_EVERY_STEP)
    _wait(lambda: [s for s in _steps(wd) if s >= 4], "a first checkpoint")
    # a crashed run's leftover still holding the "TPU" (a stand-in device file), and libtpu's lock file
    (root / "accel0").write_text("")
    stale = subprocess.Popen([sys.executable, "-c", f"f = open({str(root / 'accel0')!r}); import time; time.sleep(600)"],
                             start_new_session=True)
    (root / "libtpu_lockfile").write_text("")
    pgids = [int((_worker_home(root, w) / "clap_logs" / "train.pid").read_text()) for w in (0, 1)]
    time.sleep(0.3)
    try:
        out = _sh(["launch/tpu_pod.sh", "stop"], env, timeout=150).stdout
        assert "ending processes holding the TPU" in out, out
        assert stale.wait(timeout=10) is not None
        assert all(_gone(p) for p in pgids)
        assert not (root / "libtpu_lockfile").exists()
    finally:
        if stale.poll() is None:
            stale.kill()
        for p in pgids:
            if not _gone(p):
                os.killpg(p, signal.SIGKILL)
    assert _exit_codes(root) == [0, 0]                      # SIGTERM first: the trainer saved and exited
    status = _sh(["launch/tpu_pod.sh", "status"], env).stdout
    assert "worker 0: exited with code 0" in status and "worker 1: exited with code 0" in status, status
    la, ma = _losses(root / "a.json")
    assert ma["stopped"] == "preempted" and _steps(wd)[-1] == ma["end_step"] < STEPS, ma
    assert all(la[s] == full[s] for s in la)
    _launch(pod, wd, root / "b.json")                     # relaunch: resumes from the SIGTERM checkpoint
    assert _wait_exit(root) == [0, 0]
    lb, mb = _losses(root / "b.json")
    assert mb["start_step"] == ma["end_step"] and mb["end_step"] == STEPS
    assert all(lb[s] == full[s] for s in lb), {s: (lb[s], full[s]) for s in lb}   # bit for bit


def test_tpu_multislice_commands(pod):
    root, env = pod
    env = dict(env, TPU_NAME="ms", NUM_SLICES="2", SPOT="1", WORKDIR="gs://b/run")
    _sh(["launch/tpu_pod.sh", "create"], env)                   # executed: the stand-in makes both slices
    calls = [json.loads(x) for x in (root / "calls.jsonl").read_text().splitlines()]
    qr = [c for c in calls if c[2:4] == ["queued-resources", "create"]][-1]
    assert qr[4] == "ms" and "--node-count" in qr and qr[qr.index("--node-count") + 1] == "2" and "--spot" in qr
    assert (root / "nodes" / "ms-0").is_dir() and (root / "nodes" / "ms-1").is_dir()
    # CPU devices have no slices: the launch is printed, one ssh per worker of each slice, with the DCN axis
    out = _sh(["launch/tpu_pod.sh", "launch"], dict(env, DRY_RUN="1", DRY_RUN_WORKERS="2")).stdout
    ssh = [ln for ln in out.splitlines() if " ssh " in ln]
    assert len(ssh) == 4 and sum(" ms-0 " in ln for ln in ssh) == 2 and sum(" ms-1 " in ln for ln in ssh) == 2
    assert all("--config.mesh.dcn_data=2" in ln and "--distributed=force" in ln for ln in ssh)
    _sh(["launch/tpu_pod.sh", "delete"], env)
    assert not (root / "nodes" / "ms-0").exists()


# ------------------------------------------------------------------------------------------- elastic resume

def test_resume_on_other_process_count(pod_run, tmp_path):
    """A run saved by 2 processes x 4 devices continues on 1 process x 8 devices."""
    wd0, full, _, _ = pod_run
    wd = tmp_path / "wd"
    shutil.copytree(wd0, wd)
    env = _env(tmp_path, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    r = subprocess.run([sys.executable, "tests/_train_runner.py", f"--config={CONFIG}",
                        f"--config.total_steps={STEPS + 2}", "--config.data.num_classes=4", f"--workdir={wd}",
                        f"--losses_out={tmp_path / 'l.json'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "without the saved data-iterator state" in log and "sample order differs" in log, log[-3000:]
    assert "processes 1, devices 8 (8 local)" in log and f"resumed from {wd} at step {STEPS}" in log
    losses, meta = _losses(tmp_path / "l.json")
    assert meta["start_step"] == STEPS and meta["end_step"] == STEPS + 2
    assert sorted(losses) == [STEPS + 1, STEPS + 2] and all(np.isfinite(v) for v in losses.values())
    assert STEPS + 2 in _steps(wd)


def test_saved_state_fits_other_worker_count():
    from _train_helpers import load_config
    from clap_jax.train import data as data_lib

    c = load_config("tiny")
    assert data_lib.saved_state_fits(c, {"index": 4, "seed": 0}) == (True, "")
    assert not data_lib.saved_state_fits(c, None)[0]
    c.data.kind, c.data.num_workers = "tfrecord", 2
    ok, why = data_lib.saved_state_fits(c, {"worker_count": 0})
    assert not ok and "0 data workers" in why and "has 2" in why
    c.data.num_workers = -1  # auto: takes the saved count
    assert data_lib.saved_state_fits(c, {"worker_count": 3})[0]
    assert data_lib.derived_seed(0, 8) == data_lib.derived_seed(0, 8) != data_lib.derived_seed(0, 12)


# ------------------------------------------------------------------------------------------------- SLURM

def test_slurm_all_local_devices_and_requeue_resumes_bit_exact(pod_run, tmp_path):
    _, full, _, _ = pod_run
    wd, out = tmp_path / "wd", tmp_path / "l.json"
    env = _env(tmp_path, PLATFORMS="cpu", STANDIN_DEVICES=4, ENTRY="tests/_train_runner.py", CONFIG=CONFIG,
               WORKDIR=wd, EXTRA=f"{EXTRA} --losses_out={out} {AGREE_EVERY_STEP}", LOG_DIR=tmp_path / "logs",
               JAX_COORDINATOR_PORT=_free_port())
    r = subprocess.run(["sbatch", "--nodes=2", "--gpus-per-node=4", f"--output={tmp_path}/job_%j.log",
                        "launch/slurm_gpu.sbatch"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    job = re.match(r"Submitted batch job (\d+)", r.stdout).group(1)
    jobs = tmp_path / "slurm"
    _wait(lambda: [s for s in _steps(wd) if s >= 4], "a first checkpoint")
    os.kill(int((jobs / f"{job}.pid").read_text()), signal.SIGUSR1)   # --signal=B:USR1@300: time limit near
    _wait(lambda: (jobs / f"{job}.rc").exists(), "the job to end", timeout=180)
    joblog = (tmp_path / f"job_{job}.log").read_text()
    assert (jobs / f"{job}.rc").read_text() == "0", joblog
    runs = int((jobs / f"{job}.runs").read_text())
    rank0 = (tmp_path / "logs" / f"clap_{job}_rank0.log").read_text()
    rank1 = (tmp_path / "logs" / f"clap_{job}_rank1.log").read_text()
    assert "processes 2, devices 8 (4 local)" in rank0                 # each task: all 4 devices of its node
    assert "SLURM task 1 of 2 on node1: local devices all visible" in rank1
    lb, mb = _losses(out)   # the last run's
    assert runs == 2 and "time limit near" in joblog and "requeued job" in joblog, joblog   # saved, requeued
    assert "SIGTERM: saving checkpoint" in rank0 and "(restart 1)" in joblog
    assert 4 <= mb["start_step"] < STEPS and f"resumed from {wd} at step {mb['start_step']}" in rank0
    assert mb["end_step"] == STEPS
    assert all(lb[s] == full[s] for s in lb), {s: (lb[s], full[s]) for s in lb}   # bit for bit
    dry = subprocess.run(["bash", "launch/slurm_gpu.sbatch"], cwd=ROOT, env=dict(env, DRY_RUN="1"),
                         capture_output=True, text=True).stdout
    assert dry.startswith("srun ") and "rank%t.log" in dry
    sb = open(os.path.join(ROOT, "launch", "slurm_gpu.sbatch")).read()
    assert "#SBATCH --signal=B:USR1@" in sb and 'JAX_PLATFORMS="${PLATFORMS:-cuda}"' in sb


def test_real_pipeline_elastic_iterator(tmp_path):
    """The Grain pipeline (data.kind='tfrecord') after an elastic resume at step k: a new shuffle seeded from
    (data.seed, k), the same on every rerun, not the order an unresumed run starts with."""
    from _train_helpers import load_config, mesh
    from clap_jax.train import data as data_lib
    from data_fixtures import make_tfrecord_dataset

    make_tfrecord_dataset(str(tmp_path / "data"), n=24, seconds=0.5, sample_rate=8000)
    c = load_config("tiny")
    c.data.kind, c.data.dirs = "tfrecord", (str(tmp_path / "data"),)
    c.model.audio.duration, c.model.audio.sample_rate = 0.5, 8000
    m = mesh((8, 1, 1))

    def first_batch(it):
        try:
            return np.asarray(next(it)["input_ids"])
        finally:
            it.close()

    resumed = first_batch(data_lib.elastic_data_iterator(c, m, 2, "test"))
    again = first_batch(data_lib.elastic_data_iterator(c, m, 2, "test"))
    fresh = first_batch(data_lib.make_data_iterator(c, m))
    np.testing.assert_array_equal(resumed, again)
    assert not np.array_equal(resumed, fresh)
    assert c.data.seed == 0   # the caller's config is left as it was


def test_slurm_task_initialises_on_all_its_gpus(monkeypatch):
    """One task per node: no local_device_ids (every GPU the task sees), not JAX's SLURM default of GPU
    SLURM_LOCALID; several tasks per node that all see every GPU: GPU SLURM_LOCALID."""
    from clap_jax.train import distributed

    called = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda *a, **k: called.append((a, k)))
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS",
              "CUDA_VISIBLE_DEVICES", "JAX_COORDINATOR_PORT"):
        monkeypatch.delenv(k, raising=False)
    slurm = dict(SLURM_JOB_ID="4242", SLURM_NTASKS="2", SLURM_PROCID="1", SLURM_LOCALID="0",
                 SLURM_NTASKS_PER_NODE="1", SLURM_STEP_NODELIST="gpu[07-08]", CUDA_VISIBLE_DEVICES="0,1,2,3")
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    distributed.init_distributed(mode="auto")
    # coordinator: the first node, port 61440 + job id % 4096 (the same on every task)
    assert called[-1] == (("gpu07:61586",), dict(num_processes=2, process_id=1,
                                                 cluster_detection_method="deactivate"))
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_LOCALID", "3")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    distributed.init_distributed(mode="auto")
    assert called[-1] == ((), dict(local_device_ids=[3]))
    # a launcher's explicit settings (no cluster manager)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.2:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    distributed.init_distributed(mode="auto")
    assert called[-1] == (("10.0.0.2:1234",), dict(num_processes=4, process_id=2))
