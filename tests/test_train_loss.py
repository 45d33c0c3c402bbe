"""Contrastive loss: global and row-sharded implementations equal a float64 reference, values and gradients."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from clap_jax.train import loss as loss_lib


def _ref_loss_np(a, t, ls):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    s = math.exp(min(ls, math.log(100)))
    lg = s * a @ t.T
    def ce(x):
        m = x.max(1, keepdims=True)
        lse = (m + np.log(np.exp(x - m).sum(1, keepdims=True)))[:, 0]
        return (lse - np.diag(x)).mean()
    return 0.5 * (ce(lg) + ce(lg.T)), (lg.argmax(1) == np.arange(len(a))).mean()


def _emb(b=16, d=6, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((b, d)), r.standard_normal((b, d))


def test_global_loss_matches_numpy_float64():
    a, t = _emb()
    ref, acc = _ref_loss_np(a, t, 2.0)
    loss, m = loss_lib.clip_loss(jnp.asarray(a, jnp.float32), jnp.asarray(t, jnp.float32), jnp.float32(2.0))
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    np.testing.assert_allclose(float(m["acc_a2t"]), acc)
    assert m["loss"].dtype == jnp.float32


def test_logit_scale_clamped_at_100_with_zero_gradient():
    a, t = _emb()
    f = lambda ls: loss_lib.clip_loss(jnp.asarray(a, jnp.float32), jnp.asarray(t, jnp.float32), ls)[0]
    _, m = loss_lib.clip_loss(jnp.asarray(a, jnp.float32), jnp.asarray(t, jnp.float32), jnp.float32(6.0))
    np.testing.assert_allclose(float(m["logit_scale"]), 100.0, rtol=1e-6)
    assert float(jax.grad(f)(jnp.float32(6.0))) == 0.0
    assert float(jax.grad(f)(jnp.float32(2.0))) != 0.0


def test_bf16_embeddings_give_float32_loss():
    a, t = _emb()
    loss, _ = loss_lib.clip_loss(jnp.asarray(a, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16), jnp.float32(2.0))
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), _ref_loss_np(a, t, 2.0)[0], rtol=2e-2)


def _mesh(shape):
    return Mesh(np.asarray(jax.devices()[:8]).reshape(shape), ("data", "fsdp", "tensor"))


def test_sharded_loss_and_grads_equal_float64_reference_on_8_devices():
    assert jax.device_count() >= 8
    a, t = _emb(b=32, d=8, seed=3)
    with jax.enable_x64(True):
        ref_fn = lambda a, t, ls: loss_lib.clip_loss(a, t, ls)[0]
        ref_val, ref_grads = jax.value_and_grad(ref_fn, argnums=(0, 1, 2))(
            jnp.asarray(a, jnp.float64), jnp.asarray(t, jnp.float64), jnp.float64(2.3))
        ref_val, ref_grads = float(ref_val), [np.asarray(g) for g in ref_grads]
    for shape in [(8, 1, 1), (2, 4, 1), (2, 2, 2)]:
        mesh = _mesh(shape)
        sh = NamedSharding(mesh, P(("data", "fsdp")))
        aj, tj = jax.device_put(jnp.asarray(a, jnp.float32), sh), jax.device_put(jnp.asarray(t, jnp.float32), sh)
        for kind in ("global", "sharded"):
            fn = loss_lib.make_loss_fn(kind, mesh)
            val, grads = jax.jit(jax.value_and_grad(lambda a, t, ls: fn(a, t, ls)[0], argnums=(0, 1, 2)))(
                aj, tj, jnp.float32(2.3))
            np.testing.assert_allclose(float(val), ref_val, rtol=1e-6, err_msg=f"{shape} {kind}")
            for g, r in zip(grads, ref_grads):
                np.testing.assert_allclose(np.asarray(g), r, rtol=1e-5, atol=1e-7, err_msg=f"{shape} {kind}")


def test_sharded_metrics_match_global():
    mesh = _mesh((4, 2, 1))
    a, t = _emb(b=16, d=4, seed=5)
    aj, tj = jnp.asarray(a, jnp.float32), jnp.asarray(t, jnp.float32)
    _, mg = loss_lib.clip_loss(aj, tj, jnp.float32(1.0))
    _, ms = jax.jit(lambda a, t: loss_lib.sharded_clip_loss(a, t, jnp.float32(1.0), mesh=mesh,
                                                            batch_axes=("data", "fsdp")))(aj, tj)
    for k in mg:
        np.testing.assert_allclose(float(ms[k]), float(mg[k]), rtol=1e-5, err_msg=k)
