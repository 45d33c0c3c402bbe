"""Where weights come from and go to: one loader for every format the project reads.

Formats:
  * clap_jax checkpoint: a directory with `config.json` (the model config) and `model.safetensors` (variables,
    keys like 'params/audio_encoder/base/patch_embed/proj/kernel'). Written by `save_checkpoint` and by export.
  * msclap checkpoint: `.pth` ({'model': state_dict}) or `.safetensors` with msclap's keys (`CLAP_weights_2023.pth`).
  * a training work directory (`python -m clap_jax.train --workdir DIR`): `DIR/model_config.json` and the orbax
    checkpoints in `DIR/checkpoints/`; the newest step's params, batch_stats and constants are read.

Every loader refuses weights holding NaN/inf, naming them. `save_checkpoint` never deletes a file it did not
write: it replaces its own previous output, fills a new or empty directory, and writes into any other directory
only with `overwrite=True` (leaving the other files there alone).
"""
from __future__ import annotations

import json
import os
import tempfile

import ml_collections
import numpy as np

from clap_jax.convert.msclap import (CheckpointError, _flatten, _unflatten, check_finite, config_from_dict,
                                     load_msclap_checkpoint)
from clap_jax.models import config as model_config

CONFIG_FILE = "config.json"
VARIABLES_FILE = "model.safetensors"
WORKDIR_CONFIG_FILE = "model_config.json"


def write_model_config(path: str, config: ml_collections.ConfigDict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(config.to_dict(), f, indent=1, default=list)
    os.replace(tmp, path)


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def is_clap_jax_checkpoint(directory: str) -> bool:
    """A directory holding only what `save_checkpoint` writes, its variables tagged as ours (a HF model directory
    has the same two file names, so the names alone do not tell)."""
    from safetensors import safe_open

    names = set(os.listdir(directory))
    if VARIABLES_FILE not in names or not names <= {CONFIG_FILE, VARIABLES_FILE}:
        return False
    try:
        with safe_open(os.path.join(directory, VARIABLES_FILE), "np") as f:
            return (f.metadata() or {}).get("format") == "clap_jax"
    except Exception:  # noqa: BLE001 - unreadable is not recognisably ours
        return False


def _write_checkpoint_files(directory: str, flat: dict, config) -> None:
    """Variables, then config, each to a temp file renamed over its final name; nothing else is touched."""
    from safetensors.numpy import save_file

    final = os.path.join(directory, VARIABLES_FILE)
    tmp = f"{final}.tmp{os.getpid()}"
    try:
        save_file(flat, tmp, metadata={"format": "clap_jax"})
        os.chmod(tmp, _file_mode())   # safetensors writes 0600
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    write_model_config(os.path.join(directory, CONFIG_FILE), config)


def save_checkpoint(directory: str, variables, config: ml_collections.ConfigDict, overwrite: bool = False) -> str:
    """Write a clap_jax checkpoint directory (config.json + model.safetensors).

    A new directory is written as a temporary sibling and renamed into place. An existing one is written into
    (each file via a temp file + rename) when it is empty or a previous clap_jax checkpoint; any other directory
    only with `overwrite=True`, and even then only our two files are replaced. A file at `directory` is refused.
    """
    import jax

    model_config.validate(config)
    directory = os.fspath(directory)
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: exists and is not a directory; a clap_jax checkpoint is a directory "
                              f"({CONFIG_FILE} + {VARIABLES_FILE}): choose another destination")
    if os.path.isdir(directory):
        entries = sorted(os.listdir(directory))
        if entries and not overwrite and not is_clap_jax_checkpoint(directory):
            shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
            raise CheckpointError(
                f"{directory}: directory is not empty and is not a clap_jax checkpoint (it holds {shown}); choose a "
                f"new or empty directory, or pass --overwrite (Python: overwrite=True) to write {CONFIG_FILE} and "
                f"{VARIABLES_FILE} into it (other files are left alone)")
    flat = {"/".join(p): np.asarray(jax.device_get(v)) for p, v in _flatten(dict(variables))}
    if os.path.isdir(directory):
        _write_checkpoint_files(directory, flat, config)
        return directory
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(directory))}.tmp", dir=parent)
    try:
        os.chmod(tmp, _file_mode() | 0o111)   # mkdtemp makes 0700; give the directory the usual mode
        _write_checkpoint_files(tmp, flat, config)
        os.replace(tmp, directory)
    except BaseException:
        if os.path.isdir(tmp):       # our own temp directory, holding only what we just wrote
            for name in os.listdir(tmp):
                os.remove(os.path.join(tmp, name))
            os.rmdir(tmp)
        raise
    return directory


def load_checkpoint(directory: str):
    """clap_jax checkpoint directory -> (variables, config)."""
    from safetensors.numpy import load_file

    cfg_path, var_path = os.path.join(directory, CONFIG_FILE), os.path.join(directory, VARIABLES_FILE)
    for p in (cfg_path, var_path):
        if not os.path.isfile(p):
            raise CheckpointError(f"{directory}: not a clap_jax checkpoint (missing {os.path.basename(p)})")
    try:
        cfg = config_from_dict(json.load(open(cfg_path)), source=cfg_path)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from e
    try:
        flat = load_file(var_path)
    except Exception as e:
        raise CheckpointError(f"{var_path}: not a readable safetensors file ({e})") from e
    variables = _unflatten({tuple(k.split("/")): v for k, v in flat.items()})
    check_variables(variables, cfg, var_path)
    check_finite(sorted(flat.items()), var_path)
    return variables, cfg


def load_workdir(workdir: str, step: int | None = None):
    """Training workdir -> (variables, config) of its newest checkpoint (or `step`), on this host's first device."""
    import jax

    from clap_jax.convert.msclap import variable_shapes
    from clap_jax.train import checkpoint as ckpt_lib

    cfg_path = os.path.join(workdir, WORKDIR_CONFIG_FILE)
    try:
        cfg = config_from_dict(json.load(open(cfg_path)), source=cfg_path)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from e
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev),
                            dict(variable_shapes(cfg)))
    try:
        variables = ckpt_lib.restore_variables(os.path.join(workdir, "checkpoints"), abstract, step)
    except FileNotFoundError as e:
        raise CheckpointError(f"{workdir}: a training workdir without checkpoints ({e}); has training saved a "
                              f"step yet?") from e
    variables = jax.device_get(variables)
    source = f"{workdir} (step {step if step is not None else 'latest'})"
    check_finite((("/".join(p), v) for p, v in _flatten(dict(variables))), source)
    return variables, cfg


def check_variables(variables, cfg, source: str) -> None:
    """Raise CheckpointError naming every variable that is missing, unexpected or of the wrong shape."""
    from clap_jax.convert.msclap import variable_shapes

    want = {p: tuple(s.shape) for p, s in _flatten(dict(variable_shapes(cfg)))}
    have = {p: tuple(np.shape(v)) for p, v in _flatten(dict(variables))}
    missing = sorted("/".join(p) for p in want.keys() - have.keys())
    unexpected = sorted("/".join(p) for p in have.keys() - want.keys())
    bad = sorted(f"{'/'.join(p)}: {have[p]} != {want[p]}" for p in want.keys() & have.keys() if have[p] != want[p])
    if missing or unexpected or bad:
        raise CheckpointError(f"{source}: variables do not match the config: missing {missing[:10]}, "
                              f"unexpected {unexpected[:10]}, wrong shape {bad[:10]}")


def load_weights(path: str, config: ml_collections.ConfigDict | None = None):
    """Any supported weights -> (variables, config). See the module docstring for the formats."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, CONFIG_FILE)):
            return load_checkpoint(path)
        if os.path.isfile(os.path.join(path, WORKDIR_CONFIG_FILE)):
            return load_workdir(path)
        raise CheckpointError(f"{path}: a directory without {CONFIG_FILE} or {WORKDIR_CONFIG_FILE}: neither a "
                              f"clap_jax checkpoint nor a training workdir")
    if path.endswith((".pth", ".pt", ".safetensors", ".bin")):
        return load_msclap_checkpoint(path, config)
    raise CheckpointError(f"{path}: unknown weights format (expected a clap_jax checkpoint directory, a training "
                          f"workdir, or a msclap .pth/.safetensors file)")
