"""The captioner against msclap's real code (random weights built offline): mapper prefix, GPT-2 logits, greedy and
beam-search token sequences, and weights both ways in msclap's clapcap layout."""
import jax
import numpy as np
import pytest
import torch

from clap_jax.convert import clapcap as cv
from clap_jax.convert import load_weights
from clap_jax.convert.tree import CheckpointError, flatten
from clap_jax.models import clapcap, gpt2, registry
from clap_jax.models import config as model_config
from clapcap_oracle import build_clapcap, generate_beam, gpt_logits, prefix_embeddings
from conftest import rel_err

TOL = 1e-4
DECODE_VOCAB = 512


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cfg():
    """The tiny captioner with a 512-token GPT-2 (msclap's decoding loop reruns GPT-2 on the whole sequence for
    each of 67 steps; a small vocabulary keeps that quick). The full vocabulary is tested separately."""
    c = registry.model_config("msclap-clapcap-tiny")
    c.text.vocab_size = DECODE_VOCAB
    return c


@pytest.fixture(scope="module")
def ref(cfg):
    return build_clapcap(cfg, seed=1)


@pytest.fixture(scope="module")
def ref_state(ref):
    return {k: v.numpy().copy() for k, v in ref.state_dict().items()}


def test_prefix_and_logits_match_msclap(cfg, ref, ref_state):
    variables = cv.from_state_dict(ref_state, cfg)
    model = registry.build_model(cfg)
    rng = np.random.default_rng(21)
    wav = (rng.standard_normal((2, model_config.clip_samples(cfg))) * rng.uniform(0.05, 0.5)).astype(np.float32)
    ref_emb, ref_prefix = prefix_embeddings(ref, wav)
    ids = rng.integers(0, cfg.text.vocab_size, (2, 9)).astype(np.int32)
    audio = jax.jit(lambda v, w, i: (model.apply(v, w, method=model.encode_audio)["embedding"],
                                     model.apply(v, w, method=model.prefix), model.apply(v, w, i)))
    emb, prefix, full = jax.device_get(audio(variables, wav, ids))
    assert rel_err(emb, ref_emb) < TOL
    assert prefix.shape == (2, cfg.caption.prefix_length, cfg.text.n_embd)
    assert rel_err(prefix, ref_prefix) < TOL, "mapper prefix embeddings"
    # GPT-2 logits of [prefix ; caption tokens], as msclap's ClapCaptionModel.forward builds its input
    ours = np.asarray(jax.jit(lambda v, p, i: model.apply(v, p, i, method=model.logits))(variables, prefix, ids))
    with torch.no_grad():
        text = ref.gpt.transformer.wte(torch.from_numpy(ids.astype(np.int64))).numpy()
    assert rel_err(ours, gpt_logits(ref, np.concatenate([prefix, text], 1))) < TOL, "GPT-2 logits"
    # the teacher-forced forward from the waveform is the same thing
    assert rel_err(full, ours) < TOL
    # cached decoding: the prefix at once, then one token at a time, gives the same logits
    gp = variables["params"]["gpt"]["transformer"]
    cache = gpt2.init_cache(cfg.text, 2, prefix.shape[1] + ids.shape[1])
    step = jax.jit(lambda x, c, start: gpt2.forward_cached(gp, cfg.text, x, c, start))
    h, cache = step(prefix, cache, 0)
    steps = [gpt2.lm_logits(gp, h)]
    for i in range(ids.shape[1]):   # one compiled step serves every position
        h, cache = step(jax.numpy.take(gp["wte"]["embedding"], ids[:, i:i + 1], axis=0), cache, prefix.shape[1] + i)
        steps.append(gpt2.lm_logits(gp, h))
    assert rel_err(np.concatenate(steps, 1), ours) < TOL, "cached decoding"


def test_gpt2_without_prefix_is_unchanged(cfg):
    """The prefix argument leaves GPT-2's outputs on token ids alone (the CLAP text tower uses those)."""
    m = gpt2.GPT2(cfg.text)
    ids = np.random.default_rng(2).integers(0, 1000, (2, 7)).astype(np.int32)
    v = jax.jit(m.init)(jax.random.PRNGKey(0), ids)
    a = np.asarray(jax.jit(m.apply)(v, ids))
    b = np.asarray(jax.jit(lambda v, i, p: m.apply(v, i, prefix_embeds=p))(
        v, ids[:, 3:], jax.numpy.take(v["params"]["wte"]["embedding"], ids[:, :3], axis=0)))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beam_size,temperature", [(1, 1.0), (5, 1.0), (5, 0.7)])
def test_decoding_identical_to_msclap(cfg, ref, ref_state, beam_size, temperature):
    variables = cv.from_state_dict(ref_state, cfg)
    prefix = np.concatenate([
        (r.standard_normal((6, cfg.caption.prefix_length, cfg.text.n_embd)) * r.uniform(0.3, 2.0, (6, 1, 1)))
        for r in (np.random.default_rng(100), np.random.default_rng(101))]).astype(np.float32)
    n = len(prefix)
    out = jax.device_get(clapcap.beam_search(variables["params"]["gpt"]["transformer"], prefix, cfg,
                                             beam_size=beam_size, temperature=temperature))
    assert out["tokens"].shape == (n, beam_size, 67)
    lengths = []
    for i in range(n):
        want = generate_beam(ref, prefix[i], beam_size, temperature=temperature)
        got = [out["tokens"][i, j, :out["lengths"][i, j]].tolist() for j in range(beam_size)]
        assert got == want, f"clip {i}: beams differ from msclap's"
        lengths += [len(w) for w in want]
    assert np.all(np.diff(out["scores"], axis=1) <= 0), "beams are ordered best first"
    # both endings occur: beams that emitted the stop token early, and beams that ran to 67 tokens
    assert min(lengths) < 67 and max(lengths) == 67, lengths


def test_decoding_from_audio_full_vocabulary():
    """The whole path on the real 50257-token vocabulary: waveform -> prefix -> beams, as msclap's generate_caption."""
    c = registry.model_config("msclap-clapcap-tiny")
    ref = build_clapcap(c, seed=2)
    variables = cv.from_state_dict({k: v.numpy().copy() for k, v in ref.state_dict().items()}, c)
    model = registry.build_model(c)
    wav = (np.random.default_rng(5).standard_normal((2, model_config.clip_samples(c))) * 0.2).astype(np.float32)
    prefix = np.asarray(jax.jit(lambda v, w: model.apply(v, w, method=model.prefix))(variables, wav))
    _, ref_prefix = prefix_embeddings(ref, wav)
    assert rel_err(prefix, ref_prefix) < TOL
    out = jax.device_get(clapcap.beam_search(variables["params"]["gpt"]["transformer"], prefix, c, beam_size=3,
                                             max_steps=20))
    for i in range(2):
        want = generate_beam(ref, ref_prefix[i], 3, entry_length=20)
        assert [out["tokens"][i, j, :out["lengths"][i, j]].tolist() for j in range(3)] == want


# ----------------------------------------------------------------------------------------------------------------
# Weights both ways
# ----------------------------------------------------------------------------------------------------------------
def test_export_loads_strict_into_msclap(cfg, ref_state, tmp_path):
    rng = np.random.default_rng(3)   # msclap's weights, every parameter changed: a fresh set to export
    variables = jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(np.float32),
                             cv.from_state_dict(ref_state, cfg))
    fresh = cv.from_state_dict(ref_state, cfg)
    # BatchNorm statistics and the front end's constants (STFT kernels, mel filterbank: fixed, never trained) stay
    # msclap's; with standard STFT kernels the model computes the STFT by rFFT and does not read them
    variables["batch_stats"], variables["constants"] = fresh["batch_stats"], fresh["constants"]
    path = str(tmp_path / "cap.pth")
    cv.save(variables, cfg, path)
    target = build_clapcap(cfg, seed=9)
    sd = torch.load(path, weights_only=True)["model"]
    result = target.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(sd) == set(ref_state)      # exactly msclap's keys
    # msclap's model now computes what ours does
    wav = (np.random.default_rng(3).standard_normal((2, model_config.clip_samples(cfg))) * 0.3).astype(np.float32)
    model = registry.build_model(cfg)
    _, ref_prefix = prefix_embeddings(target, wav)
    assert rel_err(jax.jit(lambda v, w: model.apply(v, w, method=model.prefix))(variables, wav), ref_prefix) < TOL
    # the .safetensors twin holds the same tensors, and both read back to the same variables, config included
    twin = str(tmp_path / "cap.safetensors")
    cv.save(variables, cfg, twin)
    for p in (path, twin):
        back, back_cfg = load_weights(p)
        assert back_cfg.family == "msclap-clapcap" and back_cfg.to_dict() == cfg.to_dict()
        for (pa, a), (pb, b) in zip(sorted(flatten(back)), sorted(flatten(variables))):
            assert pa == pb
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_prefix_batch_norm_folds_into_msclap_mapper(cfg, tmp_path):
    """caption.prefix_batch_norm (a batch norm before the mapper, not in msclap): exported, it is folded into the
    mapper's linear layer, and msclap's model loads the file strict and computes our prefix."""
    c = registry.model_config("msclap-clapcap-tiny")
    c.text.vocab_size = DECODE_VOCAB
    c.caption.prefix_batch_norm, c.caption.normalize_prefix = True, False
    variables = registry.init_variables(c, 4)
    rng = np.random.default_rng(4)
    stats = variables["batch_stats"]["prefix_norm"]
    assert set(stats) == {"mean", "var"} and "prefix_norm" not in variables["params"]   # no scale, no bias
    variables["batch_stats"]["prefix_norm"] = {"mean": rng.standard_normal(stats["mean"].shape).astype(np.float32),
                                               "var": rng.uniform(0.2, 3.0, stats["var"].shape).astype(np.float32)}
    wav = (rng.standard_normal((3, model_config.clip_samples(c))) * 0.3).astype(np.float32)
    model = registry.build_model(c)
    ours = np.asarray(jax.jit(lambda v, w: model.apply(v, w, method=model.prefix))(variables, wav))
    # training mode standardises over the batch: a constant shift of every embedding leaves the prefix unchanged
    emb = rng.standard_normal((6, c.d_proj)).astype(np.float32)
    train_prefix = lambda e: model.apply(variables, e, True, method=model.map_prefix, mutable=["batch_stats"])[0]  # noqa
    np.testing.assert_allclose(train_prefix(emb + 5.0), train_prefix(emb), rtol=1e-3, atol=1e-3)
    path = str(tmp_path / "cap_bn.pth")
    cv.save(variables, c, path)
    target = build_clapcap(c, seed=9)
    result = target.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert rel_err(prefix_embeddings(target, wav)[1], ours) < TOL
    back, back_cfg = load_weights(path)                   # read back: the folded model, no batch norm
    assert back_cfg.caption.prefix_batch_norm is False and "prefix_norm" not in back["batch_stats"]
    plain = registry.build_model(back_cfg)
    assert rel_err(jax.jit(lambda v, w: plain.apply(v, w, method=plain.prefix))(back, wav), ours) < TOL
    c.caption.normalize_prefix = True                     # L2 after the norm: no msclap equivalent
    with pytest.raises(CheckpointError, match="prefix_batch_norm"):
        cv.save(variables, c, str(tmp_path / "no.pth"))


def test_import_msclap_file_legacy_buffers_and_errors(cfg, ref_state, tmp_path):
    # msclap's own file: {'model': state dict}, no stored config, GPT-2 causal-mask buffers of old transformers
    sd = dict(ref_state)
    for i in range(cfg.text.n_layer):
        sd[f"gpt.transformer.h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), np.float32))
        sd[f"gpt.transformer.h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    path = str(tmp_path / "clapcap_weights.pth")
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}}, path)
    with pytest.raises(CheckpointError, match="head count"):   # not msclap's full size: heads must be given
        load_weights(path)
    variables, got = load_weights(path, n_head=cfg.text.n_head)
    assert got.family == "msclap-clapcap"
    for field in ("prefix_length", "clip_length", "num_layers", "mlp_ratio"):
        assert got.caption[field] == cfg.caption[field], field
    assert (got.audio.depths, got.d_proj, got.text.n_layer) == (cfg.audio.depths, cfg.d_proj, cfg.text.n_layer)
    np.testing.assert_array_equal(variables["params"]["clap_project"]["prefix_const"],
                                  ref_state["clap_project.prefix_const"])
    np.testing.assert_array_equal(variables["params"]["clap_project"]["linear"]["kernel"],
                                  ref_state["clap_project.linear.weight"].T)

    def refused(change, match):
        bad = dict(ref_state)
        change(bad)
        with pytest.raises(CheckpointError, match=match):
            cv.from_state_dict(bad, cfg, source="bad.pth")

    refused(lambda d: d.pop("clap_project.transformer.layers.1.attn.project.bias"),
            r"missing: clap_project\.transformer\.layers\.1\.attn\.project\.bias")
    refused(lambda d: d.update({"clap_project.extra.weight": np.zeros(3, np.float32)}),
            r"unexpected: clap_project\.extra\.weight")
    refused(lambda d: d.update({"gpt.transformer.h.0.attn.bias_extra": np.zeros(3, np.float32)}),
            r"unexpected: gpt\.transformer\.h\.0\.attn\.bias_extra")
    refused(lambda d: d.update({"clap_project.prefix_const": np.zeros((5, 32), np.float32)}),
            r"clap_project\.prefix_const: checkpoint \(5, 32\), model expects \(4, 32\)")
    refused(lambda d: d.update({"gpt.lm_head.weight": d["gpt.lm_head.weight"] + 1}), "untied")
    refused(lambda d: d.update({"clap_project.linear.bias": np.where(np.arange(d["clap_project.linear.bias"].size) == 0,
                                                                     np.nan, d["clap_project.linear.bias"])}),
            r"clap_project\.linear\.bias \(1 NaN\)")


def test_clap_checkpoint_is_not_taken_for_a_captioner(tmp_path):
    """A CLAP (not captioner) file of the same endings still loads as CLAP: the captioner format sniffs its keys."""
    from clap_jax.convert import msclap

    c = model_config.tiny()
    path = str(tmp_path / "clap.safetensors")
    variables = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), registry.variable_shapes(c))
    msclap.save_msclap(variables, c, path)
    assert not cv.sniff(path)
    assert load_weights(path)[1].family == "msclap-2023"
