"""Optimizer from `config.optim`: optax Adam/AdamW with weight-decay mask, gradient clipping, learning-rate
schedule (constant, warmup + cosine, reduce-on-plateau as in the CLAP paper), per-tower freezing and learning-rate
multipliers.

The chain, applied to gradients in order:

    clip_by_global_norm (optional)
    partition: frozen towers -> zero update (no Adam state kept for them)
               the rest      -> adam(w) with the schedule's learning rate, decay only where the mask says
    per-tower multipliers    (lr_mult of each top-level tower)
    reduce_on_plateau        (optional; scales the update by 0.1 after `patience` flat windows of the loss,
                              fed with `value=loss` in the train step)

Gradient accumulation happens in the train step (micro-batches scanned inside one jitted step), not here, so
that one optimizer update sees the whole global batch. Parameters stay float32 whatever the compute dtype.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from clap_jax.train.sharding import path_str

TOWERS = ("audio_encoder", "caption_encoder", "logit_scale",   # CLAP
          "clap", "clap_project", "gpt")                          # the captioner (audio encoder, mapper, GPT-2)
TOWERS += ("audio_branch", "text_branch", "audio_projection", "text_projection",   # LAION-CLAP
           "audio_transform", "text_transform", "logit_scale_a", "logit_scale_t")
AUDIO_TOWERS = ("audio_encoder", "clap", "audio_branch")


def validate(oc) -> None:
    """Raise ValueError naming the field for an invalid optimizer config."""
    def need(ok, field, msg):
        if not ok:
            raise ValueError(f"config.optim.{field}: {msg}")
    need(oc.name in ("adam", "adamw"), "name", f"unknown optimizer {oc.name!r} (adam, adamw)")
    need(oc.lr > 0, "lr", f"must be positive, got {oc.lr}")
    need(oc.schedule in ("constant", "warmup_cosine", "reduce_on_plateau"), "schedule",
         f"unknown schedule {oc.schedule!r} (constant, warmup_cosine, reduce_on_plateau)")
    need(oc.warmup_steps >= 0, "warmup_steps", "must be >= 0")
    need(oc.weight_decay >= 0, "weight_decay", "must be >= 0")
    need(oc.grad_clip_norm is None or oc.grad_clip_norm >= 0, "grad_clip_norm", "must be >= 0 or None")
    need(oc.grad_accum_steps >= 1, "grad_accum_steps", "must be >= 1")
    need(oc.get("grad_accum_mode", "cached") in ("cached", "independent"), "grad_accum_mode",
         f"unknown {oc.get('grad_accum_mode')!r} ('cached' or 'independent')")
    need(0 < oc.plateau.factor < 1, "plateau.factor", "must be in (0, 1)")
    need(oc.plateau.patience >= 1, "plateau.patience", "must be >= 1")
    need(oc.plateau.accumulation_size >= 1, "plateau.accumulation_size", "must be >= 1")
    for name, t in oc.towers.items():
        need(name in TOWERS, f"towers.{name}", f"unknown tower (known: {TOWERS})")
        need(t.lr_mult >= 0, f"towers.{name}.lr_mult", "must be >= 0")
    try:
        re.compile(oc.no_decay)
    except re.error as e:
        raise ValueError(f"config.optim.no_decay: bad regex: {e}") from e


def lr_schedule(oc, total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """Learning rate per step (before reduce-on-plateau and tower multipliers)."""
    if oc.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if oc.warmup_steps else oc.lr, peak_value=oc.lr, warmup_steps=oc.warmup_steps,
            decay_steps=max(total_steps, oc.warmup_steps + 1), end_value=oc.lr * oc.min_lr_ratio)
    if oc.warmup_steps:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, oc.lr, oc.warmup_steps), optax.constant_schedule(oc.lr)],
            [oc.warmup_steps])
    return optax.constant_schedule(oc.lr)


def tower_of(name: str) -> str:
    """The tower a parameter path ('audio_projection_0/kernel') or top-level name belongs to: its first component
    without a trailing layer index ('audio_projection'), so that a tower can span numbered layers."""
    return re.sub(r"_\d+$", "", name.split("/", 1)[0])


_tower = tower_of


def frozen_towers(oc) -> tuple[str, ...]:
    return tuple(n for n, t in oc.towers.items() if t.freeze)


def make_optimizer(oc, params: Any, total_steps: int) -> tuple[optax.GradientTransformationExtraArgs, Callable]:
    """(tx, schedule). `params` may be ShapeDtypeStructs (only the tree structure, paths and ranks are used)."""
    validate(oc)
    schedule = lr_schedule(oc, total_steps)
    frozen = set(frozen_towers(oc))
    no_decay = re.compile(oc.no_decay)

    def label(path, _):
        return "frozen" if _tower(path_str(path)) in frozen else "train"

    def decay_mask(p):
        return jax.tree_util.tree_map_with_path(
            lambda path, x: x.ndim >= 2 and not no_decay.search(path_str(path)), p)

    if oc.name == "adamw":
        base = optax.adamw(schedule, b1=oc.b1, b2=oc.b2, eps=oc.eps, weight_decay=oc.weight_decay,
                           mask=decay_mask)
    else:
        base = optax.adam(schedule, b1=oc.b1, b2=oc.b2, eps=oc.eps)
        if oc.weight_decay:  # L2 added to the gradient (classic Adam + decay), masked the same way
            base = optax.chain(optax.add_decayed_weights(oc.weight_decay, mask=decay_mask), base)

    parts = []
    if oc.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(oc.grad_clip_norm))
    labels = jax.tree_util.tree_map_with_path(label, params)
    have = {tower_of(path_str(p)) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    for n, t in oc.towers.items():   # a setting that would silently do nothing is a config error
        if (t.freeze or t.lr_mult != 1.0) and n not in have:
            raise ValueError(f"config.optim.towers.{n}: this model has no such tower (its towers: "
                             f"{', '.join(sorted(have))})")
    parts.append(optax.transforms.partition({"train": base, "frozen": optax.set_to_zero()}, labels))
    mults = {n: t.lr_mult for n, t in oc.towers.items() if t.lr_mult != 1.0 and n not in frozen}
    if mults:
        mult_tree = jax.tree_util.tree_map_with_path(lambda path, _: mults.get(_tower(path_str(path)), 1.0), params)
        parts.append(_scale_by_tree(mult_tree))
    if oc.schedule == "reduce_on_plateau":
        pc = oc.plateau
        parts.append(optax.contrib.reduce_on_plateau(
            factor=pc.factor, patience=pc.patience, rtol=pc.rtol, atol=pc.atol, cooldown=pc.cooldown,
            accumulation_size=pc.accumulation_size, min_scale=pc.min_scale))
    return optax.chain(*parts), schedule


def _scale_by_tree(mults: Any) -> optax.GradientTransformation:
    """Multiply each update leaf by a fixed float (per-tower learning-rate multiplier)."""
    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, mults), state
    return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


def plateau_scale(opt_state: Any) -> jax.Array | None:
    """Current reduce-on-plateau scale (1.0, 0.1, ...) if the chain has one, else None."""
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.contrib.ReduceLROnPlateauState)):
        if isinstance(s, optax.contrib.ReduceLROnPlateauState):
            return s.scale
    return None
