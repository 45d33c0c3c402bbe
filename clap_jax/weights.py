"""Where weights come from and go to: one loader for every format the project reads.

Formats:
  * clap_jax checkpoint: a directory with `config.json` (the model config) and `model.safetensors` (variables,
    keys like 'params/audio_encoder/base/patch_embed/proj/kernel'). Written by `save_checkpoint` and by export.
  * msclap checkpoint: `.pth` ({'model': state_dict}) or `.safetensors` with msclap's keys (`CLAP_weights_2023.pth`).
  * a training work directory (`python -m clap_jax.train --workdir DIR`): `DIR/model_config.json` and the orbax
    checkpoints in `DIR/checkpoints/`; the newest step's params, batch_stats and constants are read.
"""
from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from clap_jax.convert.msclap import CheckpointError, _flatten, _unflatten, load_msclap_checkpoint
from clap_jax.models import config as model_config

CONFIG_FILE = "config.json"
VARIABLES_FILE = "model.safetensors"
WORKDIR_CONFIG_FILE = "model_config.json"


def write_model_config(path: str, config: ml_collections.ConfigDict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(config.to_dict(), f, indent=1, default=list)
    os.replace(tmp, path)


def save_checkpoint(directory: str, variables, config: ml_collections.ConfigDict) -> str:
    """Write a clap_jax checkpoint directory (atomically: a temp dir renamed into place)."""
    import jax
    from safetensors.numpy import save_file

    model_config.validate(config)
    tmp = f"{directory.rstrip('/')}.tmp{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    flat = {"/".join(p): np.asarray(jax.device_get(v)) for p, v in _flatten(dict(variables))}
    save_file(flat, os.path.join(tmp, VARIABLES_FILE), metadata={"format": "clap_jax"})
    write_model_config(os.path.join(tmp, CONFIG_FILE), config)
    if os.path.isdir(directory):
        import shutil

        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def config_from_dict(d: dict) -> ml_collections.ConfigDict:
    cfg = model_config.clap_2023()
    def merge(dst, src, where):
        for k, v in src.items():
            if k not in dst:
                raise CheckpointError(f"{where}: unknown model config field {k!r}")
            if isinstance(dst[k], ml_collections.ConfigDict):
                merge(dst[k], v, f"{where}.{k}")
            else:
                dst[k] = tuple(v) if isinstance(v, list) else v

    merge(cfg, d, "config")
    model_config.validate(cfg)
    return cfg


def load_checkpoint(directory: str):
    """clap_jax checkpoint directory -> (variables, config)."""
    from safetensors.numpy import load_file

    cfg_path, var_path = os.path.join(directory, CONFIG_FILE), os.path.join(directory, VARIABLES_FILE)
    for p in (cfg_path, var_path):
        if not os.path.isfile(p):
            raise CheckpointError(f"{directory}: not a clap_jax checkpoint (missing {os.path.basename(p)})")
    try:
        cfg = config_from_dict(json.load(open(cfg_path)))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from e
    try:
        flat = load_file(var_path)
    except Exception as e:
        raise CheckpointError(f"{var_path}: not a readable safetensors file ({e})") from e
    variables = _unflatten({tuple(k.split("/")): v for k, v in flat.items()})
    check_variables(variables, cfg, var_path)
    return variables, cfg


def load_workdir(workdir: str, step: int | None = None):
    """Training workdir -> (variables, config) of its newest checkpoint (or `step`), on this host's first device."""
    import jax

    from clap_jax.convert.msclap import variable_shapes
    from clap_jax.train import checkpoint as ckpt_lib

    try:
        cfg = config_from_dict(json.load(open(os.path.join(workdir, WORKDIR_CONFIG_FILE))))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{workdir}/{WORKDIR_CONFIG_FILE}: invalid JSON ({e})") from e
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev),
                            dict(variable_shapes(cfg)))
    try:
        variables = ckpt_lib.restore_variables(os.path.join(workdir, "checkpoints"), abstract, step)
    except FileNotFoundError as e:
        raise CheckpointError(f"{workdir}: {e}") from e
    return jax.device_get(variables), cfg


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
