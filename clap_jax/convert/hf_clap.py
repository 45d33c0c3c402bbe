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
from clap_jax.convert.tree import CheckpointError, flatten
from clap_jax.models import laion as laion_model

_ONLY_OURS = re.compile(r"^(audio_branch\.(tscam_conv|head|spectrogram_extractor|logmel_extractor)\.|"
                        r"(audio|text)_transform\.)|\.attn_mask$")
_BLOCK = [("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."),
          ("attn.relative_position_bias_table", "attention.self.relative_position_bias_table"),
          ("attn.relative_position_index", "attention.self.relative_position_index"),
          ("attn.proj.", "attention.output.dense."), ("mlp.fc1.", "intermediate.dense."),
          ("mlp.fc2.", "output.dense.")]


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
def _laion_to_hf_key(k: str) -> str:
    if k.startswith("audio_branch."):
        k = "audio_model.audio_encoder." + k[len("audio_branch."):]
        k = k.replace(".bn0.", ".batch_norm.")
        if ".blocks." in k:
            for a, b in _BLOCK:
                k = k.replace(a, b)
        return k
    if k.startswith("text_branch."):
        return "text_model." + k[len("text_branch."):]
    return re.sub(r"^(audio|text)_projection\.([02])\.",
                  lambda m: f"{m.group(1)}_projection.linear{1 if m.group(2) == '0' else 2}.", k)


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
        out[_laion_to_hf_key(k)] = v
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
        if k.startswith("audio_model.audio_encoder."):
            n = "audio_branch." + k[len("audio_model.audio_encoder."):]
            n = n.replace(".batch_norm.", ".bn0.")
            if ".blocks." in n:
                for a, b in _BLOCK:
                    n = n.replace(b, a)
        elif k.startswith("text_model."):
            n = "text_branch." + k[len("text_model."):]
        else:
            n = re.sub(r"^(audio|text)_projection\.linear([12])\.",
                       lambda m: f"{m.group(1)}_projection.{0 if m.group(2) == '1' else 2}.", k)
        out[n] = v
    return out


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------
def to_hf_config(cfg: ml_collections.ConfigDict) -> dict:
    a, t = cfg.audio, cfg.text
    latent = a.embed_dim * 2 ** (len(a.depths) - 1)
    text = dict(vocab_size=t.vocab_size, hidden_size=t.hidden_size, num_hidden_layers=t.num_layers,
                num_attention_heads=t.num_heads, intermediate_size=t.intermediate_size,
                max_position_embeddings=t.max_position_embeddings, type_vocab_size=t.type_vocab_size,
                layer_norm_eps=t.layer_norm_eps, pad_token_id=t.pad_token_id, bos_token_id=0, eos_token_id=2,
                projection_dim=cfg.d_joint, projection_hidden_act="relu", hidden_act="gelu")
    audio = dict(window_size=a.window_size, num_mel_bins=a.mel_bins, spec_size=a.spec_size, patch_size=a.patch_size,
                 patch_stride=[a.patch_size, a.patch_size], num_classes=a.num_classes, hidden_size=latent,
                 projection_dim=cfg.d_joint, depths=list(a.depths), num_attention_heads=list(a.num_heads),
                 enable_fusion=bool(a.get("fusion", False)), patch_embeds_hidden_size=a.embed_dim,
                 mlp_ratio=a.mlp_ratio, layer_norm_eps=1e-5, projection_hidden_act="relu", aff_block_r=4)
    return {"model_type": "clap", "architectures": ["ClapModel"], "text_config": text, "audio_config": audio,
            "projection_dim": cfg.d_joint, "projection_hidden_act": "relu",
            "logit_scale_init_value": float(np.exp(cfg.logit_scale_init)), "hidden_size": latent}


def from_hf_config(d: dict, source: str) -> ml_collections.ConfigDict:
    try:
        a, t = d["audio_config"], d["text_config"]
        fusion = bool(a.get("enable_fusion", False))
        cfg = laion_model.laion_config("tiny", fusion)
        ca, ct = cfg.audio, cfg.text
        ca.embed_dim = int(a.get("patch_embeds_hidden_size", 96))
        ca.depths = tuple(int(x) for x in a.get("depths", (2, 2, 6, 2)))
        ca.num_heads = tuple(int(x) for x in a.get("num_attention_heads", (4, 8, 16, 32)))
        ca.window_size = int(a.get("window_size", 8))
        ca.mel_bins = int(a.get("num_mel_bins", 64))
        ca.spec_size = int(a.get("spec_size", 256))
        ca.patch_size = int(a.get("patch_size", 4))
        ca.num_classes = int(a.get("num_classes", 527))
        ca.mlp_ratio = float(a.get("mlp_ratio", 4.0))
        ct.vocab_size = int(t.get("vocab_size", 50265))
        ct.hidden_size = int(t.get("hidden_size", 768))
        ct.num_layers = int(t.get("num_hidden_layers", 12))
        ct.num_heads = int(t.get("num_attention_heads", 12))
        ct.intermediate_size = int(t.get("intermediate_size", 3072))
        ct.max_position_embeddings = int(t.get("max_position_embeddings", 514))
        ct.type_vocab_size = int(t.get("type_vocab_size", 1))
        ct.layer_norm_eps = float(t.get("layer_norm_eps", 1e-12))   # HF's default when config.json omits it
        ct.pad_token_id = int(t.get("pad_token_id", 1))
        cfg.d_joint = int(d.get("projection_dim", a.get("projection_dim", 512)))
        cfg.logit_scale_init = float(np.log(d.get("logit_scale_init_value", 1 / 0.07)))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: not a HF ClapModel config ({type(e).__name__}: {e})") from e
    try:
        laion_model.validate(cfg)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e
    return cfg


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


def _read_hf_weights(path: str) -> dict[str, np.ndarray]:
    st, binf = os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(st):
        from safetensors.numpy import load_file

        try:
            return dict(load_file(st))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{st}: not a readable safetensors file ({e})") from e
    if os.path.isfile(binf):
        import torch

        try:
            obj = torch.load(binf, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{binf}: unreadable or refused PyTorch file ({type(e).__name__})") from e
        return {k: v.detach().cpu().numpy() for k, v in obj.items()}
    raise CheckpointError(f"{path}: a HF ClapModel directory without model.safetensors or pytorch_model.bin")


def load_hf_clap(path: str, cfg: ml_collections.ConfigDict | None = None):
    """A HF ClapModel directory -> (variables, laion-clap config)."""
    from clap_jax.models import registry

    path = os.fspath(path)
    if cfg is None:
        with open(os.path.join(path, "config.json")) as f:
            cfg = from_hf_config(json.load(f), os.path.join(path, "config.json"))
    sd = hf_to_laion(_read_hf_weights(path), path)
    fresh = jax.device_get(registry.init_variables(cfg, 0))
    for k, v in cv.to_laion_state_dict(fresh, cfg).items():   # what HF does not hold (see module docstring)
        if _ONLY_OURS.search(k):
            if k in sd:
                raise CheckpointError(f"{path}: unexpected key {k} for a HF ClapModel")
            sd[k] = v
    return cv.from_laion_state_dict(sd, cfg, source=path), cfg
