"""The trainer when things go wrong (in-process, stand-in model): resuming with another model is refused before
anything in the workdir changes; a full disk during a checkpoint save is one clear error and the previous
checkpoint still restores and resumes; SIGTERM while the loop waits for data stops the run cleanly."""
import errno
import os
import signal
import threading

import jax
import numpy as np
import pytest

from clap_jax.convert.workdir import restore_variables
from clap_jax.errors import ConfigError, UserError
from clap_jax.models import config as model_config
from clap_jax.train import checkpoint as ckpt_lib
from clap_jax.train import step as step_lib
from clap_jax.train import train
from clap_jax.train.random_batches import RandomBatches

from _train_helpers import load_config, make_model, tree_digest




def _steps(wd):
    d = os.path.join(wd, "checkpoints")
    return sorted(int(x) for x in os.listdir(d) if x.isdigit())


def test_resume_with_another_model_is_refused_and_changes_nothing(tmp_path, monkeypatch):
    wd = str(tmp_path / "wd")
    config = load_config("tiny", "steps=2")
    train.train_and_evaluate(config, wd, model=make_model(config))
    before = tree_digest(wd)
    other = load_config("tiny", "steps=4")
    other.model.text.n_layer = 3
    other.model.d_proj = 48
    # the check comes before the mesh, the pipeline and the compile: none of them may run
    monkeypatch.setattr(step_lib, "compile_train_step", lambda *a, **k: pytest.fail("compiled before the check"))
    with pytest.raises(ConfigError) as e:
        train.train_and_evaluate(other, wd, model=make_model(other))
    msg = str(e.value)
    assert "model_config.json" in msg and "\n" not in msg
    assert "model.d_proj: 32 (workdir) vs 48 (config)" in msg and "model.text.n_layer: 2 (workdir) vs 3" in msg
    assert tree_digest(wd) == before  # model_config.json still describes the run's own model


def test_disk_full_during_save_is_one_error_and_the_last_checkpoint_survives(tmp_path, monkeypatch):
    wd = str(tmp_path / "wd")
    config = load_config("tiny", "steps=6,ckpt_every=2")
    config.ckpt.keep = 1  # the kept checkpoint is the only one: a failed save must not have removed it
    saved = {}
    real_save = ckpt_lib.save

    def save_and_remember(mngr, step, state, *a, **k):
        saved[step] = jax.device_get(state["params"])
        return real_save(mngr, step, state, *a, **k)

    calls = []
    real_handler_save = ckpt_lib.IteratorStateHandler.save

    def full_disk_on_second_save(self, directory, args):
        calls.append(str(directory))
        if len(calls) == 2:  # the step-4 save: as a write to a full disk fails
            raise OSError(errno.ENOSPC, "No space left on device", str(directory / "process_0-of-1.json"))
        return real_handler_save(self, directory, args)

    monkeypatch.setattr(ckpt_lib, "save", save_and_remember)
    monkeypatch.setattr(ckpt_lib.IteratorStateHandler, "save", full_disk_on_second_save)
    with pytest.raises(ckpt_lib.DiskFullError) as e:
        train.train_and_evaluate(config, wd, model=make_model(config))
    msg = str(e.value)
    assert isinstance(e.value, UserError) and "\n" not in msg
    assert os.path.join(wd, "checkpoints") in msg and "step 2" in msg, msg
    assert _steps(wd) == [2]
    assert not [n for n in os.listdir(os.path.join(wd, "checkpoints")) if "tmp" in n]  # partial save removed
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), saved[2])
    restored = restore_variables(os.path.join(wd, "checkpoints"), {"params": abstract})["params"]
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved[2])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # space freed: the same command resumes from step 2 and finishes
    monkeypatch.setattr(ckpt_lib.IteratorStateHandler, "save", real_handler_save)
    summary = train.train_and_evaluate(config, wd, model=make_model(config))
    assert summary["start_step"] == 2 and summary["end_step"] == 6


class _Stalls(RandomBatches):
    """Synthetic batches that stop coming after `n` (a stalled pipeline, or one skipping only bad records)."""

    def __init__(self, n, **kw):
        super().__init__(**kw)
        self.n, self.waiting, self.release = n, threading.Event(), threading.Event()

    def __next__(self):
        if self._index >= self.n:
            self.waiting.set()
            self.release.wait(60)
            raise StopIteration
        return super().__next__()


@pytest.mark.parametrize("good_batches,prefetch", [(3, 0), (3, 2), (0, 2)])
def test_sigterm_while_waiting_for_data_stops_the_run(good_batches, prefetch, tmp_path):
    config = load_config("tiny", "steps=10,ckpt_every=100")
    config.data.prefetch = prefetch
    from clap_jax.train import sharding as shd
    mesh = shd.make_mesh(config.mesh)
    it = _Stalls(good_batches, batch_size=config.batch_size, num_samples=model_config.clip_samples(config.model),
                 text_len=77, sharding=shd.batch_sharding(mesh))

    def term_when_stalled():
        if it.waiting.wait(120):
            os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=term_when_stalled, daemon=True)
    killer.start()
    try:
        summary = train.train_and_evaluate(config, str(tmp_path / "wd"), model=make_model(config), data_iter=it,
                                           mesh=mesh)
    finally:
        it.release.set()
        killer.join()
    # on demand, the loop is waiting for batch good_batches + 1 when SIGTERM comes; prefetching, the helper thread
    # stalls a step or two ahead of the loop, which stops at its next step
    done = summary["end_step"]
    assert summary["stopped"] == "preempted" and (done == good_batches if not prefetch else done <= good_batches)
    if done:  # the steps that ran are saved, with the iterator positioned after their batches (not read-ahead)
        assert _steps(tmp_path / "wd") == [done]
        mngr = ckpt_lib.make_manager(str(tmp_path / "wd" / "checkpoints"), keep=1, save_every=1)
        it2 = RandomBatches(batch_size=config.batch_size, num_samples=model_config.clip_samples(config.model),
                            text_len=77)
        ckpt_lib.restore(mngr, done, jax.tree.map(lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=x.sharding), summary["state"]), it2)
        mngr.close()
        assert it2.get_state()["index"] == done
    else:  # nothing ran: nothing to save, and no error
        assert _steps(tmp_path / "wd") == []
