"""Model-level behaviour beyond parity: training mode, options, config validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clap_jax.models import config as model_config
from clap_jax.models.clap import CLAPModel
from clap_jax.models.registry import init_variables


@pytest.fixture(scope="module")
def setup(tiny_cfg):
    v = init_variables(tiny_cfg, 0)
    wav = jax.random.normal(jax.random.PRNGKey(1), (4, 44100)) * 0.1
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 5000, (4, 77)), jnp.int32)
    return v, wav, ids


def _train_apply(cfg, v, wav, ids, seed):
    m = CLAPModel(cfg)
    rngs = {"dropout": jax.random.PRNGKey(seed), "augment": jax.random.PRNGKey(seed + 100)}
    return jax.jit(lambda v: m.apply(v, wav, ids, jnp.ones_like(ids), train=True, rngs=rngs,
                                     mutable=["batch_stats"]))(v)


def test_training_mode_updates_bn_and_is_stochastic(tiny_cfg, setup):
    v, wav, ids = setup
    (a1, t1, s), upd = _train_apply(tiny_cfg, v, wav, ids, 0)
    (a2, t2, _), _ = _train_apply(tiny_cfg, v, wav, ids, 1)
    old = v["batch_stats"]["audio_encoder"]["base"]["bn0"]["mean"]
    new = upd["batch_stats"]["audio_encoder"]["base"]["bn0"]["mean"]
    assert not np.allclose(old, new)                       # running stats move in training
    assert not np.allclose(a1, a2) and not np.allclose(t1, t2)  # dropout / drop-path / SpecAugment
    m = CLAPModel(tiny_cfg)
    e1 = m.apply(v, wav, ids, jnp.ones_like(ids))
    e2 = m.apply(v, wav, ids, jnp.ones_like(ids))
    np.testing.assert_array_equal(e1[0], e2[0])            # eval is deterministic


def test_gradients_reach_every_trainable_param(tiny_cfg, setup):
    v, wav, ids = setup
    m = CLAPModel(tiny_cfg)

    def loss(params):
        (a, t, s), _ = m.apply({**v, "params": params}, wav, ids, jnp.ones_like(ids), train=True,
                               rngs={"dropout": jax.random.PRNGKey(0), "augment": jax.random.PRNGKey(1)},
                               mutable=["batch_stats"])
        return jnp.sum(a * t) * jnp.exp(s)

    g = jax.jit(jax.grad(loss))(v["params"])
    flat = jax.tree_util.tree_leaves_with_path(g)
    dead = [jax.tree_util.keystr(p) for p, x in flat if not np.any(np.asarray(x))]
    # `head` is unused on msclap's tscam path and the tscam classifier is not on the embedding path
    assert dead and all("['head']" in d or "['tscam_conv']" in d for d in dead), dead


def test_remat_and_bf16_options(tiny_cfg, setup):
    v, wav, ids = setup
    ref = CLAPModel(tiny_cfg).apply(v, wav, ids, jnp.ones_like(ids))
    cfg = tiny_cfg.copy_and_resolve_references()
    cfg.remat = True
    out = CLAPModel(cfg).apply(v, wav, ids, jnp.ones_like(ids))
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-5, atol=1e-5)
    cfg.dtype = "bfloat16"
    out = CLAPModel(cfg).apply(v, wav, ids, jnp.ones_like(ids))
    assert out[0].dtype == jnp.float32
    cos = np.sum(np.asarray(out[0]) * np.asarray(ref[0]), 1) / (
        np.linalg.norm(out[0], axis=1) * np.linalg.norm(ref[0], axis=1))
    assert cos.min() > 0.98


def test_fft_stft_option_gives_the_same_model(tiny_cfg, setup):
    v, wav, ids = setup
    assert tiny_cfg.audio.stft == "fft"   # the default
    mm = tiny_cfg.copy_and_resolve_references()
    mm.audio.stft = "matmul"
    ref = CLAPModel(mm).apply(v, wav, ids, jnp.ones_like(ids))
    out = CLAPModel(tiny_cfg).apply(v, wav, ids, jnp.ones_like(ids))
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-4, atol=1e-5)
    # the stored DFT kernels are what 'matmul' reads: zeroing them changes 'matmul' but not 'fft'
    base = v["constants"]["audio_encoder"]["base"]
    zeroed = {**v, "constants": {**v["constants"], "audio_encoder": {"base": {
        **base, "stft_real": jnp.zeros_like(base["stft_real"]), "stft_imag": jnp.zeros_like(base["stft_imag"])}}}}
    np.testing.assert_array_equal(CLAPModel(tiny_cfg).apply(zeroed, wav, ids, jnp.ones_like(ids))[0], out[0])
    assert not np.allclose(CLAPModel(mm).apply(zeroed, wav, ids, jnp.ones_like(ids))[0], ref[0])


def test_loading_weights_picks_the_stft_path_from_the_stored_kernels(tiny_cfg, setup, tmp_path, caplog):
    """Standard kernels (as every msclap / clap_jax checkpoint holds): the rFFT path; anything else: the matmul path
    that reads them, with a warning; an explicit config is left alone."""
    from clap_jax.convert import checkpoint
    from clap_jax.convert.formats import load_weights

    v, _, _ = setup
    mm = tiny_cfg.copy_and_resolve_references()
    mm.audio.stft = "matmul"
    checkpoint.save_checkpoint(str(tmp_path / "std"), jax.device_get(v), mm)
    _, cfg = load_weights(str(tmp_path / "std"))
    assert cfg.audio.stft == "fft"
    base = v["constants"]["audio_encoder"]["base"]
    odd = {**v, "constants": {**v["constants"], "audio_encoder": {"base": {
        **base, "stft_real": base["stft_real"] * 1.01}}}}
    checkpoint.save_checkpoint(str(tmp_path / "odd"), jax.device_get(odd), tiny_cfg)
    with caplog.at_level("WARNING"):
        _, cfg = load_weights(str(tmp_path / "odd"))
    assert cfg.audio.stft == "matmul" and "not the standard" in caplog.text
    _, cfg = load_weights(str(tmp_path / "std"), config=mm)
    assert cfg.audio.stft == "matmul"


def test_specaug_widths_come_from_the_config(tiny_cfg, setup):
    v, wav, ids = setup
    cfg = tiny_cfg.copy_and_resolve_references()
    cfg.audio.specaug_time_stripes = cfg.audio.specaug_freq_stripes = 0   # no stripes: the same as no SpecAugment
    (a0, _, _), _ = _train_apply(cfg, v, wav, ids, 0)
    cfg.audio.specaug = False
    (a1, _, _), _ = _train_apply(cfg, v, wav, ids, 0)
    np.testing.assert_allclose(a0, a1, rtol=1e-6, atol=1e-6)
    cfg.audio.specaug = True
    cfg.audio.specaug_time_stripes, cfg.audio.specaug_time_width = 2, 60   # wide stripes: a different embedding
    (a2, _, _), _ = _train_apply(cfg, v, wav, ids, 0)
    assert not np.allclose(a2, a1, atol=1e-4)


def test_eval_crops_scale_with_a_smaller_image(tiny_cfg):
    """Clips longer than the image's frames are averaged over crops in eval; the crop sizes follow the target
    (msclap's 689/344 frames for its 1024), so a 128-frame model evaluates a clip of 130 frames."""
    cfg = tiny_cfg.copy_and_resolve_references()
    cfg.audio.spec_size, cfg.audio.mel_bins = 64, 32            # target: 64 * 2 = 128 frames
    n = 130 * cfg.audio.hop_size                                  # 131 frames > 128
    v = init_variables(cfg, 0)
    wav = jax.random.normal(jax.random.PRNGKey(3), (2, n)) * 0.1
    ids = jnp.ones((2, cfg.text.max_length), jnp.int32)
    a, t, s = CLAPModel(cfg).apply(v, wav, ids, jnp.ones_like(ids))
    assert a.shape == (2, cfg.d_proj) and np.isfinite(np.asarray(a)).all()


@pytest.mark.parametrize("field,value,match", [
    ("audio.stft", "dct", "audio.stft"),
    ("audio.specaug_freq_width", 0, "audio.specaug_time_width/freq_width"),
    ("audio.num_heads", (1, 2, 3, 4), r"audio.num_heads\[2\]"),
    ("audio.depths", (1, 1, 1), "audio.depths/num_heads"),
    ("text.n_head", 5, "text.n_head"),
    ("dtype", "float8", "dtype"),
    ("text.max_length", 1000, "text.max_length"),
])
def test_invalid_config_names_the_field(field, value, match):
    cfg = model_config.tiny()
    node = cfg
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=match):
        model_config.validate(cfg)


def test_init_gives_moderate_gradients_on_partly_silent_audio(tiny_cfg):
    """Regression: a zero-initialised patch-embedding bias made LayerNorm see constant vectors on silent patches
    (gradient norm ~1e6 at step 0). msclap's convs use PyTorch's default init; so do ours."""
    n = 44100
    v = init_variables(tiny_cfg, 0)
    t = np.arange(n) / 44100
    wav = np.stack([0.3 * np.sin(2 * np.pi * f * t) * (t < d) for f, d in ((300, 0.3), (900, 0.5), (2000, 0.2),
                                                                            (500, 0.4))]).astype(np.float32)
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 5000, (4, 77)), jnp.int32)
    m = CLAPModel(tiny_cfg)

    def loss(params):
        (a, t_, s), _ = m.apply({**v, "params": params}, wav, ids, jnp.ones_like(ids), train=True,
                                rngs={"dropout": jax.random.PRNGKey(0), "augment": jax.random.PRNGKey(1)},
                                mutable=["batch_stats"])
        a = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
        t_ = t_ / jnp.linalg.norm(t_, axis=-1, keepdims=True)
        return -jnp.mean(jnp.diag(jax.nn.log_softmax(jnp.exp(s) * a @ t_.T, axis=1)))

    g = jax.jit(jax.grad(loss))(v["params"])
    norm = float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(g))))
    assert np.isfinite(norm) and norm < 1e3, norm
