"""The train step on 8 simulated devices: gradients equal a single-device float64 reference (data-parallel and
FSDP layouts), non-finite steps are skipped, gradient accumulation averages micro-batch gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from clap_jax.train import sharding as shd
from clap_jax.train import train
from clap_jax.train.synthetic import make_global_batch

from _train_helpers import load_config, make_model, mesh


def _batch(config, seed=0):
    return make_global_batch(seed, 0, config.batch_size, train.num_samples(config), config.model.text.max_length,
                             num_classes=4)


def _reference_grads(config, model, state, batch, rng):
    """float64, one device, plain (global) loss."""
    cfg = config.copy_and_resolve_references()
    cfg.loss.kind = "global"
    with jax.enable_x64(True):
        to64 = lambda t: jax.tree.map(lambda x: np.asarray(x, np.float64) if np.asarray(x).dtype.kind == "f"
                                      else np.asarray(x), jax.device_get(t))
        grad_fn = train.make_grad_fn(model, cfg, None)
        (loss, (m, _)), g = jax.jit(grad_fn)(to64(state["params"]), to64(state["batch_stats"]),
                                             to64(state["constants"]), to64(batch), rng)
        assert jax.tree.leaves(g)[0].dtype == jnp.float64
        return float(loss), jax.tree.map(np.asarray, g)


@pytest.mark.parametrize("layout", ["data_parallel", "fsdp"])
def test_sharded_grads_equal_float64_single_device_reference(layout):
    config = load_config("tiny", "fsdp,sharded_loss" if layout == "fsdp" else "")
    model = make_model(config, deterministic=True)
    m = mesh((8, 1, 1) if layout == "data_parallel" else (1, 8, 1))
    _, _, init_fn, abstract_state, state_sh = train.abstract_setup(model, config, m)
    state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.PRNGKey(0))
    specs = [s.spec for s in jax.tree.leaves(state_sh["params"])]
    if layout == "fsdp":
        assert any("fsdp" in str(s) for s in specs), "FSDP rules sharded nothing"
    else:
        assert all(s == P() for s in specs)
    batch = _batch(config)
    rng = jax.random.PRNGKey(7)
    bsh = NamedSharding(m, P(shd.BATCH_AXES))
    grad_fn = jax.jit(train.make_grad_fn(model, config, m, state_sh["params"]),
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
        np.testing.assert_allclose(np.asarray(g), r, rtol=1e-4, atol=1e-5 * scale, err_msg=shd.path_str(p))
        n += 1
    assert n == len(flat_ref) and n > 3


def _compiled(config, model, m):
    tx, schedule, init_fn, abstract_state, state_sh = train.abstract_setup(model, config, m)
    step = train.make_train_step(model, tx, config, m, schedule, state_sh["params"])
    fn, info = train.compile_train_step(step, abstract_state, state_sh, m, config)
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


def test_grad_accumulation_averages_microbatch_gradients():
    config = load_config("tiny")
    config.optim.grad_accum_steps = 2
    config.optim.name = "adam"
    model = make_model(config, deterministic=True)
    m = mesh((8, 1, 1))
    fn, state, tx, state_sh = _compiled(config, model, m)
    params0 = jax.device_get(state["params"])
    opt0 = jax.device_get(state["opt_state"])
    bs0, c0 = jax.device_get(state["batch_stats"]), jax.device_get(state["constants"])
    batch = _batch(config)
    state, met = fn(state, jax.device_put(batch, NamedSharding(m, P(shd.BATCH_AXES))))
    # Manual: rows j::2 form micro-batch j (see train._microbatches); mean of the two gradients, one update.
    grad_fn = jax.jit(train.make_grad_fn(model, config, None))
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), 0)
    gs, losses, bs = [], [], bs0
    for j in range(2):
        mb = {k: v[j::2] for k, v in batch.items()}
        (l, (_, bs)), g = grad_fn(params0, bs, c0, mb, jax.random.fold_in(rng, j))
        gs.append(g)
        losses.append(float(l))
    g = jax.tree.map(lambda a, b: (a + b) / 2, *gs)
    upd, _ = tx.update(g, opt0, params0, value=jnp.float32(np.mean(losses)))
    expect = jax.tree.map(lambda p, u: p + u, params0, upd)
    np.testing.assert_allclose(float(met["loss"]), np.mean(losses), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(jax.device_get(state["params"])), jax.tree.leaves(expect)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
