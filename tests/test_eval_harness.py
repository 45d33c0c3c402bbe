"""Harness behaviour: clip loading, caching, failures that name the file, chance-level numbers, CLI + reports."""
import json

import numpy as np
import pytest
import soundfile as sf

import eval_fixtures as fx
from clap_jax.errors import UserError
from clap_jax.eval import __main__ as cli
from clap_jax.eval import report
from clap_jax.eval.clips import LoaderConfig, load_clip
from clap_jax.eval.fake import RandomEmbedder, ToneEmbedder
from clap_jax.eval.runner import evaluate, load_tasks

QUIET = dict(progress=False, log=lambda *_: None)


# ----------------------------------------------------------------------------------------------- loading
def test_eval_clip_windows_repeat_pad_and_crop_deterministically(tmp_path):
    sr = 1000
    sf.write(tmp_path / "short.wav", (np.arange(5) / 100).astype(np.float32), sr, subtype="FLOAT")
    sf.write(tmp_path / "long.wav", (np.arange(10) / 100).astype(np.float32), sr, subtype="FLOAT")
    cfg = lambda crop, seed=0: LoaderConfig(sample_rate=sr, duration=0.004 if crop else 0.012,  # noqa: E731
                                            crop=crop or "center", seed=seed)
    got = lambda name, *a: np.round(load_clip(str(tmp_path / name), cfg(*a)) * 100).astype(int).tolist()  # noqa
    assert got("short.wav", None) == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert got("long.wav", "start") == [0, 1, 2, 3]
    assert got("long.wav", "center") == [3, 4, 5, 6]
    assert got("long.wav", "random", 1) == got("long.wav", "random", 1)   # seeded per clip: reproducible
    starts = {got("long.wav", "random", s)[0] for s in range(20)}
    assert len(starts) > 1 and starts <= set(range(7))                    # the seed matters; windows fit


def test_load_clip_resamples_downmixes_or_concatenates(tmp_path):
    sr = 16000
    left = np.full(sr, 0.5, np.float32)
    right = np.full(sr, -0.1, np.float32)
    p = tmp_path / "stereo.wav"
    sf.write(p, np.stack([left, right], 1), sr, subtype="FLOAT")
    mono = load_clip(str(p), LoaderConfig())
    assert mono.shape == (7 * 44100,) and mono.dtype == np.float32
    assert np.median(mono) == pytest.approx(0.2, abs=1e-3)   # mean of channels
    flat = load_clip(str(p), LoaderConfig(channels="concat", crop="start"))
    assert flat.shape == (7 * 44100,)
    n = 2 * 44100                                             # msclap: [L..., R...] then tiled
    assert np.median(flat[1000:n // 2 - 1000]) == pytest.approx(0.5, abs=1e-3)
    assert np.median(flat[n // 2 + 1000:n - 1000]) == pytest.approx(-0.1, abs=1e-3)
    with pytest.raises(ValueError):
        LoaderConfig(crop="middle")


# ----------------------------------------------------------------------------------------------- failures
def test_unreadable_clip_and_missing_label_file_are_named_and_other_tasks_run(tmp_path):
    w = fx.Writer(tmp_path)
    fx.esc50(w, actions=False)
    fx.sesa(w)
    fx.vocalsound(w)
    bad = tmp_path / "SESA/test/gunshot_001.wav"
    bad.write_bytes(b"this is not audio")
    (tmp_path / "vocalsound_16k/datafiles/te.json").unlink()
    tasks, errors, _ = load_tasks(tmp_path)
    assert "te.json" in errors["vocalsound"] and "missing label file" in errors["vocalsound"]
    res = evaluate(fx.tone_embedder(w, tasks), tmp_path, **QUIET)
    assert str(bad) in res["errors"]["sesa"] and "cannot read audio clip" in res["errors"]["sesa"]
    assert "te.json" in res["errors"]["vocalsound"]
    assert res["tasks"]["esc50"]["metrics"]["acc"] == 1.0
    # the same run with --skip-bad-clips drops the clip, records it, and scores the rest
    res = evaluate(fx.tone_embedder(w, tasks), tmp_path, skip_bad_clips=True, **QUIET)
    assert res["tasks"]["sesa"]["metrics"]["n_clips"] == 4
    assert str(bad) in res["tasks"]["sesa"]["dropped_clips"][0]
    md = report.markdown([res])
    assert "te.json" in md and "dropped 1 unreadable clips" in md


def test_wrong_labels_are_caught_by_the_tone_embedder(tmp_path):
    w = fx.Writer(tmp_path)
    fx.crema_d(w)
    tasks, _, _ = load_tasks(tmp_path)
    t = tasks[0]
    # a reader that confused the emotion words would map each tone to another class's prompt
    texts = t.class_texts()
    wrong = ToneEmbedder({f: [texts[(t.classes.index(word) + 1) % len(texts)]] for word, f in w.groups["crema_d"].items()})
    assert evaluate(wrong, tmp_path, **QUIET)["tasks"]["crema_d"]["metrics"]["acc"] == 0.0


# ----------------------------------------------------------------------------------------------- cache
def test_embeddings_are_cached_per_checkpoint_and_task(tmp_path):
    w = fx.Writer(tmp_path / "data")
    fx.builtin(w)
    tasks, _, _ = load_tasks(tmp_path / "data")
    emb = fx.tone_embedder(w, tasks)
    first = evaluate(emb, tmp_path / "data", cache_dir=str(tmp_path / "cache"), **QUIET)
    calls = emb.audio_calls
    assert calls > 0 and all(t["cache"] == "miss" for t in first["tasks"].values())
    assert sorted(p.name for p in (tmp_path / "cache" / "tone").iterdir()) == sorted(first["tasks"])
    second = evaluate(emb, tmp_path / "data", cache_dir=str(tmp_path / "cache"), **QUIET)
    assert emb.audio_calls == calls                          # nothing re-embedded
    assert all(t["cache"] == "hit" for t in second["tasks"].values())
    from clap_jax.eval import summary
    assert summary(second) == {"builtin_tones/acc": 1.0, "builtin_mix/mAP": 1.0, "builtin_captions/a2t_R@1": 1.0,
                               "builtin_captions/a2t_mAP@10": 1.0, "builtin_captions/t2a_R@1": 1.0,
                               "builtin_captions/t2a_mAP@10": 1.0}
    assert {k: v["metrics"] for k, v in first["tasks"].items()} == {k: v["metrics"] for k, v in second["tasks"].items()}
    other = RandomEmbedder(cache_id="other-ckpt")            # another checkpoint does not reuse them
    third = evaluate(other, tmp_path / "data", cache_dir=str(tmp_path / "cache"), **QUIET)
    assert all(t["cache"] == "miss" for t in third["tasks"].values())


# ----------------------------------------------------------------------------------------------- chance level
def test_random_embedder_sits_near_chance_and_tone_embedder_far_above(tmp_path):
    w = fx.Writer(tmp_path)
    classes = [f"class{i}" for i in range(10)]
    clips = []
    for i in range(200):
        c = classes[i % 10]
        w.wav(f"synthetic/c{i}.wav", [w.tone("builtin_ten", c), 3000.0 + (i % 7) * 10], sr=8000, seconds=0.25)
        clips.append({"path": f"c{i}.wav", "labels": [c]})
    w.text("synthetic/eval_tasks.json", json.dumps({"tasks": [
        {"name": "ten", "type": "single_label", "prompt": "{label}", "classes": classes, "clips": clips}]}))
    rand = evaluate(RandomEmbedder(), tmp_path, **QUIET)["tasks"]["builtin_ten"]["metrics"]["acc"]
    assert 0.03 <= rand <= 0.2                               # chance = 0.1
    tasks, _, _ = load_tasks(tmp_path)
    good = evaluate(fx.tone_embedder(w, tasks), tmp_path, **QUIET)["tasks"]["builtin_ten"]["metrics"]["acc"]
    assert good == 1.0


# ----------------------------------------------------------------------------------------------- CLI / report
def test_cli_end_to_end_over_all_fixtures_writes_reports(tmp_path, monkeypatch, capsys):
    w = fx.write_all(tmp_path / "data")
    tasks, errors, _ = load_tasks(tmp_path / "data")
    assert errors == {}
    tone = fx.tone_embedder(w, tasks)
    monkeypatch.setattr(cli, "load_embedder", lambda weights: tone if weights == "perfect" else RandomEmbedder())
    rc = cli.main(["--weights", "perfect", "--weights", "random", "--data-root", str(tmp_path / "data"),
                   "--out", str(tmp_path / "out"), "--no-cache", "--no-progress", "--workers", "2",
                   "--prompt", "sesa=a sound of {label}", "--option", "dcase17.threshold_rule=\"top2\""])
    assert rc == 0
    out = tmp_path / "out"
    data = json.loads((out / "results.json").read_text())
    perfect, random_run = data["runs"]
    assert perfect["name"] == "perfect" and random_run["name"] == "random"
    assert perfect["errors"] == {} and [m["reader"] for m in perfect["missing"]] == ["tfds"]   # TFDS copy: own test
    ran = set(perfect["tasks"])
    assert {"esc50", "esc50_actions", "fsd50k", "us8k", "dcase17", "audioset", "vocalsound", "sesa", "tut2017",
            "gtzan_music_speech", "gtzan_genres", "nsynth_pitch", "nsynth_velocity", "nsynth_qualities",
            "beijing_opera", "nsynth_family", "crema_d", "ravdess", "speech_commands", "libricount", "audiocaps",
            "clotho", "hear_crema_d", "builtin_tones", "builtin_mix", "builtin_captions"} == ran
    assert perfect["tasks"]["sesa"]["settings"]["prompt"] == "a sound of {label}"
    assert perfect["tasks"]["dcase17"]["settings"]["threshold_rule"] == "top2"
    assert perfect["tasks"]["esc50"]["metrics"]["acc"] == 1.0
    assert random_run["tasks"]["esc50"]["metrics"]["acc"] < 1.0
    md = (out / "report.md").read_text()
    assert "| 1 | ESC50 | acc | 1.000 | " in md and "| 0.939 | 0.826 | 0.948 [6] WavCaps |" in md   # 2023, 2022, bench
    assert "pending captioner" in md
    assert "| # | Task | Metric | perfect | random | CLAP 2023 (paper) |" in md
    assert "crema_d (hear_crema_d)" not in md                 # official layout preferred over the HEAR copy
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = {(r["key"], r["metric"]): r for r in data["table"]}
    assert table[("audiocaps", "t2a_R@1")]["ours"][0] == 1.0
    assert table[("audiocaps_captioning", "SPIDEr")]["status"] == "pending captioner"
    avg = {a["checkpoint"]: a for a in data["averages"]}
    assert avg["perfect"]["n_cells"] == 28 and avg["perfect"]["ours"] > avg["random"]["ours"]


def test_cli_list_and_missing_datasets(tmp_path, monkeypatch, capsys):
    w = fx.Writer(tmp_path)
    fx.sesa(w)
    assert cli.main(["--list", "--data-root", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "found    sesa" in printed
    assert "missing  esc50" in printed and "ESC-50-master/meta/esc50.csv" in printed
    tasks, _, _ = load_tasks(tmp_path)
    monkeypatch.setattr(cli, "load_embedder", lambda weights: fx.tone_embedder(w, tasks))
    # esc50 was asked for by name and its data is absent: the report is written, the exit status says so
    assert cli.main(["--weights", "x", "--data-root", str(tmp_path), "--out", str(tmp_path / "o"), "--no-cache",
                     "--no-progress", "--tasks", "sesa,esc50"]) == 1
    assert f"FAILED esc50: its data was not found under {tmp_path}" in capsys.readouterr().err
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert set(res["tasks"]) == {"sesa"}
    assert [m["reader"] for m in res["missing"]] == ["esc50"]
    assert "Data not found" in (tmp_path / "o" / "report.md").read_text()
    # --tasks all: absent datasets are normal use as long as something ran
    assert cli.main(["--weights", "x", "--data-root", str(tmp_path), "--out", str(tmp_path / "o2"), "--no-cache",
                     "--no-progress"]) == 0


def test_cli_exit_status_names_failed_and_unknown_requested_tasks(tmp_path, monkeypatch, capsys):
    w = fx.Writer(tmp_path)
    fx.nsynth(w)
    fx.sesa(w)
    (tmp_path / "nsynth-test/examples.json").write_text("{not json")
    monkeypatch.setattr(cli, "load_embedder", lambda weights: RandomEmbedder())
    base = ["--weights", "x", "--data-root", str(tmp_path), "--no-cache", "--no-progress"]
    assert cli.main(base + ["--out", str(tmp_path / "a"), "--tasks", "sesa,nsynth_pitch,sesaa"]) == 1
    err = capsys.readouterr().err
    assert "FAILED nsynth_pitch: nsynth: " in err and "examples.json: not valid JSON" in err
    assert "FAILED sesaa: no such task" in err
    assert "error: 2 requested task(s) failed" in err
    assert set(json.loads((tmp_path / "a/results.json").read_text())["tasks"]) == {"sesa"}
    # a broken dataset fails with --tasks all as well: present data that cannot be read is not "absent"
    assert cli.main(base + ["--out", str(tmp_path / "b")]) == 1
    assert "FAILED nsynth_family" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"--data-root .*nowhere: directory does not exist"):
        cli.main(["--weights", "x", "--data-root", str(tmp_path / "nowhere")])


def test_report_compares_saved_results_side_by_side(tmp_path):
    w = fx.Writer(tmp_path / "data")
    fx.sesa(w)
    tasks, _, _ = load_tasks(tmp_path / "data")
    a = evaluate(fx.tone_embedder(w, tasks), tmp_path / "data", **QUIET)
    b = evaluate(RandomEmbedder(), tmp_path / "data", **QUIET)
    report.write_report(a, tmp_path / "a")
    report.write_report(b, tmp_path / "b")
    report.main([str(tmp_path / "a/results.json"), str(tmp_path / "b/results.json"), "--names", "good,bad",
                 "--out", str(tmp_path / "cmp")])
    md = (tmp_path / "cmp/report.md").read_text()
    row = next(l for l in md.splitlines() if l.startswith("| 7 | SESA"))
    cells = [c.strip() for c in row.split("|")]
    assert cells[4] == "1.000" and cells[5] != "1.000" and cells[6] == "0.650"


def test_task_selection_by_single_builtin_or_hear_task_name(tmp_path):
    w = fx.Writer(tmp_path)
    fx.builtin(w)
    fx.hear(w)
    fx.sesa(w)
    tasks, _, _ = load_tasks(tmp_path, "builtin_mix,hear_crema_d")
    assert sorted(t.name for t in tasks) == ["builtin_mix", "hear_crema_d"]
    logs = []
    res = evaluate(RandomEmbedder(), tmp_path, tasks="sesa,sesaa", progress=False, log=logs.append)
    assert set(res["tasks"]) == {"sesa"}
    assert any("'sesaa'" in m and "WARNING" in m for m in logs)


def test_a_broken_dataset_fails_each_of_its_tasks_in_the_report(tmp_path):
    w = fx.Writer(tmp_path)
    fx.nsynth(w)
    fx.sesa(w)
    (tmp_path / "nsynth-test/examples.json").write_text("{not json")
    res = evaluate(RandomEmbedder(), tmp_path, **QUIET)
    assert set(res["tasks"]) == {"sesa"}
    assert {"nsynth_pitch", "nsynth_velocity", "nsynth_qualities", "nsynth_family"} <= set(res["errors"])
    assert "examples.json: not valid JSON" in res["errors"]["nsynth_pitch"]
    md = report.markdown([res])
    assert md.count("examples.json: not valid JSON") == 1
    assert "| 12 | NSynth pitch | acc | error |" in md


def test_training_hook_returns_flat_metrics_per_call(tmp_path):
    from clap_jax.eval.hook import make_eval_fn

    w = fx.Writer(tmp_path)
    fx.builtin(w)
    tasks, _, _ = load_tasks(tmp_path)
    good = fx.tone_embedder(w, tasks)
    seen = []
    fn = make_eval_fn(str(tmp_path), tasks="builtin", model_factory=lambda v: seen.append(v) or
                      (good if v == "trained" else RandomEmbedder()))
    trained, untrained = fn("trained", 100), fn("init", 0)
    assert seen == ["trained", "init"]
    assert trained["builtin_tones/acc"] == 1.0 and trained["builtin_captions/t2a_R@1"] == 1.0
    assert untrained["builtin_tones/acc"] < 1.0


def test_config_file_overrides_prompts_options_and_label_words(tmp_path, monkeypatch):
    w = fx.Writer(tmp_path / "data")
    fx.gtzan(w)
    fx.dcase17(w)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"prompts": {"gtzan_genres": "{label} music can be heard"},
                               "labels": {"gtzan_genres": {"hiphop": "hip hop"}},
                               "options": {"dcase17": {"threshold_rule": "sigmoid>0.5"}}}))
    monkeypatch.setattr(cli, "load_embedder", lambda weights: RandomEmbedder())
    assert cli.main(["--weights", "r", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "o"),
                     "--no-cache", "--no-progress", "--config", str(cfg)]) == 0
    res = json.loads((tmp_path / "o/results.json").read_text())
    g = res["tasks"]["gtzan_genres"]["settings"]
    assert g["prompt"] == "{label} music can be heard" and g["label_overrides"] == {"hiphop": "hip hop"}
    assert res["tasks"]["dcase17"]["settings"]["threshold_rule"] == "sigmoid>0.5"
    assert res["config"]["labels"] == {"gtzan_genres": {"hiphop": "hip hop"}}
    tasks, _, _ = load_tasks(tmp_path / "data", "gtzan_genres", json.loads(cfg.read_text()))
    assert "hip hop music can be heard" in tasks[0].class_texts()
