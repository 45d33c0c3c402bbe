"""Built-in synthetic dataset: determinism, attributes are audible, CLI output and eval task file."""
import json
import os

import numpy as np

from clap_jax.data import pipeline, synthetic

SR = 16000


def test_clips_are_pure_functions_of_seed_split_index():
    a1, w1, c1 = synthetic.make_clip(3, "train", 17, 0.5, SR)
    for i in range(5):  # generating other clips in between changes nothing
        synthetic.make_clip(3, "train", i, 0.5, SR)
    a2, w2, c2 = synthetic.make_clip(3, "train", 17, 0.5, SR)
    assert a1 == a2 and c1 == c2
    np.testing.assert_array_equal(w1, w2)
    assert w1.shape == (8000,) and w1.dtype == np.float32 and np.abs(w1).max() <= 1
    _, w3, _ = synthetic.make_clip(4, "train", 17, 0.5, SR)
    assert not np.array_equal(w1, w3)
    assert len(c1) == 2 and c1[0] != c1[1]
    ev = [synthetic.make_clip(3, "eval", i, 0.1, SR)[0]["sound"] for i in range(16)]
    assert ev == list(synthetic.SOUNDS) * 2  # eval cycles through the classes: balanced


def test_captions_mention_every_attribute():
    rng = np.random.default_rng(0)
    for _ in range(50):
        attrs = synthetic.sample_attributes(rng)
        for c in synthetic.captions(attrs, rng):
            low = c.lower()
            assert any(w in low for w in synthetic._SOUND_WORDS[attrs["sound"]])
            assert any(w in low for w in synthetic._PITCH_WORDS[attrs["pitch"]] + synthetic._PITCH_NOUNS[attrs["pitch"]])
            assert any(w in low for w in synthetic._LOUD_WORDS[attrs["loudness"]])
            assert any(w in low for w in synthetic._RHYTHM_WORDS[attrs["rhythm"]])


def _mentions(low, attrs):
    """Which attributes a lower-cased caption names (only the clip's own values count)."""
    return {"pitch": any(w in low for w in synthetic._PITCH_WORDS[attrs["pitch"]] +
                         synthetic._PITCH_NOUNS[attrs["pitch"]]),
            "loudness": any(w in low for w in synthetic._LOUD_WORDS[attrs["loudness"]]),
            "rhythm": any(w in low for w in synthetic._RHYTHM_WORDS[attrs["rhythm"]])}


def test_partial_captions_name_the_sound_and_only_true_attributes():
    rng = np.random.default_rng(2)
    named, generic = [], 0
    for _ in range(200):
        attrs = synthetic.sample_attributes(rng)
        for c in synthetic.captions(attrs, rng, partial=1.0):
            low = c.lower()
            if not any(w in low for w in synthetic._SOUND_WORDS[attrs["sound"]]):
                # a generic "sound" stands in for the name: then at least one attribute is named
                assert "sound" in low.split() and sum(_mentions(low, attrs).values()) >= 1, c
                generic += 1
            for other in synthetic.LOUDNESS:  # never a wrong loudness word
                if other != attrs["loudness"]:
                    assert not any(w in low.replace(",", "").split() for w in synthetic._LOUD_WORDS[other]), c
            named.append(sum(_mentions(low, attrs).values()))
    counts = np.bincount(named, minlength=4)
    assert 0.15 * len(named) < generic < 0.45 * len(named)   # GENERIC_SOUND = 0.3
    assert counts[0] > 0 and counts[3] > 0 and counts[1] + counts[2] > counts[0]  # subsets of every size
    # the dataset: a share of training captions is partial, held-out captions are all complete
    partial = 0
    for i in range(60):
        a, _, caps = synthetic.make_clip(0, "train", i, 0.1, SR)
        partial += sum(sum(_mentions(c.lower(), a).values()) < 3 for c in caps)
    assert 0 < partial < 120 * 0.6, partial
    for i in range(40):
        a, _, caps = synthetic.make_clip(0, "eval", i, 0.1, SR)
        assert all(all(_mentions(c.lower(), a).values()) for c in caps)


def test_attributes_are_acoustically_distinct():
    rng = np.random.default_rng(1)
    peaks = {"quiet": [], "loud": []}
    for _ in range(20):
        a = synthetic.sample_attributes(rng)
        peaks[a["loudness"]].append(np.abs(synthetic.render(a, rng, 0.5, SR)).max())
    assert max(peaks["quiet"]) < 0.2 < 0.4 < min(peaks["loud"])
    for p, f in synthetic.PITCHES.items():  # dominant frequency of a steady tone follows the pitch class
        x = synthetic.render({"sound": "steady tone", "pitch": p, "loudness": "loud", "rhythm": "once"}, rng, 1.0, SR)
        peak_hz = np.argmax(np.abs(np.fft.rfft(x))) * SR / x.size
        assert 0.85 * f < peak_hz < 1.15 * f
    for r, ks in (("once", {1}), ("repeated", {3, 4, 5})):  # number of events follows the rhythm
        x = synthetic.render({"sound": "noise burst", "pitch": "medium", "loudness": "loud", "rhythm": r}, rng, 1.0, SR)
        on = np.convolve(np.abs(x) > 0.05, np.ones(80), "same") > 0
        assert int(np.sum(np.diff(on.astype(int)) == 1) + on[0]) in ks


def _features(x):
    """Band log-energies (mean, std over active frames) + spectral-centroid slope: a few dozen numbers a clip."""
    fr = np.lib.stride_tricks.sliding_window_view(x, 512)[::256] * np.hanning(512)
    p = np.abs(np.fft.rfft(fr, axis=1)) ** 2
    edges = np.unique(np.geomspace(2, 257, 33).astype(int))
    m = np.log(np.stack([p[:, a:b].sum(1) for a, b in zip(edges[:-1], edges[1:])], 1) + 1e-8).T
    e = m.max(0)
    ma = m[:, e > e.max() - 4]
    w = np.exp(ma - ma.max(0))
    d = np.diff((np.arange(len(m))[:, None] * w).sum(0) / w.sum(0))
    return np.concatenate([ma.mean(1) - ma.mean(), ma.std(1), [np.median(d), np.mean(np.abs(d))]])


def test_sound_classes_are_linearly_separable_on_held_out_clips():
    """A linear probe on simple spectral features gets the 8-way task on held-out clips (chance: 12.5%)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def data(split, n):
        clips = [synthetic.make_clip(0, split, i, 0.75, SR) for i in range(n)]
        return (np.stack([_features(w) for _, w, _ in clips]),
                np.array([synthetic.SOUNDS.index(a["sound"]) for a, _, _ in clips]))

    xtr, ytr = data("train", 160)
    xte, yte = data("eval", 80)
    sc = StandardScaler().fit(xtr)
    acc = (LogisticRegression(max_iter=2000).fit(sc.transform(xtr), ytr).predict(sc.transform(xte)) == yte).mean()
    assert acc > 0.8, acc


def test_cli_writes_wavs_manifests_tasks_and_tfrecords(tmp_path):
    out = str(tmp_path / "syn")
    assert synthetic.main(["--out", out, "--num-train", "16", "--num-eval", "8", "--seconds", "0.3",
                           "--sample-rate", str(SR), "--seed", "2", "-j", "1", "--quiet"]) == 0
    meta = json.load(open(os.path.join(out, "tfrecords", "dataset.json")))
    assert meta["splits"]["train"]["num_examples"] == 16 and meta["splits"]["eval"]["num_examples"] == 8
    assert meta["num_skipped"] == 0 and meta["settings"]["sample_rate"] == SR
    tasks = json.load(open(os.path.join(out, "eval_tasks.json")))
    assert tasks["format"] == "clap_jax.eval_tasks/1" and len(tasks["clips"]) == 8
    by_name = {t["name"]: t for t in tasks["tasks"]}
    assert by_name["sound"]["class_names"] == list(synthetic.SOUNDS) and "{}" in by_name["sound"]["prompt"]
    for clip in tasks["clips"]:
        assert os.path.isfile(os.path.join(out, tasks["audio_root"], clip["path"]))
        for t in tasks["tasks"]:
            if t["type"] == "zero_shot_classification":
                label = clip["labels"][t["label_key"]]
                assert t.get("label_map", {}).get(label, label) in t["class_names"]
    assert len(open(os.path.join(out, "train.jsonl")).readlines()) == 16
    # the pipeline reads it; eval clips keep their label set
    ev = list(pipeline.build_dataset(os.path.join(out, "tfrecords"), split="eval", per_host_batch_size=8,
                                     num_epochs=1, sample_rate=SR, duration=1.0, process_index=0, process_count=1))
    assert len(ev) == 1 and ev[0]["audio"].shape == (8, SR)
    # rerun with the same seed: same records
    first = open(os.path.join(out, "tfrecords", meta["splits"]["train"]["shards"][0]), "rb").read()
    out2 = str(tmp_path / "syn2")
    synthetic.main(["--out", out2, "--num-train", "16", "--num-eval", "8", "--seconds", "0.3",
                    "--sample-rate", str(SR), "--seed", "2", "-j", "1", "--quiet"])
    assert open(os.path.join(out2, "tfrecords", meta["splits"]["train"]["shards"][0]), "rb").read() == first


def _fake_espeak(tmp_path, monkeypatch):
    """An 'espeak-ng' on PATH that writes a 0.3 s 22.05 kHz tone whose pitch follows -p (real espeak may be absent)."""
    import sys

    exe = tmp_path / "bin" / "espeak-ng"
    exe.parent.mkdir()
    exe.write_text(f"#!{sys.executable}\n"
                   "import sys, numpy as np, soundfile as sf\n"
                   "a = sys.argv[1:]; out = a[a.index('-w') + 1]; p = int(a[a.index('-p') + 1])\n"
                   "t = np.arange(6615) / 22050\n"
                   "sf.write(out, 0.5 * np.sin(2 * np.pi * (100 + 10 * p) * t), 22050)\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    synthetic.speak.cache_clear()


def test_speech_class_uses_espeak_and_names_the_word(tmp_path, monkeypatch):
    _fake_espeak(tmp_path, monkeypatch)
    attrs, wave, caps = synthetic.make_clip(0, "eval", 8, 1.0, SR, speech=True)  # eval cycles over 9 classes
    assert attrs["sound"] == synthetic.SPEECH and attrs["word"] in synthetic.WORDS
    assert all(f"'{attrs['word']}'" in c for c in caps)
    word = synthetic.speak(attrs["word"], attrs["pitch"], SR)
    assert abs(word.size - int(0.3 * SR)) <= 2 and abs(np.abs(word).max() - 1) < 1e-6  # trimmed, peak 1
    assert np.abs(wave).max() > 0.05 and wave.shape == (SR,)
    out = str(tmp_path / "syn")
    synthetic.main(["--out", out, "--num-train", "4", "--num-eval", "9", "--seconds", "0.5", "--sample-rate",
                    str(SR), "-j", "1", "--quiet", "--speech"])
    tasks = json.load(open(os.path.join(out, "eval_tasks.json")))
    assert tasks["tasks"][0]["class_names"] == list(synthetic.SOUNDS) + [synthetic.SPEECH]
    assert tasks["clips"][8]["labels"]["sound"] == synthetic.SPEECH


def test_speech_without_espeak_is_a_clear_error(monkeypatch):
    import pytest

    monkeypatch.setenv("PATH", "/nonexistent")
    synthetic.speak.cache_clear()
    with pytest.raises(RuntimeError, match="espeak-ng"):
        synthetic.make_clip(0, "eval", 8, 0.5, SR, speech=True)
    synthetic.speak.cache_clear()
