"""HF transformers `ClapModel` directories (config.json + model.safetensors) <-> clap_jax LAION-CLAP weights.

HF's ClapModel is laion_clap's model renamed: `audio_branch.` -> `audio_model.audio_encoder.`, `bn0` ->
`batch_norm`, Swin blocks' `norm1/norm2` -> `layernorm_before/after`, `attn.qkv` split into
`attention.self.{query,key,value}`, `attn.proj` -> `attention.output.dense`, `mlp.fc1/fc2` ->
`intermediate.dense` / `output.dense`, `text_branch.` -> `text_model.`, projections' `.0/.2` ->
`.linear1/.linear2`. The weights are converted through laion_clap's layout (clap_jax.convert.laion).

What HF's model does not hold: the HTSAT tscam head (`tscam_conv`, `head`: clipwise outputs only, not
embeddings), laion's `audio_transform` / `text_transform` (its MLP loss only) and the front end's STFT kernels and
mel filterbank (HF computes mel features outside the model). On import these take their values from a fresh
model of the same config (seed 0), the front end's constants being the exact ones; on export they are left out.
Every other key must be there with the right shape (CheckpointError lists every problem).

HF's text LayerNorm epsilon defaults to 1e-12; laion's RoBERTa uses 1e-5. Import reads it from config.json;
export writes 1e-5 (the model's value), so `from_pretrained` gives the same text embeddings.
"""
from __future__ import annotations

import json
import os
import re

import jax
import ml_collections
import numpy as np

from clap_jax import files
from clap_jax.convert import laion as cv
from clap_jax.convert import torch_state
from clap_jax.convert.tree import CheckpointError
from clap_jax.models import laion as laion_model

_ONLY_OURS = re.compile(r"^(audio_branch\.(tscam_conv|head|spectrogram_extractor|logmel_extractor)\.|"
                        r"(audio|text)_transform\.)|\.attn_mask$")
# Key renames, laion layout <-> HF layout; each pair serves both directions.
_PREFIXES = (("audio_branch.", "audio_model.audio_encoder."), ("text_branch.", "text_model."),
             ("audio_projection.0.", "audio_projection.linear1."), ("audio_projection.2.", "audio_projection.linear2."),
             ("text_projection.0.", "text_projection.linear1."), ("text_projection.2.", "text_projection.linear2."))
_AUDIO = [(".bn0.", ".batch_norm.")]                          # anywhere in an audio key
_BLOCK = [("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."),   # in a Swin block's keys
          ("attn.relative_position_bias_table", "attention.self.relative_position_bias_table"),
          ("attn.relative_position_index", "attention.self.relative_position_index"),
          ("attn.proj.", "attention.output.dense."), ("mlp.fc1.", "intermediate.dense."),
          ("mlp.fc2.", "output.dense.")]

# Config fields, ours <-> HF config.json: (our field, HF name, HF's default when config.json omits it, type).
_INTS = lambda v: tuple(int(x) for x in v)  # noqa: E731
_AUDIO_FIELDS = (("embed_dim", "patch_embeds_hidden_size", 96, int), ("depths", "depths", (2, 2, 6, 2), _INTS),
                 ("num_heads", "num_attention_heads", (4, 8, 16, 32), _INTS), ("window_size", "window_size", 8, int),
                 ("mel_bins", "num_mel_bins", 64, int), ("spec_size", "spec_size", 256, int),
                 ("patch_size", "patch_size", 4, int), ("num_classes", "num_classes", 527, int),
                 ("mlp_ratio", "mlp_ratio", 4.0, float))
_TEXT_FIELDS = (("vocab_size", "vocab_size", 50265, int), ("hidden_size", "hidden_size", 768, int),
                ("num_layers", "num_hidden_layers", 12, int), ("num_heads", "num_attention_heads", 12, int),
                ("intermediate_size", "intermediate_size", 3072, int),
                ("max_position_embeddings", "max_position_embeddings", 514, int),
                ("type_vocab_size", "type_vocab_size", 1, int),
                ("layer_norm_eps", "layer_norm_eps", 1e-12, float),     # 1e-12: HF's default
                ("pad_token_id", "pad_token_id", 1, int))


def is_hf_clap_dir(path: str) -> bool:
    """A directory holding a HF ClapModel (config.json with model_type 'clap')."""
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        return False
    try:
        with open(cfg) as f:
            return json.load(f).get("model_type") == "clap"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


# ----------------------------------------------------------------------------------------------------------------
# Key renames (laion layout <-> HF layout)
# ----------------------------------------------------------------------------------------------------------------
def _rename(k: str, to_hf: bool) -> str:
    """A key renamed laion -> HF (`to_hf`) or HF -> laion; the fused qkv is handled by the callers."""
    pick = (lambda pair: pair) if to_hf else (lambda pair: pair[::-1])  # noqa: E731
    for src, dst in map(pick, _PREFIXES):
        if k.startswith(src):
            k = dst + k[len(src):]
            break
    else:
        return k
    if src == pick(_PREFIXES[0])[0]:                         # an audio key
        for a, b in map(pick, _AUDIO + (_BLOCK if ".blocks." in k else [])):
            k = k.replace(a, b)
    return k


def laion_to_hf(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in sd.items():
        if _ONLY_OURS.search(k):
            continue
        m = re.match(r"^audio_branch\.(layers\.\d+\.blocks\.\d+)\.attn\.qkv\.(weight|bias)$", k)
        if m:
            base = f"audio_model.audio_encoder.{m.group(1)}.attention.self."
            for name, part in zip(("query", "key", "value"), np.split(np.asarray(v), 3, axis=0)):
                out[f"{base}{name}.{m.group(2)}"] = np.ascontiguousarray(part)
            continue
        out[_rename(k, to_hf=True)] = v
    return out


def hf_to_laion(sd: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    inverse = {}
    for k, v in sd.items():
        m = re.match(r"^audio_model\.audio_encoder\.(layers\.\d+\.blocks\.\d+)\.attention\.self\."
                     r"(query|key|value)\.(weight|bias)$", k)
        if m:
            inverse.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = v
            continue
        inverse[k] = v
    out = {}
    for k, v in inverse.items():
        if isinstance(k, tuple):
            missing = [n for n in ("query", "key", "value") if n not in v]
            if missing:
                raise CheckpointError(f"{source}: {k[0]}.attention.self: missing {', '.join(missing)}.{k[1]}")
            out[f"audio_branch.{k[0]}.attn.qkv.{k[1]}"] = np.concatenate([v["query"], v["key"], v["value"]], 0)
            continue
        n = _rename(k, to_hf=False)
        out[n] = v
    return out


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------
def to_hf_config(cfg: ml_collections.ConfigDict) -> dict:
    a, t = cfg.audio, cfg.text
    latent = a.embed_dim * 2 ** (len(a.depths) - 1)
    hf = lambda group, fields: {theirs: (list(group[ours]) if isinstance(group[ours], tuple) else group[ours])  # noqa: E731
                                for ours, theirs, _, _ in fields}
    text = dict(hf(t, _TEXT_FIELDS), bos_token_id=0, eos_token_id=2, projection_dim=cfg.d_joint,
                projection_hidden_act="relu", hidden_act="gelu")
    audio = dict(hf(a, _AUDIO_FIELDS), patch_stride=[a.patch_size, a.patch_size], hidden_size=latent,
                 projection_dim=cfg.d_joint, enable_fusion=bool(a.get("fusion", False)), layer_norm_eps=1e-5,
                 projection_hidden_act="relu", aff_block_r=4)
    return {"model_type": "clap", "architectures": ["ClapModel"], "text_config": text, "audio_config": audio,
            "projection_dim": cfg.d_joint, "projection_hidden_act": "relu",
            "logit_scale_init_value": float(np.exp(cfg.logit_scale_init)), "hidden_size": latent}


def from_hf_config(d: dict, source: str) -> ml_collections.ConfigDict:
    try:
        a, t = d["audio_config"], d["text_config"]
        fusion = bool(a.get("enable_fusion", False))
        cfg = laion_model.laion_config("tiny", fusion)
        for ours_group, theirs_group, fields in ((cfg.audio, a, _AUDIO_FIELDS), (cfg.text, t, _TEXT_FIELDS)):
            for ours, theirs, default, typ in fields:
                ours_group[ours] = typ(theirs_group.get(theirs, default))
        cfg.d_joint = int(d.get("projection_dim", a.get("projection_dim", 512)))
        cfg.logit_scale_init = float(np.log(d.get("logit_scale_init_value", 1 / 0.07)))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: not a HF ClapModel config ({type(e).__name__}: {e})") from e
    return torch_state.validated(cfg, laion_model.validate, source)


# ----------------------------------------------------------------------------------------------------------------
# Export / import
# ----------------------------------------------------------------------------------------------------------------
def save_hf_clap(variables, cfg: ml_collections.ConfigDict, out_dir: str) -> None:
    """Write `out_dir`/config.json + model.safetensors that transformers' `ClapModel.from_pretrained` loads
    without missing or unexpected keys."""
    from safetensors.numpy import save_file

    if os.path.isfile(out_dir):
        raise CheckpointError(f"{out_dir}: is a file; give a directory for the HF ClapModel")
    os.makedirs(out_dir, exist_ok=True)
    sd = laion_to_hf(cv.to_laion_state_dict(variables, cfg))
    sd["text_model.embeddings.token_type_ids"] = np.zeros((1, cfg.text.max_position_embeddings), np.int64)
    with files.atomic_path(os.path.join(out_dir, "model.safetensors")) as tmp:
        # np.array (not ascontiguousarray) keeps the 0-d logit scales 0-d
        save_file({k: np.array(v, order="C") for k, v in sd.items()}, tmp, metadata={"format": "pt"})
    files.write_text(os.path.join(out_dir, "config.json"), json.dumps(to_hf_config(cfg), indent=2) + "\n")


def load_hf_clap(path: str, cfg: ml_collections.ConfigDict | None = None):
    """A HF ClapModel directory -> (variables, laion-clap config)."""
    from clap_jax.models import registry

    path = os.fspath(path)
    sd, hf_cfg = torch_state.read_hf_directory(path, "ClapModel")
    if cfg is None:
        cfg = from_hf_config(hf_cfg, os.path.join(path, "config.json"))
    sd = hf_to_laion(sd, path)
    fresh = jax.device_get(registry.init_variables(cfg, 0))
    for k, v in cv.to_laion_state_dict(fresh, cfg).items():   # what HF does not hold (see module docstring)
        if _ONLY_OURS.search(k):
            if k in sd:
                raise CheckpointError(f"{path}: unexpected key {k} for a HF ClapModel")
            sd[k] = v
    return cv.from_laion_state_dict(sd, cfg, source=path), cfg
