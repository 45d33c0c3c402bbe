"""The trainer with the real tiny CLAPModel (HTSAT + GPT-2 at test size, 1 s clips) on an FSDP x data mesh with
the row-sharded loss, initialised from a msclap-format checkpoint plus HF GPT-2 weights for the text tower: loads
and validates both, compiles, takes finite steps with sharded parameters, checkpoints.
(The trainer's mechanics are tested on a small stand-in model elsewhere; the real model's compile time on these
CPUs is the cost of this one test.)"""
import os

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from clap_jax.train import train

from _train_helpers import load_config


def _random_msclap_file(cfg, path):
    """A msclap state dict (safetensors) for `cfg` with random values, written by clap_jax.convert."""
    from clap_jax.convert.msclap import save_msclap
    from clap_jax.models.registry import variable_shapes
    rng = np.random.default_rng(0)
    shapes = variable_shapes(cfg)
    variables = jax.tree.map(lambda s: (0.02 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
    variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])  # running variances > 0
    # the front end's constants as every msclap file holds them (standard STFT kernels, the mel filterbank)
    from clap_jax.models.registry import init_variables
    variables["constants"] = jax.tree.map(np.asarray, jax.device_get(init_variables(cfg, 0)["constants"]))
    save_msclap(variables, cfg, str(path))
    return variables


def _random_hf_gpt2_dir(t, path):
    """A transformers GPT2Model of the tiny text size, saved like a hub download (model.safetensors)."""
    import torch
    from transformers import GPT2Config, GPT2Model
    torch.manual_seed(1)
    GPT2Model(GPT2Config(vocab_size=t.vocab_size, n_positions=t.n_positions, n_embd=t.n_embd, n_layer=t.n_layer,
                         n_head=t.n_head)).save_pretrained(str(path))
    return str(path)


def test_real_tiny_model_from_msclap_checkpoint_trains_fsdp_sharded_loss(tmp_path):
    config = load_config("tiny", "fsdp,sharded_loss,steps=2")
    config.mesh.data, config.mesh.fsdp = 4, 2
    config.data.num_classes = 4
    loaded = _random_msclap_file(config.model, tmp_path / "msclap.safetensors")
    config.init.msclap = str(tmp_path / "msclap.safetensors")
    config.init.hf_gpt2 = _random_hf_gpt2_dir(config.model.text, tmp_path / "gpt2")
    config.optim.lr = 1e-9          # two steps that barely move the loaded weights
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    st = summary["state"]
    for a, b in zip(jax.tree.leaves(st["constants"]), jax.tree.leaves(loaded["constants"])):
        np.testing.assert_array_equal(np.asarray(a), b)
    from clap_jax.convert.hf_gpt2 import load_hf_gpt2
    gpt2, _ = load_hf_gpt2(config.init.hf_gpt2, config.model.text)
    expect = dict(loaded["params"], caption_encoder=dict(loaded["params"]["caption_encoder"], base=gpt2))
    assert jax.tree.structure(expect) == jax.tree.structure(jax.device_get(st["params"]))
    for a, b in zip(jax.tree.leaves(st["params"]), jax.tree.leaves(expect)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert not np.allclose(np.asarray(st["params"]["caption_encoder"]["base"]["wte"]["embedding"]),
                           loaded["params"]["caption_encoder"]["base"]["wte"]["embedding"], atol=1e-3)
    assert summary["stopped"] == "done" and summary["end_step"] == 2
    assert len(summary["losses"]) == 2 and all(np.isfinite(v) for v in summary["losses"].values())
    specs = [x.sharding.spec for x in jax.tree.leaves(summary["state"]["params"])]
    assert any("fsdp" in str(s) for s in specs) and any(s == P() for s in specs)
    assert set(summary["state"]["constants"]) and set(summary["state"]["batch_stats"])
    assert os.path.isdir(tmp_path / "run" / "checkpoints" / "2" / "state")
    # the run's workdir is a weights source: CLAP(workdir), the eval and the converter read its newest step
    from clap_jax.convert.msclap import to_msclap_state_dict
    from clap_jax.convert import load_weights
    variables, cfg = load_weights(str(tmp_path / "run"))
    assert cfg.to_dict() == config.model.to_dict()
    for a, b in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(jax.device_get(st["params"]))):
        np.testing.assert_array_equal(a, b)
    sd = to_msclap_state_dict(variables, cfg)
    assert "audio_encoder.base.htsat.patch_embed.proj.weight" in sd
