"""HF BERT weights (a `bert-base-uncased`-layout directory: `model.safetensors` or `pytorch_model.bin`, and
`config.json`) -> the text tower of a msclap-2022 model (`caption_encoder/base`).

HF names are the model's own (`embeddings.*`, `encoder.layer.{i}.*`, `pooler.dense.*`), optionally prefixed
`bert.` (BertForPreTraining / BertForMaskedLM checkpoints, whose `cls.*` heads are not part of the encoder and are
ignored, as are the `position_ids` / `token_type_ids` buffers). A checkpoint without a pooler (BertForMaskedLM)
keeps the base model's pooler, which CLAP 2022 does not use ([CLS] pooling).
"""
from __future__ import annotations

import json
import os
import re

import ml_collections
import numpy as np

from clap_jax.convert import msclap2022
from clap_jax.convert.msclap import _refuse_torch_load
from clap_jax.convert.tree import CheckpointError, check_finite, flatten, mismatch_error, unflatten
from clap_jax.models import clap2022, registry

PREFIX = "caption_encoder.base."
_IGNORED = re.compile(r"^(cls\..*|embeddings\.(position_ids|token_type_ids))$")
_FIELDS = (("vocab_size", "vocab_size"), ("hidden_size", "hidden_size"), ("num_layers", "num_hidden_layers"),
           ("num_heads", "num_attention_heads"), ("intermediate_size", "intermediate_size"),
           ("max_position_embeddings", "max_position_embeddings"), ("type_vocab_size", "type_vocab_size"),
           ("layer_norm_eps", "layer_norm_eps"), ("init_std", "initializer_range"))


def read_hf_bert(directory: str) -> tuple[dict[str, np.ndarray], dict]:
    """-> (state dict without the `bert.` prefix, config.json dict or {})."""
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
            sd = {k: v.numpy() for k, v in torch.load(bin_, map_location="cpu", weights_only=True).items()}
        except Exception as e:
            raise _refuse_torch_load(bin_, e) from e
    elif not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such directory; expected a HF BERT directory (model.safetensors or "
                              f"pytorch_model.bin, and config.json)")
    else:
        raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin")
    sd = {re.sub(r"^bert\.", "", k): v for k, v in sd.items()}
    cfg_path = os.path.join(directory, "config.json")
    hf_cfg = {}
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path) as f:
                hf_cfg = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{cfg_path}: not a readable JSON file ({e})") from e
    return sd, hf_cfg


def text_config_from_hf(hf_cfg: dict, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict(base.to_dict())
    for ours, theirs in _FIELDS:
        if theirs in hf_cfg:
            t[ours] = hf_cfg[theirs]
    return t


def bert_params_from_hf(sd: dict[str, np.ndarray], text_cfg: ml_collections.ConfigDict, base_params=None,
                        source: str = "bert"):
    """HF state dict -> params of `Bert(text_cfg)` (the `caption_encoder/base` subtree). Strict, except the
    pooler, which is taken from `base_params` when the file has none."""
    cfg = clap2022.clap_2022()
    cfg.text = text_cfg
    shapes = registry.variable_shapes(cfg)["params"]["caption_encoder"]["base"]
    flat, missing, bad, used = {}, [], [], set()
    for path, spec in flatten(shapes):
        key, kind = msclap2022.torch_name("params", ("caption_encoder", "base") + path)
        key = key[len(PREFIX):]
        if key not in sd:
            if path[0] == "pooler" and base_params is not None:
                flat[path] = np.asarray(base_params["pooler"][path[1]][path[2]], np.float32)
                continue
            missing.append(key)
            continue
        used.add(key)
        x = msclap2022._from_torch_layout(np.asarray(sd[key]), kind)
        if tuple(x.shape) != tuple(spec.shape):
            bad.append(f"{key}: {tuple(np.asarray(sd[key]).shape)}, expected "
                       f"{tuple(msclap2022._to_torch_layout(np.zeros(spec.shape), kind).shape)}")
            continue
        flat[path] = np.array(x, np.float32, order="C")
    unexpected = sorted(k for k in sd if k not in used and not _IGNORED.match(k))
    err = mismatch_error(source, missing, unexpected, bad, what="a BERT of this size")
    if err is not None:
        raise err
    check_finite(sorted((".".join(k), v) for k, v in flat.items()), source)
    return unflatten(flat)


def load_hf_bert(directory: str, text_cfg: ml_collections.ConfigDict | None = None, base_params=None):
    """-> (BERT params for caption_encoder/base, text config). Sizes from config.json when `text_cfg` is None."""
    sd, hf_cfg = read_hf_bert(directory)
    if text_cfg is None:
        text_cfg = text_config_from_hf(hf_cfg, clap2022.text_2022())
    return bert_params_from_hf(sd, text_cfg, base_params, source=directory), text_cfg
