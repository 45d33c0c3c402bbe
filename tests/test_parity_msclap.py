"""Parity with msclap's real PyTorch code, both directions, on random weights and fresh random inputs."""
import jax
import numpy as np
import pytest
import torch

from clap_jax.convert import msclap as cv
from clap_jax.models.clap import CLAPModel
from clap_jax.models.registry import init_variables
from clap_jax.text.tokenizer import ClapTokenizer
from conftest import rel_err
from msclap_oracle import build_msclap, msclap_audio_outputs, msclap_text_embeddings

TEXTS = ["a dog barks twice", "rain falling on a tin roof!", "wow!! a siren", "x", "a car passes by " * 3]
LENGTHS = (308700, 3 * 44100, 12 * 44100)   # 7 s (the model's clip), shorter (resized up), longer (eval crops)
TOL = 1e-4


def _ours(cfg, variables, wav, texts):
    model = CLAPModel(cfg)
    bound = model.bind(variables)
    audio = jax.jit(lambda v, w: model.apply(v, w, method=model.encode_audio))(variables, wav)
    ids, mask = ClapTokenizer()(texts)
    text = jax.jit(lambda v, i, m: model.apply(v, i, m, method=model.encode_text))(variables, ids, mask)
    mel = bound.audio_encoder.base.log_mel(jax.numpy.asarray(wav))
    return audio, np.asarray(text), np.asarray(mel), bound


def _compare(cfg, variables, ref_model, rng, lengths=LENGTHS, intermediates=True):
    for n in lengths:
        wav = (rng.standard_normal((2, n)) * rng.uniform(0.01, 0.5)).astype(np.float32)
        ref = msclap_audio_outputs(ref_model, wav)
        audio, text, mel, bound = _ours(cfg, variables, wav, TEXTS)
        if intermediates:
            assert rel_err(mel, ref["logmel"]) < TOL, f"log-mel, {n} samples"
            if "image" in ref:
                h = bound.audio_encoder.base
                bn = h.bn0(mel, use_running_average=True)
                np.testing.assert_allclose(np.asarray(bn), ref["bn"], atol=1e-3)
                assert rel_err(h.image(bn), ref["image"]) < TOL, f"256x256 image, {n} samples"
        assert rel_err(audio["latent"], ref["latent"]) < TOL, f"latent, {n} samples"
        assert rel_err(audio["embedding"], ref["embedding"]) < TOL, f"audio embedding, {n} samples"
        assert rel_err(audio["clipwise"], ref["clipwise"]) < TOL, f"clipwise, {n} samples"
        assert rel_err(audio["framewise"], ref["framewise"]) < TOL, f"framewise, {n} samples"
    assert rel_err(text, msclap_text_embeddings(ref_model, TEXTS)) < TOL, "text embedding"


def test_import_tiny(tiny_cfg, tiny_msclap, tiny_msclap_state):
    variables = cv.from_msclap_state_dict(tiny_msclap_state, tiny_cfg)
    _compare(tiny_cfg, variables, tiny_msclap, np.random.default_rng(11))


def test_export_tiny_loads_strict_and_matches(tiny_cfg, tmp_path):
    variables = jax.device_get(init_variables(tiny_cfg, 5))
    # make the non-trainable state non-trivial so a mapping slip would show
    variables = dict(variables)
    bs = variables["batch_stats"]["audio_encoder"]["base"]["bn0"]
    bs["mean"] = np.linspace(-40, -10, 64).astype(np.float32)
    bs["var"] = np.linspace(20, 80, 64).astype(np.float32)
    path = str(tmp_path / "exported.pth")
    cv.save_msclap(variables, tiny_cfg, path)
    ref_model = build_msclap(tiny_cfg, seed=99)
    result = ref_model.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    _compare(tiny_cfg, variables, ref_model, np.random.default_rng(12), lengths=(308700, 2 * 44100),
             intermediates=False)
    # the .safetensors twin holds the same tensors
    twin = str(tmp_path / "exported.safetensors")
    cv.save_msclap(variables, tiny_cfg, twin)
    a, b = cv.read_state_dict(path), cv.read_state_dict(twin)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_full_size_both_directions():
    """msclap 2023 at full size: import -> equal outputs; export -> strict load -> identical state dict."""
    from clap_jax.models import config as model_config

    cfg = model_config.clap_2023()
    ref_model = build_msclap(cfg, seed=7)
    sd = {k: v.numpy() for k, v in ref_model.state_dict().items()}
    assert len(sd) == 357
    variables = cv.from_msclap_state_dict(sd, cfg)
    n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
    assert n_params == 158_355_608  # learnable params incl. the unused `head` and logit_scale (spec 2.4)
    _compare(cfg, variables, ref_model, np.random.default_rng(13), lengths=(308700, 5 * 44100, 11 * 44100))
    back = cv.to_msclap_state_dict(variables, cfg)
    fresh = build_msclap(cfg, seed=8)
    res = fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in back.items()}, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    for k, v in ref_model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[k].numpy(), v.numpy(), err_msg=k)
