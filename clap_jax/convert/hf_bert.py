"""HF BERT weights (a `bert-base-uncased`-layout directory: `model.safetensors` or `pytorch_model.bin`, and
`config.json`) -> the text tower of a msclap-2022 model (`caption_encoder/base`).

HF names are the model's own (`embeddings.*`, `encoder.layer.{i}.*`, `pooler.dense.*`), optionally prefixed
`bert.` (BertForPreTraining / BertForMaskedLM checkpoints, whose `cls.*` heads are not part of the encoder and are
ignored, as are the `position_ids` / `token_type_ids` buffers). A checkpoint without a pooler (BertForMaskedLM)
keeps the base model's pooler, which CLAP 2022 does not use ([CLS] pooling).
"""
from __future__ import annotations

import re

import ml_collections
import numpy as np

from clap_jax.convert import msclap2022, torch_state
from clap_jax.convert.tree import flatten, unflatten
from clap_jax.models import clap2022, registry

PREFIX = "caption_encoder.base."
_IGNORED = re.compile(r"^(cls\..*|embeddings\.(position_ids|token_type_ids))$")
_FIELDS = (("vocab_size", "vocab_size"), ("hidden_size", "hidden_size"), ("num_layers", "num_hidden_layers"),
           ("num_heads", "num_attention_heads"), ("intermediate_size", "intermediate_size"),
           ("max_position_embeddings", "max_position_embeddings"), ("type_vocab_size", "type_vocab_size"),
           ("layer_norm_eps", "layer_norm_eps"), ("init_std", "initializer_range"))


def read_hf_bert(directory: str) -> tuple[dict[str, np.ndarray], dict]:
    """-> (state dict without the `bert.` prefix, config.json dict or {})."""
    return torch_state.read_hf_directory(directory, "BERT", r"^bert\.")


def text_config_from_hf(hf_cfg: dict, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return torch_state.text_config_from_hf(hf_cfg, base, _FIELDS)


def bert_params_from_hf(sd: dict[str, np.ndarray], text_cfg: ml_collections.ConfigDict, base_params=None,
                        source: str = "bert"):
    """HF state dict -> params of `Bert(text_cfg)` (the `caption_encoder/base` subtree). Strict, except the
    pooler, which is taken from `base_params` when the file has none."""
    cfg = clap2022.clap_2022()
    cfg.text = text_cfg
    shapes = registry.variable_shapes(cfg)["params"]["caption_encoder"]["base"]

    def key_of(path):
        key, kind = msclap2022.torch_name("params", ("caption_encoder", "base") + path)
        return key[len(PREFIX):], kind

    def pooler(path):
        if path[0] == "pooler" and base_params is not None:
            return base_params["pooler"][path[1]][path[2]]
        return None

    return unflatten(torch_state.read_tree(sd, flatten(shapes), source, key_of=key_of, ignore=_IGNORED,
                                           fallback=pooler, what="a BERT of this size"))


def load_hf_bert(directory: str, text_cfg: ml_collections.ConfigDict | None = None, base_params=None):
    """-> (BERT params for caption_encoder/base, text config). Sizes from config.json when `text_cfg` is None."""
    sd, hf_cfg = read_hf_bert(directory)
    if text_cfg is None:
        text_cfg = text_config_from_hf(hf_cfg, clap2022.text_2022())
    return bert_params_from_hf(sd, text_cfg, base_params, source=directory), text_cfg
