"""laion_clap (LAION-CLAP) `.pt` checkpoints <-> clap_jax weights, both directions.

A laion_clap checkpoint is `{'epoch', 'name', 'state_dict': {'module.' + key: tensor}, ...}` (training saves it
from a DistributedDataParallel model) or a bare state dict, with or without the `module.` prefix. Names map one to
one (`torch_name`):

  ours  ('params', 'audio_branch', 'layers_0', 'blocks_1', 'attn', 'qkv', 'kernel')
  torch 'audio_branch.layers.0.blocks.1.attn.qkv.weight'           (transposed: Linear is (out, in))
  ours  ('params', 'audio_branch', 'patch_embed', 'fusion_model', 'local_att_1', 'scale')
  torch 'audio_branch.patch_embed.fusion_model.local_att.1.weight'
  ours  ('params', 'text_branch', 'encoder', 'layer_3', 'attention', 'self', 'query', 'kernel')
  torch 'text_branch.encoder.layer.3.attention.self.query.weight'

`text_branch.embeddings.position_ids` is stored by checkpoints written with transformers < 4.31 and not by later
ones: import accepts both; export writes it, because laion_clap's `load_ckpt` deletes that key unconditionally
(a file without it fails there with a KeyError) before loading strictly.

Import never unpickles code (`torch.load(weights_only=True)`) and fails loudly, naming the keys, on anything
missing, unexpected (other than buffers that are regenerated), of the wrong shape, or NaN/inf. A file without a
stored clap_jax config gets its sizes from the weights; RoBERTa's head count, which no shape shows, is
hidden_size // 64 (12 for roberta-base) unless given.
"""
from __future__ import annotations

import os
import re
import zipfile

import ml_collections
import numpy as np

from clap_jax import files
from clap_jax.convert import formats, torch_state
from clap_jax.convert.msclap import CONFIG_KEY, check_export_path
from clap_jax.convert.tree import CheckpointError, config_from_dict, config_to_json, flatten
from clap_jax.models import laion as laion_model

FAMILY = laion_model.FAMILY
MARKER = "audio_branch.patch_embed.proj.weight"   # every laion_clap HTSAT checkpoint holds it

# Buffers torch derives from the geometry (or counts): accepted on import, regenerated on export.
_DERIVED_BUFFER = re.compile(r"(\.attn\.relative_position_index|\.attn_mask|\.num_batches_tracked|"
                             r"^text_branch\.embeddings\.(position_ids|token_type_ids))$")
_INDEXED = re.compile(r"(layers|blocks|layer|local_att|global_att|audio_projection|text_projection|sequential)_(\d+)")


# ----------------------------------------------------------------------------------------------------------------
# Name and layout mapping
# ----------------------------------------------------------------------------------------------------------------
def _module_path(path) -> str:
    parts = []
    for p in path:
        m = _INDEXED.fullmatch(p)
        parts.extend(m.groups() if m else [p])
    return ".".join(parts)


def _kernel_kind(mods: list) -> str:
    conv = (mods[-2:] in (["patch_embed", "proj"], ["patch_embed", "mel_conv2d"]) or mods[-1:] == ["tscam_conv"]
            or "fusion_model" in mods)
    return "conv2d" if conv else "linear"


def torch_name(collection: str, path: tuple[str, ...]) -> tuple[str, str]:
    """Our (collection, path) -> (torch key, layout kind). Kinds: copy, linear, conv2d, stft."""
    return torch_state.torch_name_by_rules(collection, path, _module_path, _kernel_kind)


def _derived_buffers(cfg: ml_collections.ConfigDict, variables) -> dict[str, np.ndarray]:
    out = torch_state.htsat_derived_buffers(cfg.audio, "audio_branch.")
    for path, _ in flatten(variables.get("batch_stats", {})):
        if path[-1] == "mean":
            out[torch_name("batch_stats", path)[0].rsplit(".", 1)[0] + ".num_batches_tracked"] = np.array(0, np.int64)
    out["text_branch.embeddings.position_ids"] = np.arange(cfg.text.max_position_embeddings, dtype=np.int64)[None]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------
def to_laion_state_dict(variables, cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Flax variables -> {key: numpy} (no `module.` prefix) that laion_clap's `load_ckpt` loads strictly."""
    sd = torch_state.variables_to_state_dict(variables, torch_name)
    sd.update(_derived_buffers(cfg, variables))
    return sd


def save_laion(variables, cfg, path: str, overwrite: bool = False) -> None:
    """Write a laion_clap `.pt`: {'epoch': 0, 'name': 'clap_jax', 'state_dict': {'module.' + key: tensor},
    'clap_jax_config': JSON}; atomically, over an existing file only if clap_jax wrote it or `overwrite`."""
    import torch

    path = os.fspath(path)
    if path.endswith(".safetensors"):
        raise CheckpointError(f"{path}: laion_clap checkpoints are PyTorch files; give a .pt or .pth name")
    if os.path.lexists(path) and not overwrite and not _is_ours(path):
        raise CheckpointError(f"{path}: exists and is not an export written by clap_jax; choose another name, or "
                              f"pass --overwrite (Python: overwrite=True) to replace it")
    check_export_path(path, overwrite=True)
    sd = to_laion_state_dict(variables, cfg)
    with files.atomic_path(path) as tmp:
        torch.save({"epoch": 0, "name": "clap_jax",
                    "state_dict": {"module." + k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
                    CONFIG_KEY: config_to_json(cfg)}, tmp)


def _is_ours(path: str) -> bool:
    try:
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return isinstance(obj, dict) and CONFIG_KEY in obj and "state_dict" in obj
    except Exception:  # noqa: BLE001 - unreadable: not recognisably ours
        return False


# ----------------------------------------------------------------------------------------------------------------
# Import
# ----------------------------------------------------------------------------------------------------------------
def read_laion_file(path: str) -> tuple[dict[str, np.ndarray], dict | None]:
    """A laion_clap `.pt` -> ({key without 'module.': numpy}, stored clap_jax config dict or None)."""
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (not a zip archive; truncated or wrong format?)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise torch_state.refuse_torch_load(path, e) from e
    raw = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(raw, dict) or not raw or not all(hasattr(v, "numpy") for v in raw.values()):
        raise CheckpointError(f"{path}: expected a laion_clap checkpoint (a dict with a 'state_dict' of tensors)")
    sd = {(k[len("module."):] if k.startswith("module.") else k): v.detach().cpu().numpy() for k, v in raw.items()}
    return sd, torch_state.parse_stored_config(obj.get(CONFIG_KEY) if "state_dict" in obj else None, path, CONFIG_KEY)


def infer_config(sd: dict[str, np.ndarray], n_head: int | None = None,
                 source: str = "checkpoint") -> ml_collections.ConfigDict:
    """A laion-clap config whose shapes match `sd` (sizes read off the weights; fusion from its fusion keys)."""
    h = "audio_branch."
    try:
        fusion = any(k.startswith(h + "patch_embed.fusion_model.") for k in sd)
        embed = int(sd[h + "patch_embed.proj.weight"].shape[0])
        cfg = laion_model.laion_config("base" if embed == 128 else "tiny", fusion)
        a = cfg.audio
        a.embed_dim = embed
        a.patch_size = int(sd[h + "patch_embed.proj.weight"].shape[-1])
        stages = sorted({int(m.group(1)) for k in sd if (m := re.match(r"audio_branch\.layers\.(\d+)\.", k))})
        a.depths = tuple(len({k.split(".")[4] for k in sd if k.startswith(f"{h}layers.{i}.blocks.")})
                         for i in stages)
        a.num_heads = tuple(int(sd[f"{h}layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1])
                            for i in stages)
        a.num_classes = int(sd[h + "tscam_conv.weight"].shape[0])
        a.mel_bins = int(sd[h + "bn0.weight"].shape[0])
        t = cfg.text
        t.vocab_size, t.hidden_size = map(int, sd["text_branch.embeddings.word_embeddings.weight"].shape)
        t.max_position_embeddings = int(sd["text_branch.embeddings.position_embeddings.weight"].shape[0])
        t.type_vocab_size = int(sd["text_branch.embeddings.token_type_embeddings.weight"].shape[0])
        t.num_layers = len({k.split(".")[3] for k in sd if k.startswith("text_branch.encoder.layer.")})
        t.intermediate_size = int(sd["text_branch.encoder.layer.0.intermediate.dense.weight"].shape[0])
        t.num_heads = int(n_head) if n_head is not None else max(1, t.hidden_size // 64)
        cfg.d_joint = int(sd["audio_projection.0.weight"].shape[0])
    except KeyError as e:
        raise CheckpointError(f"{source}: not a laion_clap HTSAT + RoBERTa state dict: missing {e.args[0]}") from e
    return torch_state.validated(cfg, laion_model.validate, source)


def from_laion_state_dict(sd: dict[str, np.ndarray], cfg: ml_collections.ConfigDict, source: str = "checkpoint"):
    """{key (no 'module.'): array} -> Flax variables for `cfg`. CheckpointError lists every bad key."""
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
    return torch_state.state_dict_to_variables(sd, cfg, source, torch_name=torch_name, ignore=_DERIVED_BUFFER)


def load_laion(path: str, cfg: ml_collections.ConfigDict | None = None, n_head: int | None = None):
    """Read a laion_clap checkpoint -> (variables, config): the stored config, else one read off the weights."""
    sd, stored = read_laion_file(path)
    if cfg is None:
        cfg = (config_from_dict(stored, source=f"{path} ({CONFIG_KEY})") if stored is not None
               else infer_config(sd, n_head=n_head, source=path))
    if cfg.get("family") != FAMILY:
        raise CheckpointError(f"{path}: holds a LAION-CLAP model but the config given is of family "
                              f"{cfg.get('family')!r}")
    return from_laion_state_dict(sd, cfg, source=path), cfg


def sniff(path: str) -> bool:
    """Whether a .pt/.pth holds a laion_clap model (its 'state_dict' keys name audio_branch / text_branch)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
        return any(k in sd for k in (MARKER, "module." + MARKER))
    except Exception:  # noqa: BLE001 - unreadable here: the loader that claims it reports the problem
        return False


formats.register(formats.WeightFormat(
    name="laion-clap", family=FAMILY, suffixes=(".pt", ".pth", ".bin"), load=load_laion, save=save_laion,
    sniff=sniff))
