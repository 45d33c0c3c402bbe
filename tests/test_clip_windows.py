"""One clip loader: preprocessing + the training pipeline, the eval harness and the CLAP class cut the same window
out of the same clip for every crop mode, and repeat-pad short clips the same way."""
import glob
import os

import numpy as np
import pytest
import soundfile as sf

from clap_jax.audio import io as audio_io
from clap_jax.data import pipeline
from clap_jax.data.preprocess import stable_uid
from data_fixtures import make_tfrecord_dataset
from clap_jax.eval.clips import LoaderConfig, load_clip
from clap_jax.inference import CLAP
from clap_jax.models import config as model_config

SR, DUR = 8000, 1.0
L = audio_io.num_samples(DUR, SR)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("win"))
    make_tfrecord_dataset(out, 3, [3.0, 0.4, 2.3], SR, examples_per_shard=8)
    raw = {}
    for p in sorted(glob.glob(os.path.join(out, "raw", "*.wav"))):
        raw[stable_uid(os.path.basename(p)[:-4])] = (p, sf.read(p, dtype="float32")[0])
    return out, raw


@pytest.fixture(scope="module")
def clap():
    cfg = model_config.tiny()
    cfg.audio.sample_rate, cfg.audio.duration = SR, DUR
    return cfg


def _pipeline_windows(out, crop):
    ds = pipeline.build_dataset(out, per_host_batch_size=3, process_index=0, process_count=1, sample_rate=SR,
                                duration=DUR, shuffle=False, crop=crop, caption="first", num_epochs=1,
                                drop_remainder=False)
    batch = next(iter(ds))
    return {int(u): a for u, a in zip(batch["id"], batch["audio"])}


def _is_window(window, clip):
    """The window is clip[s:s+L] for some valid s (clips longer than L) or the tiled clip (shorter ones)."""
    if len(clip) <= L:
        return np.array_equal(window, audio_io.repeat_pad(clip, L))
    return any(np.array_equal(window, clip[s:s + L]) for s in range(len(clip) - L + 1))


@pytest.mark.parametrize("crop", ["start", "center"])
def test_deterministic_crops_agree_everywhere(data, clap, crop):
    out, raw = data
    from_pipeline = _pipeline_windows(out, crop)
    model = CLAP(config=clap, crop=crop)
    for uid, (path, clip) in raw.items():
        expect = audio_io.fit_length(clip, L, crop)
        assert _is_window(expect, clip)
        np.testing.assert_array_equal(from_pipeline[uid], expect, err_msg=f"pipeline {crop} {path}")
        np.testing.assert_array_equal(load_clip(path, LoaderConfig(SR, DUR, crop=crop)), expect,
                                      err_msg=f"eval {crop} {path}")
        np.testing.assert_array_equal(model.preprocess_audio(path)[0], expect, err_msg=f"CLAP {crop} {path}")
        np.testing.assert_array_equal(model.preprocess_audio(clip, sample_rate=SR)[0], expect)
    assert {len(c) > L for _, c in raw.values()} == {True, False}   # both long and short clips were checked


def test_random_crops_are_valid_reproducible_windows(data, clap):
    out, raw = data
    first, again = _pipeline_windows(out, "random"), _pipeline_windows(out, "random")
    model_a, model_b = CLAP(config=clap, crop="random", seed=4), CLAP(config=clap, crop="random", seed=4)
    for uid, (path, clip) in raw.items():
        w = {"pipeline": first[uid], "eval": load_clip(path, LoaderConfig(SR, DUR, crop="random", seed=3)),
             "CLAP": model_a.preprocess_audio(path)[0], "msclap-style": audio_io.fit_length(clip, L, "unseeded")}
        for where, window in w.items():
            assert _is_window(window, clip), (where, path)
        np.testing.assert_array_equal(first[uid], again[uid])                 # seeded per (seed, position)
        np.testing.assert_array_equal(w["eval"], load_clip(path, LoaderConfig(SR, DUR, crop="random", seed=3)))
        np.testing.assert_array_equal(w["CLAP"], model_b.preprocess_audio(path)[0])
    # one start rule: a window starts anywhere in [0, n - L], both ends included
    rng = np.random.default_rng(0)
    assert {audio_io.crop_start(10, 4, "random", rng) for _ in range(300)} == set(range(7))
