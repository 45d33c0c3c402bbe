"""msclap <-> clap_jax weights, both directions.

A msclap checkpoint is a `.pth` holding `{'model': state_dict}` (or a bare state dict), or a `.safetensors` file
with the same keys. Names map one to one (see `torch_name`):

  ours  ('params', 'audio_encoder', 'base', 'layers_0', 'blocks_1', 'attn', 'qkv', 'kernel')
  torch 'audio_encoder.base.htsat.layers.0.blocks.1.attn.qkv.weight'   (transposed: Linear is (out, in))

Layouts: nn.Linear (out, in) <-> Dense (in, out); Conv2d (out, in, kh, kw) <-> (kh, kw, in, out); HF GPT-2 Conv1D
is already (in, out); LayerNorm/BatchNorm weight <-> scale; Embedding weight <-> embedding; BatchNorm
running_mean/var <-> batch_stats mean/var; STFT conv kernels (513, 1, 1024) <-> (1024, 513) constants.

Import never unpickles code (`torch.load(weights_only=True)`) and fails loudly, naming the keys, on anything
missing, unexpected (other than geometry buffers that are regenerated) or of the wrong shape.
"""
from __future__ import annotations

import os
import re
import zipfile

import jax
import ml_collections
import numpy as np

from clap_jax.errors import UserError
from clap_jax.models import config as model_config


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be converted; the message names the file and the keys."""


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


def _flatten(tree, prefix=()):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (k,))
    else:
        yield prefix, tree


def _unflatten(flat: dict[tuple, np.ndarray]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        d = out
        for p in path[:-1]:
            d = d.setdefault(p, {})
        d[path[-1]] = v
    return out


def variable_shapes(cfg: ml_collections.ConfigDict) -> dict:
    """Shapes/dtypes of every model variable for `cfg`, without computing anything."""
    from clap_jax.models.clap import CLAPModel
    import jax.numpy as jnp

    model = CLAPModel(cfg)
    wav = jax.ShapeDtypeStruct((1, int(round(cfg.audio.duration * cfg.audio.sample_rate))), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, cfg.text.max_length), jnp.int32)
    return jax.eval_shape(lambda w, i: model.init({"params": jax.random.PRNGKey(0)}, w, i, i), wav, ids)


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
        for path, v in _flatten(variables.get(coll, {})):
            key, kind = torch_name(coll, path)
            sd[key] = np.array(_to_torch_layout(np.asarray(jax.device_get(v), np.float32), kind), order="C")
    sd.update(_derived_buffers(cfg))
    return sd


def save_msclap(variables, cfg, path: str) -> None:
    """Write a msclap checkpoint: `.pth` ({'model': state_dict}, torch tensors) or `.safetensors` (same keys)."""
    sd = to_msclap_state_dict(variables, cfg)
    tmp = f"{path}.tmp{os.getpid()}"
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file(sd, tmp, metadata={"format": "msclap", "producer": "clap_jax"})
    else:
        import torch

        torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}}, tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; give both files the usual permissions
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# Import: msclap state dict -> clap_jax variables
# ----------------------------------------------------------------------------------------------------------------
def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read a msclap `.pth` / `.safetensors` into {key: float/int numpy array}. Never executes pickled code."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    import torch

    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (not a zip archive; truncated or wrong format?)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses pickles that would run code or build arbitrary objects
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: refused or unreadable checkpoint ({type(e).__name__}: {msg})") from e
    sd = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(hasattr(v, "numpy") for v in sd.values()):
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict of tensors")
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def infer_config(sd: dict[str, np.ndarray], base: ml_collections.ConfigDict | None = None,
                 n_head: int | None = None) -> ml_collections.ConfigDict:
    """A model config whose shapes match the state dict (sizes read off the weights). GPT-2's head count is not
    in the weights: `n_head`, else base's when the width matches, else n_embd // 64 (GPT-2's head size)."""
    cfg = model_config.clap_2023() if base is None else ml_collections.ConfigDict(base.to_dict())
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
        width = int(sd["caption_encoder.base.wte.weight"].shape[1])
        t.vocab_size = int(sd["caption_encoder.base.wte.weight"].shape[0])
        t.n_positions = int(sd["caption_encoder.base.wpe.weight"].shape[0])
        t.n_layer = len({k.split(".")[3] for k in sd if k.startswith("caption_encoder.base.h.")})
        if n_head is not None:
            t.n_head = n_head
        elif width != t.n_embd:
            t.n_head = max(1, width // 64)
        t.n_embd = width
        cfg.d_proj = int(sd["audio_encoder.projection.linear1.weight"].shape[0])
    except KeyError as e:
        raise CheckpointError(f"not a msclap 2023 (HTSAT + GPT-2) state dict: missing {e.args[0]}") from e
    model_config.validate(cfg)
    return cfg


def from_msclap_state_dict(sd: dict[str, np.ndarray], cfg: ml_collections.ConfigDict, source: str = "checkpoint"):
    """{torch key: array} -> Flax variables for `cfg`. Raises CheckpointError listing every bad key."""
    shapes = variable_shapes(cfg)
    flat, missing, bad_shape = {}, [], []
    used = set()
    for coll in ("params", "batch_stats", "constants"):
        for path, spec in _flatten(shapes[coll]):
            key, kind = torch_name(coll, path)
            if key not in sd:
                missing.append(key)
                continue
            used.add(key)
            x = _from_torch_layout(np.asarray(sd[key]), kind)
            if tuple(x.shape) != tuple(spec.shape):
                bad_shape.append(f"{key}: checkpoint {tuple(np.asarray(sd[key]).shape)}, model expects "
                                 f"{tuple(_to_torch_layout(np.zeros(spec.shape, np.float32), kind).shape)}")
                continue
            flat[(coll,) + path] = np.array(x, dtype=np.float32, order="C")
    unexpected = sorted(k for k in sd if k not in used and not _DERIVED_BUFFER.search(k))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: " + ", ".join(unexpected[:20])
                        + (" ..." if len(unexpected) > 20 else ""))
    if bad_shape:
        problems.append(f"{len(bad_shape)} with wrong shape: " + "; ".join(bad_shape[:20]))
    if problems:
        raise CheckpointError(f"{source}: does not match the model config: " + " | ".join(problems))
    return _unflatten(flat)


def load_msclap_checkpoint(path: str, cfg: ml_collections.ConfigDict | None = None, n_head: int | None = None):
    """Read a msclap checkpoint -> (variables, config). Without `cfg`, sizes are inferred from the weights."""
    sd = read_state_dict(path)
    if cfg is None:
        cfg = infer_config(sd, n_head=n_head)
    return from_msclap_state_dict(sd, cfg, source=path), cfg
