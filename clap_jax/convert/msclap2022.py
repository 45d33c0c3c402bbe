"""msclap version-'2022' (Cnn14 + BERT) <-> clap_jax weights, both directions.

Files: msclap's `CLAP_weights_2022.pth` ({'model': state_dict}) or a `.safetensors` with the same keys; exports
carry the clap_jax model config like the 2023 format (clap_jax.convert.msclap). Names map one to one:

  ours  ('params', 'audio_encoder', 'base', 'conv_block3', 'bn2', 'scale')
  torch 'audio_encoder.base.conv_block3.bn2.weight'
  ours  ('params', 'caption_encoder', 'base', 'encoder', 'layer_4', 'attention', 'self', 'query', 'kernel')
  torch 'caption_encoder.base.encoder.layer.4.attention.self.query.weight'     (transposed: Linear is (out, in))

Layouts: Linear (out, in) <-> Dense (in, out); Conv2d (out, in, kh, kw) <-> (kh, kw, in, out); LayerNorm /
BatchNorm weight <-> scale; Embedding weight <-> embedding; BatchNorm running_mean/var <-> batch_stats mean/var;
STFT kernels (513, 1, 1024) <-> (1024, 513) constants.

Import never unpickles code and checks every key: missing, unexpected (other than counters and BERT's position
ids buffer, which are regenerated), wrong shape, NaN/inf. A file without a stored config (msclap's own) has every
size read off its weight shapes except BERT's head count, which is taken as bert-base's 12 when the shapes are
bert-base's and must be given (`n_head=`) otherwise.

The family of a msclap file is told from its keys (`sniff`): `audio_encoder.base.conv_block1.conv1.weight` is
CNN14's; a stored clap_jax config names its family outright.
"""
from __future__ import annotations

import json
import os
import re
import zipfile

import ml_collections
import numpy as np

from clap_jax.convert import formats, torch_state
from clap_jax.convert.msclap import (CONFIG_KEY, check_export_path, read_msclap_file, stored_or_inferred_config,
                                     write_state_dict_file)
from clap_jax.convert.tree import CheckpointError
from clap_jax.models import clap2022

FAMILY = clap2022.FAMILY
MARKER_KEY = "audio_encoder.base.conv_block1.conv1.weight"

_DERIVED_BUFFER = re.compile(
    r"(\.num_batches_tracked|caption_encoder\.base\.embeddings\.(position_ids|token_type_ids))$")


# ----------------------------------------------------------------------------------------------------------------
# Name and layout mapping
# ----------------------------------------------------------------------------------------------------------------
def _module_path(mods) -> str:
    parts = []
    for p in mods:
        m = re.fullmatch(r"layer_(\d+)", p)
        parts.extend(["layer", m.group(1)] if m else [p])
    return ".".join(parts)


def _kernel_kind(mods: list) -> str:
    return "conv2d" if re.fullmatch(r"conv\d", mods[-1]) else "linear"


def torch_name(collection: str, path: tuple[str, ...]) -> tuple[str, str]:
    """Our (collection, path) -> (torch key, layout kind). Kinds: copy, linear, conv2d, stft."""
    return torch_state.torch_name_by_rules(collection, path, _module_path, _kernel_kind)


# ----------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------
def to_msclap_state_dict(variables, cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Flax variables -> {torch key: array} that msclap's 2022 `CLAP.load_state_dict(strict=True)` accepts."""
    sd = torch_state.variables_to_state_dict(variables, torch_name)
    for key in [k for k in sd if k.endswith(".running_mean")]:
        sd[key[: -len("running_mean")] + "num_batches_tracked"] = np.array(0, np.int64)
    return sd


def save_msclap_2022(variables, cfg, path: str, overwrite: bool = False) -> None:
    """Write msclap's 2022 layout: `.pth` ({'model': state_dict, 'clap_jax_config': JSON}) or `.safetensors`
    (config in the metadata); replaces only a file clap_jax wrote unless `overwrite`; atomic."""
    path = os.fspath(path)
    if cfg.get("family") != FAMILY:
        raise CheckpointError(f"{path}: a {cfg.get('family')!r} model cannot be written in msclap's 2022 layout")
    check_export_path(path, overwrite)
    write_state_dict_file(to_msclap_state_dict(variables, cfg), cfg, path, "msclap-2022")


# ----------------------------------------------------------------------------------------------------------------
# Import
# ----------------------------------------------------------------------------------------------------------------
_BERT_BASE = dict(hidden_size=768, num_layers=12, intermediate_size=3072)


def infer_config(sd: dict[str, np.ndarray], n_head: int | None = None,
                 source: str = "checkpoint") -> ml_collections.ConfigDict:
    """A msclap-2022 config whose shapes match a state dict without a stored config."""
    cfg = clap2022.clap_2022()
    a, t = cfg.audio, cfg.text
    b, e = "audio_encoder.base.", "caption_encoder.base."
    try:
        block_key = re.compile(re.escape(b) + r"conv_block(\d+)\.conv1\.weight")
        blocks = sorted(int(m.group(1)) for k in sd if (m := block_key.fullmatch(k)))
        a.channels = tuple(int(sd[f"{b}conv_block{i}.conv1.weight"].shape[0]) for i in blocks)
        a.out_emb = int(sd[b + "fc1.weight"].shape[0])
        a.num_classes = int(sd[b + "fc_audioset.weight"].shape[0])
        a.mel_bins = int(sd[b + "bn0.running_mean"].shape[0])
        a.n_fft = int(sd[b + "spectrogram_extractor.stft.conv_real.weight"].shape[-1])
        t.vocab_size, t.hidden_size = (int(x) for x in sd[e + "embeddings.word_embeddings.weight"].shape)
        t.max_position_embeddings = int(sd[e + "embeddings.position_embeddings.weight"].shape[0])
        t.type_vocab_size = int(sd[e + "embeddings.token_type_embeddings.weight"].shape[0])
        t.num_layers = len({k.split(".")[4] for k in sd if k.startswith(e + "encoder.layer.")})
        t.intermediate_size = int(sd[e + "encoder.layer.0.intermediate.dense.weight"].shape[0])
        cfg.d_proj = int(sd["audio_encoder.projection.linear1.weight"].shape[0])
    except KeyError as err:
        raise CheckpointError(f"{source}: not a msclap 2022 (Cnn14 + BERT) state dict: missing {err.args[0]}") from err
    if n_head is not None:
        t.num_heads = int(n_head)
    elif any(t[k] != v for k, v in _BERT_BASE.items()):
        raise CheckpointError(
            f"{source}: BERT's head count is not stored in this file, and its text tower is not bert-base "
            f"(hidden {t.hidden_size}, {t.num_layers} layers), whose 12 heads could be assumed; give the head "
            f"count with --n-head N (Python: n_head=N)")
    return torch_state.validated(cfg, clap2022.validate, source)


def from_msclap_state_dict(sd: dict[str, np.ndarray], cfg: ml_collections.ConfigDict, source: str = "checkpoint"):
    """{torch key: array} -> Flax variables for the msclap-2022 `cfg`. CheckpointError lists every bad key."""
    return torch_state.state_dict_to_variables(sd, cfg, source, torch_name=torch_name, ignore=_DERIVED_BUFFER)


def load_msclap_2022(path: str, cfg: ml_collections.ConfigDict | None = None, n_head: int | None = None):
    """Read a msclap 2022 checkpoint -> (variables, config): the stored config, else one read off the weights."""
    sd, stored = read_msclap_file(path)
    if cfg is None:
        cfg = stored_or_inferred_config(path, sd, stored, n_head, infer_config, "num_heads")
    if cfg.get("family") != FAMILY:
        raise CheckpointError(f"{path}: holds msclap's 2022 model (Cnn14 + BERT) but the config given is of family "
                              f"{cfg.get('family')!r}")
    return from_msclap_state_dict(sd, cfg, source=path), cfg


def _file_keys_and_family(path: str) -> tuple[set, str | None]:
    """The state dict keys and the stored config's family of a msclap-layout file, without loading tensors where
    the format allows (safetensors header; the .pth is memory-mapped)."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, "np") as f:
            meta = (f.metadata() or {}).get(CONFIG_KEY)
            keys = set(f.keys())
    else:
        if not zipfile.is_zipfile(path):
            return set(), None
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(obj, dict):
            return set(), None
        sd = obj.get("model", obj)
        keys = set(sd) if isinstance(sd, dict) else set()
        meta = obj.get(CONFIG_KEY) if "model" in obj else None
    fam = None
    if isinstance(meta, str):
        try:
            fam = json.loads(meta).get("family")
        except (json.JSONDecodeError, AttributeError):
            fam = None
    return keys, fam


def sniff(path: str) -> bool:
    """Whether a .pth/.safetensors holds msclap's 2022 model (by its stored family, else by its keys)."""
    try:
        keys, fam = _file_keys_and_family(path)
    except Exception:  # noqa: BLE001 - unreadable here: the loader that claims it reports the problem
        return False
    if fam is not None:
        return fam == FAMILY
    return MARKER_KEY in keys


formats.register(formats.WeightFormat(
    name="msclap-2022", family=FAMILY, suffixes=(".pth", ".pt", ".bin", ".safetensors"),
    load=load_msclap_2022, save=save_msclap_2022, sniff=sniff))
