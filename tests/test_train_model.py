"""The trainer with the real tiny CLAPModel (HTSAT + GPT-2 at test size, 1 s clips) on an FSDP x data mesh with
the row-sharded loss: compiles, takes finite steps with sharded parameters, checkpoints.
(The trainer's mechanics are tested on a small stand-in model elsewhere; the real model's compile time on these
CPUs is the cost of this one test.)"""
import os

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from clap_jax.train import train

from _train_helpers import load_config


def test_real_tiny_model_trains_fsdp_sharded_loss(tmp_path):
    config = load_config("tiny", "fsdp,sharded_loss,steps=2")
    config.mesh.data, config.mesh.fsdp = 4, 2
    config.data.num_classes = 4
    summary = train.train_and_evaluate(config, str(tmp_path))
    assert summary["stopped"] == "done" and summary["end_step"] == 2
    assert len(summary["losses"]) == 2 and all(np.isfinite(v) for v in summary["losses"].values())
    specs = [x.sharding.spec for x in jax.tree.leaves(summary["state"]["params"])]
    assert any("fsdp" in str(s) for s in specs) and any(s == P() for s in specs)
    assert set(summary["state"]["constants"]) and set(summary["state"]["batch_stats"])
    assert os.path.isdir(tmp_path / "checkpoints" / "2" / "state")
