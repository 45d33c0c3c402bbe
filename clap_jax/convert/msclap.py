"""msclap <-> clap_jax weights, both directions.

A msclap checkpoint is a `.pth` holding `{'model': state_dict}` (or a bare state dict), or a `.safetensors` file
with the same keys. Names map one to one (see `torch_name`):

  ours  ('params', 'audio_encoder', 'base', 'layers_0', 'blocks_1', 'attn', 'qkv', 'kernel')
  torch 'audio_encoder.base.htsat.layers.0.blocks.1.attn.qkv.weight'   (transposed: Linear is (out, in))

Layouts: nn.Linear (out, in) <-> Dense (in, out); Conv2d (out, in, kh, kw) <-> (kh, kw, in, out); HF GPT-2 Conv1D
is already (in, out); LayerNorm/BatchNorm weight <-> scale; Embedding weight <-> embedding; BatchNorm
running_mean/var <-> batch_stats mean/var; STFT conv kernels (513, 1, 1024) <-> (1024, 513) constants.

Import never unpickles code (`torch.load(weights_only=True)`) and fails loudly, naming the keys, on anything
missing, unexpected (other than geometry buffers that are regenerated), of the wrong shape, or NaN/inf.

The architecture travels with an export: the clap_jax model config is stored as JSON next to the weights (the
`'clap_jax_config'` key of the .pth dict, which msclap ignores since it reads only `['model']`; the
`clap_jax_config` entry of the .safetensors metadata) and is read back on import. A file without it (msclap's
own) gets msclap's 2023 architecture only when every weight shape is that model's; otherwise GPT-2's head count,
which no weight shape reveals, must be given (`n_head=` / `--n-head`).
"""
from __future__ import annotations

import json
import os
import pickle
import re
import zipfile

import jax
import ml_collections
import numpy as np

from clap_jax import files
from clap_jax.convert import formats
from clap_jax.convert.tree import (CheckpointError, check_finite, config_from_dict, config_to_json, flatten,
                                   mismatch_error, unflatten)
from clap_jax.models import config as model_config
from clap_jax.models import registry

CONFIG_KEY = "clap_jax_config"   # the model config (JSON) in an export: .pth dict key / .safetensors metadata
PRODUCER = "clap_jax"


# Buffers msclap stores that are pure functions of the geometry (or counters): accepted on import, regenerated
# on export.
_DERIVED_BUFFER = re.compile(
    r"(\.attn\.relative_position_index|\.attn_mask|\.num_batches_tracked|caption_encoder\.base\.h\.\d+\.attn\.(bias|masked_bias))$")


# ----------------------------------------------------------------------------------------------------------------
# Name and layout mapping
# ----------------------------------------------------------------------------------------------------------------
def _module_path(path: tuple[str, ...]) -> str:
    parts = []
    for p in path:
        m = re.fullmatch(r"(layers|blocks|h)_(\d+)", p)
        parts.extend(m.groups() if m else [p])
    s = ".".join(parts)
    return s.replace("audio_encoder.base", "audio_encoder.base.htsat", 1)


def torch_name(collection: str, path: tuple[str, ...]) -> tuple[str, str]:
    """Our (collection, path) -> (torch key, layout kind). Kinds: copy, linear, conv2d, stft."""
    *mods, leaf = path
    prefix = _module_path(tuple(mods))
    j = lambda name: f"{prefix}.{name}" if prefix else name  # noqa: E731
    if collection == "batch_stats":
        return j({"mean": "running_mean", "var": "running_var"}[leaf]), "copy"
    if collection == "constants":
        return {"melW": (j("logmel_extractor.melW"), "copy"),
                "stft_real": (j("spectrogram_extractor.stft.conv_real.weight"), "stft"),
                "stft_imag": (j("spectrogram_extractor.stft.conv_imag.weight"), "stft")}[leaf]
    if leaf == "kernel":
        if mods[-2:] == ["patch_embed", "proj"] or mods[-1:] == ["tscam_conv"]:
            return j("weight"), "conv2d"
        if mods[:2] == ["caption_encoder", "base"]:
            return j("weight"), "copy"          # HF Conv1D: (in, out)
        return j("weight"), "linear"
    if leaf in ("scale", "embedding"):
        return j("weight"), "copy"
    return j(leaf), "copy"                      # bias, relative_position_bias_table, logit_scale


def _to_torch_layout(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "linear":
        return x.T
    if kind == "conv2d":
        return x.transpose(3, 2, 0, 1)
    if kind == "stft":
        return x.T[:, None, :]
    return x


def _from_torch_layout(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "linear":
        return x.T
    if kind == "conv2d":
        return x.transpose(2, 3, 1, 0)
    if kind == "stft":
        return x[:, 0, :].T
    return x


# ----------------------------------------------------------------------------------------------------------------
# Derived buffers (what msclap's state dict holds beyond parameters)
# ----------------------------------------------------------------------------------------------------------------
def _derived_buffers(cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    from clap_jax.models.htsat import relative_position_index, shifted_window_mask

    a = cfg.audio
    out = {"audio_encoder.base.htsat.bn0.num_batches_tracked": np.array(0, np.int64)}
    grid = a.spec_size // a.patch_size
    for i, depth in enumerate(a.depths):
        res = grid // 2 ** i
        win = min(a.window_size, res)
        for jb in range(depth):
            p = f"audio_encoder.base.htsat.layers.{i}.blocks.{jb}"
            out[f"{p}.attn.relative_position_index"] = relative_position_index(win).astype(np.int64)
            shift = 0 if (jb % 2 == 0 or res <= a.window_size) else a.window_size // 2
            if shift:
                out[f"{p}.attn_mask"] = shifted_window_mask(res, win, shift)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Export: clap_jax variables -> msclap state dict
# ----------------------------------------------------------------------------------------------------------------
def to_msclap_state_dict(variables, cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Flax variables -> {torch key: numpy array} that msclap's `CLAP.load_state_dict(strict=True)` accepts."""
    sd = {}
    for coll in ("params", "batch_stats", "constants"):
        for path, v in flatten(variables.get(coll, {})):
            key, kind = torch_name(coll, path)
            sd[key] = np.array(_to_torch_layout(np.asarray(jax.device_get(v), np.float32), kind), order="C")
    sd.update(_derived_buffers(cfg))
    return sd


def is_clap_jax_export(path: str) -> bool:
    """Whether `path` is a msclap-layout file that clap_jax wrote (so a rerun may replace it)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, "np") as f:
                return (f.metadata() or {}).get("producer") == PRODUCER
        if not zipfile.is_zipfile(path):
            return False
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return isinstance(obj, dict) and CONFIG_KEY in obj
    except Exception:  # noqa: BLE001 - anything unreadable is, by definition, not recognisably ours
        return False


def check_export_path(path: str, overwrite: bool = False) -> None:
    """Refuse to write an export over a directory, or over an existing file clap_jax did not write."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory; give the export's file name (ending .pth or .safetensors)")
    if os.path.lexists(path) and not overwrite and not is_clap_jax_export(path):
        raise CheckpointError(f"{path}: exists and is not an export written by clap_jax; choose another name, or "
                              f"pass --overwrite (Python: overwrite=True) to replace it")


def save_msclap(variables, cfg, path: str, overwrite: bool = False) -> None:
    """Write a msclap checkpoint: `.pth` ({'model': state_dict, 'clap_jax_config': JSON}, torch tensors) or
    `.safetensors` (same keys, the config in the metadata). An existing file is replaced only if clap_jax wrote
    it or `overwrite`; the file appears complete or not at all (temp file + rename)."""
    path = os.fspath(path)
    check_export_path(path, overwrite)
    write_state_dict_file(to_msclap_state_dict(variables, cfg), cfg, path, "msclap")


def write_state_dict_file(sd: dict[str, np.ndarray], cfg, path: str, format_name: str) -> None:
    """`sd` as msclap stores it, atomically: `.pth` ({'model': torch tensors, 'clap_jax_config': JSON}) or
    `.safetensors` (the config and `format_name` in the metadata). The caller has checked the destination."""
    cfg_json = config_to_json(cfg)
    with files.atomic_path(path) as tmp:
        if path.endswith(".safetensors"):
            from safetensors.numpy import save_file

            save_file(sd, tmp, metadata={"format": format_name, "producer": PRODUCER, CONFIG_KEY: cfg_json})
        else:
            import torch

            torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, CONFIG_KEY: cfg_json},
                       tmp)


# ----------------------------------------------------------------------------------------------------------------
# Import: msclap state dict -> clap_jax variables
# ----------------------------------------------------------------------------------------------------------------
def _refuse_torch_load(path: str, e: Exception) -> CheckpointError:
    """The error for a .pth that torch.load(weights_only=True) rejected (a pickle with code, or a broken file)."""
    if isinstance(e, pickle.UnpicklingError) or "weights only load failed" in str(e).lower():
        return CheckpointError(
            f"{path}: the file contains pickled Python code (objects other than tensors), and loading it would run "
            f"that code, so it is refused. If you trust the file, convert it in a trusted environment: "
            f"`sd = torch.load(path, weights_only=False)['model']`, then `torch.save({{'model': sd}}, 'clean.pth')` "
            f"(or safetensors.torch.save_file(sd, 'clean.safetensors')), and use the clean file")
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return CheckpointError(f"{path}: unreadable PyTorch checkpoint, truncated or corrupt? ({type(e).__name__}: {msg})")


def read_msclap_file(path: str) -> tuple[dict[str, np.ndarray], dict | None]:
    """Read a msclap `.pth` / `.safetensors` -> ({key: numpy array}, the clap_jax model config stored with it as a
    dict, or None for a file without one). Never executes pickled code."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory; expected a msclap weights file (.pth or .safetensors). "
                              f"A clap_jax checkpoint directory or a training workdir is read as it is (--weights "
                              f"DIR) or exported with `python -m clap_jax.convert jax-to-msclap DIR out.pth`")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    meta_cfg = None
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.numpy import load_file

        try:
            sd = dict(load_file(path))
            with safe_open(path, "np") as f:
                meta_cfg = (f.metadata() or {}).get(CONFIG_KEY)
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    else:
        import torch

        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (not a zip archive; truncated or wrong format?)")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses pickles that would run code or build arbitrary objects
            raise _refuse_torch_load(path, e) from e
        raw = obj.get("model", obj) if isinstance(obj, dict) else None
        if not isinstance(raw, dict) or not all(hasattr(v, "numpy") for v in raw.values()):
            raise CheckpointError(f"{path}: expected a dict with a 'model' state dict of tensors")
        sd = {k: v.detach().cpu().numpy() for k, v in raw.items()}
        meta_cfg = obj.get(CONFIG_KEY) if "model" in obj else None
    if meta_cfg is not None:
        try:
            meta_cfg = json.loads(meta_cfg)
        except (TypeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: the stored '{CONFIG_KEY}' is not valid JSON ({e})") from e
    return sd, meta_cfg


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read a msclap `.pth` / `.safetensors` into {key: float/int numpy array}. Never executes pickled code."""
    return read_msclap_file(path)[0]


# What every weight shape of msclap's 2023 model says (config_2023.yml: HTSAT + GPT-2 small, 12 heads).
_SHAPE_FIELDS = (("audio", "embed_dim"), ("audio", "patch_size"), ("audio", "depths"), ("audio", "num_heads"),
                 ("audio", "num_classes"), ("audio", "mel_bins"), ("text", "vocab_size"), ("text", "n_positions"),
                 ("text", "n_layer"), ("text", "n_embd"), (None, "d_proj"))


def infer_config(sd: dict[str, np.ndarray], n_head: int | None = None,
                 source: str = "checkpoint") -> ml_collections.ConfigDict:
    """A model config whose shapes match a state dict without a stored config (sizes read off the weights).

    GPT-2's head count is in no weight shape: `n_head` when given; msclap 2023's 12 when every shape is that
    model's; otherwise CheckpointError asking for it (a wrong head count silently changes the text embeddings)."""
    cfg = model_config.clap_2023()
    h = "audio_encoder.base.htsat."
    try:
        a = cfg.audio
        a.embed_dim = int(sd[h + "patch_embed.proj.weight"].shape[0])
        a.patch_size = int(sd[h + "patch_embed.proj.weight"].shape[-1])
        stages = sorted({int(m.group(1)) for k in sd if (m := re.match(re.escape(h) + r"layers\.(\d+)\.", k))})
        a.depths = tuple(len({k.split(".")[6] for k in sd if k.startswith(f"{h}layers.{i}.blocks.")}) for i in stages)
        a.num_heads = tuple(int(sd[f"{h}layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1])
                            for i in stages)
        a.num_classes = int(sd[h + "tscam_conv.weight"].shape[0])
        a.mel_bins = int(sd[h + "logmel_extractor.melW"].shape[1])
        t = cfg.text
        t.n_embd = int(sd["caption_encoder.base.wte.weight"].shape[1])
        t.vocab_size = int(sd["caption_encoder.base.wte.weight"].shape[0])
        t.n_positions = int(sd["caption_encoder.base.wpe.weight"].shape[0])
        t.n_layer = len({k.split(".")[3] for k in sd if k.startswith("caption_encoder.base.h.")})
        cfg.d_proj = int(sd["audio_encoder.projection.linear1.weight"].shape[0])
    except KeyError as e:
        raise CheckpointError(f"{source}: not a msclap 2023 (HTSAT + GPT-2) state dict: missing {e.args[0]}") from e
    ref = model_config.clap_2023()
    get = lambda c, grp, k: c[k] if grp is None else c[grp][k]  # noqa: E731
    differ = [f"{grp + '.' if grp else ''}{k}={get(cfg, grp, k)}" for grp, k in _SHAPE_FIELDS
              if tuple(np.atleast_1d(get(cfg, grp, k))) != tuple(np.atleast_1d(get(ref, grp, k)))]
    if n_head is not None:
        cfg.text.n_head = int(n_head)
    elif differ:
        raise CheckpointError(
            f"{source}: GPT-2's head count is not stored in this file, and its shapes are not msclap's 2023 model "
            f"({', '.join(differ[:4])}), whose 12 heads could be assumed; give the head count with --n-head N "
            f"(Python: n_head=N)")
    try:
        model_config.validate(cfg)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e
    return cfg


def state_dict_to_variables(sd: dict[str, np.ndarray], cfg: ml_collections.ConfigDict, source: str, *,
                            torch_name, from_layout, to_layout, ignore: re.Pattern,
                            extra_keys: tuple[str, ...] = ()) -> dict:
    """{torch key: array} -> Flax variables of `cfg`'s model, for any msclap-style layout: `torch_name(collection,
    path) -> (key, kind)` names each variable, `from_layout` / `to_layout` convert its array for that kind. Keys
    matching `ignore` (buffers torch derives) are skipped; `extra_keys` must be present but are read by the caller.
    Raises one CheckpointError listing every missing, unexpected and wrong-shape key, or every non-finite weight."""
    shapes = registry.variable_shapes(cfg)
    flat, missing, bad_shape, used = {}, [], [], set(k for k in extra_keys if k in sd)
    missing += [k for k in extra_keys if k not in sd]
    for coll in ("params", "batch_stats", "constants"):
        for path, spec in flatten(shapes[coll]):
            key, kind = torch_name(coll, path)
            if key not in sd:
                missing.append(key)
                continue
            used.add(key)
            x = from_layout(np.asarray(sd[key]), kind)
            if tuple(x.shape) != tuple(spec.shape):
                bad_shape.append(f"{key}: checkpoint {tuple(np.asarray(sd[key]).shape)}, model expects "
                                 f"{tuple(to_layout(np.zeros(spec.shape, np.float32), kind).shape)}")
                continue
            flat[(coll,) + path] = np.array(x, dtype=np.float32, order="C")
    unexpected = sorted(k for k in sd if k not in used and not ignore.search(k))
    err = mismatch_error(source, missing, unexpected, bad_shape)
    if err is not None:
        raise err
    check_finite(((torch_name(p[0], p[1:])[0], v) for p, v in flat.items()), source)
    return unflatten(flat)


def from_msclap_state_dict(sd: dict[str, np.ndarray], cfg: ml_collections.ConfigDict, source: str = "checkpoint"):
    """{torch key: array} -> Flax variables for `cfg`. Raises CheckpointError listing every bad key."""
    return state_dict_to_variables(sd, cfg, source, torch_name=torch_name, from_layout=_from_torch_layout,
                                   to_layout=_to_torch_layout, ignore=_DERIVED_BUFFER)


def load_msclap_checkpoint(path: str, cfg: ml_collections.ConfigDict | None = None, n_head: int | None = None):
    """Read a msclap checkpoint -> (variables, config). Without `cfg` the config stored in the file is used (an
    export of clap_jax's), else one inferred from the weights (see `infer_config` for the head count)."""
    sd, stored = read_msclap_file(path)
    if cfg is None:
        if stored is not None:
            cfg = config_from_dict(stored, source=f"{path} ({CONFIG_KEY})")
            if n_head is not None and int(n_head) != cfg.text.n_head:
                raise CheckpointError(f"{path}: the file stores its architecture with text.n_head="
                                      f"{cfg.text.n_head}, but n_head={n_head} was given; drop --n-head")
        else:
            cfg = infer_config(sd, n_head=n_head, source=path)
    return from_msclap_state_dict(sd, cfg, source=path), cfg


formats.register(formats.WeightFormat(
    name="msclap", family="msclap-2023", suffixes=(".pth", ".pt", ".bin", ".safetensors"),
    load=load_msclap_checkpoint, save=save_msclap))
