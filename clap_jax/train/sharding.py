"""Device mesh from config, and parameter / optimizer-state sharding from (regex, tactic) rules.

Mesh: three named axes ('data', 'fsdp', 'tensor'). `config.mesh` gives a size per axis within a slice (ICI) and
`config.mesh.dcn_*` across slices (DCN, multi-slice TPU); one within-slice size may be -1 to take what is left.
The global batch is split over ('data', 'fsdp') (FSDP is data parallelism whose weights are also split).

Params: `config.sharding.rules` is a list of (regex, tactic) pairs matched with `re.search` against the
'/'-joined parameter path; the first match wins, no match means replicate. Tactics (a small registry):
  replicate   every device holds the whole array
  fsdp        split the largest dimension divisible by the 'fsdp' axis size over 'fsdp' (replicated if none,
              or if the array has fewer than `config.sharding.fsdp_min_size` elements)
Large arrays that an 'fsdp' rule cannot split (no dimension divisible by the axis) are refused by
`check_fsdp_coverage` over `config.sharding.max_replicated_mb`, and their bytes are logged.

Tensor parallelism is not offered: the 'tensor' axis exists so checkpoints and meshes keep one shape, but
`config.mesh.tensor` must be 1. CLAP 2023 (about 200M parameters, 2.4 GB of float32 state with Adam) fits one chip,
and FSDP over the batch axes splits its state further with collectives that overlap compute; splitting its
768- and 1024-wide matmuls over chips would only add latency-bound collectives to every layer.
Optimizer states get the sharding of the parameter whose path they end with (Adam's mu/nu mirror params),
so FSDP of params and optimizer together is one config line: `rules = [('.*', 'fsdp')]`.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


# --------------------------------------------------------------------------------------------------- mesh

def mesh_shape(mesh_cfg, num_devices: int, num_slices: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ici_shape, dcn_shape) for AXES; resolves one -1 in the ICI sizes. Raises ValueError naming the field."""
    dcn = tuple(int(mesh_cfg.get(f"dcn_{a}", 1)) for a in AXES)
    if math.prod(dcn) != num_slices:
        raise ValueError(f"config.mesh.dcn_*: product {math.prod(dcn)} != number of slices {num_slices}")
    per_slice = num_devices // num_slices
    ici = [int(mesh_cfg.get(a, 1)) for a in AXES]
    if sum(1 for s in ici if s == -1) > 1:
        raise ValueError("config.mesh: at most one of data/fsdp/tensor may be -1")
    for a, s in zip(AXES, ici):
        if s == 0 or s < -1:
            raise ValueError(f"config.mesh.{a}: must be positive or -1, got {s}")
    known = math.prod(s for s in ici if s != -1)
    if -1 in ici:
        if per_slice % known:
            raise ValueError(f"config.mesh: {per_slice} devices per slice not divisible by fixed axes ({known})")
        ici[ici.index(-1)] = per_slice // known
    if math.prod(ici) != per_slice:
        raise ValueError(f"config.mesh: data*fsdp*tensor = {math.prod(ici)} but there are {per_slice} devices "
                         f"per slice")
    return tuple(ici), dcn


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with Auto axes (not `jax.make_mesh`, whose Explicit axes ignore sharding constraints)."""
    devices = list(devices if devices is not None else jax.devices())
    num_slices = len({getattr(d, "slice_index", 0) for d in devices})
    ici, dcn = mesh_shape(mesh_cfg, len(devices), num_slices)
    if num_slices > 1:
        arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    else:
        try:
            arr = mesh_utils.create_device_mesh(ici, devices)
        except (ValueError, NotImplementedError, AssertionError):  # CPU / odd topologies: plain order
            arr = np.asarray(devices).reshape(ici)
    return Mesh(arr, AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over ('data', 'fsdp'), everything else replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


# --------------------------------------------------------------------------------------------------- rules

def _tactic_replicate(shape, mesh, min_size):
    return P()


def _tactic_fsdp(shape, mesh, min_size):
    n = mesh.shape["fsdp"]
    if n == 1 or math.prod(shape) < min_size:
        return P()
    dims = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in dims:
        if shape[i] % n == 0:
            spec = [None] * len(shape)
            spec[i] = "fsdp"
            return P(*spec)
    return P()


TACTICS: dict[str, Callable] = {"replicate": _tactic_replicate, "fsdp": _tactic_fsdp}


def without_axis(s: NamedSharding, axis: str) -> NamedSharding:
    """The same sharding with `axis` removed from every dimension (what FSDP gathers for compute)."""
    def drop(entry):
        if entry == axis:
            return None
        if isinstance(entry, tuple):
            rest = tuple(a for a in entry if a != axis)
            return rest if len(rest) > 1 else (rest[0] if rest else None)
        return entry
    return NamedSharding(s.mesh, P(*[drop(e) for e in s.spec]))


def path_str(path) -> str:
    """'/'-joined key path of a pytree leaf (dict keys, attribute names, sequence indices)."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        else:
            parts.append(str(k))
    return "/".join(parts)


def validate_rules(rules) -> None:
    for i, rule in enumerate(rules):
        if len(rule) != 2:
            raise ValueError(f"config.sharding.rules[{i}]: want (regex, tactic), got {rule!r}")
        rx, tactic = rule
        if tactic not in TACTICS:
            raise ValueError(f"config.sharding.rules[{i}]: unknown tactic {tactic!r} (known: {sorted(TACTICS)})")
        try:
            re.compile(rx)
        except re.error as e:
            raise ValueError(f"config.sharding.rules[{i}]: bad regex {rx!r}: {e}") from e


def tree_shardings(tree: Any, mesh: Mesh, rules, fsdp_min_size: int = 0) -> Any:
    """NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs) from the rules."""
    validate_rules(rules)
    compiled = [(re.compile(rx), TACTICS[t]) for rx, t in rules]

    def one(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        name = path_str(path)
        for rx, tactic in compiled:
            if rx.search(name):
                return NamedSharding(mesh, tactic(shape, mesh, fsdp_min_size))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(one, tree)


def fsdp_leftovers(tree: Any, mesh: Mesh, rules, fsdp_min_size: int = 0) -> list[tuple[str, tuple, int]]:
    """(path, shape, bytes) of every array an 'fsdp' rule matches that stays whole on each chip although it is
    at least `fsdp_min_size` elements: no dimension is divisible by the 'fsdp' axis size. Largest first."""
    n = mesh.shape["fsdp"]
    if n == 1:
        return []
    compiled = [(re.compile(rx), t) for rx, t in rules]
    out = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        name, shape = path_str(path), tuple(getattr(leaf, "shape", ()))
        tactic = next((t for rx, t in compiled if rx.search(name)), "replicate")
        if tactic != "fsdp" or math.prod(shape) < fsdp_min_size or any(d % n == 0 for d in shape):
            continue
        out.append((name, shape, math.prod(shape) * np.dtype(leaf.dtype).itemsize))
    return sorted(out, key=lambda r: -r[2])


def fsdp_sizes_that_split(shapes: Sequence[tuple], limit: int) -> list[int]:
    """FSDP axis sizes up to `limit` that split at least one dimension of every shape."""
    return [n for n in range(2, limit + 1) if all(any(d % n == 0 for d in s) for s in shapes)]


def check_fsdp_coverage(tree: Any, mesh: Mesh, rules, fsdp_min_size: int, max_replicated_bytes: int) -> int:
    """Refuses (ValueError naming the arrays and the FSDP sizes that would work) a layout where arrays meant for
    FSDP, together over `max_replicated_bytes`, would be held whole by every chip because the 'fsdp' axis divides
    none of their dimensions (msclap's 50257 x 768 token embedding, 154 MB in float32, splits over 256 devices but
    not 512). Returns the bytes left whole, for the log."""
    left = fsdp_leftovers(tree, mesh, rules, fsdp_min_size)
    total = sum(r[2] for r in left)
    if total > max_replicated_bytes:
        n = mesh.shape["fsdp"]
        names = ", ".join(f"{p} {s} ({b / 2**20:.1f} MiB)" for p, s, b in left[:4])
        sizes = fsdp_sizes_that_split([r[1] for r in left], n)
        sizes = [k for k in sizes if k > 1][-6:]
        raise ValueError(
            f"config.mesh.fsdp={n}: {len(left)} parameter arrays ({total / 2**20:.1f} MiB, each chip holding them "
            f"whole with their optimizer state) have no dimension divisible by {n}: {names}. FSDP sizes that split "
            f"them: {sizes or 'none'}; move the rest of the devices to config.mesh.data (batch only), or raise "
            f"config.sharding.max_replicated_mb to accept it")
    return total


def describe(shardings: Any, tree: Any, max_lines: int = 12) -> str:
    """A few lines 'path shape -> spec' for the log, sharded leaves first."""
    rows = []
    for (path, s), leaf in zip(jax.tree_util.tree_leaves_with_path(shardings), jax.tree_util.tree_leaves(tree)):
        rows.append((s.spec != P(), path_str(path), tuple(leaf.shape), s.spec))
    rows.sort(key=lambda r: (not r[0], r[1]))
    n_sharded = sum(r[0] for r in rows)
    out = [f"{n_sharded}/{len(rows)} arrays sharded"]
    out += [f"  {p} {sh} -> {spec}" for _, p, sh, spec in rows[:max_lines]]
    return "\n".join(out)


def mirror_shardings(tree: Any, params: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for a tree whose leaves mirror parameters (optimizer state): a leaf whose path ends with a
    parameter's path and has its shape gets that parameter's sharding; everything else is replicated."""
    by_path = {}
    for (path, leaf), s in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(param_shardings)):
        by_path[path_str(path)] = (tuple(leaf.shape), s)

    def one(path, leaf):
        name, shape = path_str(path), tuple(getattr(leaf, "shape", ()))
        parts = name.split("/")
        for i in range(len(parts)):
            hit = by_path.get("/".join(parts[i:]))
            if hit is not None and hit[0] == shape:
                return hit[1]
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(one, tree)
