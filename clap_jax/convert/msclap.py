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

import os
import re
import zipfile

import ml_collections
import numpy as np

from clap_jax import files
from clap_jax.convert import formats, torch_state
from clap_jax.convert.tree import CheckpointError, config_from_dict, config_to_json
from clap_jax.models import config as model_config

CONFIG_KEY = "clap_jax_config"   # the model config (JSON) in an export: .pth dict key / .safetensors metadata
PRODUCER = "clap_jax"


# Buffers msclap stores that are pure functions of the geometry (or counters): accepted on import, regenerated
# on export.
_DERIVED_BUFFER = re.compile(
    r"(\.attn\.relative_position_index|\.attn_mask|\.num_batches_tracked|caption_encoder\.base\.h\.\d+\.attn\.(bias|masked_bias))$")


# ----------------------------------------------------------------------------------------------------------------
# Name and layout mapping
# ----------------------------------------------------------------------------------------------------------------
def _module_path(path) -> str:
    parts = []
    for p in path:
        m = re.fullmatch(r"(layers|blocks|h)_(\d+)", p)
        parts.extend(m.groups() if m else [p])
    s = ".".join(parts)
    return s.replace("audio_encoder.base", "audio_encoder.base.htsat", 1)


def _kernel_kind(mods: list) -> str:
    if mods[-2:] == ["patch_embed", "proj"] or mods[-1:] == ["tscam_conv"]:
        return "conv2d"
    if mods[:2] == ["caption_encoder", "base"]:
        return "copy"                           # HF Conv1D: (in, out)
    return "linear"


def torch_name(collection: str, path: tuple[str, ...]) -> tuple[str, str]:
    """Our (collection, path) -> (torch key, layout kind). Kinds: copy, linear, conv2d, stft."""
    return torch_state.torch_name_by_rules(collection, path, _module_path, _kernel_kind)


_to_torch_layout = torch_state.to_torch_layout
_from_torch_layout = torch_state.from_torch_layout


# ----------------------------------------------------------------------------------------------------------------
# Derived buffers (what msclap's state dict holds beyond parameters)
# ----------------------------------------------------------------------------------------------------------------
def _derived_buffers(cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    out = {"audio_encoder.base.htsat.bn0.num_batches_tracked": np.array(0, np.int64)}
    out.update(torch_state.htsat_derived_buffers(cfg.audio, "audio_encoder.base.htsat."))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Export: clap_jax variables -> msclap state dict
# ----------------------------------------------------------------------------------------------------------------
def to_msclap_state_dict(variables, cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Flax variables -> {torch key: numpy array} that msclap's `CLAP.load_state_dict(strict=True)` accepts."""
    sd = torch_state.variables_to_state_dict(variables, torch_name)
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
_refuse_torch_load = torch_state.refuse_torch_load


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
    return sd, torch_state.parse_stored_config(meta_cfg, path, CONFIG_KEY)


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
    return torch_state.validated(cfg, model_config.validate, source)


def from_msclap_state_dict(sd: dict[str, np.ndarray], cfg: ml_collections.ConfigDict, source: str = "checkpoint"):
    """{torch key: array} -> Flax variables for `cfg`. Raises CheckpointError listing every bad key."""
    return torch_state.state_dict_to_variables(sd, cfg, source, torch_name=torch_name, ignore=_DERIVED_BUFFER)


def load_msclap_checkpoint(path: str, cfg: ml_collections.ConfigDict | None = None, n_head: int | None = None):
    """Read a msclap checkpoint -> (variables, config). Without `cfg` the config stored in the file is used (an
    export of clap_jax's), else one inferred from the weights (see `infer_config` for the head count)."""
    sd, stored = read_msclap_file(path)
    if cfg is None:
        cfg = stored_or_inferred_config(path, sd, stored, n_head, infer_config, "n_head")
    return from_msclap_state_dict(sd, cfg, source=path), cfg


def stored_or_inferred_config(path: str, sd: dict, stored: dict | None, n_head: int | None, infer,
                              n_head_field: str) -> ml_collections.ConfigDict:
    """The model config for a msclap-layout file: the one it stores (where `n_head`, if given, must agree with its
    `text.<n_head_field>`), else `infer(sd, n_head=n_head, source=path)` from the weights."""
    if stored is None:
        return infer(sd, n_head=n_head, source=path)
    cfg = config_from_dict(stored, source=f"{path} ({CONFIG_KEY})")
    if n_head is not None and int(n_head) != cfg.text[n_head_field]:
        raise CheckpointError(f"{path}: the file stores its architecture with text.{n_head_field}="
                              f"{cfg.text[n_head_field]}, but n_head={n_head} was given; drop --n-head")
    return cfg


formats.register(formats.WeightFormat(
    name="msclap", family="msclap-2023", suffixes=(".pth", ".pt", ".bin", ".safetensors"),
    load=load_msclap_checkpoint, save=save_msclap))
