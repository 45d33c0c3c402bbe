"""Optimizer chain: freezing, per-tower lr multipliers, weight-decay mask, schedules, reduce-on-plateau."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clap_jax.train import optim as optim_lib
from clap_jax.train.config import base


def _params():
    return {
        "audio_encoder": {"base": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones((3,))}},
        "caption_encoder": {"base": {"kernel": jnp.ones((4, 3)), "ln_f": {"scale": jnp.ones((3,))}}},
        "logit_scale": jnp.float32(2.0),
    }


def _oc(**kw):
    oc = base().optim
    oc.schedule = "constant"
    for k, v in kw.items():
        oc[k] = v
    return oc


def _one_update(oc, grads=None, value=1.0):
    p = _params()
    tx, _ = optim_lib.make_optimizer(oc, p, total_steps=100)
    g = grads if grads is not None else jax.tree.map(jnp.ones_like, p)
    upd, state = tx.update(g, tx.init(p), p, value=jnp.float32(value))
    return upd, state


def test_frozen_tower_gets_zero_update_and_no_adam_state():
    oc = _oc()
    oc.towers.audio_encoder.freeze = True
    upd, state = _one_update(oc)
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(upd["audio_encoder"]))
    assert all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(upd["caption_encoder"]))
    n_frozen = len(jax.tree.leaves(_one_update(oc)[1]))
    n_all = len(jax.tree.leaves(_one_update(_oc())[1]))
    assert n_frozen < n_all  # no mu/nu kept for the frozen tower


def test_lr_multiplier_scales_tower_update():
    ref, _ = _one_update(_oc())
    oc = _oc()
    oc.towers.caption_encoder.lr_mult = 0.25
    upd, _ = _one_update(oc)
    np.testing.assert_allclose(upd["caption_encoder"]["base"]["kernel"], 0.25 * ref["caption_encoder"]["base"]["kernel"],
                               rtol=1e-6)
    np.testing.assert_allclose(upd["audio_encoder"]["base"]["kernel"], ref["audio_encoder"]["base"]["kernel"])


def test_weight_decay_mask_decays_kernels_only():
    oc = _oc(name="adamw", weight_decay=0.1, lr=1.0)
    upd, _ = _one_update(oc, grads=jax.tree.map(jnp.zeros_like, _params()))
    assert float(upd["audio_encoder"]["base"]["kernel"][0, 0]) == pytest.approx(-0.1)
    assert float(upd["audio_encoder"]["base"]["bias"][0]) == 0.0
    assert float(upd["caption_encoder"]["base"]["ln_f"]["scale"][0]) == 0.0
    assert float(upd["logit_scale"]) == 0.0


def test_grad_clipping_bounds_update_direction():
    oc = _oc(name="adam", grad_clip_norm=1e-3, schedule="constant")
    p = _params()
    tx, _ = optim_lib.make_optimizer(oc, p, 10)
    # Clipping happens before Adam: with a huge gradient the clip output has global norm 1e-3.
    clip = optax.clip_by_global_norm(1e-3)
    g = jax.tree.map(lambda x: 1e6 * jnp.ones_like(x), p)
    c, _ = clip.update(g, clip.init(p))
    assert float(optax.tree.norm(c)) == pytest.approx(1e-3, rel=1e-4)
    upd, _ = tx.update(g, tx.init(p), p, value=jnp.float32(1.0))
    assert np.isfinite(float(optax.tree.norm(upd)))


def test_warmup_cosine_schedule():
    oc = _oc(schedule="warmup_cosine", warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    s = optim_lib.lr_schedule(oc, total_steps=110)
    assert float(s(0)) == 0.0
    assert float(s(10)) == pytest.approx(1.0)
    assert float(s(110)) == pytest.approx(0.1)
    assert 0.1 < float(s(60)) < 1.0


def test_reduce_on_plateau_cuts_lr_by_factor_after_patience():
    oc = _oc(schedule="reduce_on_plateau")
    oc.plateau.patience = 2
    oc.plateau.accumulation_size = 3   # an "epoch" of 3 steps
    p = _params()
    tx, _ = optim_lib.make_optimizer(oc, p, 100)
    state = tx.init(p)
    g = jax.tree.map(jnp.ones_like, p)
    scales = []
    for i in range(12):
        _, state = tx.update(g, state, p, value=jnp.float32(1.0))  # flat loss: never improves
        scales.append(float(optim_lib.plateau_scale(state)))
    assert scales[0] == 1.0
    assert scales[-1] == pytest.approx(0.1) or scales[-1] == pytest.approx(0.01)
    assert min(scales) < 1.0


@pytest.mark.parametrize("field,value", [("name", "sgd"), ("lr", -1.0), ("schedule", "linear"),
                                         ("grad_accum_steps", 0), ("grad_accum_mode", "gradcache")])
def test_invalid_optim_config_names_field(field, value):
    oc = _oc()
    oc[field] = value
    with pytest.raises(ValueError, match=f"config.optim.{field}"):
        optim_lib.validate(oc)
