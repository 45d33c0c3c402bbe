"""`python -m clap_jax.train.compile`: the trainer's step compiled ahead of time for a TPU slice that is not attached
(libtpu's deviceless compiler), and the report built from it: memory per chip against HBM, compiled FLOPs against
train/flops.py, collectives, roofline. One CLI run (configs/tiny.py with FSDP, in a subprocess) is compiled once per
test session; the tests read its report."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest

from clap_jax import errors
from clap_jax.train import compile as compile_lib

from _train_helpers import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGY = "v5e:2x2"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "fsdp.json"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu",
               ALLOW_MULTIPLE_LIBTPU_LOAD="1")  # this process loads libtpu too
    cmd = [sys.executable, "-m", "clap_jax.train.compile", "--config", "configs/tiny.py:fsdp,batch_size=32,wide",
           "--topology", TOPOLOGY, "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return {"fsdp": json.load(f), "stdout": proc.stdout}


def test_cli_prints_the_report_and_writes_json(report):
    text, r = report["stdout"], report["fsdp"]
    for part in ("memory per chip:", "temporaries", "FLOPs compiled", "all-gather", "roofline (ICI ignored)",
                 "h per epoch", "compile wall time"):
        assert part in text, part
    assert r["chips"] == 4 and r["device_kind"] == "TPU v5 lite" and r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert r["compile_s"] > 0


def test_compiled_flops_follow_the_analytic_count(report):
    """The analytic count is the matmuls' (as MFU counts are); XLA also counts vector work (GELU's erf, softmax,
    norms, the optimizer). At the `wide` test widths (head width 64) that is under a tenth of the step, as at full
    size; at the default tiny widths (8 and 32 channels) it is about a fifth."""
    fl = report["fsdp"]["flops"]
    assert 1.0 < fl["compiled"] / fl["analytic"] < 1.10, fl


def test_memory_fields_are_positive_and_sum_to_the_total(report):
    mem = report["fsdp"]["memory_bytes"]
    parts = [mem[k] for k in ("arguments", "outputs", "temporaries", "generated_code")]
    assert all(p >= 0 for p in parts) and mem["arguments"] > 0 and mem["temporaries"] > 0
    assert sum(parts) == mem["total"] < mem["hbm"] == 16 * 2 ** 30
    # the donated state is updated in place: only the metrics are output buffers of their own
    assert mem["outputs"] < mem["arguments"] / 10


def test_fsdp_shards_the_state_gathers_the_weights_and_reduce_scatters_the_gradients(report):
    r = report["fsdp"]
    state_bytes = 3 * 4 * r["params"]       # float32 params and two Adam moments, if replicated
    st = r["state_bytes"]
    assert st["unsharded"] >= state_bytes and st["fsdp_params_left_whole"] < 4 * r["params"] / 100
    # split four ways: 25 %, plus what stays whole on every chip: at this size mostly the front end's constant STFT
    # and mel kernels (4 MB, as large as a third of the tiny model's state); unsharded it would be 100 %
    assert st["per_chip_fraction"] < 0.45
    assert r["memory_bytes"]["arguments"] < 0.75 * state_bytes   # (58 %: with the batch's share and the constants)
    col = r["collectives"]
    assert col["all-gather"]["count"] > 0 and col["all-gather"]["bytes"] >= state_bytes / 3 / 4
    # gradients go back to their shards, a large share by reduce-scatter (the compiler all-reduces and slices some
    # of them: at these widths about half the bytes; replicated data parallelism would all-reduce every one)
    grad_bytes = 4 * r["params"]
    assert col["reduce-scatter"]["count"] > 0 and col["reduce-scatter"]["bytes"] > grad_bytes / 3
    assert col["all-reduce"]["bytes"] < 0.6 * grad_bytes


def test_roofline_is_consistent(report):
    r = report["fsdp"]
    roof, chip = r["roofline"], r["chip"]
    assert roof["step_s"] == max(roof["compute_s"], roof["hbm_s"]) > 0
    assert roof["hbm_s"] == pytest.approx(r["bytes_accessed"] / chip["hbm_bw"])
    assert roof["compute_s"] >= r["flops"]["compiled"] / chip["peak_bf16"]
    assert roof["pairs_per_s"] == pytest.approx(r["batch_size"] / roof["step_s"])
    assert roof["hours_per_epoch"] == pytest.approx(4.6e6 / roof["pairs_per_s"] / 3600)
    assert r["hosts"] == 1 and roof["pairs_per_s_per_host"] == pytest.approx(roof["pairs_per_s"])
    assert roof["ici_s"] > 0
    assert roof["ici_s"] == pytest.approx(compile_lib.ici_seconds(r["collectives"], 4, compile_lib.CHIPS["v5e"]))
    assert 0 < roof["mfu"] <= 1
    assert jax.devices()[0].platform == "cpu"  # libtpu loaded for the compile; jax still runs on the CPU


def test_step_that_cannot_fit_exits_non_zero_with_one_line(capsys):
    argv = ["compile", "--config", os.path.join(ROOT, "configs/clap_2023.py:random,batch_size=262144"),
            "--topology", TOPOLOGY]
    with pytest.raises(SystemExit) as e:
        compile_lib.run(argv)
    assert e.value.code == errors.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: does not fit:") and "v5e" in err[0] and "GiB" in err[0]


def test_compiled_total_over_hbm_is_reported(report):
    r = report["fsdp"]
    chip = compile_lib.CHIPS["v5e"]
    with pytest.raises(compile_lib.DoesNotFit, match="does not fit: .* GiB per chip"):
        compile_lib._check_fits("the compiled step's buffers", r["memory_bytes"]["total"], chip,
                                r["memory_bytes"]["total"] - 1, TOPOLOGY)


def test_collectives_counted_once_per_op_with_operand_bytes():
    hlo = "\n".join([
        "  %p0 = f32[1024]{0} parameter(0)",
        "  %p1 = bf16[8,128]{1,0:T(8,128)(2,1)} parameter(1)",
        "  %ar = f32[1024]{0} all-reduce(%p0), channel_id=1, to_apply=%add",
        "  %ags = (bf16[8,128]{1,0}, bf16[32,128]{1,0}) all-gather-start(%p1), channel_id=2, dimensions={0}",
        "  %agd = bf16[32,128]{1,0} all-gather-done(%ags)",
        "  %rs = f32[256]{0} reduce-scatter(%p0), channel_id=3, dimensions={0}, to_apply=%add",
        # the TPU compiler's form of gradient reduce-scatters: one fusion whose body is the collective
        "  ROOT %fusion.9 = (f32[256]{0}, f32[2,8]{1,0}) fusion(%p0, %p1), kind=kCustom, "
        "calls=%all-reduce-scatter.13, metadata={op_name=\"x\"}",
        "  %fusion.10 = f32[1024]{0} fusion(%p0), kind=kLoop, calls=%fused_computation.3",
    ])
    got = compile_lib.count_collectives(hlo)
    assert got["all-reduce"] == {"count": 1, "bytes": 4096}
    assert got["all-gather"] == {"count": 1, "bytes": 2048}
    assert got["reduce-scatter"] == {"count": 2, "bytes": 4096 + 4096 + 2048}
    assert got["all-to-all"] == {"count": 0, "bytes": 0}


def test_topologies_of_each_generation_and_bad_names():
    for name, n, kind in [("v4:2x2x1", 4, "TPU v4"), ("v5e:4x4", 16, "TPU v5 lite"), ("v5p:2x2x2", 8, "TPU v5"),
                          ("v6e:2x2", 4, "TPU v6 lite")]:
        _, devices = compile_lib.topology_devices(name)
        assert len(devices) == n and devices[0].device_kind == kind, name
    _, two = compile_lib.topology_devices("v5e:2x2", num_slices=2)
    assert len(two) == 8 and {d.slice_index for d in two} == {0, 1}
    for bad in ("v5e", "v7:2x2", "v5e-16", "v5p:4x4x4x4"):
        with pytest.raises(errors.UserError, match="--topology"):
            compile_lib.parse_topology(bad)


def test_compile_only_validation_needs_no_data():
    from clap_jax.train import config as config_lib
    with pytest.raises(errors.ConfigError, match="config.data.dirs"):
        config_lib.validate_config(load_config("clap_2023"), num_devices=16)
    config_lib.validate_config(load_config("clap_2023", "fsdp"), num_devices=16, data=False)
