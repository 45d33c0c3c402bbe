"""LAION-CLAP weights both ways with HF transformers' ClapModel (random weights from a small ClapConfig): import
gives the same audio (fusion on and off, short and 30 s clips), text embeddings and logit scales; export loads
back with `from_pretrained` without missing or unexpected keys and gives the same embeddings."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from clap_jax.audio import fusion
from clap_jax.convert import formats
from clap_jax.convert import hf_clap
from clap_jax.models import registry
from clap_jax.models.laion import normalize
from conftest import rel_err

TOL = 1e-4


def _hf_model(cfg, seed):
    from transformers import ClapConfig, ClapModel

    d = hf_clap.to_hf_config(cfg)
    torch.manual_seed(seed)
    model = ClapModel(ClapConfig(text_config=d["text_config"], audio_config=d["audio_config"],
                                 projection_dim=d["projection_dim"], logit_scale_init_value=12.0))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():   # non-trivial norms, biases and BatchNorm statistics, distinct logit scales
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                big = name.endswith("batch_norm")
                m.running_mean.copy_((-30 if big else 0) + torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_((50 if big else 0.5) + torch.rand(m.running_var.shape, generator=g))
        model.logit_scale_t.fill_(1.7)
    return model.eval()


def _inputs(cfg, variables, rng):
    """Our audio inputs and the same features as HF's `input_features` / `is_longer`."""
    waves = [(rng.standard_normal(n) * 0.3).astype(np.float32) for n in (150000, 30 * 48000)]
    ours = fusion.batch_inputs([fusion.laion_audio_input(w, np.random.RandomState(5), fusion=cfg.audio.fusion)
                                for w in waves])
    if cfg.audio.fusion:
        feats, longer = ours["mel_fusion"], ours["longer"]
    else:   # HF's unfused input: the model's own Slaney log-mel (before bn0)
        model = registry.build_model(cfg)
        feats = np.asarray(model.apply(variables, jnp.asarray(ours["waveform"]),
                                       method=lambda m, w: m.audio_branch.log_mel(w)))[:, None]
        longer = np.zeros(len(waves), bool)
    return ours, torch.from_numpy(feats), torch.from_numpy(longer[:, None])


def _check(cfg, variables, hf, rng):
    ours_in, feats, longer = _inputs(cfg, variables, rng)
    model = registry.build_model(cfg)
    got = normalize(model.apply(variables, {k: jnp.asarray(v) for k, v in ours_in.items()},
                                method=model.encode_audio)["embedding"])
    with torch.no_grad():
        want = hf.get_audio_features(input_features=feats, is_longer=longer).pooler_output.numpy()
    assert rel_err(got, want) < TOL, "audio embedding"
    ids = np.ones((2, 77), np.int64)
    ids[:, 0], ids[0, 1:6], ids[0, 6], ids[1, 1:40], ids[1, 40] = 0, rng.integers(3, 300, 5), 2, \
        rng.integers(3, 300, 39), 2
    mask = (ids != 1).astype(np.int64)
    t = normalize(model.apply(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32),
                              method=model.encode_text))
    with torch.no_grad():
        tw = hf.get_text_features(input_ids=torch.from_numpy(ids),
                                  attention_mask=torch.from_numpy(mask)).pooler_output.numpy()
    assert rel_err(t, tw) < TOL, "text embedding"
    p = variables["params"]
    for ours, theirs in ((p["logit_scale_a"], hf.logit_scale_a), (p["logit_scale_t"], hf.logit_scale_t)):
        assert abs(float(ours) - float(theirs)) < 1e-6


@pytest.mark.parametrize("name", ["laion-clap-tiny", "laion-clap-tiny-fusion"])
def test_hf_clap_both_ways(name, tmp_path):
    from transformers import ClapModel

    cfg = registry.model_config(name)
    cfg.text.vocab_size = 300          # a small vocabulary keeps the HF model small
    hf = _hf_model(cfg, 3)
    hf.save_pretrained(str(tmp_path / "hf"))
    variables, got_cfg = formats.load_weights(str(tmp_path / "hf"))   # the family told from the directory
    assert got_cfg.family == "laion-clap" and bool(got_cfg.audio.fusion) == bool(cfg.audio.fusion)
    assert got_cfg.text.layer_norm_eps == 1e-5
    rng = np.random.default_rng(0)
    _check(got_cfg, variables, hf, rng)

    moved = dict(variables)
    moved["params"] = jax.tree.map(lambda x: np.asarray(x) * np.float32(0.8) + np.float32(0.02), variables["params"])
    hf_clap.save_hf_clap(moved, got_cfg, str(tmp_path / "export"))
    back, info = ClapModel.from_pretrained(str(tmp_path / "export"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    _check(got_cfg, moved, back.eval(), rng)
