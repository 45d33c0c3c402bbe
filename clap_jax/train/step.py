"""The update step: forward pass, loss and its gradient, one optimizer update, compiled once.

The run's objective (clap_jax.train.objective: 'contrastive' or 'prefix_lm') makes the gradient function and
says which inputs a batch holds. The contrastive gradient functions are here; they share one signature,
fn(params, batch_stats, constants, batch, rng) -> ((loss, (metrics, new_batch_stats)), grads), and the
contrastive objective picks one by config:

  make_grad_fn                      the whole batch at once (optim.grad_accum_steps == 1)
  make_cached_accum_grad_fn         micro-batches, one loss over the whole batch ('cached': exact)
  make_independent_accum_grad_fn    micro-batches, each its own loss, gradients averaged ('independent')
"""
from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from clap_jax.train import loss as loss_lib
from clap_jax.train import objective as objective_lib
from clap_jax.train import optim as optim_lib
from clap_jax.train import sharding as shd


def _microbatches(batch: dict, k: int) -> dict:
    """(B, ...) -> (k, B/k, ...) where micro-batch j takes rows j, j+k, ... : each device keeps its own rows,
    so no data moves (rows are split over devices in contiguous blocks)."""
    def split(x):
        return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def fsdp_gather(param_shardings) -> Callable:
    """params -> params all-gathered over 'fsdp' for compute, whose VJP puts the cotangent straight back in the
    storage layout. A plain sharding constraint would be its own transpose: the weight gradients would be
    constrained to the gathered (fsdp-replicated) layout, which XLA reaches with an all-reduce of every full
    gradient, then slices; constraining them to the storage layout instead lets it reduce-scatter (half the bytes
    on the wire, and no full-size gradient buffer per chip)."""
    compute_sh = jax.tree.map(lambda s: shd.without_axis(s, "fsdp"), param_shardings)

    @jax.custom_vjp
    def gather(params):
        return jax.lax.with_sharding_constraint(params, compute_sh)

    def fwd(params):
        return gather(params), None

    def bwd(_, g):
        return (jax.lax.with_sharding_constraint(g, param_shardings),)

    gather.defvjp(fwd, bwd)
    return gather


def make_embed_fn(model, config, mesh, param_shardings=None, method=None) -> Callable:
    """The training forward pass: fn(params, batch_stats, constants, batch, rng) -> ((audio_emb, text_emb,
    logit_scale_log), new_batch_stats). Frozen towers are cut from the backward pass.

    FSDP: with `param_shardings` given, parameters stored split over 'fsdp' are gathered for the forward pass
    and their gradients reduce-scattered back to the storage layout (`fsdp_gather`). Without it, the compiler
    propagates the weights' split into the activations and has to rematerialise them. `method`: the model's
    method to apply instead of `__call__` (same arguments)."""
    frozen = set(optim_lib.frozen_towers(config.optim))
    gather = None
    if mesh is not None and param_shardings is not None and mesh.shape["fsdp"] > 1:
        gather = fsdp_gather(param_shardings)

    def embed(params, batch_stats, constants, batch, rng):
        if gather is not None:
            params = gather(params)
        if frozen:
            params = {k: jax.lax.stop_gradient(v) if optim_lib.tower_of(k) in frozen else v
                      for k, v in params.items()}
        k_drop, k_aug = jax.random.split(rng)
        variables = {"params": params, "batch_stats": batch_stats, "constants": constants}
        out, upd = model.apply(variables, batch["audio"], batch["input_ids"], batch["attention_mask"],
                               train=True, rngs={"dropout": k_drop, "augment": k_aug}, mutable=["batch_stats"],
                               method=method)
        return out, upd.get("batch_stats", batch_stats)

    return embed


def make_grad_fn(model, config, mesh, param_shardings=None) -> Callable:
    """value_and_grad of the contrastive loss: fn(params, batch_stats, constants, batch, rng) ->
    ((loss, (metrics, new_batch_stats)), grads). See `make_embed_fn` for frozen towers and FSDP."""
    loss_fn = loss_lib.make_loss_fn(config.loss.kind, mesh, shd.BATCH_AXES, config.loss.max_log_scale)
    embed = make_embed_fn(model, config, mesh, param_shardings)

    def forward_loss(params, batch_stats, constants, batch, rng):
        (a, t, ls), new_bs = embed(params, batch_stats, constants, batch, rng)
        loss, metrics = loss_fn(a, t, ls)
        return loss, (metrics, new_bs)

    return jax.value_and_grad(forward_loss, has_aux=True)


def make_cached_accum_grad_fn(model, config, mesh, param_shardings=None) -> Callable:
    """Gradient accumulation that keeps the global batch's negatives (the gradient-cache method of Gao et al.
    2021, open_clip's `--accum-freq`): `make_grad_fn`'s signature, and the gradient of one contrastive loss over
    the whole batch, with activations held for one micro-batch at a time. (Each micro-batch is embedded in its
    own forward pass, so batch norm uses micro-batch statistics and dropout draws per micro-batch keys.)

      1. forward every micro-batch without gradients: embeddings of the whole batch (B x d_proj each, small);
      2. loss over the whole batch from them, and its gradient w.r.t. every embedding and the logit scale;
      3. per micro-batch, forward again (same dropout / augmentation keys, so the same embeddings) and pull
         that micro-batch's slice of the embedding gradient back to the parameters (a VJP); sum.

    Exact: sum_j J_j^T dL/de_j is the gradient of that loss. Costs one extra forward pass per step. Micro-batch j
    holds rows j, j+k, ... (see `_microbatches`); running batch-norm statistics advance once per micro-batch."""
    k = config.optim.grad_accum_steps
    loss_fn = loss_lib.make_loss_fn(config.loss.kind, mesh, shd.BATCH_AXES, config.loss.max_log_scale)
    embed = make_embed_fn(model, config, mesh, param_shardings)

    def join(x):     # (k, B/k, ...) micro-batch stacks -> (B, ...) in the batch's own row order
        return jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:])

    def split(x):    # inverse of join
        return jnp.swapaxes(x.reshape((-1, k) + x.shape[1:]), 0, 1)

    def grad_fn(params, batch_stats, constants, batch, rng):
        mbs, idx = _microbatches(batch, k), jnp.arange(k)

        def embed_only(_, xs):
            mb, i = xs
            (a, t, ls), _ = embed(params, batch_stats, constants, mb, jax.random.fold_in(rng, i))
            return None, (a, t, ls)
        _, (a, t, ls) = jax.lax.scan(embed_only, None, (mbs, idx))
        (loss, metrics), (g_a, g_t, g_ls) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(
            join(a), join(t), ls[0])
        g_a, g_t = split(g_a), split(g_t)

        def backward(carry, xs):
            g_acc, bs = carry
            mb, i, ga, gt = xs
            (a_j, t_j, ls_j), vjp_fn, bs = jax.vjp(
                lambda p: embed(p, bs, constants, mb, jax.random.fold_in(rng, i)), params, has_aux=True)
            # the logit scale enters the loss once: its cotangent goes with micro-batch 0 only
            (g,) = vjp_fn((ga.astype(a_j.dtype), gt.astype(t_j.dtype),
                           jnp.where(i == 0, g_ls, jnp.zeros_like(g_ls)).astype(ls_j.dtype)))
            return (jax.tree.map(jnp.add, g_acc, g), bs), None
        zeros = jax.tree.map(jnp.zeros_like, params)
        (grads, new_bs), _ = jax.lax.scan(backward, (zeros, batch_stats), (mbs, idx, g_a, g_t))
        return (loss, (metrics, new_bs)), grads

    return grad_fn


def make_independent_accum_grad_fn(model, config, mesh, param_shardings=None) -> Callable:
    """Gradient accumulation where each micro-batch is its own contrastive problem (its rows are each other's
    only negatives): `make_grad_fn`'s signature; gradients and metrics are the means over the micro-batches, and
    the loss is the mean micro-batch loss. Cheaper than the cached method (no extra forward pass), but the
    effective batch of the loss is B / k. Micro-batch j holds rows j, j+k, ... (see `_microbatches`)."""
    k = config.optim.grad_accum_steps
    grad_fn = make_grad_fn(model, config, mesh, param_shardings)

    def accum_grad_fn(params, batch_stats, constants, batch, rng):
        mbs = _microbatches(batch, k)

        def body(carry, xs):
            g_acc, bs, m_acc = carry
            mb, i = xs
            (_, (m, bs)), g = grad_fn(params, bs, constants, mb, jax.random.fold_in(rng, i))
            return (jax.tree.map(jnp.add, g_acc, g), bs, jax.tree.map(jnp.add, m_acc, m)), None
        zeros_g = jax.tree.map(jnp.zeros_like, params)
        m_shape = jax.eval_shape(lambda: grad_fn(params, batch_stats, constants,
                                                 jax.tree.map(lambda x: x[0], mbs), rng)[0][1][0])
        zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
        (grads, new_bs, metrics), _ = jax.lax.scan(body, (zeros_g, batch_stats, zeros_m), (mbs, jnp.arange(k)))
        grads = jax.tree.map(lambda g: g / k, grads)
        metrics = jax.tree.map(lambda m: m / k, metrics)
        return (metrics["loss"], (metrics, new_bs)), grads

    return accum_grad_fn


def make_train_step(model, tx, config, mesh, schedule, param_shardings=None) -> Callable:
    """One optimizer update: (state, global batch) -> (state, metrics). A non-finite loss or gradient leaves
    params, batch stats and optimizer state unchanged (the step counter still advances) and is counted."""
    grad_fn = objective_lib.of(config).make_grad_fn(model, config, mesh, param_shardings)
    base_rng = jax.random.PRNGKey(config.seed + 1)

    def train_step(state, batch):
        rng = jax.random.fold_in(base_rng, state["step"])
        params = state["params"]
        (loss, (metrics, new_bs)), grads = grad_fn(params, state["batch_stats"], state["constants"], batch, rng)

        updates, new_opt = tx.update(grads, state["opt_state"], params, value=loss)
        new_params = optax.apply_updates(params, updates)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
        new_state = {
            "step": state["step"] + 1,
            "params": keep(new_params, params),
            "batch_stats": keep(new_bs, state["batch_stats"]),
            "constants": state["constants"],
            "opt_state": keep(new_opt, state["opt_state"]),
            "nan_streak": jnp.where(ok, 0, state["nan_streak"] + 1),
            "nan_total": state["nan_total"] + (~ok).astype(jnp.int32),
        }
        lr = schedule(state["step"])
        plateau = optim_lib.plateau_scale(new_opt)
        if plateau is not None:
            lr = lr * plateau
        metrics = dict(metrics, grad_norm=grad_norm, param_norm=optax.tree.norm(params),
                       update_norm=optax.tree.norm(updates), lr=lr, finite=ok.astype(jnp.float32),
                       nan_streak=new_state["nan_streak"], nan_total=new_state["nan_total"])
        return new_state, metrics

    return train_step


def compile_train_step(train_step, abstract_state, state_sh, mesh, config):
    """jit with explicit shardings and donated state, lowered and compiled once, before step 1.
    Returns (compiled step, {compile_s, memory and FLOP figures where the backend reports them})."""
    batch_sh = shd.batch_sharding(mesh)
    obj = objective_lib.of(config)
    example = obj.abstract_batch(config.model, config.batch_size)
    abstract_batch = {name: jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=batch_sh),
                                         example[name]) for name in obj.batch_keys}
    jitted = jax.jit(train_step, in_shardings=(state_sh, {k: batch_sh for k in abstract_batch}),
                     out_shardings=(state_sh, shd.replicated(mesh)), donate_argnums=(0,))
    t0 = time.time()
    compiled = jitted.lower(abstract_state, abstract_batch).compile()
    info = {"compile_s": time.time() - t0}
    try:
        mem = compiled.memory_analysis()
        if mem is not None:
            info.update(argument_gb=mem.argument_size_in_bytes / 1e9, output_gb=mem.output_size_in_bytes / 1e9,
                        temp_gb=mem.temp_size_in_bytes / 1e9)
    except Exception:  # noqa: BLE001 - backend may not implement it
        pass
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if cost and "flops" in cost:
            info["xla_flops_per_device"] = float(cost["flops"])
    except Exception:  # noqa: BLE001
        pass
    return compiled, info
