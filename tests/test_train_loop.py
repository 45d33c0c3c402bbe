"""The train loop in-process (stand-in model): eval hook, TensorBoard events, NaN streak stops the run with the
last good checkpoint intact, initialisation from a clap_jax checkpoint is validated."""
import glob

import jax
import numpy as np
import pytest

from clap_jax.models import config as model_config
from clap_jax.train import progress, train
from clap_jax.train.random_batches import RandomBatches

from _train_helpers import load_config, make_model


def restore_params(checkpoints_dir, abstract_params, step=None):
    from clap_jax.convert.workdir import restore_variables
    return restore_variables(checkpoints_dir, {"params": abstract_params}, step=step)["params"]


def test_eval_hook_and_tensorboard_events(tmp_path):
    config = load_config("tiny", "steps=4")
    config.eval.every_steps = 2
    calls = []

    def eval_fn(variables, step):
        calls.append(step)
        assert set(variables) == {"params", "batch_stats", "constants"}
        return {"score": float(step)}

    summary = train.train_and_evaluate(config, str(tmp_path), model=make_model(config), eval_fn=eval_fn)
    assert calls == [0, 2, 4]
    assert [s for s, _ in summary["evals"]] == [0, 2, 4]
    files = glob.glob(str(tmp_path / "events.out.tfevents.*"))
    assert files and max(len(open(f, "rb").read()) for f in files) > 200


class _NaNAfter(RandomBatches):
    def __init__(self, bad_from, **kw):
        super().__init__(**kw)
        self.bad_from = bad_from

    def __next__(self):
        i = self._index
        b = super().__next__()
        if i >= self.bad_from:
            b = dict(b, audio=b["audio"] * np.nan)
        return b


def test_nan_streak_stops_run_and_keeps_last_good_checkpoint(tmp_path):
    config = load_config("tiny", "steps=20,ckpt_every=2")
    config.nan.max_consecutive = 3
    from clap_jax.train import sharding as shd
    mesh = shd.make_mesh(config.mesh)
    it = _NaNAfter(4, batch_size=config.batch_size, num_samples=model_config.clip_samples(config.model),
                   text_len=77, sharding=shd.batch_sharding(mesh))
    with pytest.raises(progress.NonFiniteError, match="consecutive non-finite"):
        train.train_and_evaluate(config, str(tmp_path), model=make_model(config), data_iter=it, mesh=mesh)
    # The run stopped within the streak; every checkpoint holds finite params equal to the step-4 params.
    steps = sorted(int(p.split("/")[-1]) for p in glob.glob(str(tmp_path / "checkpoints" / "*")) if
                   p.split("/")[-1].isdigit())
    assert steps and steps[-1] <= 4 + config.nan.max_consecutive + 1
    config2 = load_config("tiny", "steps=4")
    s4 = train.train_and_evaluate(config2, None, model=make_model(config2))["state"]["params"]
    restored = restore_params(str(tmp_path / "checkpoints"), jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), s4), step=steps[-1])
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(s4)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_from_clap_jax_and_audio_encoder_checkpoints_and_mismatch_rejected(tmp_path):
    config = load_config("tiny", "steps=2")
    first = train.train_and_evaluate(config, str(tmp_path / "a"), model=make_model(config))
    config2 = load_config("tiny", "steps=1")
    config2.init.clap_jax = str(tmp_path / "a" / "checkpoints")
    config2.optim.lr = 1e-12  # one step that barely moves: params ~ the loaded ones
    second = train.train_and_evaluate(config2, None, model=make_model(config2))
    a = jax.tree.leaves(first["state"]["params"])
    b = jax.tree.leaves(second["state"]["params"])
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), atol=1e-6)
    # audio encoder only: that tower equals the checkpoint's, the text tower keeps its fresh init
    config4 = load_config("tiny", "steps=1")
    config4.init.audio_encoder = str(tmp_path / "a" / "checkpoints")
    config4.optim.lr = 1e-12
    fresh = load_config("tiny", "steps=1")
    fresh.optim.lr = 1e-12
    third = train.train_and_evaluate(config4, None, model=make_model(config4))["state"]["params"]
    base = train.train_and_evaluate(fresh, None, model=make_model(fresh))["state"]["params"]
    for x, y in zip(jax.tree.leaves(third["audio_encoder"]), jax.tree.leaves(first["state"]["params"]["audio_encoder"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    for x, y in zip(jax.tree.leaves(third["caption_encoder"]), jax.tree.leaves(base["caption_encoder"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    from _train_standin import StandInCLAP
    config3 = load_config("tiny", "steps=1")
    config3.init.clap_jax = str(tmp_path / "a" / "checkpoints")
    with pytest.raises(Exception, match="clap_jax|shape|mismatch|missing"):
        train.train_and_evaluate(config3, None, model=StandInCLAP(d=16))
