"""msclap's captioner weights (`clapcap_weights_2023.pth` layout) <-> clap_jax variables, both directions.

Keys are msclap's `ClapCaptionModel` state dict:
  clap.base.htsat.*, clap.projection.*     the CLAP audio encoder (laid out as in msclap's CLAP checkpoints)
  clap_project.linear.*, clap_project.prefix_const, clap_project.transformer.layers.N.*   the mapper
  gpt.transformer.*                        GPT-2 (HF Conv1D weights, (in, out) as ours)
  gpt.lm_head.weight                       the LM head, tied to gpt.transformer.wte.weight: written as a copy of
                                           it on export; on import it must equal it (an untied head is refused)

Files written by older transformers also hold GPT-2's causal-mask buffers `gpt.transformer.h.N.attn.bias` and
`.attn.masked_bias`: accepted and ignored by those names. Everything else must be exactly the model's keys and
shapes, finite. Import never unpickles code (`torch.load(weights_only=True)`). An export stores the clap_jax model
config next to the weights (as msclap CLAP exports do) and is read back from it; msclap's own file gets msclap's
architecture when every shape is that model's (GPT-2's head count is not stored: `n_head=` otherwise).
"""
from __future__ import annotations

import os
import re

import ml_collections
import numpy as np

from clap_jax.convert import formats, torch_state
from clap_jax.convert import msclap as msclap_fmt
from clap_jax.convert.tree import CheckpointError
from clap_jax.models import clapcap as clapcap_model

LM_HEAD = "gpt.lm_head.weight"
WTE = "gpt.transformer.wte.weight"
_DERIVED = re.compile(r"^clap\..*(\.attn\.relative_position_index|\.attn_mask|\.num_batches_tracked)$"
                      r"|^gpt\.transformer\.h\.\d+\.attn\.(bias|masked_bias)$")
_MARKER = "clap_project.linear.weight"


def torch_name(collection: str, path: tuple[str, ...]) -> tuple[str, str]:
    """Our (collection, path) -> (msclap clapcap key, layout kind), by the CLAP converter's rules."""
    if path[:1] == ("clap",):
        key, kind = msclap_fmt.torch_name(collection, ("audio_encoder",) + path[1:])
        return "clap." + key[len("audio_encoder."):], kind
    if path[:2] == ("gpt", "transformer"):
        key, kind = msclap_fmt.torch_name(collection, ("caption_encoder", "base") + path[2:])
        return "gpt.transformer." + key[len("caption_encoder.base."):], kind
    return msclap_fmt.torch_name(collection, path)


def to_state_dict(variables, cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Flax variables -> {key: numpy array} that msclap's `ClapCaptionModel.load_state_dict(strict=True)` takes
    (caption.prefix_batch_norm folded into the mapper's linear layer)."""
    variables, cfg = fold_prefix_norm(variables, cfg)
    sd = torch_state.variables_to_state_dict(variables, torch_name)
    for key, v in msclap_fmt._derived_buffers(cfg).items():
        sd["clap." + key[len("audio_encoder."):]] = v
    sd[LM_HEAD] = sd[WTE].copy()
    return sd


def from_state_dict(sd: dict[str, np.ndarray], cfg: ml_collections.ConfigDict, source: str = "checkpoint"):
    """{key: array} -> Flax variables for `cfg`. Raises CheckpointError listing every bad key."""
    variables = torch_state.state_dict_to_variables(sd, cfg, source, torch_name=torch_name, ignore=_DERIVED,
                                                    extra_keys=(LM_HEAD,))
    head, wte = np.asarray(sd[LM_HEAD], np.float32), np.asarray(sd[WTE], np.float32)
    if head.shape != wte.shape or not np.array_equal(head, wte):
        raise CheckpointError(f"{source}: {LM_HEAD} differs from {WTE}; the captioner's LM head is tied to the token "
                              f"embedding, and an untied head is not supported")
    return variables


def infer_config(sd: dict[str, np.ndarray], n_head: int | None = None,
                 source: str = "checkpoint") -> ml_collections.ConfigDict:
    """A captioner config whose shapes match a state dict that stores none (msclap's own file)."""
    if _MARKER not in sd or "clap_project.prefix_const" not in sd:
        raise CheckpointError(f"{source}: not a msclap captioner state dict: missing {_MARKER} / "
                              f"clap_project.prefix_const")
    renamed = {}
    for k, v in sd.items():
        if k.startswith("clap."):
            renamed["audio_encoder." + k[5:]] = v
        elif k.startswith("gpt.transformer."):
            renamed["caption_encoder.base." + k[len("gpt.transformer."):]] = v
    base = msclap_fmt.infer_config(renamed, n_head=n_head, source=source)
    cfg = clapcap_model.clapcap_2023()
    cfg.audio, cfg.text, cfg.d_proj = base.audio, base.text, base.d_proj
    k = cfg.caption
    k.prefix_length = int(sd["clap_project.prefix_const"].shape[0])
    k.clip_length = int(sd[_MARKER].shape[0]) // cfg.text.n_embd
    layer = re.compile(r"clap_project\.transformer\.layers\.(\d+)\.")
    k.num_layers = len({m.group(1) for key in sd if (m := layer.match(key))})
    fc1 = sd.get("clap_project.transformer.layers.0.mlp.fc1.weight")
    if fc1 is not None:
        k.mlp_ratio = fc1.shape[0] / cfg.text.n_embd
    return torch_state.validated(cfg, clapcap_model.validate, source)


def load(path: str, cfg: ml_collections.ConfigDict | None = None, n_head: int | None = None):
    """msclap captioner `.pth` / `.safetensors` -> (variables, config)."""
    sd, stored = msclap_fmt.read_msclap_file(path)
    if cfg is None:
        cfg = msclap_fmt.stored_or_inferred_config(path, sd, stored, n_head, infer_config, "n_head")
    if cfg.get("family") != clapcap_model.FAMILY:
        raise CheckpointError(f"{path}: holds captioner weights, but the model config is of family "
                              f"{cfg.get('family')!r}, not {clapcap_model.FAMILY!r}")
    return from_state_dict(sd, cfg, source=path), cfg


def fold_prefix_norm(variables, cfg: ml_collections.ConfigDict):
    """A model with caption.prefix_batch_norm (BatchNorm without scale or bias before the mapper, which msclap's
    captioner lacks) -> the same function in msclap's layout: at inference the norm is the affine map
    (x - mean) / sqrt(var + 1e-5), folded into the mapper's first linear layer. Returns (variables, cfg) without
    the norm; a model without it is returned as it is. With normalize_prefix (L2 after the norm) there is no such
    fold: CheckpointError."""
    if not cfg.caption.get("prefix_batch_norm", False):
        return variables, cfg
    if cfg.caption.normalize_prefix:
        raise CheckpointError("caption.prefix_batch_norm with caption.normalize_prefix: the L2 normalisation after "
                              "the batch norm cannot be folded into msclap's mapper; this model has no msclap layout")
    stats = variables["batch_stats"]["prefix_norm"]
    inv = 1.0 / np.sqrt(np.asarray(stats["var"], np.float64) + 1e-5)
    mean = np.asarray(stats["mean"], np.float64)
    lin = variables["params"]["clap_project"]["linear"]
    kernel = np.asarray(lin["kernel"], np.float64)
    folded = {"kernel": (kernel * inv[:, None]).astype(np.float32),
              "bias": (np.asarray(lin["bias"], np.float64) - (mean * inv) @ kernel).astype(np.float32)}
    params = dict(variables["params"], clap_project=dict(variables["params"]["clap_project"], linear=folded))
    batch_stats = {k: v for k, v in variables["batch_stats"].items() if k != "prefix_norm"}
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.caption.prefix_batch_norm = False
    return dict(variables, params=params, batch_stats=batch_stats), cfg


def save(variables, cfg, path: str, overwrite: bool = False) -> None:
    """Write msclap's captioner layout: `.pth` ({'model': state dict, config JSON}) or `.safetensors` (config in
    the metadata), replacing only a clap_jax export unless `overwrite`; the file appears whole or not at all.
    A batch norm before the mapper (caption.prefix_batch_norm) is folded into the mapper's linear layer."""
    path = os.fspath(path)
    msclap_fmt.check_export_path(path, overwrite)
    variables, cfg = fold_prefix_norm(variables, cfg)
    msclap_fmt.write_state_dict_file(to_state_dict(variables, cfg), cfg, path, "msclap-clapcap")


def sniff(path: str) -> bool:
    """Whether a `.pth` / `.safetensors` file holds captioner weights (it has the mapper's keys)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, "np") as f:
                return _MARKER in f.keys()
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        sd = obj.get("model", obj) if isinstance(obj, dict) else {}
        return isinstance(sd, dict) and _MARKER in sd
    except Exception:  # noqa: BLE001 - unreadable is not recognisably a captioner; the loader reports why
        return False


formats.register(formats.WeightFormat(
    name="msclap-clapcap", family=clapcap_model.FAMILY, suffixes=(".pth", ".pt", ".bin", ".safetensors"),
    load=load, save=save, sniff=sniff))
