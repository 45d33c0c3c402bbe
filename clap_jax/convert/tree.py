"""What every weights format shares: the error type, nested-dict <-> flat-path helpers, one tree checker (missing /
unexpected / wrong shape), the NaN/inf check, and reading a stored model config back into a ConfigDict."""
from __future__ import annotations

import json
from typing import Iterable, Mapping

import ml_collections
import numpy as np

from clap_jax.errors import UserError
from clap_jax.models import config as model_config
from clap_jax.models import registry


class CheckpointError(UserError, ValueError):
    """Weights that cannot be read or converted; the message names the file and the keys."""


def flatten(tree, prefix: tuple = ()) -> Iterable[tuple[tuple, object]]:
    """Nested mappings -> (path tuple, leaf) pairs, in the mappings' order."""
    if isinstance(tree, Mapping) or hasattr(tree, "items"):
        for k, v in tree.items():
            yield from flatten(v, prefix + (k,))
    else:
        yield prefix, tree


def unflatten(flat: Mapping[tuple, object]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        d = out
        for p in path[:-1]:
            d = d.setdefault(p, {})
        d[path[-1]] = v
    return out


def mismatch_error(source: str, missing=(), unexpected=(), wrong_shape=(), what: str = "the model config",
                   shown: int = 20) -> CheckpointError | None:
    """The one report of weights that do not fit a model: None when all three lists are empty."""
    def part(name, items, sep=", "):
        items = list(items)
        return f"{len(items)} {name}: " + sep.join(items[:shown]) + (" ..." if len(items) > shown else "")

    problems = [p for p, items in ((part("missing", missing), missing), (part("unexpected", unexpected), unexpected),
                                   (part("with wrong shape", wrong_shape, "; "), wrong_shape)) if items]
    return CheckpointError(f"{source}: does not match {what}: " + " | ".join(problems)) if problems else None


def check_tree(have, want, source: str, what: str = "the model config") -> None:
    """`have` (arrays) must hold exactly `want`'s paths (arrays or ShapeDtypeStructs) with the same shapes."""
    h = {"/".join(map(str, p)): tuple(np.shape(v)) for p, v in flatten(have)}
    w = {"/".join(map(str, p)): tuple(v.shape) for p, v in flatten(want)}
    err = mismatch_error(source, sorted(w.keys() - h.keys()), sorted(h.keys() - w.keys()),
                         sorted(f"{k}: {h[k]}, expected {w[k]}" for k in w.keys() & h.keys() if h[k] != w[k]), what)
    if err is not None:
        raise err


def check_variables(variables, cfg: ml_collections.ConfigDict, source: str) -> None:
    """Variables must be exactly those of `cfg`'s model (every collection, path and shape)."""
    check_tree(dict(variables), dict(registry.variable_shapes(cfg)), source)


def check_finite(named_arrays, source: str) -> None:
    """Raise CheckpointError naming every floating-point weight that holds NaN or inf."""
    bad = []
    for name, x in named_arrays:
        x = np.asarray(x)
        if x.dtype.kind not in "fc":
            if x.dtype.kind != "V":       # bfloat16 and friends (ml_dtypes) show up as kind 'V'
                continue
            try:
                x = x.astype(np.float32)
            except (TypeError, ValueError):
                continue
        if np.isfinite(x).all():
            continue
        n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        bad.append(f"{name} ({', '.join(f'{n} {w}' for n, w in ((n_nan, 'NaN'), (n_inf, 'inf')) if n)})")
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} weights hold NaN/inf: " + ", ".join(bad[:10])
                              + (" ..." if len(bad) > 10 else "")
                              + "; the file is corrupt or the training that wrote it diverged (use an earlier "
                                "checkpoint)")


def check_finite_tree(variables, source: str) -> None:
    check_finite((("/".join(map(str, p)), v) for p, v in flatten(dict(variables))), source)


def config_to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), indent=1, default=list)


def config_from_dict(d: dict, source: str = "config") -> ml_collections.ConfigDict:
    """A stored model config (JSON dict) -> validated ConfigDict. Fields it lacks take the family's defaults (a file
    written before a field existed); fields the family does not know are errors naming `source`."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: a model config should be a mapping, got {type(d).__name__}")
    try:
        cfg = registry.default_config(d.get("family", model_config.clap_2023().family))
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e

    def merge(dst, src, where):
        if not isinstance(src, dict):
            raise CheckpointError(f"{source}: model config {where} should be a mapping, got {type(src).__name__}")
        for k, v in src.items():
            if k not in dst:
                raise CheckpointError(f"{source}: unknown model config field {where}.{k}")
            if isinstance(dst[k], ml_collections.ConfigDict):
                merge(dst[k], v, f"{where}.{k}")
            else:
                dst[k] = tuple(v) if isinstance(v, list) else v

    merge(cfg, d, "config")
    try:
        model_config.validate(cfg)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e
    return cfg
