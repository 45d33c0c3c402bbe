"""Symmetric contrastive (CLIP/CLAP) loss over the global batch.

    audio_emb (B, d), text_emb (B, d)  --L2 normalise-->  logits = s * a @ t.T  (B, B)
    loss = (CE(logits, diag) + CE(logits.T, diag)) / 2          s = exp(min(logit_scale_log, ln 100))

Two implementations with the same value and gradients:

* `clip_loss` ("global"): plain jnp on global arrays. Under `jit` the compiler all-gathers what it needs; the
  (B, B) logit matrix exists (sharded or not, the compiler decides). This is also the float64 reference.
* `sharded_clip_loss` ("sharded", memory-lean): a `shard_map` over the batch axes. Each device all-gathers both
  embedding tables (B x d, small) and computes only its own rows: `a_local @ t_all.T` for audio->text and
  `t_local @ a_all.T` for text->audio, i.e. two (B/n, B) blocks instead of one (B, B). The gather is
  differentiable (its transpose is a reduce-scatter), so gradients flow into every device's embeddings exactly as
  open_clip's `--local-loss --gather-with-grad`.

All arithmetic is float32 (embeddings are cast up), whatever the model's compute dtype.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

MAX_LOG_SCALE = math.log(100.0)


def logit_scale(logit_scale_log: jax.Array, max_log_scale: float = MAX_LOG_SCALE) -> jax.Array:
    """exp of the learnable log-temperature, clamped at 100 (gradient is zero above the clamp)."""
    return jnp.exp(jnp.minimum(logit_scale_log.astype(jnp.float32), max_log_scale))


def _normalise(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32) if x.dtype != jnp.float64 else x
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _ce_rows(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-row cross-entropy and top-1 correctness for integer labels (row i's target column is labels[i])."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(logits.dtype)
    return lse - target, correct


def clip_loss(audio_emb, text_emb, logit_scale_log, max_log_scale: float = MAX_LOG_SCALE):
    """Global symmetric contrastive loss. Returns (loss, metrics dict); see module docstring."""
    a, t = _normalise(audio_emb), _normalise(text_emb)
    s = logit_scale(logit_scale_log, max_log_scale).astype(a.dtype)
    logits = s * a @ t.T                                    # (B, B): row = audio, column = text
    labels = jnp.arange(a.shape[0])
    ce_a2t, acc_a2t = _ce_rows(logits, labels)
    ce_t2a, acc_t2a = _ce_rows(logits.T, labels)
    loss = 0.5 * (ce_a2t.mean() + ce_t2a.mean())
    metrics = dict(loss=loss, loss_a2t=ce_a2t.mean(), loss_t2a=ce_t2a.mean(),
                   acc_a2t=acc_a2t.mean(), acc_t2a=acc_t2a.mean(), logit_scale=s)
    return loss, metrics


def sharded_clip_loss(audio_emb, text_emb, logit_scale_log, *, mesh: jax.sharding.Mesh,
                      batch_axes: Sequence[str], max_log_scale: float = MAX_LOG_SCALE):
    """Row-sharded symmetric loss: the (B, B) matrix is never formed; each device holds (B/n, B) blocks.

    `audio_emb`/`text_emb` are global (B, d) arrays whose batch dimension is split over `batch_axes` of `mesh`
    (any other mesh axis sees replicated rows). Same value and gradients as `clip_loss`.
    """
    batch_axes = tuple(batch_axes)
    n_shards = math.prod(mesh.shape[a] for a in batch_axes)
    global_b = audio_emb.shape[0]
    if global_b % n_shards:
        raise ValueError(f"global batch {global_b} not divisible by {n_shards} batch shards {batch_axes}")

    def local(a, t, scale_log):
        a, t = _normalise(a), _normalise(t)                  # (b, d) local rows
        s = logit_scale(scale_log, max_log_scale)
        a_all = jax.lax.all_gather(a, batch_axes, tiled=True)  # (B, d), differentiable
        t_all = jax.lax.all_gather(t, batch_axes, tiled=True)
        b = a.shape[0]
        labels = jax.lax.axis_index(batch_axes) * b + jnp.arange(b)
        ce_a2t, acc_a2t = _ce_rows(s * a @ t_all.T, labels)   # (b, B)
        ce_t2a, acc_t2a = _ce_rows(s * t @ a_all.T, labels)   # (b, B)
        sums = jnp.stack([ce_a2t.sum(), ce_t2a.sum(), acc_a2t.sum(), acc_t2a.sum()])
        sums = jax.lax.psum(sums, batch_axes) / global_b
        return sums, s

    spec = P(batch_axes)
    sums, s = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, P()), out_specs=(P(), P()))(
        audio_emb, text_emb, logit_scale_log)
    loss = 0.5 * (sums[0] + sums[1])
    metrics = dict(loss=loss, loss_a2t=sums[0], loss_t2a=sums[1], acc_a2t=sums[2], acc_t2a=sums[3],
                   logit_scale=s)
    return loss, metrics


def make_loss_fn(kind: str, mesh=None, batch_axes=("data", "fsdp"), max_log_scale: float = MAX_LOG_SCALE):
    """'global' or 'sharded' (row-sharded, memory-lean) -> fn(audio_emb, text_emb, logit_scale_log)."""
    if kind == "global":
        return functools.partial(clip_loss, max_log_scale=max_log_scale)
    if kind == "sharded":
        if mesh is None:
            raise ValueError("loss.kind='sharded' needs a mesh")
        return functools.partial(sharded_clip_loss, mesh=mesh, batch_axes=batch_axes, max_log_scale=max_log_scale)
    raise ValueError(f"config.loss.kind: unknown loss kind {kind!r} (want 'global' or 'sharded')")
