"""Every weights format clap_jax reads and writes, and the one loader that picks the right one.

Directories: a clap_jax checkpoint (`config.json` + `model.safetensors`, clap_jax.convert.checkpoint) or a training
workdir (`model_config.json` + orbax checkpoints, clap_jax.convert.workdir); both hold any model family. Files:
a registered `WeightFormat` per foreign layout (msclap's `.pth`/`.safetensors` today). Adding a family's format is
adding its converter module, ending in `register(WeightFormat(...))`, and naming it in `FORMAT_MODULES`.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Callable

import ml_collections

from clap_jax import files
from clap_jax.convert import checkpoint, workdir
from clap_jax.convert.tree import CheckpointError

# Converter modules that register a format when imported.
FORMAT_MODULES = ("clap_jax.convert.msclap", "clap_jax.convert.msclap2022")
FORMAT_MODULES += ("clap_jax.convert.clapcap",)   # msclap's captioner (clapcap) weights
FORMAT_MODULES += ("clap_jax.convert.laion",)     # laion_clap .pt checkpoints (LAION-CLAP)


@dataclasses.dataclass(frozen=True)
class WeightFormat:
    name: str                                   # e.g. 'msclap'
    family: str                                 # the model family (clap_jax.models.registry) its files hold
    suffixes: tuple[str, ...]                   # file endings it reads and writes
    load: Callable[..., tuple]                  # (path, config or None, **options) -> (variables, config)
    save: Callable[..., None]                   # (variables, config, path, overwrite=False) -> None
    sniff: Callable[[str], bool] | None = None  # tells its files from another format's with the same ending


_FORMATS: dict[str, WeightFormat] = {}
_loaded = False


def register(fmt: WeightFormat) -> WeightFormat:
    if fmt.name in _FORMATS and _FORMATS[fmt.name] is not fmt:
        raise ValueError(f"weights format {fmt.name!r} is registered twice")
    _FORMATS[fmt.name] = fmt
    return fmt


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for m in FORMAT_MODULES:
            importlib.import_module(m)


def get(name: str) -> WeightFormat:
    _load()
    if name not in _FORMATS:
        raise CheckpointError(f"unknown weights format {name!r} (known: {', '.join(sorted(_FORMATS))})")
    return _FORMATS[name]


def for_file(path: str) -> WeightFormat:
    """The format of a weights file, by its ending (and its content where endings are shared)."""
    _load()
    cands = [f for f in _FORMATS.values() if path.endswith(f.suffixes)]
    if len(cands) > 1:   # a format that recognises the file's content wins over one that only knows the ending
        cands = [f for f in cands if f.sniff is not None and f.sniff(path)] or [f for f in cands if f.sniff is None]
    if not cands:
        known = ", ".join(f"{f.name} ({'/'.join(f.suffixes)})" for f in _FORMATS.values())
        raise CheckpointError(f"{path}: unknown weights format (expected a clap_jax checkpoint directory, a training "
                              f"workdir, or a file of a known format: {known})")
    return cands[0]


def for_family(family: str) -> WeightFormat:
    """The file format that holds `family`'s models (the one `jax-to-msclap` exports to)."""
    _load()
    for f in _FORMATS.values():
        if f.family == family:
            return f
    raise CheckpointError(f"no file format holds model family {family!r} (known: "
                          f"{', '.join(sorted(f.family for f in _FORMATS.values()))})")


def load_weights(path: str, config: ml_collections.ConfigDict | None = None, **options):
    """Any supported weights -> (variables, config). `config` overrides the architecture stored with or read off
    the weights; `options` go to the file format's loader (e.g. msclap's n_head)."""
    path = os.fspath(path)
    if files.is_url(path):   # object storage: a workdir's checkpoints are read in place, anything else downloaded
        if not files.exists(path):
            raise CheckpointError(f"{path}: no such object or prefix")
        if workdir.is_workdir(path):
            return workdir.load_workdir(path)
        with files.local_copy(path) as local:
            return load_weights(local, config, **options)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        from clap_jax.convert import hf_clap   # a HF transformers ClapModel directory (LAION-CLAP)

        if hf_clap.is_hf_clap_dir(path):
            return hf_clap.load_hf_clap(path, config)
        if os.path.isfile(os.path.join(path, checkpoint.CONFIG_FILE)):
            return checkpoint.load_checkpoint(path)
        if workdir.is_workdir(path):
            return workdir.load_workdir(path)
        raise CheckpointError(f"{path}: a directory without {checkpoint.CONFIG_FILE} or {workdir.CONFIG_FILE}: "
                              f"neither a clap_jax checkpoint nor a training workdir")
    return for_file(path).load(path, config, **options)
