"""clap_jax checkpoint directories: `config.json` (the model config) + `model.safetensors` (every variable, keys like
'params/audio_encoder/base/patch_embed/proj/kernel', tagged format=clap_jax in the metadata).

`save_checkpoint` never deletes a file it did not write: it replaces its own previous output, fills a new or empty
directory, and writes into any other directory only with `overwrite=True` (leaving the other files there alone).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import jax
import ml_collections
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from clap_jax import files
from clap_jax.convert.tree import (CheckpointError, check_finite, check_variables, config_from_dict, config_to_json,
                                   flatten, unflatten)
from clap_jax.models import config as model_config

CONFIG_FILE = "config.json"
VARIABLES_FILE = "model.safetensors"


def is_checkpoint_dir(directory: str) -> bool:
    """A directory holding only what `save_checkpoint` writes, its variables tagged as ours (a HF model directory
    has the same two file names, so the names alone do not tell)."""
    names = set(os.listdir(directory))
    if VARIABLES_FILE not in names or not names <= {CONFIG_FILE, VARIABLES_FILE}:
        return False
    try:
        with safe_open(os.path.join(directory, VARIABLES_FILE), "np") as f:
            return (f.metadata() or {}).get("format") == "clap_jax"
    except Exception:  # noqa: BLE001 - unreadable is not recognisably ours
        return False


def _write_files(directory: str, flat: dict, config) -> None:
    """Variables, then config, each through a temporary file renamed over its final name; nothing else touched."""
    with files.atomic_path(os.path.join(directory, VARIABLES_FILE)) as tmp:
        save_file(flat, tmp, metadata={"format": "clap_jax"})
    files.write_text(os.path.join(directory, CONFIG_FILE), config_to_json(config))


def save_checkpoint(directory: str, variables, config: ml_collections.ConfigDict, overwrite: bool = False) -> str:
    """Write a clap_jax checkpoint directory (config.json + model.safetensors).

    A new directory is written as a temporary sibling and renamed into place. An existing one is written into
    (each file via a temp file + rename) when it is empty or a previous clap_jax checkpoint; any other directory
    only with `overwrite=True`, and even then only our two files are replaced. A file at `directory` is refused.
    """
    model_config.validate(config)
    directory = os.fspath(directory)
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: exists and is not a directory; a clap_jax checkpoint is a directory "
                              f"({CONFIG_FILE} + {VARIABLES_FILE}): choose another destination")
    if os.path.isdir(directory):
        entries = sorted(os.listdir(directory))
        if entries and not overwrite and not is_checkpoint_dir(directory):
            shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
            raise CheckpointError(
                f"{directory}: directory is not empty and is not a clap_jax checkpoint (it holds {shown}); choose a "
                f"new or empty directory, or pass --overwrite (Python: overwrite=True) to write {CONFIG_FILE} and "
                f"{VARIABLES_FILE} into it (other files are left alone)")
    flat = {"/".join(p): np.asarray(jax.device_get(v)) for p, v in flatten(dict(variables))}
    if os.path.isdir(directory):
        _write_files(directory, flat, config)
        return directory
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(directory))}.tmp", dir=parent)
    try:
        os.chmod(tmp, files.default_file_mode() | 0o111)   # mkdtemp makes 0700; give the directory the usual mode
        _write_files(tmp, flat, config)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)   # our own temporary directory, holding only what we just wrote
        raise
    return directory


def load_checkpoint(directory: str):
    """clap_jax checkpoint directory -> (variables, config)."""
    cfg_path, var_path = os.path.join(directory, CONFIG_FILE), os.path.join(directory, VARIABLES_FILE)
    for p in (cfg_path, var_path):
        if not os.path.isfile(p):
            raise CheckpointError(f"{directory}: not a clap_jax checkpoint (missing {os.path.basename(p)})")
    cfg = read_config(cfg_path)
    try:
        flat = load_file(var_path)
    except Exception as e:
        raise CheckpointError(f"{var_path}: not a readable safetensors file ({e})") from e
    variables = unflatten({tuple(k.split("/")): v for k, v in flat.items()})
    check_variables(variables, cfg, var_path)
    check_finite(sorted(flat.items()), var_path)
    return variables, cfg


def read_config(path: str) -> ml_collections.ConfigDict:
    """A model config JSON file (a checkpoint's config.json, a workdir's model_config.json) -> ConfigDict."""
    try:
        return config_from_dict(json.loads(files.read_text(path)), source=path)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e
