"""The train step on 8 simulated devices: gradients equal a single-device float64 reference (data-parallel and
FSDP layouts), non-finite steps are skipped; gradient accumulation: 'cached' equals the whole batch's gradient,
'independent' averages micro-batch gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from clap_jax.models import config as model_config
from clap_jax.train import sharding as shd
from clap_jax.train import state as state_lib
from clap_jax.train import step as step_lib
from clap_jax.train.random_batches import make_global_batch

from _train_helpers import load_config, make_model, mesh


def _batch(config, seed=0):
    return make_global_batch(seed, 0, config.batch_size, model_config.clip_samples(config.model),
                             config.model.text.max_length, num_classes=4)


def _reference_grads(config, model, state, batch, rng):
    """float64, one device, plain (global) loss."""
    cfg = config.copy_and_resolve_references()
    cfg.loss.kind = "global"
    with jax.enable_x64(True):
        to64 = lambda t: jax.tree.map(lambda x: np.asarray(x, np.float64) if np.asarray(x).dtype.kind == "f"
                                      else np.asarray(x), jax.device_get(t))
        grad_fn = step_lib.make_grad_fn(model, cfg, None)
        (loss, (m, _)), g = jax.jit(grad_fn)(to64(state["params"]), to64(state["batch_stats"]),
                                             to64(state["constants"]), to64(batch), rng)
        assert jax.tree.leaves(g)[0].dtype == jnp.float64
        return float(loss), jax.tree.map(np.asarray, g)


@pytest.mark.parametrize("layout", ["data_parallel", "fsdp"])
def test_sharded_grads_equal_float64_single_device_reference(layout):
    config = load_config("tiny", "fsdp,sharded_loss" if layout == "fsdp" else "")
    model = make_model(config, deterministic=True)
    m = mesh((8, 1, 1) if layout == "data_parallel" else (1, 8, 1))
    _, _, init_fn, abstract_state, state_sh = state_lib.abstract_setup(model, config, m)
    state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.PRNGKey(0))
    specs = [s.spec for s in jax.tree.leaves(state_sh["params"])]
    if layout == "fsdp":
        assert any("fsdp" in str(s) for s in specs), "FSDP rules sharded nothing"
    else:
        assert all(s == P() for s in specs)
    batch = _batch(config)
    rng = jax.random.PRNGKey(7)
    bsh = NamedSharding(m, P(shd.BATCH_AXES))
    grad_fn = jax.jit(step_lib.make_grad_fn(model, config, m, state_sh["params"]),
                      in_shardings=(state_sh["params"], state_sh["batch_stats"], state_sh["constants"], bsh, None),
                      out_shardings=None)
    (loss, _), grads = grad_fn(state["params"], state["batch_stats"], state["constants"],
                               jax.device_put(batch, bsh), rng)
    ref_loss, ref_grads = _reference_grads(config, model, state, batch, rng)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    flat_ref = dict((shd.path_str(p), v) for p, v in jax.tree_util.tree_leaves_with_path(ref_grads))
    n = 0
    for p, g in jax.tree_util.tree_leaves_with_path(grads):
        r = flat_ref[shd.path_str(p)]
        scale = np.abs(r).max() + 1e-12
        # float32 rounding, relative to the leaf's largest gradient: <= 1.3e-6 for every leaf but the frame layer's
        # bias, a sum over batch x frames with cancellation, 1.3e-5 (data parallel) / 1.9e-5 (FSDP) on an Intel
        # Xeon, less on an AMD Zen 5. A sharding error (a missing or doubled reduction) is of the order of 1.
        np.testing.assert_allclose(np.asarray(g), r, rtol=1e-4, atol=5e-5 * scale, err_msg=shd.path_str(p))
        n += 1
    assert n == len(flat_ref) and n > 3


def _compiled(config, model, m):
    tx, schedule, init_fn, abstract_state, state_sh = state_lib.abstract_setup(model, config, m)
    step = step_lib.make_train_step(model, tx, config, m, schedule, state_sh["params"])
    fn, info = step_lib.compile_train_step(step, abstract_state, state_sh, m, config)
    state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.PRNGKey(0))
    return fn, state, tx, state_sh


def test_nonfinite_step_is_skipped_and_counted():
    config = load_config("tiny")
    model = make_model(config)
    m = mesh((8, 1, 1))
    fn, state, _, _ = _compiled(config, model, m)
    bsh = NamedSharding(m, P(shd.BATCH_AXES))
    good = _batch(config)
    bad = dict(good, audio=np.full_like(good["audio"], np.nan))
    before = jax.device_get(state["params"])
    state, met = fn(state, jax.device_put(bad, bsh))
    assert int(met["nan_streak"]) == 1 and int(met["nan_total"]) == 1 and float(met["finite"]) == 0.0
    after = jax.device_get(state["params"])
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(x, y)
    assert int(state["step"]) == 1
    state, met = fn(state, jax.device_put(good, bsh))
    assert int(met["nan_streak"]) == 0 and int(met["nan_total"]) == 1 and np.isfinite(float(met["loss"]))
    changed = any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(after),
                                                          jax.tree.leaves(jax.device_get(state["params"]))))
    assert changed


def test_grad_accumulation_independent_averages_microbatch_gradients():
    config = load_config("tiny")
    config.optim.grad_accum_steps = 2
    config.optim.grad_accum_mode = "independent"
    config.optim.name = "adam"
    model = make_model(config, deterministic=True)
    m = mesh((8, 1, 1))
    fn, state, tx, state_sh = _compiled(config, model, m)
    params0 = jax.device_get(state["params"])
    opt0 = jax.device_get(state["opt_state"])
    bs0, c0 = jax.device_get(state["batch_stats"]), jax.device_get(state["constants"])
    batch = _batch(config)
    state, met = fn(state, jax.device_put(batch, NamedSharding(m, P(shd.BATCH_AXES))))
    # Manual: rows j::2 form micro-batch j (see step._microbatches); mean of the two gradients, one update.
    grad_fn = jax.jit(step_lib.make_grad_fn(model, config, None))
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), 0)
    gs, losses, bs = [], [], bs0
    for j in range(2):
        mb = {k: v[j::2] for k, v in batch.items()}
        (l, (_, bs)), g = grad_fn(params0, bs, c0, mb, jax.random.fold_in(rng, j))
        gs.append(g)
        losses.append(float(l))
    g = jax.tree.map(lambda a, b: (a + b) / 2, *gs)
    # the accumulating grad fn on its own (what the step calls): the same mean loss and gradients
    (acc_loss, (acc_met, _)), acc_g = jax.jit(step_lib.make_independent_accum_grad_fn(model, config, None))(
        params0, bs0, c0, batch, rng)
    np.testing.assert_allclose(float(acc_loss), np.mean(losses), rtol=1e-5)
    assert float(acc_met["loss"]) == float(acc_loss)
    for x, y in zip(jax.tree.leaves(acc_g), jax.tree.leaves(g)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    upd, _ = tx.update(g, opt0, params0, value=jnp.float32(np.mean(losses)))
    expect = jax.tree.map(lambda p, u: p + u, params0, upd)
    np.testing.assert_allclose(float(met["loss"]), np.mean(losses), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(jax.device_get(state["params"])), jax.tree.leaves(expect)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def _flat(tree):
    return {shd.path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


def _microbatch_reference(model, config, params, bs, consts, batch, rng, k):
    """One loss over the concatenated embeddings of k micro-batches (rows j::k under key fold_in(rng, j)), each
    embedded in its own forward pass as the accumulation does (batch norm sees micro-batch statistics)."""
    from clap_jax.train import loss as loss_lib
    embed = step_lib.make_embed_fn(model, config, None)

    def reference_loss(params):
        outs, new_bs = [], bs
        for j in range(k):
            mb = {key: v[j::k] for key, v in batch.items()}
            out, new_bs = embed(params, new_bs, consts, mb, jax.random.fold_in(rng, j))
            outs.append(out)
        a = jnp.concatenate([o[0] for o in outs])
        t = jnp.concatenate([o[1] for o in outs])
        loss, met = loss_lib.clip_loss(a, t, outs[0][2])
        return loss, (met, new_bs)
    return jax.jit(jax.value_and_grad(reference_loss, has_aux=True))(params)


@pytest.mark.parametrize("loss_kind", ["global", "sharded"])
def test_cached_grad_accumulation_equals_one_loss_over_all_microbatches(loss_kind):
    """4 micro-batches through the gradient cache on 8 devices: the loss, accuracies and gradient of one
    contrastive loss over all of them (every negative of the batch), for both loss implementations."""
    config = load_config("tiny", "" if loss_kind == "global" else "sharded_loss")
    config.optim.grad_accum_steps = 4
    model = make_model(config, deterministic=True)
    m = mesh((8, 1, 1))
    _, _, init_fn, abstract_state, state_sh = state_lib.abstract_setup(model, config, m)
    state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.PRNGKey(0))
    batch = _batch(config)
    rng = jax.random.PRNGKey(3)
    args = (state["params"], state["batch_stats"], state["constants"],
            jax.device_put(batch, NamedSharding(m, P(shd.BATCH_AXES))), rng)
    (loss4, (met4, bs4)), g4 = jax.jit(step_lib.make_cached_accum_grad_fn(model, config, m))(*args)
    host = jax.device_get(args[:3])
    (ref_loss, (ref_met, ref_bs)), ref_g = _microbatch_reference(model, config, *host, batch, rng, 4)
    np.testing.assert_allclose(float(loss4), float(ref_loss), rtol=1e-6)
    assert float(loss4) > np.log(config.batch_size) - 1.0   # B-way, not (B/4)-way, at init
    np.testing.assert_allclose(float(met4["acc_a2t"]), float(ref_met["acc_a2t"]))
    f4, fr = _flat(g4), _flat(ref_g)
    assert f4.keys() == fr.keys() and len(fr) > 3
    for k in fr:
        scale = np.abs(fr[k]).max() + 1e-12
        np.testing.assert_allclose(f4[k], fr[k], rtol=1e-4, atol=1e-5 * scale, err_msg=k)
    assert np.abs(fr["logit_scale"]) > 0   # counted once, not once per micro-batch
    for x, y in zip(jax.tree.leaves(jax.device_get(bs4)), jax.tree.leaves(ref_bs)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_cached_grad_accumulation_is_exact_with_dropout_and_augmentation():
    """With dropout, SpecAugment-like noise and batch norm: the cached step equals the gradient of one loss over
    the concatenated embeddings of the micro-batches (micro-batch j under key fold_in(rng, j)), and the train
    step applies it as one update."""
    config = load_config("tiny")
    config.optim.grad_accum_steps = 2
    config.optim.name = "adam"
    model = make_model(config, deterministic=False)
    m = mesh((8, 1, 1))
    fn, state, tx, state_sh = _compiled(config, model, m)
    params0, opt0 = jax.device_get(state["params"]), jax.device_get(state["opt_state"])
    bs0, c0 = jax.device_get(state["batch_stats"]), jax.device_get(state["constants"])
    batch = _batch(config)
    state, met = fn(state, jax.device_put(batch, NamedSharding(m, P(shd.BATCH_AXES))))

    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), 0)
    (ref_loss, (_, ref_bs)), g = _microbatch_reference(model, config, params0, bs0, c0, batch, rng, 2)
    np.testing.assert_allclose(float(met["loss"]), float(ref_loss), rtol=1e-5)
    upd, _ = tx.update(g, opt0, params0, value=ref_loss)
    expect = _flat(jax.tree.map(lambda p, u: p + u, params0, upd))
    got = _flat(state["params"])
    for k in expect:
        np.testing.assert_allclose(got[k], expect[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for x, y in zip(jax.tree.leaves(jax.device_get(state["batch_stats"])), jax.tree.leaves(ref_bs)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # and it is not the independent-micro-batch update
    config.optim.grad_accum_mode = "independent"
    fn_i, state_i, _, _ = _compiled(config, model, m)
    state_i, met_i = fn_i(state_i, jax.device_put(batch, NamedSharding(m, P(shd.BATCH_AXES))))
    assert float(met_i["loss"]) < float(met["loss"]) - 1e-3   # fewer negatives, lower loss
