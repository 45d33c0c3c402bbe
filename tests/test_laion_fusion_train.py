"""A training step of the fused LAION model on a batch mixing short and long clips, compiled: gradients reach the
fusion branch, and the fusion's BatchNorm statistics come from the long clips only (as laion_clap runs AFF on
them alone)."""
import jax
import jax.numpy as jnp
import numpy as np

from clap_jax.audio import fusion
from clap_jax.models import registry


def test_mixed_short_and_long_batch_trains_through_the_compiled_step():
    cfg = registry.model_config("laion-clap-tiny-fusion")
    variables = registry.init_variables(cfg, 0)
    model = registry.build_model(cfg)
    rng = np.random.default_rng(0)
    waves = [(rng.standard_normal(n) * 0.3).astype(np.float32) for n in (30 * 48000, 3 * 48000, 12 * 48000)]
    state = np.random.RandomState(0)
    batch = fusion.batch_inputs([fusion.laion_audio_input(w, state, fusion=True) for w in waves])
    assert batch["longer"].tolist() == [True, False, True]
    ids = np.ones((3, 77), np.int32)
    ids[:, :4] = [[0, 50, 60, 2], [0, 70, 80, 2], [0, 90, 95, 2]]
    mask = (ids != 1).astype(np.int32)

    def loss_fn(params, stats, views, longer, key):
        k1, k2 = jax.random.split(key)
        (a, t, s), upd = model.apply({**variables, "params": params, "batch_stats": stats},
                                     {"mel_fusion": views, "longer": longer}, ids, mask, train=True,
                                     rngs={"dropout": k1, "augment": k2}, mutable=["batch_stats"])
        a = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
        t = t / jnp.linalg.norm(t, axis=-1, keepdims=True)
        logits = jnp.exp(s) * a @ t.T
        labels = jnp.arange(3)
        ce = lambda lg: -jnp.mean(jax.nn.log_softmax(lg)[labels, labels])  # noqa: E731
        return (ce(logits) + ce(logits.T)) / 2, upd["batch_stats"]

    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    key = jax.random.PRNGKey(1)
    (loss, stats), grads = step(variables["params"], variables["batch_stats"], batch["mel_fusion"],
                                batch["longer"], key)
    assert np.isfinite(float(loss))
    pe = grads["audio_branch"]["patch_embed"]
    assert float(jnp.abs(pe["mel_conv2d"]["kernel"]).max()) > 0
    assert float(jnp.abs(pe["fusion_model"]["local_att_0"]["kernel"]).max()) > 0
    aff = stats["audio_branch"]["patch_embed"]["fusion_model"]
    aff0 = variables["batch_stats"]["audio_branch"]["patch_embed"]["fusion_model"]
    assert not np.allclose(np.asarray(aff["local_att_1"]["mean"]), np.asarray(aff0["local_att_1"]["mean"]))


def test_fusion_batchnorm_statistics_come_from_the_fused_rows_only():
    from clap_jax.models.htsat import AFF

    rng = np.random.default_rng(3)
    x, r = (jnp.asarray(rng.standard_normal((4, 3, 5, 8)), jnp.float32) for _ in range(2))
    rows = jnp.asarray([True, False, True, False])
    aff = AFF(8)
    v = aff.init(jax.random.PRNGKey(0), x, r)
    out, upd = aff.apply(v, x, r, True, rows, mutable=["batch_stats"])
    out_sel, upd_sel = aff.apply(v, x[rows], r[rows], True, mutable=["batch_stats"])
    for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(upd_sel)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out[rows]), np.asarray(out_sel), rtol=1e-4, atol=1e-5)
