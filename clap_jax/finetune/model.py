"""The fine-tuning model (a family's audio tower + a linear head), layer-wise learning-rate decay, and mixup.

`Classifier` wraps any registered family's module: it calls the module's `encode_audio` and puts a Dense head on
the projected embedding ('embedding') or on the pooled output before the projection ('latent'). Only the audio
tower's variables exist in it (Flax creates a submodule's variables when it is called; the text tower never is),
under `clap/...`, so pretrained weights go in by name: `clap/audio_encoder/...` = the checkpoint's
`audio_encoder/...`.

Layer-wise learning-rate decay: the head learns at the full rate, the layer below it at `decay` times that, and so
on down to the input layers. `layer_depths` numbers the audio tower's layers from its parameter names (HTSAT's
`layers_i/blocks_j` and patch merging, CNN14's `conv_block<k>`, generic `<name>_<k>` blocks); front-end and
patch-embedding parameters sit at depth 0, the tower's final norm / heads and the projection above the last block.
"""
from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from clap_jax.models import registry
from clap_jax.train.sharding import path_str

BOTTOM = re.compile(r"(^|/)(bn0|patch_embed|conv_in|spectrogram|logmel|embed(dings?)?)(/|$)")
BLOCK_PATTERNS = (
    re.compile(r"layers_(\d+)/(?:blocks_(\d+)|(downsample))"),   # HTSAT / Swin: stage, block (merging ends a stage)
    re.compile(r"conv_block(\d+)"),                               # CNN14
    re.compile(r"(?:blocks?|layers?|h)_(\d+)"),                   # generic numbered blocks
)


class Classifier(nn.Module):
    model_config: ml_collections.ConfigDict
    num_classes: int
    head_input: str = "embedding"
    head_dropout: float = 0.0

    def setup(self):
        self.clap = registry.build_model(self.model_config)
        self.head = nn.Dense(self.num_classes, name="head", kernel_init=nn.initializers.zeros)
        self.drop = nn.Dropout(self.head_dropout)

    def __call__(self, wav, train: bool = False):
        out = self.clap.encode_audio(wav, train)
        x = out[self.head_input].astype(jnp.float32)
        return self.head(self.drop(x, deterministic=not train))


def _block_key(name: str):
    for pat in BLOCK_PATTERNS:
        m = pat.search(name)
        if m:
            if pat is BLOCK_PATTERNS[0]:
                stage = int(m.group(1))
                return (stage, float("inf")) if m.group(3) else (stage, int(m.group(2)))
            return (int(m.group(1)),)
    return None


def layer_depths(params: Any) -> tuple[Any, int]:
    """(tree of depths like `params`, number of layers L). Depth 0: input layers; 1..n: the tower's blocks in order;
    n + 1: the rest of the tower (final norm, heads, projection); L = n + 2: the classifier head."""
    names = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    keys = sorted({k for n in names if n.split("/")[0] != "head" and (k := _block_key(n)) is not None})
    rank = {k: i + 1 for i, k in enumerate(keys)}
    top = len(keys) + 1

    def depth(path, _):
        n = path_str(path)
        if n.split("/")[0] == "head":
            return top + 1
        k = _block_key(n)
        if k is not None:
            return rank[k]
        return 0 if BOTTOM.search(n) else top

    return jax.tree_util.tree_map_with_path(depth, params), top + 1


def llrd_multipliers(params: Any, decay: float) -> Any:
    """Per-parameter learning-rate multipliers: decay ** (L - depth) (the head: 1)."""
    depths, top = layer_depths(params)
    return jax.tree.map(lambda d: float(decay) ** (top - d), depths)


def scale_by_tree(mults: Any) -> optax.GradientTransformation:
    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, mults), state
    return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


def make_optimizer(oc, params: Any, total_steps: int):
    """(tx, schedule): clip -> AdamW (warmup + cosine, decay on rank >= 2) -> per-layer multipliers."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0 if oc.warmup_steps else oc.lr, oc.lr, oc.warmup_steps, max(total_steps, oc.warmup_steps + 1),
        oc.lr * oc.min_lr_ratio)
    mask = jax.tree.map(lambda x: len(x.shape) >= 2, params)
    parts = [optax.clip_by_global_norm(oc.grad_clip_norm)] if oc.grad_clip_norm else []
    parts.append(optax.adamw(schedule, weight_decay=oc.weight_decay, mask=mask))
    if oc.llrd != 1.0:
        parts.append(scale_by_tree(llrd_multipliers(params, oc.llrd)))
    return optax.chain(*parts), schedule


def mixup(rng: jax.Array, wav: jax.Array, targets: jax.Array, alpha: float, prob: float = 1.0):
    """Mix each example with another of the batch: x' = lam x + (1 - lam) x[perm], same for the (B, C) targets,
    lam ~ Beta(alpha, alpha) per batch (lam = 1, no mixing, for a batch left out by `prob`).
    Returns (wav', targets', lam, perm)."""
    k_lam, k_perm, k_use = jax.random.split(rng, 3)
    lam = jax.random.beta(k_lam, alpha, alpha)
    lam = jnp.where(jax.random.uniform(k_use) < prob, lam, 1.0)
    perm = jax.random.permutation(k_perm, wav.shape[0])
    mix = lambda x: (lam * x + (1.0 - lam) * x[perm]).astype(x.dtype)  # noqa: E731
    return mix(wav), mix(targets), lam, perm
