"""Parity with laion_clap 1.1.7's real PyTorch code (random weights, built offline), both directions: audio
embeddings for clips shorter than, equal to and longer than 10 s (fusion on and off, the same crop positions),
the fusion views of a 30 s clip, text embeddings, both logit scales; and .pt files both ways."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from clap_jax.audio import fusion
from clap_jax.convert import formats
from clap_jax.convert import laion as cv
from clap_jax.convert.tree import CheckpointError
from clap_jax.models import registry
from clap_jax.models.laion import normalize
from conftest import rel_err
import laion_oracle as lo

TOL = 1e-4
SR = 48000
# shorter (repeat-padded), exactly 10 s, one hop longer than 10 s (whole-clip corner case), 30 s (three crops)
LENGTHS = (int(3.3 * SR), 480000, 480000 + 300, 30 * SR)


@pytest.fixture(scope="module", params=["laion-clap-tiny", "laion-clap-tiny-fusion"])
def pair(request):
    cfg = registry.model_config(request.param)
    ref = lo.build_laion(cfg, seed=3)
    variables = cv.from_laion_state_dict(lo.state_dict(ref), cfg, "laion_clap oracle")
    return cfg, ref, variables


def _embed_audio(cfg, variables, batch):
    model = registry.build_model(cfg)
    inputs = {k: jnp.asarray(v) for k, v in batch.items()}
    return np.asarray(jax.jit(lambda v, a: normalize(model.apply(v, a, method=model.encode_audio)["embedding"]))(
        variables, inputs))


def _embed_text(cfg, variables, ids, mask):
    model = registry.build_model(cfg)
    return np.asarray(normalize(model.apply(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32),
                                            method=model.encode_text)))


def _ids(rng, vocab, lengths=(4, 19, 77)):
    """RoBERTa rows: <s>=0 ... </s>=2, padded with <pad>=1 to 77."""
    ids = np.ones((len(lengths), 77), np.int64)
    for r, n in enumerate(lengths):
        ids[r, 0] = 0
        ids[r, 1:n - 1] = rng.integers(3, vocab, n - 2)
        ids[r, n - 1] = 2
    return ids, (ids != 1).astype(np.int64)


def test_audio_text_and_scales_match_laion(pair):
    cfg, ref, variables = pair
    rng = np.random.default_rng(int(cfg.audio.fusion) + 5)
    waves = [(rng.standard_normal(n) * rng.uniform(0.05, 0.6)).astype(np.float32) for n in LENGTHS]
    seed = int(rng.integers(1 << 30))
    ref_in = lo.audio_inputs(ref, waves, seed)
    state = np.random.RandomState(seed)       # replays laion's draws from numpy's global generator
    ours_in = [fusion.laion_audio_input(w, state, fusion=cfg.audio.fusion) for w in waves]
    for n, o, r in zip(LENGTHS, ours_in, ref_in):
        np.testing.assert_array_equal(o["waveform"], r["waveform"].numpy(), err_msg=f"waveform, {n} samples")
        assert o["longer"] == bool(r["longer"]), f"longer flag, {n} samples"
        if cfg.audio.fusion:     # the four mel views: global (resized), front, middle, back
            for k in range(4):
                assert rel_err(o["mel_fusion"][k], r["mel_fusion"][k].numpy()) < TOL, f"view {k}, {n} samples"
    assert [o["longer"] for o in ours_in] == [False, False, not cfg.audio.fusion, True]
    got = _embed_audio(cfg, variables, fusion.batch_inputs(ours_in))
    want = lo.audio_embeddings(ref, ref_in)
    for i, n in enumerate(LENGTHS):
        assert rel_err(got[i], want[i]) < TOL, f"audio embedding, {n} samples (fusion={cfg.audio.fusion})"
    if cfg.audio.fusion:   # a plain 10 s waveform: the model computes the four identical HTK views itself
        plain = _embed_audio(cfg, variables, {"waveform": np.stack([o["waveform"] for o in ours_in[:2]])})
        assert rel_err(plain, want[:2]) < TOL
    ids, mask = _ids(rng, cfg.text.vocab_size)
    assert rel_err(_embed_text(cfg, variables, ids, mask), lo.text_embeddings(ref, ids, mask)) < TOL
    a, t = lo.logit_scales(ref)
    p = variables["params"]
    assert abs(np.exp(p["logit_scale_a"]) - a) < TOL * a and abs(np.exp(p["logit_scale_t"]) - t) < TOL * t
    assert abs(a - t) > 1.0   # the two scales are distinct parameters and must not be mixed up


def test_pt_layouts_import(pair, tmp_path):
    """laion_clap's training checkpoint ('module.' keys, with position_ids as transformers < 4.31 wrote them),
    a bare state dict without prefix or position_ids, and a damaged one (clear error naming the key)."""
    cfg, ref, variables = pair
    sd = {k: torch.from_numpy(np.array(v)) for k, v in lo.state_dict(ref).items()}
    with_pos = dict(sd)
    with_pos["text_branch.embeddings.position_ids"] = torch.arange(cfg.text.max_position_embeddings)[None]
    torch.save({"epoch": 3, "name": "run", "state_dict": {"module." + k: v for k, v in with_pos.items()}},
               tmp_path / "train.pt")
    torch.save({k: v for k, v in sd.items() if "position_ids" not in k}, tmp_path / "bare.pt")
    for name in ("train.pt", "bare.pt"):
        got, gcfg = formats.load_weights(str(tmp_path / name))
        assert gcfg.family == "laion-clap" and bool(gcfg.audio.fusion) == bool(cfg.audio.fusion)
        assert gcfg.audio.embed_dim == cfg.audio.embed_dim and tuple(gcfg.audio.depths) == tuple(cfg.audio.depths)
        for x, y in zip(jax.tree.leaves(variables), jax.tree.leaves(got)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    broken = {k: v for k, v in sd.items() if k != "audio_projection.2.bias"}
    broken["audio_branch.extra.weight"] = torch.zeros(2)
    torch.save({"state_dict": broken}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"broken\.pt.*audio_projection\.2\.bias.*audio_branch\.extra\.weight"):
        cv.load_laion(str(tmp_path / "broken.pt"), cfg)


def test_export_loads_into_laion_strict(pair, tmp_path):
    cfg, ref, _ = pair
    # other weights than the oracle's (a fresh init would cost a compile): every parameter and statistic moved
    # (the front end's constants kept: the model computes its STFT by FFT, not from the stored DFT kernels)
    variables = dict(pair[2])
    for coll in ("params", "batch_stats"):
        variables[coll] = jax.tree.map(lambda x: np.asarray(x) * np.float32(0.9) + np.float32(0.01), variables[coll])
    path = str(tmp_path / "export.pt")
    cv.save_laion(variables, cfg, path)
    ref.load_ckpt(path, verbose=False)        # laion's own loader: drops position_ids, then strict=True
    # (this replaces the oracle's weights: it is the last test of each parametrisation)
    rng = np.random.default_rng(9)
    waves = [(rng.standard_normal(n) * 0.3).astype(np.float32) for n in (200000, 30 * SR)]
    ref_in = lo.audio_inputs(ref, waves, 11)
    state = np.random.RandomState(11)
    ours = fusion.batch_inputs([fusion.laion_audio_input(w, state, fusion=cfg.audio.fusion) for w in waves])
    assert rel_err(_embed_audio(cfg, variables, ours), lo.audio_embeddings(ref, ref_in)) < TOL
    ids, mask = _ids(rng, cfg.text.vocab_size)
    assert rel_err(_embed_text(cfg, variables, ids, mask), lo.text_embeddings(ref, ids, mask)) < TOL
    # and back: the file reads into the same variables, the family told from the file
    back, bcfg = formats.load_weights(path)
    assert bcfg.family == "laion-clap" and bool(bcfg.audio.fusion) == bool(cfg.audio.fusion)
    for (p, x), (_, y) in zip(jax.tree_util.tree_flatten_with_path(variables)[0],
                              jax.tree_util.tree_flatten_with_path(back)[0]):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))
