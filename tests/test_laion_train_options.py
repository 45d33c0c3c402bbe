"""LAION training options: laion_clap's MLP loss (against its real ClipLoss), per-tower optimiser settings named
after LAION's parameter tree (a frozen text tower stays put through a step), and the compiled step of a fused
model on random batches with the MLP loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clap_jax.train import laion as laion_train
from clap_jax.train import optim as optim_lib

from _train_helpers import load_config
from laion_oracle import _import_laion


def test_mlp_loss_equals_laion_cliploss_value_and_gradients():
    import torch

    _import_laion()
    from clap_module.loss import ClipLoss

    rng = np.random.default_rng(7)
    b, d = 6, 16
    raw = [rng.standard_normal((b, d)) for _ in range(4)]
    norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    a, t = norm(raw[0]), norm(raw[1])          # laion normalises the embeddings; the transforms' outputs are not
    am, tm = raw[2], raw[3]
    ls_a, ls_t = np.log(1 / 0.07) + rng.uniform(-0.5, 0.5), np.log(1 / 0.07) + rng.uniform(-0.5, 0.5)

    tt = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (a, t, am, tm)]
    lst = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (ls_a, ls_t)]
    ref = ClipLoss(mlp_loss=True)(audio_features=tt[0], text_features=tt[1], logit_scale_a=lst[0].exp(),
                                  logit_scale_t=lst[1].exp(), audio_features_mlp=tt[2], text_features_mlp=tt[3])
    ref.backward()

    with jax.enable_x64(True):
        args = [jnp.asarray(x, jnp.float64) for x in (a, t, am, tm)] + [jnp.float64(ls_a), jnp.float64(ls_t)]
        (loss, m), grads = jax.value_and_grad(laion_train.mlp_clip_loss, argnums=tuple(range(6)), has_aux=True)(
            *args)
        assert loss.dtype == jnp.float64
    np.testing.assert_allclose(float(loss), ref.item(), rtol=1e-12)
    for g, x in zip(grads, tt + lst):
        np.testing.assert_allclose(np.asarray(g), x.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(m["logit_scale_t"]), np.exp(ls_t), rtol=1e-12)
    # without the MLP loss laion's ClipLoss is the contrastive loss of the other families (logit_scale_a only)
    from clap_jax.train import loss as loss_lib

    plain = ClipLoss()(audio_features=tt[0], text_features=tt[1], logit_scale_a=lst[0].exp())
    with jax.enable_x64(True):
        ours, _ = loss_lib.clip_loss(jnp.asarray(a), jnp.asarray(t), jnp.float64(ls_a))
    np.testing.assert_allclose(float(ours), plain.item(), rtol=1e-6)   # (its scale is exp'd in float32)


def test_laion_config_towers_and_mlp_loss_choice():
    c = load_config("laion_clap", "random")
    assert not c.loss.mlp          # laion_clap's training default (--clap-mlploss off)
    assert set(c.optim.towers) == {"audio_branch", "text_branch", "audio_projection", "text_projection",
                                   "audio_transform", "text_transform", "logit_scale_a", "logit_scale_t"}
    m = load_config("laion_clap", "random,mlp_loss")
    assert m.loss.mlp and m.loss.kind == "global"
    assert optim_lib.tower_of("audio_projection_0/kernel") == "audio_projection"
    assert optim_lib.tower_of("text_branch/embeddings/word_embeddings/embedding") == "text_branch"
    assert optim_lib.tower_of("logit_scale_a") == "logit_scale_a"
    # a tower setting that matches no parameter of the model is refused, naming the field
    c.optim.towers.audio_encoder = {"lr_mult": 1.0, "freeze": True}
    params = {"audio_branch": {"w": jnp.zeros((2, 2))}, "text_branch": {"w": jnp.zeros((2, 2))}}
    with pytest.raises(ValueError, match=r"optim\.towers\.audio_encoder: this model has no such tower"):
        optim_lib.make_optimizer(c.optim, params, 10)


def test_frozen_text_tower_and_mlp_loss_through_the_compiled_step(tmp_path):
    """The tiny fused model on random batches, MLP loss, text_branch frozen: after two steps the text tower is
    bit-identical to the trainer's initial one, the audio tower, projections, transforms and both logit scales
    moved."""
    from clap_jax.train import sharding as shd
    from clap_jax.train import state as state_lib
    from clap_jax.train import train

    cfg = load_config("laion_clap", "tiny,fusion,mlp_loss,random,steps=2,batch_size=8")
    cfg.optim.towers.text_branch.freeze = True
    cfg.ckpt.every_steps = 0
    res = train.train_and_evaluate(cfg, str(tmp_path / "run"))
    assert sorted(res["losses"]) == [1, 2] and all(np.isfinite(v) for v in res["losses"].values())
    model = state_lib.make_model(cfg)
    init_fn = state_lib.abstract_setup(model, cfg, shd.make_mesh(cfg.mesh))[2]
    before = jax.tree.map(np.asarray, jax.jit(init_fn)(jax.random.PRNGKey(cfg.seed))["params"])
    after = jax.tree.map(np.asarray, res["state"]["params"])
    for x, y in zip(jax.tree.leaves(before["text_branch"]), jax.tree.leaves(after["text_branch"])):
        np.testing.assert_array_equal(x, y)
    for name in ("audio_branch", "audio_projection_0", "text_projection_2", "audio_transform", "text_transform",
                 "logit_scale_a", "logit_scale_t"):
        assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before[name]),
                                                            jax.tree.leaves(after[name]))), name
