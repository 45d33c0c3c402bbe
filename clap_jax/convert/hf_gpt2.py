"""HF GPT-2 weights (a directory with `model.safetensors`, or `pytorch_model.bin`) -> our text tower params.

HF names: `wte.weight`, `wpe.weight`, `h.{i}.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.c_proj}.{weight,bias}`,
`ln_f.{weight,bias}`, optionally prefixed `transformer.` (GPT2LMHeadModel). Conv1D weights are (in, out) like a
Flax Dense kernel, so they are copied as they are.
"""
from __future__ import annotations

import re

import ml_collections
import numpy as np

from clap_jax.convert import torch_state
from clap_jax.convert.tree import check_finite, mismatch_error, unflatten
from clap_jax.models import config as model_config


def read_hf_gpt2(directory: str) -> tuple[dict[str, np.ndarray], dict]:
    """-> (state dict without prefix, config.json dict or {})."""
    return torch_state.read_hf_directory(directory, "GPT-2", r"^transformer\.")


def text_config_from_hf(hf_cfg: dict, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return torch_state.text_config_from_hf(hf_cfg, base, (
        ("vocab_size", "vocab_size"), ("n_positions", "n_positions"), ("n_embd", "n_embd"), ("n_layer", "n_layer"),
        ("n_head", "n_head"), ("layer_norm_epsilon", "layer_norm_epsilon")))


def gpt2_params_from_hf(sd: dict[str, np.ndarray], text_cfg: ml_collections.ConfigDict, source: str = "gpt2"):
    """HF state dict -> params of `GPT2(text_cfg)` (the `caption_encoder/base` subtree). Strict."""
    flat, missing, bad = {}, [], []

    def take(key, path, shape):
        if key not in sd:
            missing.append(key)
            return
        x = np.asarray(sd[key], np.float32)
        if x.shape != shape:
            bad.append(f"{key}: {x.shape} != {shape}")
            return
        flat[path] = x

    c, v, p = text_cfg.n_embd, text_cfg.vocab_size, text_cfg.n_positions
    take("wte.weight", ("wte", "embedding"), (v, c))
    take("wpe.weight", ("wpe", "embedding"), (p, c))
    for i in range(text_cfg.n_layer):
        for mod, shape_w in (("attn.c_attn", (c, 3 * c)), ("attn.c_proj", (c, c)), ("mlp.c_fc", (c, 4 * c)),
                             ("mlp.c_proj", (4 * c, c))):
            a, b = mod.split(".")
            take(f"h.{i}.{mod}.weight", (f"h_{i}", a, b, "kernel"), shape_w)
            take(f"h.{i}.{mod}.bias", (f"h_{i}", a, b, "bias"), (shape_w[1],))
        for ln in ("ln_1", "ln_2"):
            take(f"h.{i}.{ln}.weight", (f"h_{i}", ln, "scale"), (c,))
            take(f"h.{i}.{ln}.bias", (f"h_{i}", ln, "bias"), (c,))
    take("ln_f.weight", ("ln_f", "scale"), (c,))
    take("ln_f.bias", ("ln_f", "bias"), (c,))
    known = re.compile(r"^(h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight)$")
    used = {k for k in sd if not known.match(k)}
    expected = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"} | {
        f"h.{i}.{m}.{w}" for i in range(text_cfg.n_layer)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "ln_1", "ln_2") for w in ("weight", "bias")}
    unexpected = sorted(used - expected)
    err = mismatch_error(source, missing, unexpected, bad, what="a GPT-2 of this size")
    if err is not None:
        raise err
    check_finite(sorted((".".join(k), v) for k, v in flat.items()), source)
    return unflatten(flat)


def load_hf_gpt2(directory: str, text_cfg: ml_collections.ConfigDict | None = None):
    """-> (GPT-2 params for caption_encoder/base, text config). Sizes from config.json when `text_cfg` is None."""
    sd, hf_cfg = read_hf_gpt2(directory)
    if text_cfg is None:
        text_cfg = text_config_from_hf(hf_cfg, model_config.text_2023())
    return gpt2_params_from_hf(sd, text_cfg, source=directory), text_cfg


def with_text_tower(params: dict, gpt2: dict) -> dict:
    """CLAP params with the GPT-2 of the text tower (`caption_encoder/base`) replaced by `gpt2`; the rest shared."""
    return dict(params, caption_encoder=dict(params["caption_encoder"], base=gpt2))
