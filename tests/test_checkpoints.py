"""Weights in and out: clear errors for bad checkpoints, clap_jax checkpoint round trip, HF GPT-2 import."""
import os
import pickle
import zipfile

import jax
import numpy as np
import pytest
import torch

from clap_jax.convert import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from clap_jax.convert import msclap as cv
from clap_jax.convert.tree import flatten
from clap_jax.models.registry import variable_shapes


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
    with pytest.raises(CheckpointError, match=r"evil\.pth: the file contains pickled Python code.*would run that "
                                              r"code.*torch\.save\(\{'model': sd\}"):
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
    with pytest.raises(CheckpointError, match=r"nothing\.pth: no such file or directory"):
        load_weights(str(tmp_path / "nothing.pth"))
    (tmp_path / "weights.xyz").write_bytes(b"?")
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


# ---------------------------------------------------------------------------------------------- overwrite rules
def _tiny_variables(tiny_cfg, tiny_msclap_state):
    return cv.from_msclap_state_dict(tiny_msclap_state, tiny_cfg)


def test_save_checkpoint_refuses_foreign_directories_and_never_deletes_their_files(tiny_cfg, tiny_msclap_state,
                                                                                   tmp_path):
    variables = _tiny_variables(tiny_cfg, tiny_msclap_state)
    d = tmp_path / "out"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match=r"out: .*not empty.*--overwrite"):
        save_checkpoint(str(d), variables, tiny_cfg)
    assert sorted(os.listdir(d)) == ["notes.txt"]
    # with overwrite our two files are written next to the foreign one, which is left alone
    save_checkpoint(str(d), variables, tiny_cfg, overwrite=True)
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors", "notes.txt"]
    assert (d / "notes.txt").read_text() == "keep me"
    load_checkpoint(str(d))
    # a HF model directory has the same two file names but is not ours
    from safetensors.numpy import save_file
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    save_file({"wte.weight": np.zeros((2, 2), np.float32)}, str(hf / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="--overwrite"):
        save_checkpoint(str(hf), variables, tiny_cfg)
    assert (hf / "config.json").read_text() == "{}"
    # a file is never replaced by a checkpoint directory
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        save_checkpoint(str(f), variables, tiny_cfg, overwrite=True)
    assert f.read_text() == "x"


def test_save_checkpoint_replaces_its_own_output_and_uses_empty_directories(tiny_cfg, tiny_msclap_state, tmp_path):
    variables = _tiny_variables(tiny_cfg, tiny_msclap_state)
    d = str(tmp_path / "ckpt")
    save_checkpoint(d, variables, tiny_cfg)
    save_checkpoint(d, variables, tiny_cfg)            # a rerun into its own previous output
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]    # no temporary siblings left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    save_checkpoint(str(empty), variables, tiny_cfg)
    load_checkpoint(str(empty))


def test_msclap_export_refuses_to_replace_a_foreign_file(tiny_cfg, tiny_msclap_state, tmp_path):
    variables = _tiny_variables(tiny_cfg, tiny_msclap_state)
    for name in ("other.pth", "other.safetensors"):
        p = tmp_path / name
        p.write_bytes(b"somebody else's file")
        with pytest.raises(CheckpointError, match=rf"{name}: .*exists.*--overwrite"):
            cv.save_msclap(variables, tiny_cfg, str(p))
        assert p.read_bytes() == b"somebody else's file"
        cv.save_msclap(variables, tiny_cfg, str(p), overwrite=True)
        assert cv.read_state_dict(str(p)).keys()
        cv.save_msclap(variables, tiny_cfg, str(p))     # our own export is recognised and replaced
    with pytest.raises(CheckpointError, match="is a directory"):
        cv.save_msclap(variables, tiny_cfg, str(tmp_path))


# ---------------------------------------------------------------------------------------------- architecture
def test_head_count_travels_with_pth_and_safetensors_exports(tiny_cfg, tmp_path):
    from clap_jax.inference import CLAP
    from clap_jax.models.registry import init_variables

    assert tiny_cfg.text.n_head == 2 and tiny_cfg.text.n_embd // 64 != 2   # a width-based guess would be wrong
    cfg = tiny_cfg.copy_and_resolve_references()
    cfg.audio.duration = 2.5                                              # not readable off any weight shape
    variables = jax.device_get(init_variables(cfg, 4))
    texts = ["a dog barking", "rain on a tin roof"]
    want = CLAP(variables=variables, config=cfg).get_text_embeddings(texts)
    for name in ("exported.pth", "exported.safetensors"):
        path = str(tmp_path / name)
        cv.save_msclap(variables, cfg, path)
        _, back = cv.load_msclap_checkpoint(path)
        assert back.to_dict() == cfg.to_dict(), name
        np.testing.assert_array_equal(CLAP(path).get_text_embeddings(texts), want, err_msg=name)
    # msclap reads only ['model'] (torch.load(...)['model'] with strict=False): the extra key leaves it intact
    obj = torch.load(str(tmp_path / "exported.pth"), weights_only=True)
    assert set(obj) == {"model", "clap_jax_config"} and len(obj["model"]) == len(cv.to_msclap_state_dict(variables,
                                                                                                        cfg))


def test_a_file_without_architecture_needs_n_head_unless_it_is_msclap_2023(tiny_cfg, tiny_msclap_state, tmp_path):
    from clap_jax.models import config as model_config

    path = _save(tiny_msclap_state, tmp_path / "plain.pth")               # as msclap writes it: weights only
    with pytest.raises(CheckpointError, match=r"plain\.pth: .*head count.*--n-head"):
        cv.load_msclap_checkpoint(path)
    _, cfg = cv.load_msclap_checkpoint(path, n_head=2)
    assert cfg.text.n_head == 2
    # every shape of msclap's 2023 model: its known 12 heads (shape-only arrays, no memory)
    full = model_config.clap_2023()
    sd = {}
    for coll in ("params", "batch_stats", "constants"):
        for p, s in flatten(variable_shapes(full)[coll]):
            key, kind = cv.torch_name(coll, p)
            sd[key] = cv._to_torch_layout(np.broadcast_to(np.float32(0), s.shape), kind)
    assert cv.infer_config(sd).to_dict() == full.to_dict()
    sd["caption_encoder.base.wpe.weight"] = np.broadcast_to(np.float32(0), (512, 768))   # one shape differs
    with pytest.raises(CheckpointError, match="--n-head"):
        cv.infer_config(sd)


# ---------------------------------------------------------------------------------------------- non-finite
def test_non_finite_weights_are_refused_in_every_format(tiny_cfg, tiny_msclap_state, tmp_path):
    from safetensors.numpy import load_file, save_file

    sd = dict(tiny_msclap_state)
    sd["caption_encoder.base.h.1.mlp.c_fc.weight"] = sd["caption_encoder.base.h.1.mlp.c_fc.weight"].copy()
    sd["caption_encoder.base.h.1.mlp.c_fc.weight"][0, :3] = np.nan
    sd["logit_scale"] = np.array(np.inf, np.float32)
    for path in (_save(sd, tmp_path / "nan.pth"), str(tmp_path / "nan.safetensors")):
        if path.endswith(".safetensors"):
            save_file({k: np.array(v, order="C") for k, v in sd.items()}, path)
        with pytest.raises(CheckpointError, match=r"nan\.(pth|safetensors): 2 weights hold NaN/inf: "
                                                  r"caption_encoder\.base\.h\.1\.mlp\.c_fc\.weight \(3 NaN\), "
                                                  r"logit_scale \(1 inf\)"):
            load_weights(path, tiny_cfg)
    d = save_checkpoint(str(tmp_path / "ckpt"), _tiny_variables(tiny_cfg, tiny_msclap_state), tiny_cfg)
    flat = load_file(os.path.join(d, "model.safetensors"))
    flat["params/logit_scale"] = np.array(np.nan, np.float32)
    save_file(flat, os.path.join(d, "model.safetensors"), metadata={"format": "clap_jax"})
    with pytest.raises(CheckpointError, match=r"ckpt.*1 weights hold NaN/inf: params/logit_scale \(1 NaN\)"):
        load_weights(d)


def test_non_finite_weights_in_a_training_workdir_are_refused(tiny_cfg, tiny_msclap_state, tmp_path):
    from clap_jax.train import checkpoint as ckpt_lib
    from clap_jax import files
    from clap_jax.convert import workdir
    from clap_jax.convert.tree import config_to_json

    variables = jax.tree.map(np.array, _tiny_variables(tiny_cfg, tiny_msclap_state))
    variables["batch_stats"]["audio_encoder"]["base"]["bn0"]["var"][5] = -np.inf
    work = tmp_path / "work"
    work.mkdir()
    files.write_text(str(work / workdir.CONFIG_FILE), config_to_json(tiny_cfg))
    mngr = ckpt_lib.make_manager(str(work / "checkpoints"), keep=1, save_every=1, async_save=False)
    ckpt_lib.save(mngr, 3, variables, None, force=True)
    mngr.wait_until_finished()
    with pytest.raises(CheckpointError, match=r"work.*1 weights hold NaN/inf: batch_stats/audio_encoder/base/bn0/var "
                                              r"\(1 inf\)"):
        load_weights(str(work))
