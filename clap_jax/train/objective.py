"""What a run trains: the objective seam between the model family and the update step.

An objective says which inputs a training batch holds, how they are completed on the devices, and how the
gradient of a batch is computed (with or without gradient accumulation, FSDP gather and frozen towers):

  contrastive   CLAP pretraining: audio and text embeddings, symmetric InfoNCE over the global batch
                (clap_jax.train.loss); batch {audio, input_ids, attention_mask}
  prefix_lm     generative training of an audio-prefix language model (the captioner, multi-task
                pretraining of the audio encoder): teacher-forced cross-entropy on the answer tokens after the
                audio prefix; batch {audio, input_ids, attention_mask, loss_mask}

The run's objective is `config.objective`, or when that is unset the model family's own (`Family.objective` in
clap_jax.models.registry: CLAP families are 'contrastive', the captioner 'prefix_lm'). A new objective adds an
`Objective` here with `register`; the trainer, the compile step and the data feed then take it as they are.

prefix_lm contract: the model's `__call__(wave, input_ids, attention_mask, train)` returns logits
(B, P + L, vocab) of [P prefix positions ; the L tokens]. The logit at position P - 1 + j predicts token j;
token j counts in the loss where loss_mask[:, j] = 1 (answer/caption tokens; prompt and padding are 0). A batch
without a loss_mask (a plain caption dataset) trains on every real token: loss_mask = attention_mask.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from clap_jax.models import registry
from clap_jax.train import data as data_lib
from clap_jax.train import optim as optim_lib
from clap_jax.train import sharding as shd

# (model, config, mesh, param_shardings) -> fn(params, batch_stats, constants, batch, rng)
#     -> ((loss, (metrics, new_batch_stats)), grads)
GradFnFactory = Callable[..., Callable]


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    batch_keys: tuple[str, ...]               # the train step's inputs, in this order
    make_grad_fn: GradFnFactory               # accumulation (config.optim.grad_accum_steps) included
    # (host batch of the iterator) -> what the step takes: those keys only, completed (on the devices)
    prepare: Callable[[dict], dict]
    # (model config, global batch size) -> {key: ShapeDtypeStruct} of the step's inputs
    abstract_batch: Callable[..., dict]
    metric_names: tuple[str, ...] = ()        # the metrics the progress line shows, besides loss/lr/grad norm


_OBJECTIVES: dict[str, Objective] = {}


def register(obj: Objective) -> Objective:
    _OBJECTIVES[obj.name] = obj
    return obj


def names() -> list[str]:
    return sorted(_OBJECTIVES)


def name_of(config) -> str:
    """The run's objective: config.objective, else the model family's."""
    name = config.get("objective")
    if name:
        return name
    return registry.family_of(config.model).objective


def of(config) -> Objective:
    name = name_of(config)
    if name not in _OBJECTIVES:
        raise ValueError(f"config.objective: unknown objective {name!r} (known: {', '.join(names())})")
    return _OBJECTIVES[name]


def _example_batch(config_model, batch_size: int) -> dict:
    wave, ids, mask = registry.family_of(config_model).example_inputs(config_model, batch_size)
    return {"audio": wave, "input_ids": ids, "attention_mask": mask}


# ============================================================================================ contrastive

CONTRASTIVE_KEYS = data_lib.BATCH_KEYS


def _contrastive_grad_fn(model, config, mesh, param_shardings=None):
    from clap_jax.train import step as step_lib   # the contrastive gradient functions live with the step

    if config.optim.grad_accum_steps == 1:
        make = step_lib.make_grad_fn
    elif config.optim.get("grad_accum_mode", "cached") == "cached":
        make = step_lib.make_cached_accum_grad_fn
    else:
        make = step_lib.make_independent_accum_grad_fn
    return make(model, config, mesh, param_shardings)


register(Objective(
    name="contrastive", batch_keys=CONTRASTIVE_KEYS, make_grad_fn=_contrastive_grad_fn,
    prepare=data_lib.to_model_batch, abstract_batch=_example_batch,
    metric_names=("acc_a2t", "acc_t2a", "logit_scale")))


# ============================================================================================ prefix_lm

PREFIX_LM_KEYS = ("audio", "input_ids", "attention_mask", "loss_mask")


def prefix_lm_token_losses(logits, input_ids):
    """Per-token cross-entropy (B, L) in float32 of the tokens `input_ids` (B, L) under `logits` (B, P + L, V):
    the logit at P - 1 + j predicts token j."""
    b, length = input_ids.shape
    p = logits.shape[1] - length
    if p < 1:
        raise ValueError(f"prefix_lm: logits of {logits.shape[1]} positions for {length} tokens: no prefix")
    pred = jax.lax.dynamic_slice_in_dim(logits, p - 1, length, axis=1).astype(jnp.float32)
    logp = jax.nn.log_softmax(pred, axis=-1)
    nll = -jnp.take_along_axis(logp, input_ids[..., None].astype(jnp.int32), axis=-1)[..., 0]
    hit = (jnp.argmax(pred, axis=-1) == input_ids).astype(jnp.float32)
    return nll, hit


def prefix_lm_loss(logits, input_ids, loss_mask, denominator=None):
    """Mean cross-entropy over the tokens where loss_mask = 1 (-> (loss, metrics)). `denominator`: the number of
    such tokens to divide by (default: this batch's), so that micro-batches add up to the whole batch's mean."""
    nll, hit = prefix_lm_token_losses(logits, input_ids)
    w = loss_mask.astype(jnp.float32)
    n = jnp.sum(w) if denominator is None else denominator
    n = jnp.maximum(n, 1.0)
    loss = jnp.sum(nll * w) / n
    return loss, {"loss": loss, "token_acc": jnp.sum(hit * w) / n, "tokens": jnp.sum(w)}


def _complete_lm_batch(batch: dict) -> dict:
    out = data_lib.to_model_batch(batch, [k for k in PREFIX_LM_KEYS if k in batch])
    if "loss_mask" not in out:
        out["loss_mask"] = out["attention_mask"]
    return out


def _lm_abstract_batch(config_model, batch_size: int) -> dict:
    out = _example_batch(config_model, batch_size)
    out["loss_mask"] = out["attention_mask"]
    return out


def frozen_audio(config) -> bool:
    """Whether the audio encoder is frozen: it then runs in inference mode (no augmentation, dropout or
    batch-norm updates), as a fixed feature extractor."""
    return any(n in optim_lib.frozen_towers(config.optim) for n in optim_lib.AUDIO_TOWERS)


def make_lm_forward(model, config, mesh, param_shardings=None) -> Callable:
    """fn(params, batch_stats, constants, batch, rng) -> (logits, new_batch_stats), frozen towers cut from the
    backward pass, FSDP-stored parameters gathered for the compute (see step.fsdp_gather)."""
    from clap_jax.train import step as step_lib

    frozen = set(optim_lib.frozen_towers(config.optim))
    train_audio = not frozen_audio(config)
    gather = None
    if mesh is not None and param_shardings is not None and mesh.shape["fsdp"] > 1:
        gather = step_lib.fsdp_gather(param_shardings)

    def forward(params, batch_stats, constants, batch, rng):
        if gather is not None:
            params = gather(params)
        if frozen:
            params = {k: jax.lax.stop_gradient(v) if k in frozen else v for k, v in params.items()}
        k_drop, k_aug = jax.random.split(rng)
        variables = {"params": params, "batch_stats": batch_stats, "constants": constants}
        logits, upd = model.apply(variables, batch["audio"], batch["input_ids"], batch["attention_mask"],
                                  train=train_audio, rngs={"dropout": k_drop, "augment": k_aug},
                                  mutable=["batch_stats"])
        return logits, upd.get("batch_stats", batch_stats) if train_audio else batch_stats

    return forward


def _lm_grad_fn(model, config, mesh, param_shardings=None):
    """Teacher-forced cross-entropy and its gradient. With micro-batches (grad_accum_steps = k, either mode) the
    loss is exactly the whole batch's: each micro-batch's summed token losses are divided by the whole batch's
    answer-token count, and the gradients added (the loss has no cross-example term, so nothing is lost)."""
    from clap_jax.train import step as step_lib

    forward = make_lm_forward(model, config, mesh, param_shardings)
    k = config.optim.grad_accum_steps

    def forward_loss(params, batch_stats, constants, batch, rng, denominator=None):
        logits, new_bs = forward(params, batch_stats, constants, batch, rng)
        loss, metrics = prefix_lm_loss(logits, batch["input_ids"], batch["loss_mask"], denominator)
        return loss, (metrics, new_bs)

    grad = jax.value_and_grad(forward_loss, has_aux=True)
    if k == 1:
        return grad

    def accum_grad_fn(params, batch_stats, constants, batch, rng):
        n = jnp.sum(batch["loss_mask"].astype(jnp.float32))
        mbs = step_lib._microbatches(batch, k)

        def body(carry, xs):
            g_acc, bs, l_acc, hit_acc = carry
            mb, i = xs
            (loss, (m, bs)), g = grad(params, bs, constants, mb, jax.random.fold_in(rng, i), n)
            return (jax.tree.map(jnp.add, g_acc, g), bs, l_acc + loss, hit_acc + m["token_acc"]), None
        zeros = jax.tree.map(jnp.zeros_like, params)
        (grads, new_bs, loss, acc), _ = jax.lax.scan(
            body, (zeros, batch_stats, jnp.float32(0), jnp.float32(0)), (mbs, jnp.arange(k)))
        return (loss, ({"loss": loss, "token_acc": acc, "tokens": n}, new_bs)), grads

    return accum_grad_fn


register(Objective(
    name="prefix_lm", batch_keys=PREFIX_LM_KEYS, make_grad_fn=_lm_grad_fn, prepare=_complete_lm_batch,
    abstract_batch=_lm_abstract_batch, metric_names=("token_acc", "tokens")))


def batch_sharding_tree(obj: Objective, mesh) -> dict:
    sh = shd.batch_sharding(mesh)
    return {k: sh for k in obj.batch_keys}


# ============================================================================================ held-out loss

def make_eval_loss_fn(model, config) -> Callable:
    """jitted fn(variables, batch) -> the objective's metrics on one batch in inference mode (no dropout or
    augmentation, batch norm on its running statistics): the held-out loss of a run."""
    from clap_jax.train import loss as loss_lib

    name = of(config).name

    @jax.jit
    def evaluate(variables, batch):
        out = model.apply(variables, batch["audio"], batch["input_ids"], batch["attention_mask"], train=False)
        if name == "prefix_lm":
            mask = batch.get("loss_mask", batch["attention_mask"])
            _, m = prefix_lm_loss(out, batch["input_ids"], mask)
            return m
        a, t, ls = out
        _, m = loss_lib.make_loss_fn("global", None, shd.BATCH_AXES, config.loss.max_log_scale)(a, t, ls)
        return m

    return evaluate


def heldout_eval_fn(model, config, batches) -> Callable:
    """An eval hook for the trainer (`train_and_evaluate(eval_fn=...)`): fn(variables, step) -> the objective's
    metrics averaged over `batches` (held-out global batches, each weighted by its answer tokens for prefix_lm),
    named heldout_<metric>."""
    evaluate = make_eval_loss_fn(model, config)
    prepared = [of(config).prepare(b) for b in batches]

    def fn(variables, step):
        del step
        ms = [jax.device_get(evaluate(variables, b)) for b in prepared]
        w = [float(m.get("tokens", 1.0)) for m in ms]
        total = max(sum(w), 1e-9)
        return {f"heldout_{k}": sum(float(m[k]) * wi for m, wi in zip(ms, w)) / total
                for k in ms[0] if k != "tokens"}

    return fn


# the LAION-CLAP family's objective (feature-fusion batches, laion_clap's MLP loss) registers itself
from clap_jax.train import laion as _laion  # noqa: E402,F401
