"""`python -m clap_jax.convert` for the LAION family: laion_clap .pt <-> clap_jax and HF ClapModel directory <->
clap_jax, through the CLI; the HF export loads into transformers' ClapModel without missing or unexpected keys."""
import subprocess
import sys

import jax
import numpy as np
import pytest

from clap_jax.convert.__main__ import main
from clap_jax.convert.checkpoint import load_checkpoint, save_checkpoint
from clap_jax.convert.tree import CheckpointError
from clap_jax.models import registry


def _same(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(p))


def test_laion_pt_and_hf_dir_both_ways_through_the_cli(tmp_path, capsys):
    cfg = registry.model_config("laion-clap-tiny-fusion")
    variables = jax.device_get(registry.init_variables(cfg, 0))   # seed 0: HF's missing parts are seed-0 fresh
    variables = jax.tree.map(lambda x: x + np.float32(0.01) if x.dtype == np.float32 else x, variables)
    save_checkpoint(str(tmp_path / "ckpt"), variables, cfg)

    assert main(["jax-to-laion", str(tmp_path / "ckpt"), str(tmp_path / "m.pt")]) == 0
    assert main(["laion-to-jax", str(tmp_path / "m.pt"), str(tmp_path / "back")]) == 0
    v, c = load_checkpoint(str(tmp_path / "back"))
    assert c.family == "laion-clap" and c.audio.fusion
    _same(v["params"], variables["params"])
    _same(v["batch_stats"], variables["batch_stats"])

    assert main(["jax-to-hf-clap", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    from transformers import ClapModel

    _, info = ClapModel.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert main(["hf-clap-to-jax", str(tmp_path / "hf"), str(tmp_path / "from_hf")]) == 0
    v2, _ = load_checkpoint(str(tmp_path / "from_hf"))
    fresh = jax.device_get(registry.init_variables(cfg, 0))["params"]
    for name in v2["params"]:     # HF holds neither the MLP-loss transforms nor the tscam head: fresh ones
        want = fresh[name] if name in ("audio_transform", "text_transform") else variables["params"][name]
        if name == "audio_branch":
            want = {k: (fresh[name][k] if k in ("tscam_conv", "head") else x) for k, x in want.items()}
        _same(v2["params"][name], want)
    assert "wrote" in capsys.readouterr().out

    # refusals: an msclap model is not a LAION one; another file is never overwritten silently
    m = registry.model_config("msclap-2023-tiny")
    save_checkpoint(str(tmp_path / "ms"), jax.device_get(registry.init_variables(m, 0)), m)
    with pytest.raises(CheckpointError, match="laion_clap and HF ClapModel files hold laion-clap models only"):
        main(["jax-to-laion", str(tmp_path / "ms"), str(tmp_path / "ms.pt")])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    r = subprocess.run([sys.executable, "-m", "clap_jax.convert", "jax-to-hf-clap", str(tmp_path / "ckpt"),
                        str(tmp_path / "other")], capture_output=True, text=True)
    assert r.returncode == 2 and "notes.txt" in r.stderr and "--overwrite" in r.stderr
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
