"""`python -m clap_jax.train.compile --config CFG[:args] --topology v5p:4x4x4 [--num_slices N] [--json out.json]`

Proves a recipe on a TPU slice before renting it: compiles the trainer's own update step (the functions
`python -m clap_jax.train` runs: config checks, mesh, abstract state, step, lowering) ahead of time for a TPU
topology that is not attached (libtpu's deviceless compiler, `jax.experimental.topologies`), and reports per chip:

  memory       arguments / outputs (not aliased to donated arguments) / temporaries / generated code, their sum,
               against the chip's HBM; exits 2 with one line when the step does not fit
  FLOPs        the compiled module's count (XLA cost analysis) next to the analytic count of train/flops.py
  bytes        HBM bytes accessed per step (XLA cost analysis)
  collectives  each kind (all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute) with its count
               in the compiled module and its operand bytes (ops inside loops counted once)
  roofline     step time = max(compute, HBM traffic): compute = compiled FLOPs at the bf16 peak, with the float32
               Precision.HIGHEST matmuls of the front end counted at 6 bf16 passes; HBM = bytes accessed / HBM
               bandwidth. ICI / DCN time is left out of it (XLA overlaps collectives with compute), so this is a
               lower bound on the step time, and MFU (analytic FLOPs / (step time x peak)) an upper bound; an ICI
               estimate (every collective's bytes over a ring of the slice's chips, none overlapped) is printed
               beside it as the pessimistic side
  throughput   pairs/s, hours per epoch (4.6M pairs, `--epoch_pairs`), and the compile's wall time

Topologies: `GEN:AxB[xC]` with GEN in v4, v5e, v5p, v6e (`v5p:4x4x4` is 64 chips: Google sells it as v5p-128,
counting TensorCores; v4 and v5p run one device per chip in megacore mode). `--num_slices N` compiles for N such
slices joined over DCN (the config's mesh.dcn_* must multiply to N; left at 1 they become dcn_data = N).

GPU: jax 0.10 has no deviceless GPU compile here (`topologies.get_topology_desc(platform="cuda")` raises
NotImplementedError without the CUDA plugin and a GPU), so only TPU topologies are supported.

Compiling needs libtpu (`pip install "jax[tpu]"`) but no TPU: it runs on a CPU host (JAX_PLATFORMS=cpu is the
default here). A full-size step takes tens of minutes and several GB of host memory to compile;
JAX's persistent compilation cache does not help here: jax 0.10 writes the entry but cannot read it back without
a TPU client ("PjRtCompiler must be constructed with a Client"), so every deviceless compile runs in full.
"""
from __future__ import annotations

import os

if __name__ == "__main__":  # before jax is imported: the compile is host-only, and libtpu must not probe for TPUs
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dataclasses
import json
import math
import re
import time
from typing import Any

import jax
from absl import flags

from clap_jax import errors
from clap_jax.models import config as model_config
from clap_jax.models import registry
from clap_jax.train import config as config_lib
from clap_jax.train import flops as flops_lib
from clap_jax.train import sharding as shd
from clap_jax.train import state as state_lib
from clap_jax.train import step as step_lib
from clap_jax.train import __main__ as train_cli  # the trainer's --config / --debug flags and one-line errors

GiB = 2 ** 30
EPOCH_PAIRS = 4_600_000  # the CLAP 2023 training set


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation: how libtpu names it, and Google's published per-chip figures."""
    name: str
    libtpu_name: str        # topology prefix libtpu understands
    chip_config: str        # 'megacore': one device per chip (both TensorCores); 'default': one core per chip
    peak_bf16: float        # dense bf16 FLOP/s
    hbm_bytes: int
    hbm_bw: float           # bytes/s
    accelerator: str        # TPU_ACCELERATOR_TYPE prefix; v4 / v5p count TensorCores (2 per chip)
    cores_per_chip: int
    ici_bw: float           # bytes/s of inter-chip interconnect per chip (all links, one direction)


# cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e}: peak bf16 per chip, HBM capacity, HBM bandwidth, and the ICI
# bandwidth per chip (v4 2400, v5e 1600, v5p 4800, v6e 3584 Gbit/s).
CHIPS = {
    "v4": Chip("v4", "v4", "megacore", 275e12, 32 * GiB, 1.2e12, "v4", 2, 2400e9 / 8),
    "v5e": Chip("v5e", "v5e", "default", 197e12, 16 * GiB, 8.19e11, "v5litepod", 1, 1600e9 / 8),
    "v5p": Chip("v5p", "v5", "megacore", 459e12, 95 * GiB, 2.765e12, "v5p", 2, 4800e9 / 8),
    "v6e": Chip("v6e", "v6e", "default", 918e12, 32 * GiB, 1.64e12, "v6e", 1, 3584e9 / 8),
}
# bytes each chip sends per operand byte in a ring over g chips
_WIRE = {"all-gather": lambda g: g - 1, "reduce-scatter": lambda g: (g - 1) / g,
         "all-reduce": lambda g: 2 * (g - 1) / g, "all-to-all": lambda g: (g - 1) / g,
         "collective-permute": lambda g: 1.0}


def ici_seconds(collectives: dict, group: int, chip: Chip) -> float:
    """A rough ICI time per step: every collective's operand bytes over a ring of `group` chips (the slice), at
    the chip's ICI bandwidth, none overlapped with compute. Torus links and overlap make real steps faster;
    collectives over a sub-axis make them cheaper still."""
    if group <= 1:
        return 0.0
    return sum(v["bytes"] * _WIRE[k](group) for k, v in collectives.items()) / chip.ici_bw
HIGHEST_PASSES = 6  # bf16 MXU passes per float32 matmul at Precision.HIGHEST on TPU
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


class DoesNotFit(errors.UserError):
    """The step needs more HBM per chip than the chip has."""


# --------------------------------------------------------------------------------------------------- topology

def parse_topology(name: str) -> tuple[Chip, tuple[int, ...]]:
    """'v5p:4x4x4' -> (chip, (4, 4, 4)). Raises UserError naming the accepted forms."""
    m = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+){1,2})", name.strip().lower())
    if not m or m.group(1) not in CHIPS:
        raise errors.UserError(f"--topology {name!r}: expected GEN:AxB or GEN:AxBxC with GEN one of "
                               f"{', '.join(CHIPS)} (e.g. v5e:4x4, v5p:4x4x4)")
    return CHIPS[m.group(1)], tuple(int(x) for x in m.group(2).split("x"))


def topology_devices(name: str, num_slices: int = 1) -> tuple[Chip, list]:
    """Abstract TPU devices of `num_slices` slices of topology `name` (no TPU needed: libtpu describes them)."""
    chip, dims = parse_topology(name)
    if num_slices < 1:
        raise errors.UserError(f"--num_slices: must be >= 1, got {num_slices}")
    chips = math.prod(dims)
    # libtpu reads these at load; on a host without TPUs it would otherwise probe a metadata server and warn
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{chip.accelerator}-{chips * chip.cores_per_chip}")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # another process (a test, a compile) may hold it
    from jax.experimental import topologies
    host_bounds = tuple(min(b, d) for b, d in zip((2, 2, 1), dims + (1,) * (3 - len(dims))))
    topo_name = f"{chip.libtpu_name}:{'x'.join(map(str, dims))}"
    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name=topo_name, chip_config_name=chip.chip_config,
                                            chips_per_host_bounds=host_bounds, num_slices=num_slices)
    except Exception as e:  # noqa: BLE001 - libtpu missing, or a shape it does not know
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise errors.UserError(f"--topology {name}: libtpu cannot describe it ({first}); is jax[tpu] installed?") \
            from e
    return chip, list(topo.devices)


# --------------------------------------------------------------------------------------------------- HLO

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2,
                "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = (.*?) ([a-z][a-z0-9\-]*)\((.*)$")


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string ('f32[8,128]{1,0}' or a tuple of them); token / opaque shapes are 0."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype in _DTYPE_BYTES:
            total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return int(total)


_CALLS = re.compile(r"calls=%([a-z\-]+)")
_FUSED_COLLECTIVES = {"all-reduce-scatter": "reduce-scatter", "reduce-scatter": "reduce-scatter",
                      "all-gather": "all-gather", "all-reduce": "all-reduce"}


def count_collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """{kind: {count, bytes}} over the compiled module's text: one per collective op (an async `-start` counts,
    its `-done` does not; a fusion whose body is a collective, as the TPU compiler makes of reduce-scatters, counts as
that collective), bytes = its operands' sizes. Ops inside a loop body are counted once."""
    shapes, out = {}, {k: {"count": 0, "bytes": 0} for k in COLLECTIVES}
    defs = []
    for line in hlo_text.splitlines():
        m = _DEF.match(line)
        if m:
            shapes[m.group(1)] = m.group(2)
            defs.append(m)
    for m in defs:
        op = m.group(3)
        kind = op[:-len("-start")] if op.endswith("-start") else op
        if op == "fusion":  # the TPU compiler fuses gradient reduce-scatters into one `%all-reduce-scatter` body
            called = _CALLS.search(m.group(4))
            kind = _FUSED_COLLECTIVES.get(called.group(1)) if called else None
        if kind not in out:
            continue
        args = m.group(4).split(")", 1)[0]
        operands = re.findall(r"%([\w.\-]+)", args)
        nbytes = sum(shape_bytes(shapes.get(o, "")) for o in operands) if operands else shape_bytes(m.group(2))
        out[kind]["count"] += 1
        out[kind]["bytes"] += nbytes
    return out


# --------------------------------------------------------------------------------------------------- report

def _per_chip_bytes(abstract_tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard of each)."""
    total = 0
    for leaf in jax.tree.leaves(abstract_tree):
        shard = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        total += math.prod(shard) * leaf.dtype.itemsize
    return total


def _check_fits(what: str, need: int, chip: Chip, hbm: int, topology: str) -> None:
    if need > hbm:
        raise DoesNotFit(f"does not fit: {what} need {need / GiB:.2f} GiB per chip, a {chip.name} chip has "
                         f"{hbm / GiB:.2f} GiB of HBM ({topology}); shard more (configs/*.py:fsdp), cut the batch, "
                         f"or use optim.grad_accum_steps / model.remat")


def compile_report(config, topology: str, num_slices: int = 1, *, epoch_pairs: int = EPOCH_PAIRS,
                   hbm_bytes: int | None = None, hlo_out: str | None = None) -> dict:
    """Compile `config`'s train step for `num_slices` slices of `topology` and return the report (see module
    docstring). Raises ConfigError for an invalid config and DoesNotFit when the step needs more HBM per chip."""
    chip, devices = topology_devices(topology, num_slices)
    hbm = int(hbm_bytes) if hbm_bytes else chip.hbm_bytes
    if num_slices > 1 and math.prod(config.mesh.get(f"dcn_{a}", 1) for a in shd.AXES) == 1:
        config.mesh.dcn_data = num_slices  # slices over DCN exchange gradients only: data parallel across them
    config_lib.validate_config(config, num_devices=len(devices), data=False)  # no data is read
    n = len(devices)
    mesh = shd.make_mesh(config.mesh, devices=devices)
    model = state_lib.make_model(config)
    tx, schedule, _, abstract_state, state_sh = state_lib.abstract_setup(model, config, mesh)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_state["params"]))
    state_bytes = _per_chip_bytes(abstract_state)
    state_whole = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))
    left_whole = sum(r[2] for r in shd.fsdp_leftovers(abstract_state["params"], mesh, config.sharding.rules,
                                                      config.sharding.fsdp_min_size))
    samples = model_config.clip_samples(config.model)
    batch_bytes = sum(math.prod(s.shape) * s.dtype.itemsize for s in
                      registry.family_of(config.model).example_inputs(config.model, config.batch_size))
    batch_bytes_chip = batch_bytes // (mesh.shape["data"] * mesh.shape["fsdp"])
    # the arguments alone decide some cases before a compile of many minutes
    _check_fits("the train state and batch alone", state_bytes + batch_bytes_chip, chip, hbm, topology)

    train_step = step_lib.make_train_step(model, tx, config, mesh, schedule, state_sh["params"])
    t0 = time.time()
    try:
        compiled, _ = step_lib.compile_train_step(train_step, abstract_state, state_sh, mesh, config)
    except Exception as e:  # noqa: BLE001 - the TPU compiler reports running out of HBM as an error
        text = str(e)
        if "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text:
            first = next((ln.strip() for ln in text.splitlines() if "memory" in ln.lower()), text.splitlines()[0])
            raise DoesNotFit(f"does not fit on {topology}: the compiler ran out of HBM ({first[:300]})") from e
        raise
    compile_s = time.time() - t0
    hlo_text = compiled.as_text()
    if hlo_out:
        with open(hlo_out, "w") as f:
            f.write(hlo_text)

    mem = compiled.memory_analysis()
    memory = {
        "arguments": int(mem.argument_size_in_bytes),
        "outputs": int(mem.output_size_in_bytes - mem.alias_size_in_bytes),  # donated state is updated in place
        "temporaries": int(mem.temp_size_in_bytes),
        "generated_code": int(mem.generated_code_size_in_bytes),
    }
    memory["total"] = sum(memory.values())
    memory["hbm"] = hbm
    peak = getattr(mem, "peak_memory_in_bytes", None)
    if peak:
        memory["peak_heap"] = int(peak)  # the buffer assigner's live peak (<= total: buffers are reused)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    per_chip_examples = config.batch_size / n
    analytic = flops_lib.clap_train_flops_per_example(config.model, samples) * per_chip_examples
    highest = flops_lib.highest_precision_flops_per_example(config.model, samples) * per_chip_examples
    xla_flops = float(cost.get("flops", 0.0))
    bytes_accessed = float(cost.get("bytes accessed", 0.0))

    compute_s = (xla_flops + (HIGHEST_PASSES - 1) * highest) / chip.peak_bf16
    hbm_s = bytes_accessed / chip.hbm_bw
    step_s = max(compute_s, hbm_s)
    collectives = count_collectives(hlo_text)
    ici_s = ici_seconds(collectives, n // num_slices, chip)
    pairs_s = config.batch_size / step_s if step_s > 0 else float("inf")
    report = {
        "topology": topology, "num_slices": num_slices, "chips": n, "chip": dataclasses.asdict(chip),
        "device_kind": devices[0].device_kind, "mesh": dict(mesh.shape), "batch_size": config.batch_size,
        "hosts": len({d.process_index for d in devices}),
        "params": int(n_params), "compile_s": compile_s,
        "memory_bytes": memory,
        "state_bytes": {"per_chip": state_bytes, "unsharded": state_whole, "per_chip_fraction": state_bytes /
                        state_whole, "fsdp_params_left_whole": left_whole},
        "flops": {"compiled": xla_flops, "analytic": analytic, "compiled_over_analytic":
                  xla_flops / analytic if analytic else float("nan"), "highest_precision_analytic": highest},
        "bytes_accessed": bytes_accessed,
        "transcendentals": float(cost.get("transcendentals", 0.0)),
        "collectives": collectives,
        "roofline": {"compute_s": compute_s, "hbm_s": hbm_s, "step_s": step_s, "ici_s": ici_s,
                     "bound": "compute" if compute_s >= hbm_s else "HBM bandwidth", "ici": "ignored",
                     "mfu": analytic / (step_s * chip.peak_bf16) if step_s > 0 else float("nan"),
                     "pairs_per_s": pairs_s, "epoch_pairs": epoch_pairs,
                     "pairs_per_s_per_host": pairs_s / len({d.process_index for d in devices}),
                     "hours_per_epoch": epoch_pairs / pairs_s / 3600},
    }
    _check_fits("the compiled step's buffers", memory["total"], chip, hbm, topology)
    return report


def format_report(r: dict) -> str:
    mem, fl, roof = r["memory_bytes"], r["flops"], r["roofline"]
    g = lambda b: f"{b / GiB:8.3f} GiB"  # noqa: E731
    lines = [f"{r['topology']} x {r['num_slices']} slice(s): {r['chips']} chips ({r['device_kind']}), mesh "
             f"{r['mesh']}, global batch {r['batch_size']}, {r['params'] / 1e6:.1f}M params",
             f"compile wall time {r['compile_s']:.1f} s",
             "memory per chip:"]
    for k in ("arguments", "outputs", "temporaries", "generated_code", "total"):
        lines.append(f"  {k:<15}{g(mem[k])}")
    lines.append(f"  {'HBM':<15}{g(mem['hbm'])}   ({100 * mem['total'] / mem['hbm']:.1f}% used"
                 + (f"; live peak {mem['peak_heap'] / GiB:.3f} GiB)" if "peak_heap" in mem else ")"))
    st = r["state_bytes"]
    lines.append(f"  train state {g(st['per_chip'])} per chip = {100 * st['per_chip_fraction']:.1f}% of "
                 f"{st['unsharded'] / GiB:.3f} GiB"
                 + (f"; FSDP left {st['fsdp_params_left_whole'] / 2**20:.1f} MiB of params whole"
                    if st["fsdp_params_left_whole"] else ""))
    lines += ["per chip per step:",
              f"  FLOPs compiled {fl['compiled']:.4g}   analytic {fl['analytic']:.4g}   "
              f"(compiled / analytic {fl['compiled_over_analytic']:.3f})",
              f"  HBM bytes accessed {r['bytes_accessed']:.4g}",
              "collectives (count, operand bytes per chip):"]
    for k, v in r["collectives"].items():
        lines.append(f"  {k:<19}{v['count']:6d}  {v['bytes'] / 2**20:10.2f} MiB")
    lines += [f"roofline (ICI {roof['ici']}): compute {1e3 * roof['compute_s']:.1f} ms, HBM "
              f"{1e3 * roof['hbm_s']:.1f} ms -> step {1e3 * roof['step_s']:.1f} ms ({roof['bound']} bound), "
              f"MFU {100 * roof['mfu']:.1f}%",
              f"  ICI estimate {1e3 * roof['ici_s']:.1f} ms per step if none of it overlapped compute (ring over "
              f"the slice's chips at {r['chip']['ici_bw'] * 8 / 1e9:.0f} Gbit/s)",
              f"  {roof['pairs_per_s']:.0f} pairs/s ({roof['pairs_per_s_per_host']:.0f} per host, {r['hosts']} "
              f"hosts: what each host's input pipeline must feed), {roof['hours_per_epoch']:.2f} h per epoch of "
              f"{roof['epoch_pairs'] / 1e6:.1f}M pairs"]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- CLI

_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice, GEN:AxB[xC] with GEN in v4, v5e, v5p, v6e")
_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices joined over DCN")
_JSON = flags.DEFINE_string("json", None, "Write the report to this JSON file")
_EPOCH = flags.DEFINE_integer("epoch_pairs", EPOCH_PAIRS, "Pairs per epoch, for hours per epoch")
_HBM = flags.DEFINE_float("hbm_gib", None, "HBM per chip in GiB (default: the chip's)")
_HLO = flags.DEFINE_string("hlo_out", None, "Write the compiled module's HLO text to this file")


def main(argv) -> int:
    del argv
    if not _TOPOLOGY.value:
        raise errors.UserError("--topology is required, e.g. --topology v5e:4x4")
    config = train_cli._load_config()
    report = compile_report(config, _TOPOLOGY.value, _SLICES.value, epoch_pairs=_EPOCH.value,
                            hbm_bytes=int(_HBM.value * GiB) if _HBM.value else None, hlo_out=_HLO.value)
    print(format_report(report))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def run(argv=None) -> None:
    """The entry point: the trainer's flag handling (`--config`, `--debug`, one-line errors, exit code 2)."""
    train_cli.run(main, argv, usage="--config configs/clap_2023.py:random,fsdp,bf16 --topology v5e:4x4")


if __name__ == "__main__":
    run()
