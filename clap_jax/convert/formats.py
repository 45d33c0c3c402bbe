"""Every weights format clap_jax reads and writes, and the one loader that picks the right one.

Directories: a clap_jax checkpoint (`config.json` + `model.safetensors`, clap_jax.convert.checkpoint) or a training
workdir (`model_config.json` + orbax checkpoints, clap_jax.convert.workdir); both hold any model family. Files:
a registered `WeightFormat` per foreign layout (msclap's `.pth`/`.safetensors` today). Adding a family's format is
adding its converter module, ending in `register(WeightFormat(...))`, and naming it in `FORMAT_MODULES`.
"""
from __future__ import annotations

import contextlib
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
    the weights; `options` go to the file format's loader (e.g. msclap's n_head).

    Without `config`, the STFT implementation is chosen from the weights: by rFFT (`audio.stft='fft'`, the faster
    one) when the stored DFT kernels are the standard periodic-Hann ones, which every msclap, LAION-CLAP and
    clap_jax checkpoint holds, and by matmul with the stored kernels otherwise (`'matmul'`, a warning says so)."""
    variables, cfg = _load_weights(path, config, **options)
    if config is None:
        choose_stft(variables, cfg, os.fspath(path))
    return variables, cfg


def choose_stft(variables, config: ml_collections.ConfigDict, source: str = "weights") -> str | None:
    """Set `config.audio.stft` to 'fft' when the stored STFT kernels equal the standard ones for its n_fft, else
    to 'matmul' (which reads them). Returns the choice (None: the model has no such front end)."""
    import logging

    import numpy as np

    from clap_jax.audio import frontend

    audio = config.get("audio") if hasattr(config, "get") else None
    if audio is None or "stft" not in audio or "n_fft" not in audio:
        return None
    found = []

    def walk(t):
        if isinstance(t, dict):
            if "stft_real" in t and "stft_imag" in t:
                found.append((t["stft_real"], t["stft_imag"]))
            for v in t.values():
                walk(v)

    walk(dict(variables.get("constants", {})) if hasattr(variables, "get") else {})
    if not found:
        return None
    real, imag = frontend.stft_kernels(audio.n_fft)
    standard = all(np.shape(r) == real.shape and np.shape(i) == imag.shape
                   and np.allclose(np.asarray(r), real, rtol=0, atol=1e-5)
                   and np.allclose(np.asarray(i), imag, rtol=0, atol=1e-5) for r, i in found)
    choice = "fft" if standard else "matmul"
    if not standard and audio.stft == "fft":
        logging.getLogger(__name__).warning(
            "%s: the stored STFT kernels are not the standard periodic-Hann DFT for n_fft=%d; computing the STFT "
            "with them (audio.stft='matmul', slower than the rFFT path)", source, audio.n_fft)
    with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
        audio.stft = choice
    return choice


def _load_weights(path: str, config: ml_collections.ConfigDict | None = None, **options):
    path = os.fspath(path)
    if files.is_url(path):   # object storage: a workdir's checkpoints are read in place, anything else downloaded
        if not files.exists(path):
            raise CheckpointError(f"{path}: no such object or prefix")
        if workdir.is_workdir(path):
            return workdir.load_workdir(path)
        with files.local_copy(path) as local:
            return _load_weights(local, config, **options)
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
