"""What the PyTorch state-dict formats (msclap 2023 / 2022, msclap's captioner, laion_clap, HF BERT / GPT-2) share:
the array layouts, the naming rules every family follows, the one strict reader of a state dict into Flax
variables (every key checked: missing, unexpected, wrong shape, NaN/inf, in one error naming the file and the
keys), the writer back, HTSAT's geometry buffers, and the handling of the model config stored in an export.

Layouts: nn.Linear (out, in) <-> Dense (in, out); Conv2d (out, in, kh, kw) <-> (kh, kw, in, out); STFT conv
kernels (513, 1, 1024) <-> (1024, 513) constants; anything else ("copy") as it is.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from typing import Callable, Iterable

import jax
import ml_collections
import numpy as np

from clap_jax.convert.tree import CheckpointError, check_finite, flatten, mismatch_error, unflatten
from clap_jax.models import registry

COLLECTIONS = ("params", "batch_stats", "constants")

TorchName = Callable[[str, tuple], tuple[str, str]]   # (collection, path) -> (torch key, layout kind)


# layout kind -> (ours -> torch's, torch's -> ours); any other kind ("copy") is the same in both
_LAYOUTS = {"linear": (lambda a: a.T, lambda a: a.T),
            "conv2d": (lambda a: a.transpose(3, 2, 0, 1), lambda a: a.transpose(2, 3, 1, 0)),
            "stft": (lambda a: a.T[:, None, :], lambda a: a[:, 0, :].T)}


def to_torch_layout(x: np.ndarray, kind: str) -> np.ndarray:
    return _LAYOUTS[kind][0](x) if kind in _LAYOUTS else x


def from_torch_layout(x: np.ndarray, kind: str) -> np.ndarray:
    return _LAYOUTS[kind][1](x) if kind in _LAYOUTS else x


def torch_name_by_rules(collection: str, path: tuple[str, ...], module_path: Callable[[list], str],
                        kernel_kind: Callable[[list], str]) -> tuple[str, str]:
    """Our (collection, path) -> (torch key, layout kind) by the rules every family follows: `module_path(mods)`
    spells the module prefix, `kernel_kind(mods)` says how a `kernel` is laid out; BatchNorm mean/var are
    running_mean/var; scale and embedding are `weight`; the STFT / mel constants are the extractor's buffers;
    any other leaf keeps its name."""
    *mods, leaf = path
    prefix = module_path(mods)
    j = lambda name: f"{prefix}.{name}" if prefix else name  # noqa: E731
    if collection == "batch_stats":
        return j({"mean": "running_mean", "var": "running_var"}[leaf]), "copy"
    if collection == "constants":
        return {"melW": (j("logmel_extractor.melW"), "copy"),
                "stft_real": (j("spectrogram_extractor.stft.conv_real.weight"), "stft"),
                "stft_imag": (j("spectrogram_extractor.stft.conv_imag.weight"), "stft")}[leaf]
    if leaf == "kernel":
        return j("weight"), kernel_kind(mods)
    if leaf in ("scale", "embedding"):
        return j("weight"), "copy"
    return j(leaf), "copy"                      # bias, relative_position_bias_table, logit_scale


def variables_to_state_dict(variables, torch_name: TorchName) -> dict[str, np.ndarray]:
    """Flax variables -> {torch key: float32 numpy array in torch's layout} (every collection that has one)."""
    sd = {}
    for coll in COLLECTIONS:
        for path, v in flatten(variables.get(coll, {})):
            key, kind = torch_name(coll, path)
            sd[key] = np.array(to_torch_layout(np.asarray(jax.device_get(v), np.float32), kind), order="C")
    return sd


def read_tree(sd: dict[str, np.ndarray], specs: Iterable[tuple[tuple, object]], source: str, *,
              key_of: Callable[[tuple], tuple[str, str]], ignore: re.Pattern, extra_keys: tuple[str, ...] = (),
              fallback: Callable[[tuple], np.ndarray | None] | None = None,
              what: str = "the model config") -> dict:
    """The strict reader: `specs` (path, array or ShapeDtypeStruct) -> {path: float32 array} from `sd`, where
    `key_of(path) -> (torch key, layout kind)`. A key the file lacks takes `fallback(path)` when that is not None.
    Keys matching `ignore` (buffers torch derives) are skipped; `extra_keys` must be present but are read by the
    caller. Raises one CheckpointError naming `source` and every missing, unexpected and wrong-shape key, or every
    non-finite weight (by its torch key)."""
    flat, names, missing, bad_shape = {}, {}, [], []
    used = {k for k in extra_keys if k in sd}
    missing += [k for k in extra_keys if k not in sd]
    for path, spec in specs:
        key, kind = key_of(path)
        if key not in sd:
            x = fallback(path) if fallback is not None else None
            if x is None:
                missing.append(key)
            else:
                flat[path], names[path] = np.asarray(x, np.float32), key
            continue
        used.add(key)
        x = from_torch_layout(np.asarray(sd[key]), kind)
        if tuple(x.shape) != tuple(spec.shape):
            bad_shape.append(f"{key}: checkpoint {tuple(np.asarray(sd[key]).shape)}, model expects "
                             f"{tuple(to_torch_layout(np.zeros(spec.shape, np.float32), kind).shape)}")
            continue
        flat[path] = np.array(x, dtype=np.float32, order="C")
        names[path] = key
    unexpected = sorted(k for k in sd if k not in used and not ignore.search(k))
    err = mismatch_error(source, missing, unexpected, bad_shape, what)
    if err is not None:
        raise err
    check_finite(((names[p], v) for p, v in flat.items()), source)
    return flat


def state_dict_to_variables(sd: dict[str, np.ndarray], cfg: ml_collections.ConfigDict, source: str, *,
                            torch_name: TorchName, ignore: re.Pattern, extra_keys: tuple[str, ...] = ()) -> dict:
    """{torch key: array} -> Flax variables of `cfg`'s model, for any family whose `torch_name(collection, path)`
    names each variable (see `read_tree` for what is checked)."""
    shapes = registry.variable_shapes(cfg)
    specs = [((coll,) + path, spec) for coll in COLLECTIONS for path, spec in flatten(shapes[coll])]
    return unflatten(read_tree(sd, specs, source, key_of=lambda p: torch_name(p[0], p[1:]), ignore=ignore,
                               extra_keys=extra_keys))


def htsat_derived_buffers(audio: ml_collections.ConfigDict, prefix: str) -> dict[str, np.ndarray]:
    """HTSAT's buffers that are pure functions of its geometry (`{prefix}layers.i.blocks.j.attn.relative_position_index`
    and, in shifted blocks, `.attn_mask`), as torch stores them."""
    from clap_jax.models.htsat import relative_position_index, shifted_window_mask

    out = {}
    grid = audio.spec_size // audio.patch_size
    for i, depth in enumerate(audio.depths):
        res = grid // 2 ** i
        win = min(audio.window_size, res)
        for jb in range(depth):
            p = f"{prefix}layers.{i}.blocks.{jb}"
            out[f"{p}.attn.relative_position_index"] = relative_position_index(win).astype(np.int64)
            shift = 0 if (jb % 2 == 0 or res <= audio.window_size) else audio.window_size // 2
            if shift:
                out[f"{p}.attn_mask"] = shifted_window_mask(res, win, shift)
    return out


def refuse_torch_load(path: str, e: Exception) -> CheckpointError:
    """The error for a .pth that torch.load(weights_only=True) rejected (a pickle with code, or a broken file)."""
    if isinstance(e, pickle.UnpicklingError) or "weights only load failed" in str(e).lower():
        return CheckpointError(
            f"{path}: the file contains pickled Python code (objects other than tensors), and loading it would run "
            f"that code, so it is refused. If you trust the file, convert it in a trusted environment: "
            f"`sd = torch.load(path, weights_only=False)['model']`, then `torch.save({{'model': sd}}, 'clean.pth')` "
            f"(or safetensors.torch.save_file(sd, 'clean.safetensors')), and use the clean file")
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return CheckpointError(f"{path}: unreadable PyTorch checkpoint, truncated or corrupt? ({type(e).__name__}: {msg})")


def parse_stored_config(stored, path: str, key: str) -> dict | None:
    """The model config an export stores as JSON under `key` -> a dict (None stays None)."""
    if stored is None:
        return None
    try:
        return json.loads(stored)
    except (TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: the stored '{key}' is not valid JSON ({e})") from e


def validated(cfg: ml_collections.ConfigDict, validate: Callable, source: str) -> ml_collections.ConfigDict:
    """`cfg` after `validate(cfg)`, whose ValueError becomes a CheckpointError naming `source`."""
    try:
        validate(cfg)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e
    return cfg


def read_hf_directory(directory: str, what: str, prefix: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """A HF model directory (`model.safetensors`, else `pytorch_model.bin`; `config.json`) -> (state dict with the
    `prefix` regex, if any, stripped from its keys, config.json as a dict or {}). `what` names the model in errors."""
    st = os.path.join(directory, "model.safetensors")
    bin_ = os.path.join(directory, "pytorch_model.bin")
    if os.path.isfile(st):
        from safetensors.numpy import load_file

        try:
            sd = dict(load_file(st))
        except Exception as e:
            raise CheckpointError(f"{st}: not a readable safetensors file ({e})") from e
    elif os.path.isfile(bin_):
        import torch

        try:
            sd = {k: v.detach().cpu().numpy()
                  for k, v in torch.load(bin_, map_location="cpu", weights_only=True).items()}
        except Exception as e:
            raise refuse_torch_load(bin_, e) from e
    elif not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such directory; expected a HF {what} directory (model.safetensors "
                              f"or pytorch_model.bin, and config.json)")
    else:
        raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin")
    if prefix is not None:
        sd = {re.sub(prefix, "", k): v for k, v in sd.items()}
    cfg_path = os.path.join(directory, "config.json")
    hf_cfg = {}
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path) as f:
                hf_cfg = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{cfg_path}: not a readable JSON file ({e})") from e
    return sd, hf_cfg


def text_config_from_hf(hf_cfg: dict, base: ml_collections.ConfigDict,
                        fields: Iterable[tuple[str, str]]) -> ml_collections.ConfigDict:
    """A copy of the text config `base` with each (ours, HF name) in `fields` that config.json sets taken from it."""
    t = ml_collections.ConfigDict(base.to_dict())
    for ours, theirs in fields:
        if theirs in hf_cfg:
            t[ours] = hf_cfg[theirs]
    return t
