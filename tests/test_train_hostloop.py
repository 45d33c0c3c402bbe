"""The loop that never waits on the host (stand-in model, 8 CPU devices): ordinary steps read nothing from the
devices, prefetched batches keep resume exact, int16 audio becomes the float path's values bit for bit, the
profile and the compilation cache land in the workdir, and the processes' SIGTERM agreements fall on the same
steps."""
import glob
import os

import jax
import numpy as np
import pytest

from clap_jax.errors import ConfigError, UserError
from clap_jax.train import config as config_lib
from clap_jax.train import data as data_lib
from clap_jax.train import distributed, progress, train
from clap_jax.data import pipeline

from _train_helpers import load_config, make_model, mesh
from data_fixtures import make_tfrecord_dataset


@pytest.fixture
def cpu_guard(monkeypatch):
    """On CPU an array's host copy is its own memory, so JAX's device-to-host guard never fires there; this makes
    every read of a jax.Array's value (np.asarray, float(), device_get: all go through `_value`) obey the guard
    set in the reading thread, as GPU and TPU backends do."""
    from jax._src.array import ArrayImpl
    real = ArrayImpl._value

    def guarded(self):
        if jax.config.jax_transfer_guard_device_to_host == "disallow":
            raise RuntimeError(f"Disallowed device-to-host transfer: {self.aval}")
        return real.fget(self)
    monkeypatch.setattr(ArrayImpl, "_value", property(guarded))


def _guarded_config(steps, log_every):
    c = load_config("tiny", f"steps={steps},ckpt_every=0")
    c.log.every_steps = log_every
    c.debug.guard_host_reads = True
    return c


def test_ordinary_steps_make_no_device_to_host_transfer(cpu_guard):
    c = _guarded_config(12, 4)
    out = train.train_and_evaluate(c, None, model=make_model(c))
    # every step but those after a log step (where the window is read, one step late) ran guarded
    assert out["guarded_steps"] == [1, 2, 3, 4, 6, 7, 8, 10, 11, 12]
    assert sorted(out["losses"]) == list(range(1, 13)) and all(np.isfinite(v) for v in out["losses"].values())


def test_the_guard_catches_a_read_on_an_ordinary_step(cpu_guard, monkeypatch):
    """The guard is live: the old per-step read of the metrics now raises on the first ordinary step."""
    real_update = progress.Progress.update

    def reading_update(self, step, metrics):
        jax.device_get(metrics["loss"])
        return real_update(self, step, metrics)
    monkeypatch.setattr(progress.Progress, "update", reading_update)
    c = _guarded_config(4, 4)
    with pytest.raises(Exception, match="(?i)disallowed"):
        train.train_and_evaluate(c, None, model=make_model(c))


def _run(steps, workdir, prefetch):
    c = load_config("tiny", f"steps={steps},ckpt_every=2")
    c.data.num_classes = 4
    c.data.prefetch = prefetch
    return train.train_and_evaluate(c, workdir, model=make_model(c))


def test_prefetch_3_resume_is_bit_exact(tmp_path):
    """A run stopped at step 4 while 3 more batches sit on the devices saves the iterator after batch 4: the
    resumed steps equal an uninterrupted run's, and prefetching changes no loss at all."""
    full = _run(8, str(tmp_path / "a"), prefetch=3)
    on_demand = _run(8, None, prefetch=0)
    first = _run(4, str(tmp_path / "b"), prefetch=3)
    second = _run(8, str(tmp_path / "b"), prefetch=3)
    assert sorted(full["losses"]) == list(range(1, 9)) and second["start_step"] == 4
    assert full["losses"] == on_demand["losses"]
    assert {**first["losses"], **second["losses"]} == full["losses"]
    assert len(set(full["losses"].values())) == 8   # distinct batches, not one repeated


def test_int16_audio_equals_the_float_path_bit_for_bit(tmp_path):
    make_tfrecord_dataset(str(tmp_path / "pcm"), n=16, seconds=[0.3, 0.7], sample_rate=8000)
    make_tfrecord_dataset(str(tmp_path / "flac"), n=16, seconds=[0.3, 0.7], sample_rate=8000, audio_format="flac")
    m = mesh((8, 1, 1))
    for d in ("pcm", "flac"):
        kw = dict(per_host_batch_size=8, mesh=m, data_axes=("data", "fsdp"), seed=3, sample_rate=8000,
                  duration=0.5, process_index=0, process_count=1)
        floats = pipeline.make_iterator(str(tmp_path / d), **kw)
        ints = pipeline.make_iterator(str(tmp_path / d), audio_dtype="int16", **kw)
        for _ in range(2):
            f, i = next(floats), next(ints)
            assert i["audio"].dtype == np.int16 and f["audio"].dtype == np.float32
            on_device = data_lib.to_model_batch(i)
            assert on_device["audio"].sharding == f["audio"].sharding
            np.testing.assert_array_equal(np.asarray(on_device["audio"]).view(np.uint32),
                                          np.asarray(f["audio"]).view(np.uint32))
            np.testing.assert_array_equal(np.asarray(on_device["input_ids"]), np.asarray(f["input_ids"]))
            assert float(np.abs(np.asarray(f["audio"])).max()) > 0.01   # real audio, not silence


def test_profile_trace_and_compile_cache_in_the_workdir(tmp_path):
    c = load_config("tiny", "steps=3,ckpt_every=0")
    c.profile.steps = (2, 3)
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)  # the test session's own cache would be kept
    try:
        train.train_and_evaluate(c, str(tmp_path), model=make_model(c))
        assert jax.config.jax_compilation_cache_dir is None   # the run put the setting back
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    assert glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    assert os.listdir(tmp_path / "jax_cache")


def test_processes_agree_on_the_same_steps(monkeypatch):
    """Two processes with different step times propose different intervals; both take the smallest, so their
    next agreement is the same step. Any one flag stops both."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    proposals = {"other": 5}
    seen = []

    def allgather(x):
        seen.append(tuple(int(v) for v in x))
        return np.stack([x, np.array([int(proposals.get("flag", 0)), proposals["other"]])])
    monkeypatch.setattr(distributed.multihost_utils, "process_allgather", allgather)
    p = distributed.Preemption(every=0, target_s=1e9)   # this process alone would wait MAX_EVERY steps
    checks = [s for s in range(1, 13) if p.agrees_at(s) and not p.should_stop(s)]
    assert checks == [1, 2, 7, 12] and seen[0][1] == 1 and seen[1][1] == distributed.Preemption.MAX_EVERY
    assert not p.agrees_at(13) and p.agrees_at(13, sync=True)   # checkpoint steps agree too
    proposals["flag"] = 1
    assert p.should_stop(13, sync=True)
    proposals["flag"] = 0
    fixed = distributed.Preemption(every=4)
    assert [s for s in range(1, 10) if fixed.agrees_at(s) and fixed.should_stop(s) is False] == [1, 5, 9]


def test_worker_count_travels_with_the_iterator_state(tmp_path):
    """Grain's state of n worker processes gives other batches in more of them: the state records n, a
    different count is refused by name, and the auto count of a resumed run is the checkpoint's."""
    make_tfrecord_dataset(str(tmp_path / "d"), n=16, seconds=0.5, sample_rate=8000)
    it = pipeline.make_iterator(str(tmp_path / "d"), per_host_batch_size=4, sample_rate=8000, duration=0.5,
                                process_index=0, process_count=1)
    next(it)
    state = it.get_state()
    assert state["worker_count"] == 0
    with pytest.raises(UserError, match="saved with 2 worker processes.*data.num_workers=2"):
        it.set_state({**state, "worker_count": 2})
    it.set_state(state)
    c = load_config("tiny")
    assert data_lib.num_workers(c) == 0 and data_lib.num_workers(c, saved=3) == 0   # explicit wins
    c.data.num_workers = -1
    assert data_lib.num_workers(c) == min(8, (os.cpu_count() or 1) // 2)
    assert data_lib.num_workers(c, saved=3) == 3


def test_new_fields_are_checked():
    for field, value, msg in (("data.prefetch", -1, "data.prefetch"), ("data.num_workers", -2, "num_workers"),
                              ("profile.steps", (3, 2), "profile.steps")):
        bad = load_config("tiny")
        group, name = field.split(".")
        bad[group][name] = value
        with pytest.raises(ConfigError, match=msg):
            config_lib.validate_config(bad)
