"""Small pieces: analytic FLOPs, random batch iterator state, launch scripts' dry-run mode, distributed detection."""
import os
import subprocess

import numpy as np
import pytest

from clap_jax.models import config as model_config
from clap_jax.train import distributed, flops
from clap_jax.train.random_batches import RandomBatches

from _train_helpers import ROOT


def test_gpt2_flops_match_parameter_count_rule():
    t = model_config.clap_2023().text
    non_embedding_params = 12 * t.n_layer * t.n_embd ** 2
    approx = 2 * non_embedding_params * t.max_length          # 2 FLOPs per weight per token
    got = flops.gpt2_forward_flops(t, t.max_length)
    assert approx < got < 1.05 * approx                        # + attention scores, small at 77 tokens


def test_full_size_train_flops_and_peak_table():
    f = flops.clap_train_flops_per_example(model_config.clap_2023(), 308700)
    assert 5e10 < f < 2e11
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops("TPU v5 lite") == 197e12
    assert flops.peak_flops("cpu") is None and flops.peak_flops("cpu", 1e12) == 1e12


def test_random_batches_state_roundtrip_and_determinism():
    it = RandomBatches(batch_size=4, num_samples=100, num_classes=3, seed=5)
    next(it), next(it)
    state = it.get_state()
    b3 = next(it)
    it2 = RandomBatches(batch_size=4, num_samples=100, num_classes=3, seed=5)
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["audio"], b3["audio"])
    assert b3["input_ids"].dtype == np.int32 and b3["attention_mask"].sum() > 0
    with pytest.raises(ValueError, match="seed"):
        RandomBatches(batch_size=4, num_samples=100, seed=6).set_state(state)


@pytest.mark.parametrize("script,env,expect", [
    ("local_multiprocess.sh", {"NUM_PROCESSES": "3"}, ["--process_id=2", "--num_processes=3",
                                                       "xla_force_host_platform_device_count=4"]),
    ("tpu_pod.sh", {"TPU_NAME": "pod", "ZONE": "z", "WORKDIR": "gs://b/r", "DRY_RUN_WORKERS": "2"},
     ["--worker=1", "gs://b/r", "--distributed=force"]),
    ("slurm_gpu.sbatch", {"WORKDIR": "/w"}, ["srun", "--distributed=auto", "/w"]),
    ("multi_gpu_host.sh", {"WORKDIR": "/w"}, ["JAX_PLATFORMS=cuda", "--distributed=none", "/w"]),
])
def test_launch_scripts_dry_run(script, env, expect):
    args = {"tpu_pod.sh": ["launch"], "multi_gpu_host.sh": ["run"]}.get(script, ["--config", "configs/tiny.py"])
    out = subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args],
                         env=dict(os.environ, DRY_RUN="1", **env), capture_output=True, text=True, check=True).stdout
    for e in expect:
        assert e in out, (e, out)


def test_tpu_script_requires_its_variables():
    r = subprocess.run(["bash", os.path.join(ROOT, "launch", "tpu_pod.sh")], env=dict(os.environ, DRY_RUN="1"),
                       capture_output=True, text=True)
    assert r.returncode != 0 and "TPU_NAME" in r.stderr


def test_distributed_auto_is_a_no_op_on_a_single_host(monkeypatch):
    for k in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "SLURM_JOB_ID", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    called = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda *a, **k: called.append((a, k)))
    distributed.init_distributed(mode="auto")
    assert called == []
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    distributed.init_distributed(mode="auto")
    assert called == [((), {})]
    distributed.init_distributed("h:1", 2, 1)
    assert called[-1] == (("h:1",), {"num_processes": 2, "process_id": 1})


def test_cli_rejects_invalid_config_naming_the_field():
    r = subprocess.run([os.sys.executable, "-m", "clap_jax.train", f"--config={ROOT}/configs/tiny.py",
                        "--config.batch_size=12", "--config.model.audio.duration=0.1"],
                       env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
                                XLA_FLAGS="--xla_force_host_platform_device_count=8"),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "config.batch_size" in r.stderr, r.stderr[-2000:]
