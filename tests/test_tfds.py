"""TensorFlow-Datasets for real: datasets prepared by TFDS itself, read by the eval reader and by preprocess --tfds.

crema_d, gtzan, gtzan_music_speech and speech_commands are prepared by TFDS's own builders (their real
`_split_generators` / `_generate_examples` and feature encoding) from small source files the test writes, with
the download manager pointed at those files (the way TFDS's own builder tests fake downloads). NSynth's real
builder is Beam-based: a subclass of it keeps its `_info` (the exact features, configs and version) and
replaces only the Beam generation by a generator over notes the test makes.

Every class is a pure tone (eval_fixtures.Writer), so a ToneEmbedder scores 100 % exactly when the reader
produces the right clips, labels and class words.
"""
import json
import os
import shutil
import tarfile
from unittest import mock

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds
from tensorflow_datasets.audio import crema_d as crema_mod
from tensorflow_datasets.audio.gtzan import gtzan as gtzan_mod
from tensorflow_datasets.audio.gtzan_music_speech import gtzan_music_speech as gms_mod
from tensorflow_datasets.datasets.speech_commands import speech_commands_dataset_builder as sc_mod

import eval_fixtures as fx
from _storage_servers import storage_servers
from clap_jax import files as storage
from clap_jax.data import audio as audio_lib
from clap_jax.data import preprocess, tfds_source, tfrecord
from clap_jax.errors import UserError
from clap_jax.eval import __main__ as cli
from clap_jax.eval.runner import evaluate, load_tasks
from clap_jax.eval.tasks.nsynth import NSynth, note_name
from clap_jax.eval.tasks.speech import CREMA

CREMA_CODES = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"] * 3 + ["HAP", "NEU"]   # 20 speakers: 14 / 1 / 5
NOTES = {   # split -> (instrument, pitch, velocity, family, qualities)
    "test": [("bass_synthetic_033", 22, 50, "bass", ["dark"]), ("guitar_acoustic_010", 60, 127, "guitar",
             ["bright", "percussive"]), ("keyboard_electronic_001", 60, 25, "keyboard", []),
             ("vocal_acoustic_000", 72, 100, "vocal", ["reverb", "tempo-synced"])],
    "train": [("organ_electronic_007", 40, 75, "organ", ["long_release"])],
    "valid": [("flute_acoustic_002", 81, 100, "flute", [])],
}
QUALITIES = ["bright", "dark", "distortion", "fast_decay", "long_release", "multiphonic", "nonlinear_env",
             "percussive", "reverb", "tempo-synced"]
NSYNTH_TASKS = ["tfds_nsynth_pitch", "tfds_nsynth_velocity", "tfds_nsynth_qualities", "tfds_nsynth_family"]
QUIET = dict(progress=False, log=lambda *_: None)


def _tone(freqs, sr, seconds, peak=0.3):
    t = np.arange(int(sr * seconds)) / sr
    return sum(peak * np.sin(2 * np.pi * f * t) for f in freqs) / max(1, len(freqs))


def _pcm(path, freqs, sr, seconds=0.5):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, (_tone(freqs, sr, seconds) * 32767).astype(np.int16), sr, subtype="PCM_16")


def _nsynth_builder_cls():
    """NSynth's own builder class with its Beam pipeline replaced by a plain generator (same _info)."""
    real = tfds.builder_cls("nsynth")

    class TinyNsynth(real, skip_registration=True):
        name = "nsynth"

        def _info(self):   # the real features; metadata kept in a plain dict (Beam's needs apache_beam to save)
            info = super()._info()
            info._metadata = tfds.core.MetadataDict(info.metadata)
            return info

        def _split_generators(self, dl_manager):   # {split: generator of (key, example)}: no Beam
            return {s: iter(self._notes[s]) for s in NOTES}

    return TinyNsynth


def _build(src, data_dir, w):
    """Source files for every builder, then TFDS prepares each into data_dir. Returns what the test expects."""
    urls = {}
    # crema_d: the summary table and one wav per clip, 20 speakers so the speaker-grouped split fills all three
    names = [f"{1001 + i}_IEO_{c}_HI" for i, c in enumerate(CREMA_CODES)]
    with open(f"{src}/summary.csv", "w") as f:
        f.write('"","FileName","VoiceVote"\n' + "".join(f'"{i}","{n}","x"\n' for i, n in enumerate(names)))
    urls[crema_mod.SUMMARY_TABLE_URL] = f"{src}/summary.csv"
    for n in names:
        _pcm(f"{src}/crema/{n}.wav", [w.tone("tfds_crema_d", CREMA[n.split('_')[2]])], 16000)
        urls[crema_mod.WAV_DATA_URL + n + ".wav"] = f"{src}/crema/{n}.wav"
    # gtzan: genres/<genre>/<genre>.000NN.wav; music_speech/{music,speech}_wav/*.wav (22.05 kHz)
    for i, g in enumerate(["blues", "hiphop", "rock", "blues"]):
        _pcm(f"{src}/gtzan/genres/{g}/{g}.{i:05d}.wav", [w.tone("tfds_gtzan_genres", g)], 22050)
    urls[gtzan_mod._DOWNLOAD_URL] = f"{src}/gtzan"
    for lab, n in (("music", "bagpipe"), ("speech", "talk-1"), ("speech", "talk-2")):
        _pcm(f"{src}/gms/music_speech/{lab}_wav/{n}.wav", [w.tone("tfds_gtzan_music_speech", lab)], 22050)
    urls[gms_mod._DOWNLOAD_URL] = f"{src}/gms"
    # speech_commands: the train archive (with its validation / testing lists) and the test archive
    sc = {"train": ["up/t0.wav", "go/t1.wav"], "validation": ["down/v0.wav"], "listed_test": ["yes/x0.wav"],
          "test": ["yes/a.wav", "no/b.wav", "_silence_/c.wav", "_unknown_/d.wav", "stop/e.wav"],
          "silent": ["off/s0.wav"]}
    for part, tar_name in (("train", "sc_train.tar.gz"), ("test", "sc_test.tar.gz")):
        with tarfile.open(f"{src}/{tar_name}", "w:gz") as tar:
            members = sc["test"] if part == "test" else (sc["train"] + sc["validation"] + sc["listed_test"]
                                                         + sc["silent"])
            for rel in members:
                word = rel.split("/")[0]
                path = f"{src}/sc_{part}/{rel}"
                if rel in sc["silent"]:   # a silent clip in the train split: preprocess must skip and count it
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    sf.write(path, np.zeros(8000, np.int16), 16000, subtype="PCM_16")
                else:
                    _pcm(path, [w.tone("tfds_speech_commands", word.strip("_") if part == "test" else "train " + word)],
                         16000)
                tar.add(path, arcname=rel)
            if part == "train":
                for lst, items in (("validation_list.txt", sc["validation"]), ("testing_list.txt", sc["listed_test"])):
                    open(f"{src}/{lst}", "w").write("\n".join(items) + "\n")
                    tar.add(f"{src}/{lst}", arcname=lst)
    urls[sc_mod._DOWNLOAD_PATH] = f"{src}/sc_train.tar.gz"
    urls[sc_mod._TEST_DOWNLOAD_PATH_] = f"{src}/sc_test.tar.gz"

    def fetch(self, url_or_urls):
        return tfds.core.utils.map_nested(lambda u: urls[u], url_or_urls)

    with mock.patch.object(tfds.download.DownloadManager, "download", fetch), \
            mock.patch.object(tfds.download.DownloadManager, "download_and_extract", fetch), \
            mock.patch.object(tfds.download.DownloadManager, "download_checksums", lambda self, url: None):
        for name in ("crema_d", "gtzan", "gtzan_music_speech", "speech_commands"):
            tfds.builder(name, data_dir=data_dir).download_and_prepare()
    # nsynth: 4 s float notes at 16 kHz, one tone per pitch / velocity / family / quality
    notes = {}
    for split, rows in NOTES.items():
        notes[split] = []
        for inst, pitch, vel, family, qs in rows:
            key = f"{inst}-{pitch:03d}-{vel:03d}"
            g = "" if split == "test" else "other "
            freqs = [w.tone("tfds_nsynth_pitch", g + note_name(pitch)), w.tone("tfds_nsynth_velocity", g + str(vel)),
                     w.tone("tfds_nsynth_family", g + family.replace("_", " "))] + \
                    [w.tone("tfds_nsynth_qualities", g + q.replace("_", " ")) for q in qs]
            audio = _tone(freqs, 16000, 4.0).astype(np.float32)
            notes[split].append((key, {
                "id": key, "audio": audio, "pitch": pitch, "velocity": vel,
                "instrument": {"label": 3, "family": family, "source": inst.split("_")[1]},
                "qualities": {q: q in qs for q in QUALITIES}}))
    cls = _nsynth_builder_cls()
    builder = cls(data_dir=data_dir, config="full")
    builder._notes = notes
    builder.download_and_prepare()
    return {"notes": notes, "sc": sc}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    data_dir = str(root / "data" / "tensorflow_datasets")
    src = str(root / "src")
    os.makedirs(src)
    w = fx.Writer(root / "unused")
    expected = _build(src, data_dir, w)
    return {"root": root, "data_root": root / "data", "data_dir": data_dir, "w": w, **expected}


def _tfds_split(data_dir, spec, split):
    b, _ = tfds_source.open_builder(data_dir, spec)
    return list(tfds_source.examples(b, split))


# -------------------------------------------------------------------------------------------------- eval reader
def test_eval_reader_reads_every_tfds_suite_dataset_like_the_official_readers(prepared, tmp_path, monkeypatch):
    data_dir = prepared["data_dir"]
    tasks, errors, _ = load_tasks(prepared["data_root"], "tfds")
    assert errors == {}
    got = {t.name: t for t in tasks}
    assert sorted(got) == sorted(["tfds_crema_d", "tfds_gtzan_genres", "tfds_gtzan_music_speech",
                                  "tfds_speech_commands"] + NSYNTH_TASKS)
    # class words and order, prompts and splits of the official-layout readers
    assert got["tfds_crema_d"].classes == ["angry", "disgust", "fearful", "happy", "neutral", "sad"]
    assert got["tfds_crema_d"].prompt == "this person is feeling {label}"
    assert len(got["tfds_crema_d"].clips) == 20 and got["tfds_crema_d"].settings["splits"] == [
        "train", "validation", "test"]                                           # all splits pooled
    assert got["tfds_speech_commands"].classes[-2:] == ["silence", "unknown"]
    assert got["tfds_speech_commands"].prompt == "{label}"
    assert len(got["tfds_speech_commands"].clips) == 5                          # the test split only
    assert len(got["tfds_gtzan_genres"].clips) == 4 and got["tfds_gtzan_genres"].classes[4] == "hiphop"
    assert got["tfds_gtzan_music_speech"].classes == ["music", "speech"]
    # the exported clips hold exactly what TFDS yields (int16 PCM and float32)
    crema = _tfds_split(data_dir, "crema_d", "train")
    clip0, _ = sf.read(got["tfds_crema_d"].clips[0].path, dtype="int16")
    assert crema[0]["audio"].dtype.kind == "i" and np.array_equal(clip0, crema[0]["audio"])
    assert got["tfds_crema_d"].clips[0].labels == (list(CREMA).index(
        tfds_source.label_names(tfds_source.open_builder(data_dir, "crema_d")[0], "label", crema[0]["label"])[0]),)
    ns = {ex["id"].decode(): ex["audio"] for ex in _tfds_split(data_dir, "nsynth", "test")}
    for c, key in zip(got["tfds_nsynth_pitch"].clips, sorted(ns)):
        a, sr = sf.read(c.path, dtype="float32")
        assert sr == 16000 and np.array_equal(a, ns[key])
    # the nsynth tasks equal the official reader's on the same notes written in the official layout
    off = tmp_path / "nsynth-test"
    meta = {}
    for key, ex in prepared["notes"]["test"]:
        (off / "audio").mkdir(parents=True, exist_ok=True)
        sf.write(off / "audio" / f"{key}.wav", ex["audio"], 16000, subtype="FLOAT")
        meta[key] = {"pitch": ex["pitch"], "velocity": ex["velocity"],
                     "instrument_family_str": ex["instrument"]["family"],
                     "qualities_str": [q for q in QUALITIES if ex["qualities"][q]]}
    (off / "examples.json").write_text(json.dumps(meta))
    official = {t.name: t for t in NSynth().read(off, {})}
    for name in NSYNTH_TASKS:
        o, t = official[name[len("tfds_"):]], got[name]
        assert (t.kind, t.classes, t.prompt, t.paper_key) == (o.kind, o.classes, o.prompt, o.paper_key)
        assert [c.labels for c in t.clips] == [c.labels for c in o.clips] and len(t.clips) == 4
    assert got["tfds_nsynth_qualities"].clips[3].labels == (8, 9)              # reverb, tempo-synced
    # scored: a perfect tone model gets every task right
    res = evaluate(fx.tone_embedder(prepared["w"], tasks), prepared["data_root"], tasks="tfds", **QUIET)
    assert res["errors"] == {}
    for name, r in res["tasks"].items():
        assert r["metrics"][next(iter(r["metrics"]))] == pytest.approx(1.0), name
    # later runs read the export only: TFDS is not opened again
    monkeypatch.setattr(tfds_source, "open_builder", lambda *a, **k: pytest.fail("TFDS re-read"))
    again, errors, _ = load_tasks(prepared["data_root"], "tfds")
    assert errors == {} and [len(t.clips) for t in again] == [len(t.clips) for t in tasks]
    # a TFDS copy not exported yet, without tensorflow-datasets installed: the reader says what to install
    shutil.copytree(os.path.join(prepared["data_dir"], "crema_d"), tmp_path / "tensorflow_datasets" / "crema_d")

    def missing():
        raise UserError("no module named tensorflow_datasets")
    monkeypatch.setattr(tfds_source, "import_tfds", missing)
    _, errors, _ = load_tasks(tmp_path, "tfds")
    assert "tensorflow-datasets is not installed" in errors["tfds"] and ".[tfds]" in errors["tfds"]


def test_eval_cli_runs_the_tfds_nsynth_tasks_with_their_protocol(prepared, tmp_path, monkeypatch):
    tasks, _, _ = load_tasks(prepared["data_root"], "tfds")
    tone = fx.tone_embedder(prepared["w"], tasks)
    monkeypatch.setattr(cli, "load_embedder", lambda weights, *a, **k: tone)
    out = tmp_path / "out"
    rc = cli.main(["--weights", "perfect", "--data-root", str(prepared["data_root"]), "--tasks", ",".join(NSYNTH_TASKS),
                   "--out", str(out), "--no-cache", "--no-progress", "--workers", "1", "--option",
                   "tfds.pitch_label=\"midi\""])
    assert rc == 0
    run = json.loads((out / "results.json").read_text())        # one --weights: one run
    assert sorted(run["tasks"]) == sorted(NSYNTH_TASKS) and run["errors"] == {}
    pitch = run["tasks"]["tfds_nsynth_pitch"]
    assert pitch["settings"]["prompt"] == "this is a sound of pitch {label}"
    assert pitch["settings"]["pitch_label"] == "midi"
    assert pitch["settings"]["source"] == "TFDS nsynth/full 2.3.3" and pitch["settings"]["split"] == "test"
    assert pitch["settings"]["n_clips"] == 4 and pitch["settings"]["n_classes"] == 3   # pitches 22, 60, 72
    assert run["tasks"]["tfds_nsynth_velocity"]["settings"]["n_classes"] == 5
    assert run["tasks"]["tfds_nsynth_qualities"]["settings"]["kind"] == "multi_label"
    assert run["tasks"]["tfds_nsynth_family"]["metrics"]["acc"] == 1.0
    md = (out / "report.md").read_text()
    assert "NSynth" in md and "tfds_nsynth_family" in md


# -------------------------------------------------------------------------------------------------- preprocess
def _records(out):
    meta = json.load(open(os.path.join(out, "dataset.json")))
    recs = []
    for split in sorted(meta["splits"]):
        for name in meta["splits"][split]["shards"]:
            recs += [tfrecord.decode_example(r) for r in tfrecord.iter_records(os.path.join(out, name))]
    return meta, recs


def _pre(prepared, tmp_path, *args):
    return preprocess.main(["--tfds-data-dir", prepared["data_dir"], "--tfds-staging", str(tmp_path / "staging"),
                            "--workers", "1", "--min-seconds", "0.05", "--quiet", *args])


def test_preprocess_tfds_exports_what_tfds_yields_with_template_captions_and_reruns(prepared, tmp_path, capsys):
    out = str(tmp_path / "crema")
    args = ["--tfds", "crema_d", "--split", "train,test", "--sample-rate", "16000", "--out", out]
    assert preprocess.main(["--tfds-data-dir", prepared["data_dir"], "--tfds-staging", str(tmp_path / "staging"),
                            "--workers", "1", "--min-seconds", "0.05", *args]) == 0
    err = capsys.readouterr().err
    assert "tfds export crema_d" in err and "preprocess" in err                 # both progress bars
    meta, recs = _records(out)
    want = {s: _tfds_split(prepared["data_dir"], "crema_d", s) for s in ("train", "test")}
    assert meta["splits"]["train"]["num_examples"] == len(want["train"]) == 14
    assert meta["splits"]["test"]["num_examples"] == len(want["test"]) == 5 and meta["num_skipped"] == 0
    names = tfds.builder_from_directory(f"{prepared['data_dir']}/crema_d/1.0.0").info.features["label"].names
    by_id = {r["id"][0].decode(): r for r in recs}
    for split, exs in want.items():
        for ex in exs:
            r = by_id[f"crema_d/{ex['tfds_id']}"]
            code = names[ex["label"]]
            assert r["split"][0].decode() == split and r["source"][0].decode() == "crema_d"
            assert [x.decode() for x in r["labels"]] == [code]
            assert [x.decode() for x in r["captions"]] == [f"this is a sound of {code}"]   # manifest template
            got = audio_lib.decode_audio_int16(r["audio"][0], "pcm16")
            assert np.array_equal(got, ex["audio"].astype(np.int16))                   # bit-exact samples
    stamp = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out) if n.endswith(".tfrecord")}
    assert _pre(prepared, tmp_path, *args) == 0                                 # rerun: nothing rewritten
    assert {n: os.path.getmtime(os.path.join(out, n)) for n in stamp} == stamp
    assert json.load(open(os.path.join(out, "dataset.json")))["num_examples"] == 19
    # another split into the same --out is another job: refused as for manifests, unless --append
    with pytest.raises(UserError, match="another preprocess job"):
        _pre(prepared, tmp_path, "--tfds", "crema_d", "--split", "validation", "--sample-rate", "16000", "--out", out)
    assert _pre(prepared, tmp_path, "--tfds", "crema_d", "--split", "validation", "--sample-rate", "16000",
                "--out", out, "--append") == 0
    assert json.load(open(os.path.join(out, "dataset.json")))["num_examples"] == 20


def test_preprocess_tfds_nested_labels_float_audio_and_skip_accounting(prepared, tmp_path):
    out = str(tmp_path / "ns")
    assert _pre(prepared, tmp_path, "--tfds", "nsynth:full", "--split", "test", "--sample-rate", "16000", "--out", out,
                "--tfds-label-key", "instrument/family", "--tfds-label-key", "qualities",
                "--label-template", "a {labels} note") == 0
    _, recs = _records(out)
    want = {ex["id"].decode(): ex for ex in _tfds_split(prepared["data_dir"], "nsynth", "test")}
    assert len(recs) == 4
    fam = tfds.builder_from_directory(f"{prepared['data_dir']}/nsynth/full/2.3.3").info.features["instrument"]["family"]
    exp = []
    for ex in want.values():
        labels = [fam.int2str(ex["instrument"]["family"])] + [q for q in QUALITIES if ex["qualities"][q]]
        exp.append((labels, "a " + ", ".join(labels) + " note", audio_lib.to_int16(ex["audio"]).tobytes()))
    got = [([x.decode() for x in r["labels"]], r["captions"][0].decode(),
            audio_lib.decode_audio_int16(r["audio"][0], "pcm16").tobytes()) for r in recs]
    assert sorted(got) == sorted(exp)
    # a silent clip is skipped and counted like any manifest row; the rest is kept
    out2 = str(tmp_path / "sc")
    assert _pre(prepared, tmp_path, "--tfds", "speech_commands", "--split", "train", "--sample-rate", "16000",
                "--out", out2) == 0
    meta = json.load(open(os.path.join(out2, "dataset.json")))
    assert meta["num_examples"] == 2 and meta["num_skipped"] == 1
    assert meta["problem_counts"]["skipped"] and "silent" in meta["skipped"][0]["reason"]
    manifest, line = meta["skipped"][0]["where"].rsplit(":", 1)        # manifest:line of the staged export
    row = json.loads(open(manifest).read().splitlines()[int(line) - 1])
    assert os.path.basename(manifest) == "speech_commands.jsonl" and row["labels"] == ["off"]
    assert not sf.read(os.path.join(os.path.dirname(manifest), row["path"]))[0].any()   # the silent clip
    lines = open(os.path.join(out2, "skipped.tsv")).read().splitlines()
    assert len(lines) == 2 and "silent" in lines[1]


def test_preprocess_tfds_bad_input_is_named(prepared, tmp_path):
    base = ["--sample-rate", "16000", "--out", str(tmp_path / "o")]
    with pytest.raises(UserError, match="no dataset 'esc50'.*tfds build esc50"):
        _pre(prepared, tmp_path, "--tfds", "esc50", *base)
    with pytest.raises(UserError, match="no split 'dev'.*train"):
        _pre(prepared, tmp_path, "--tfds", "crema_d", "--split", "dev", *base)
    with pytest.raises(UserError, match="slices"):
        _pre(prepared, tmp_path, "--tfds", "crema_d", "--split", "train[:10%]", *base)
    with pytest.raises(UserError, match="version 9.9.9 is not prepared .found 1.0.0"):
        _pre(prepared, tmp_path, "--tfds", "crema_d:9.9.9", *base)
    with pytest.raises(UserError, match="exclude each other"):
        preprocess.main(["--tfds", "crema_d", "--manifest", "m.csv", *base])
    with pytest.raises(UserError, match="is not a feature"):
        _pre(prepared, tmp_path, "--tfds", "crema_d", "--tfds-label-key", "emotion", *base)
    damaged = tmp_path / "damaged"   # a copy of crema_d whose test records are cut short
    shutil.copytree(os.path.join(prepared["data_dir"], "crema_d"), damaged / "crema_d")
    rec = next(p for p in (damaged / "crema_d" / "1.0.0").iterdir() if p.name.startswith("crema_d-test.tfrecord"))
    rec.write_bytes(rec.read_bytes()[:-100])
    with pytest.raises(UserError, match="reading split 'test' failed"):
        _pre(prepared, tmp_path, "--tfds", "crema_d", "--tfds-data-dir", str(damaged), "--split", "test", *base)
    assert tfds_source.parse_spec("nsynth:full") == ("nsynth", "full", None)
    assert tfds_source.parse_spec("nsynth/full:2.3.3") == ("nsynth", "full", "2.3.3")


def test_preprocess_tfds_data_dir_in_a_bucket(prepared, tmp_path):
    """gs:// and s3:// through clap_jax.files (loopback GCS emulator and S3 server); TensorFlow's own GCS reader
    cannot reach an emulator (its endpoint is fixed), so the prepared files are mirrored locally first."""
    want = _tfds_split(prepared["data_dir"], "crema_d", "test")
    with storage_servers() as s:
        for scheme in ("gs", "s3"):
            url = f"{s[scheme]}/tfds"
            storage.upload(os.path.join(prepared["data_dir"], "crema_d"), f"{url}/crema_d")
            out = str(tmp_path / scheme)
            assert _pre(prepared, tmp_path, "--tfds", "crema_d", "--tfds-data-dir", url, "--split", "test",
                        "--sample-rate", "16000", "--out", out) == 0
            _, recs = _records(out)
            assert sorted(r["id"][0].decode() for r in recs) == sorted(f"crema_d/{ex['tfds_id']}" for ex in want)
            by_id = {r["id"][0].decode(): r for r in recs}
            for ex in want:
                got = audio_lib.decode_audio_int16(by_id[f"crema_d/{ex['tfds_id']}"]["audio"][0], "pcm16")
                assert np.array_equal(got, ex["audio"].astype(np.int16))
    mirrored = [f for _, _, fs in os.walk(tmp_path / "staging" / "_buckets") for f in fs]
    assert mirrored.count("dataset_info.json") == 2 and not any("train" in f for f in mirrored)   # only the split asked


def test_eval_reader_reads_a_tfds_data_dir_in_a_bucket(prepared, tmp_path, monkeypatch):
    """`--option tfds.data_dir=gs://...` (and s3://): the scored splits are mirrored into the local cache, the WAV
    export is kept there, and the tasks equal those read from the same datasets on local disk."""
    monkeypatch.setenv("CLAP_JAX_TFDS_STAGING", str(tmp_path / "cache"))
    local, errors, _ = load_tasks(prepared["data_root"], "tfds_crema_d,tfds_nsynth_family")
    assert errors == {}
    empty_root = tmp_path / "root"
    empty_root.mkdir()
    with storage_servers() as s:
        for scheme in ("gs", "s3"):
            url = f"{s[scheme]}/eval/tensorflow_datasets"
            for name in ("crema_d", "nsynth"):
                storage.upload(os.path.join(prepared["data_dir"], name), f"{url}/{name}")
            config = {"options": {"tfds": {"data_dir": url}}}
            tasks, errors, missing = load_tasks(empty_root, "tfds_crema_d,tfds_nsynth_family", config)
            assert errors == {} and missing == []
            assert sorted(t.name for t in tasks) == sorted(t.name for t in local)
            for t, ref in zip(sorted(tasks, key=lambda t: t.name), sorted(local, key=lambda t: t.name)):
                assert t.classes == ref.classes and t.prompt == ref.prompt
                assert [c.labels for c in t.clips] == [c.labels for c in ref.clips]
                for c, rc in zip(t.clips, ref.clips):
                    assert c.path.startswith(str(tmp_path / "cache"))               # local, not in the bucket
                    assert np.array_equal(sf.read(c.path)[0], sf.read(rc.path)[0])
            # a second read uses the export: nothing is fetched from the bucket again
            monkeypatch.setattr(tfds_source, "mirror", lambda *a, **k: pytest.fail("mirrored twice"))
            again, errors, _ = load_tasks(empty_root, "tfds_crema_d", config)
            assert errors == {} and len(again[0].clips) == len(local[0].clips)
            monkeypatch.undo()
            monkeypatch.setenv("CLAP_JAX_TFDS_STAGING", str(tmp_path / "cache"))
        # the bucket holds no dataset: the reader reports its data as absent, not as an error
        _, errors, missing = load_tasks(empty_root, "tfds", {"options": {"tfds": {"data_dir": f"{s['gs']}/none"}}})
        assert errors == {} and [r.name for r in missing] == ["tfds"]
