"""configs/clap_2022.py: the recipe's values, and the tiny 2022-family model (CNN14 BatchNorm statistics and all)
training a few steps on 8 simulated devices and resuming bit for bit."""
import jax
import numpy as np

from clap_jax.train import train

from _train_helpers import load_config


def test_recipe_values():
    c = load_config("clap_2022", "random")
    assert c.model.family == "msclap-2022" and c.model.audio.duration == 5.0 and c.model.text.max_length == 100
    assert c.batch_size == 1024 and c.optim.name == "adam" and c.optim.lr == 1e-3
    assert c.total_steps == 40 * (128_000 // 1024) and c.optim.plateau.accumulation_size == 125


def test_tiny_2022_trains_and_resumes_bit_exact(tmp_path):
    ref = train.train_and_evaluate(load_config("clap_2022", "tiny,steps=4,ckpt_every=2"), str(tmp_path / "a"))
    losses = ref["losses"]
    assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(v) for v in losses.values())
    # CNN14's running statistics were trained (moved from the 0 / 1 init) and are checkpointed with the params
    bn0 = ref["state"]["batch_stats"]["audio_encoder"]["base"]["bn0"]
    assert np.abs(np.asarray(bn0["mean"])).min() > 1e-3
    # an interrupted run: stop at step 2, then the same command to step 4 resumes from the step-2 checkpoint
    train.train_and_evaluate(load_config("clap_2022", "tiny,steps=2,ckpt_every=2"), str(tmp_path / "b"))
    res = train.train_and_evaluate(load_config("clap_2022", "tiny,steps=4,ckpt_every=2"), str(tmp_path / "b"))
    assert res["start_step"] == 2 and sorted(res["losses"]) == [3, 4]
    for s in (3, 4):
        assert res["losses"][s] == losses[s], (s, res["losses"][s], losses[s])
    for a, b in zip(jax.tree.leaves(res["state"]["params"]) + jax.tree.leaves(res["state"]["batch_stats"]),
                    jax.tree.leaves(ref["state"]["params"]) + jax.tree.leaves(ref["state"]["batch_stats"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
