"""Weights in and out: clear errors for bad checkpoints, clap_jax checkpoint round trip, HF GPT-2 import."""
import os
import pickle
import zipfile

import jax
import numpy as np
import pytest
import torch

from clap_jax.convert import msclap as cv
from clap_jax.convert.msclap import CheckpointError
from clap_jax.weights import load_checkpoint, load_weights, save_checkpoint


def _save(sd, path):
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}}, path)
    return str(path)


def test_missing_unexpected_and_wrong_shape_keys_are_named(tiny_cfg, tiny_msclap_state, tmp_path):
    sd = dict(tiny_msclap_state)
    del sd["audio_encoder.base.htsat.layers.1.blocks.0.attn.qkv.weight"]
    sd["caption_encoder.base.h.0.attn.extra.weight"] = np.zeros(3, np.float32)
    sd["audio_encoder.projection.linear2.weight"] = np.zeros((5, 5), np.float32)
    path = _save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        cv.load_msclap_checkpoint(path, tiny_cfg)
    msg = str(e.value)
    assert path in msg
    assert "1 missing: audio_encoder.base.htsat.layers.1.blocks.0.attn.qkv.weight" in msg
    assert "1 unexpected: caption_encoder.base.h.0.attn.extra.weight" in msg
    assert "audio_encoder.projection.linear2.weight: checkpoint (5, 5)" in msg


def test_geometry_buffers_and_old_gpt2_masks_are_accepted(tiny_cfg, tiny_msclap_state, tmp_path):
    sd = dict(tiny_msclap_state)
    sd["caption_encoder.base.h.0.attn.bias"] = np.tril(np.ones((1, 1, 80, 80), np.float32))
    sd["caption_encoder.base.h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
    variables, cfg = cv.load_msclap_checkpoint(_save(sd, tmp_path / "ok.pth"), tiny_cfg)
    assert cfg is tiny_cfg and "audio_encoder" in variables["params"]


def test_truncated_file(tiny_msclap_state, tmp_path):
    path = _save(tiny_msclap_state, tmp_path / "full.pth")
    data = open(path, "rb").read()
    with open(tmp_path / "cut.pth", "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth: .*(truncated|unreadable|refused)"):
        cv.read_state_dict(str(tmp_path / "cut.pth"))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/clap_jax_pwned",))


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    if os.path.exists("/tmp/clap_jax_pwned"):
        os.remove("/tmp/clap_jax_pwned")
    path = str(tmp_path / "evil.pth")
    torch.save({"model": {"x": torch.zeros(2)}, "payload": _Evil()}, path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused or unreadable"):
        cv.read_state_dict(path)
    assert not os.path.exists("/tmp/clap_jax_pwned")
    # a raw pickle (not torch's zip format) is refused before unpickling
    raw = str(tmp_path / "raw.pth")
    with open(raw, "wb") as f:
        pickle.dump(_Evil(), f)
    with pytest.raises(CheckpointError, match="not a zip archive"):
        cv.read_state_dict(raw)
    assert not os.path.exists("/tmp/clap_jax_pwned")


def test_infer_config_from_weights(tiny_cfg, tiny_msclap_state):
    cfg = cv.infer_config(tiny_msclap_state, n_head=tiny_cfg.text.n_head)
    for k in ("embed_dim", "depths", "num_heads", "num_classes"):
        assert tuple(np.atleast_1d(cfg.audio[k])) == tuple(np.atleast_1d(tiny_cfg.audio[k])), k
    assert (cfg.text.n_embd, cfg.text.n_layer, cfg.d_proj) == (tiny_cfg.text.n_embd, tiny_cfg.text.n_layer,
                                                                tiny_cfg.d_proj)
    with pytest.raises(CheckpointError, match="not a msclap 2023"):
        cv.infer_config({"foo": np.zeros(1)})


def test_clap_jax_checkpoint_round_trip_and_errors(tiny_cfg, tiny_msclap_state, tmp_path):
    variables = cv.from_msclap_state_dict(tiny_msclap_state, tiny_cfg)
    d = save_checkpoint(str(tmp_path / "ckpt"), variables, tiny_cfg)
    back, cfg = load_weights(d)
    assert cfg.to_dict() == tiny_cfg.to_dict()
    for (p, a), (q, b) in zip(jax.tree_util.tree_leaves_with_path(variables),
                              jax.tree_util.tree_leaves_with_path(back)):
        assert p == q
        np.testing.assert_array_equal(a, b)
    os.remove(os.path.join(d, "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_checkpoint(d)
    with pytest.raises(CheckpointError, match="unknown weights format"):
        load_weights(str(tmp_path / "weights.xyz"))


def test_hf_gpt2_import_matches_transformers(tiny_cfg, tmp_path):
    from transformers import GPT2Config, GPT2Model

    from clap_jax.convert.hf_gpt2 import load_hf_gpt2
    from clap_jax.models.gpt2 import GPT2

    t = tiny_cfg.text
    torch.manual_seed(0)
    hf = GPT2Model(GPT2Config(vocab_size=t.vocab_size, n_positions=t.n_positions, n_embd=t.n_embd,
                              n_layer=t.n_layer, n_head=t.n_head)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(str(tmp_path / "gpt2"))
    assert os.path.isfile(tmp_path / "gpt2" / "model.safetensors")
    params, text_cfg = load_hf_gpt2(str(tmp_path / "gpt2"))
    assert text_cfg.n_head == t.n_head and text_cfg.n_embd == t.n_embd
    ids = np.random.default_rng(0).integers(1, t.vocab_size, (3, 20)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    ours = GPT2(text_cfg).apply({"params": params}, ids, mask)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids.astype(np.int64)),
                 attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(ours)[mask > 0], ref[mask > 0], rtol=1e-4, atol=1e-4)
    # wrong size is named
    small = tiny_cfg.text.copy_and_resolve_references()
    small.n_layer = 3
    with pytest.raises(CheckpointError, match="missing"):
        load_hf_gpt2(str(tmp_path / "gpt2"), small)
