"""The trainer over the real Grain pipeline (config.data.kind='tfrecord', clap_jax.data): a run stopped after a
checkpoint and continued in the same workdir resumes the data iterator too, so its losses equal an uninterrupted
run's bit for bit."""
from clap_jax.data.testing import make_tfrecord_dataset
from clap_jax.train import train

from _train_helpers import load_config, make_model


def _config(data_dir, steps):
    c = load_config("tiny", f"steps={steps},ckpt_every=2")
    c.data.kind = "tfrecord"
    c.data.dirs = (str(data_dir),)
    c.data.clip_seconds = 0.5
    c.model.audio.sample_rate = 8000      # the toy dataset's rate (the stand-in model does not care)
    return c


def test_tfrecord_pipeline_run_resumes_exactly(tmp_path):
    make_tfrecord_dataset(str(tmp_path / "data"), n=40, seconds=0.5, sample_rate=8000)
    full = train.train_and_evaluate(_config(tmp_path / "data", 8), str(tmp_path / "a"), model=make_model(None))
    first = train.train_and_evaluate(_config(tmp_path / "data", 4), str(tmp_path / "b"), model=make_model(None))
    second = train.train_and_evaluate(_config(tmp_path / "data", 8), str(tmp_path / "b"), model=make_model(None))
    assert sorted(full["losses"]) == list(range(1, 9))
    assert second["start_step"] == 4 and sorted(second["losses"]) == [5, 6, 7, 8]
    for s in range(1, 5):
        assert first["losses"][s] == full["losses"][s]
    for s in range(5, 9):
        assert second["losses"][s] == full["losses"][s], (s, second["losses"][s], full["losses"][s])
    assert len(set(full["losses"].values())) == 8   # distinct batches, not one repeated
