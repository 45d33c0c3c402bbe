"""One test per dataset reader: a tiny fixture in the dataset's official layout, read and scored end to end
with a tone embedder that is perfect exactly when the reader gets clips, labels and label words right."""
import pytest

from clap_jax.eval.runner import evaluate, load_tasks
from clap_jax.eval.tasks import REGISTRY

import eval_fixtures as fx

# fixture -> {task: (n_clips, n_classes, spot-checked class words)}
EXPECTED = {
    "esc50": {"esc50": (6, 3, ["chirping birds", "dog", "door wood knock"]),
              "esc50_actions": (6, 20, ["blowing", "wailing"])},
    "us8k": {"us8k": (6, 3, ["air conditioner", "car horn", "children playing"])},
    "fsd50k": {"fsd50k": (4, 4, ["Accelerating and revving and vroom", "Zipper (clothing)"])},
    "dcase17": {"dcase17": (4, 17, ["Train horn", "Car passing by"])},
    "audioset": {"audioset": (4, 4, ["Speech", "Male speech, man speaking"])},
    "vocalsound": {"vocalsound": (6, 6, ["Laughter", "Throat clearing"])},
    "sesa": {"sesa": (5, 4, ["casual", "gunshot", "explosion", "siren"])},
    "tut2017": {"tut2017": (4, 3, ["beach", "cafe/restaurant", "city center"])},
    "gtzan": {"gtzan_genres": (10, 10, ["blues", "rock"]), "gtzan_music_speech": (4, 2, ["music", "speech"])},
    "nsynth": {"nsynth_pitch": (4, 3, ["A#0", "C4", "C5"]), "nsynth_velocity": (4, 5, ["25", "127"]),
               "nsynth_qualities": (4, 10, ["fast decay", "tempo-synced"]),
               "nsynth_family": (4, 11, ["synth lead", "vocal"])},
    "beijing_opera": {"beijing_opera": (8, 4, ["bangu", "xiaoluo"])},
    "crema_d": {"crema_d": (6, 6, ["angry", "disgust", "fearful", "happy", "neutral", "sad"])},
    "ravdess": {"ravdess": (9, 8, ["neutral", "surprised"])},
    "speech_commands": {"speech_commands": (12, 12, ["yes", "go", "silence", "unknown"])},
    "libricount": {"libricount": (3, 11, ["0", "10"])},
    "audiocaps": {"audiocaps": (3, 0, [])},
    "clotho": {"clotho": (3, 0, [])},
    "hear": {"hear_crema_d": (4, 3, ["angry", "happy", "sad"])},
    "builtin": {"builtin_tones": (6, 3, ["beep"]), "builtin_mix": (4, 3, ["hum"]), "builtin_captions": (3, 0, [])},
}
PERFECT = ("acc", "mAP", "a2t_R@1", "t2a_R@1", "a2t_mAP@10", "t2a_mAP@10")


def test_every_registered_reader_has_a_fixture_test():
    covered = {"gtzan_genres", "gtzan_music_speech", "nsynth", "esc50_actions", "tfds"} | set(EXPECTED)
    assert set(REGISTRY) <= covered, set(REGISTRY) - covered


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_reader_on_official_layout(tmp_path, fixture):
    w = fx.Writer(tmp_path)
    fx.ALL[fixture](w)
    tasks, errors, _ = load_tasks(tmp_path)
    assert errors == {}
    got = {t.name: t for t in tasks}
    assert set(got) == set(EXPECTED[fixture])
    for name, (n_clips, n_classes, words) in EXPECTED[fixture].items():
        t = got[name]
        assert len(t.clips) == n_clips, name
        assert len(t.classes) == n_classes, name
        assert set(words) <= set(t.classes), (name, t.classes)
    emb = fx.tone_embedder(w, tasks)
    res = evaluate(emb, tmp_path, progress=False, log=lambda *_: None)
    assert res["errors"] == {}
    shared = {n for n, e in res["tasks"].items() if e["cache"].startswith("shared")}
    assert shared == ({"nsynth_velocity", "nsynth_qualities", "nsynth_family"} if fixture == "nsynth" else set())
    for name in EXPECTED[fixture]:
        m = res["tasks"][name]["metrics"]
        for key in PERFECT:
            if key in m:
                assert m[key] == pytest.approx(1.0), (name, key, m)
        assert "settings" in res["tasks"][name] and res["tasks"][name]["settings"]["prompt"]


def test_dcase17_f1_uses_the_recorded_threshold_rule(tmp_path):
    w = fx.Writer(tmp_path)
    fx.dcase17(w)
    tasks, _, _ = load_tasks(tmp_path)
    res = evaluate(fx.tone_embedder(w, tasks), tmp_path, progress=False, log=lambda *_: None)
    m = res["tasks"]["dcase17"]["metrics"]
    # top1 on 4 clips, one of which has 2 labels: TP 4, FP 0, FN 1
    assert m["f1"] == pytest.approx(8 / 9)
    assert res["tasks"]["dcase17"]["settings"]["threshold_rule"] == "top1"
    assert res["tasks"]["dcase17"]["settings"]["clips_listed"] == 5
    res2 = evaluate(fx.tone_embedder(w, tasks), tmp_path, progress=False, log=lambda *_: None,
                    config={"threshold_rule": {"dcase17": "top2"}})
    m2 = res2["tasks"]["dcase17"]["metrics"]
    assert m2["recall"] == 1.0 and m2["precision"] == pytest.approx(5 / 8)


def test_reader_options_change_split_and_binarisation(tmp_path):
    w = fx.Writer(tmp_path)
    fx.esc50(w)
    tasks, _, _ = load_tasks(tmp_path, "esc50,esc50_actions",
                             {"options": {"esc50": {"folds": [1]}, "esc50_actions": {"threshold": 2.5}}})
    got = {t.name: t for t in tasks}
    assert len(got["esc50"].clips) == 2                      # files of fold 1 only
    assert "folds [1]" in got["esc50"].settings["split"]
    # "breaking" is rated exactly 2.0: positive at threshold 2, not at 2.5
    breaking = got["esc50_actions"].classes.index("breaking")
    assert not any(breaking in c.labels for c in got["esc50_actions"].clips)
    assert "2.5" in got["esc50_actions"].settings["binarisation"]


def test_builtin_reader_reads_the_synthetic_generators_shared_clip_format(tmp_path):
    """The layout clap_jax.data.synthetic writes ("format": "clap_jax.eval_tasks/1"), per its docstring."""
    import json

    w = fx.Writer(tmp_path)
    sounds, pitches = ["steady tone", "rising chirp"], ["low", "high"]
    clips = []
    for i in range(4):
        s, p, r = sounds[i % 2], pitches[i // 2], ["once", "repeated"][i % 2]
        rel = f"wav/eval/{i:06d}.wav"
        caps = [f"clip {i} caption a", f"clip {i} caption b"]
        freqs = [w.tone("builtin_sound", s), w.tone("builtin_pitch", p),
                 w.tone("builtin_rhythm", {"once": "heard once", "repeated": "repeating several times"}[r])]
        cap_f = w.caption_tone("builtin_retrieval", caps)
        w.wav(f"synthetic/{rel}", freqs + [cap_f], sr=44100, seconds=0.5)
        clips.append({"id": f"eval/{i:06d}", "path": rel, "captions": caps,
                      "labels": {"sound": s, "pitch": p, "loudness": "loud", "rhythm": r}})
    spec = {"format": "clap_jax.eval_tasks/1", "audio_root": ".", "tfrecord_dir": "tfrecords", "split": "eval",
            "tasks": [{"name": "sound", "type": "zero_shot_classification", "label_key": "sound",
                       "class_names": sounds, "prompt": "this is a sound of {}"},
                      {"name": "pitch", "type": "zero_shot_classification", "label_key": "pitch",
                       "class_names": ["low", "medium", "high"], "prompt": "this is a {} pitched sound"},
                      {"name": "rhythm", "type": "zero_shot_classification", "label_key": "rhythm",
                       "class_names": ["heard once", "repeating several times"], "prompt": "this is a sound {}",
                       "label_map": {"once": "heard once", "repeated": "repeating several times"}},
                      {"name": "retrieval", "type": "retrieval", "caption_key": "captions"}],
            "clips": clips}
    w.text("synthetic/eval_tasks.json", json.dumps(spec))
    tasks, errors, _ = load_tasks(tmp_path)
    assert errors == {}
    got = {t.name: t for t in tasks}
    assert set(got) == {"builtin_sound", "builtin_pitch", "builtin_rhythm", "builtin_retrieval"}
    assert got["builtin_pitch"].class_texts()[2] == "this is a high pitched sound"
    assert [c.labels for c in got["builtin_rhythm"].clips] == [(0,), (1,), (0,), (1,)]
    res = evaluate(fx.tone_embedder(w, tasks), tmp_path, progress=False, log=lambda *_: None)
    assert res["errors"] == {}
    for name in got:
        for k, v in res["tasks"][name]["metrics"].items():
            if k in PERFECT:
                assert v == 1.0, (name, k)
