"""The trainer over the real Grain pipeline (config.data.kind='tfrecord', clap_jax.data): a run stopped after a
checkpoint and continued in the same workdir resumes the data iterator too, so its losses equal an uninterrupted
run's bit for bit."""
import numpy as np

from clap_jax.train import data as data_lib
from clap_jax.train import train

from _train_helpers import load_config, make_model, mesh
from data_fixtures import make_tfrecord_dataset


def _config(data_dir, steps):
    c = load_config("tiny", f"steps={steps},ckpt_every=2")
    c.data.kind = "tfrecord"
    c.data.dirs = (str(data_dir),)
    c.model.audio.duration = 0.5
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


def test_model_text_length_reaches_the_real_pipeline(tmp_path):
    """The model config owns the text length: a 64-token model trains on 64-token batches from the TFRecords."""
    make_tfrecord_dataset(str(tmp_path / "data"), n=24, seconds=0.5, sample_rate=8000)
    c = _config(tmp_path / "data", 2)
    c.model.text.max_length = 64
    it = data_lib.make_data_iterator(c, mesh((8, 1, 1)))
    try:
        b = next(it)
        assert b["input_ids"].shape == (c.batch_size, 64) and b["attention_mask"].shape == (c.batch_size, 64)
        assert b["audio"].shape == (c.batch_size, 4000)      # 0.5 s at 8 kHz: the model's clip
    finally:
        it.close()
    out = train.train_and_evaluate(c, str(tmp_path / "run"), model=make_model(None))
    assert sorted(out["losses"]) == [1, 2] and all(np.isfinite(v) for v in out["losses"].values())
