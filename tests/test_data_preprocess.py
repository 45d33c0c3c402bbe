"""Preprocessing CLI: round trips, bad input reporting, label templates, determinism, restarts, jobs sharing an
--out (refuse / --overwrite / --append), unsafe splits and paths, temp-file cleanup, full disk, damaged audio."""
import json
import errno
import os

import numpy as np
import pytest
import soundfile as sf

from clap_jax.data import audio as audio_lib
from clap_jax.data import preprocess, tfrecord
from data_fixtures import make_manifest_dataset, write_clip
from clap_jax.errors import UserError, run_cli

SR = 8000


def _records(out):
    meta = json.load(open(os.path.join(out, "dataset.json")))
    recs = []
    for split in sorted(meta["splits"]):
        for name in meta["splits"][split]["shards"]:
            recs += [tfrecord.decode_example(r) for r in tfrecord.iter_records(os.path.join(out, name))]
    return meta, {r["id"][0].decode(): r for r in recs}


def _opts(**kw):
    kw.setdefault("sample_rate", SR)
    kw.setdefault("min_seconds", 0.05)
    return preprocess.Options(**kw)


def test_roundtrip_pcm_exact_and_captions(tmp_path):
    x = write_clip(str(tmp_path / "a.wav"), 0.3, SR, seed=1)
    cap = "un chien aboie \u2014 \u00fcn\u00efc\u00f6de \u72ac"
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "a.wav", "captions": [cap, "second"], "labels": ["dog"],
                                                  "source": "src1", "split": "valid", "id": "A"}) + "\n")
    out = str(tmp_path / "out")
    meta = preprocess.run([str(tmp_path / "m.jsonl")], out, str(tmp_path), _opts(audio_format="pcm16"), progress=False)
    _, recs = _records(out)
    r = recs["A"]
    wave = audio_lib.decode_audio(r["audio"][0], r["audio_format"][0].decode())
    np.testing.assert_array_equal(wave, x)  # PCM: exact
    assert [c.decode() for c in r["captions"]] == [cap, "second"]
    assert r["labels"] == [b"dog"] and r["source"] == [b"src1"] and r["split"] == [b"valid"]
    assert r["num_samples"][0] == x.size and abs(r["duration"][0] - 0.3) < 1e-6
    assert r["uid"][0] == preprocess.stable_uid("A") and 0 <= r["uid"][0] < 2**31
    assert meta["splits"]["valid"]["num_examples"] == 1 and meta["sources"]["src1"]["num_examples"] == 1
    assert abs(meta["hours"] - 0.3 / 3600) < 1e-9


def test_flac_downmix_resample(tmp_path):
    x = write_clip(str(tmp_path / "st.wav"), 0.5, 16000, seed=2, channels=2)  # (8000, 2) at 16 kHz
    (tmp_path / "m.csv").write_text("path,caption\nst.wav,stereo clip\n")
    out = str(tmp_path / "out")
    preprocess.run([str(tmp_path / "m.csv")], out, str(tmp_path), _opts(audio_format="flac"), progress=False)
    _, recs = _records(out)
    r = recs["st.wav"]
    wave = audio_lib.decode_audio(r["audio"][0], "flac")
    import librosa

    ref = librosa.resample(x.mean(1), orig_sr=16000, target_sr=SR, res_type="soxr_hq")
    assert wave.shape == (4000,) and r["sample_rate"][0] == SR
    assert np.abs(wave - ref).max() <= 1 / 32768 + 1e-7  # FLAC: within one 16-bit step


def test_bad_inputs_are_reported_and_nothing_else_is_lost(tmp_path):
    for i in range(3):
        write_clip(str(tmp_path / f"good{i}.wav"), 0.2, SR, seed=i)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    write_clip(str(tmp_path / "short.wav"), 0.01, SR)
    sf.write(str(tmp_path / "silent.wav"), np.zeros(800, np.int16), SR)
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, np.int16), SR)
    (tmp_path / "m.csv").write_text(
        "path,caption,labels\n"
        "good0.wav,first good,\n"              # line 2
        "corrupt.wav,broken file,\n"           # 3
        "missing.wav,no such file,\n"          # 4
        "good1.wav,,\n"                        # 5 empty caption, no labels -> skipped
        "short.wav,too short,\n"               # 6
        "good2.wav,a caption|,\n"              # 7 one empty caption of two -> kept, warned
        "silent.wav,silence,\n"                # 8
        ",no path,\n"                          # 9
        "good0.wav,dup,x,extra\n"              # 10 wrong field count
        "empty.wav,nothing,\n")                # 11
    (tmp_path / "m.jsonl").write_text('{"path": "good1.wav", "caption": "json good"}\n{not json\n'
                                      '{"path": "good0.wav", "captions": [3]}\n')
    out = str(tmp_path / "out")
    meta = preprocess.main([f"--manifest={tmp_path / 'm.csv'}", f"--manifest={tmp_path / 'm.jsonl'}",
                            f"--root={tmp_path}", f"--out={out}", "--sample-rate", str(SR), "--min-seconds", "0.05",
                            "--quiet", "-j", "1"])
    assert meta == 0
    meta, recs = _records(out)
    assert sorted(recs) == ["good0.wav", "good1.wav", "good2.wav"]
    assert [c.decode() for c in recs["good2.wav"]["captions"]] == ["a caption"]
    assert [c.decode() for c in recs["good1.wav"]["captions"]] == ["json good"]
    reasons = {s["where"].rsplit("/", 1)[-1]: s["reason"] for s in meta["skipped"]}
    assert "corrupt.wav: cannot decode audio" in reasons["m.csv:3"]
    assert "missing.wav: file not found" in reasons["m.csv:4"]
    assert "empty caption" in reasons["m.csv:5"]
    assert "short.wav: too short" in reasons["m.csv:6"]
    assert "silent" in reasons["m.csv:8"]
    assert "no audio path" in reasons["m.csv:9"]
    assert "has 4 fields, header has 3" in reasons["m.csv:10"]
    assert "empty.wav" in reasons["m.csv:11"] and ("empty" in reasons["m.csv:11"] or "short" in reasons["m.csv:11"])
    assert "invalid JSON" in reasons["m.jsonl:2"]
    assert "not a string" in reasons["m.jsonl:3"]
    assert meta["num_skipped"] == len(meta["skipped"]) == 10
    assert any(w["where"].endswith("m.csv:7") and "empty caption" in w["reason"] for w in meta["warnings"])
    tsv = open(os.path.join(out, "skipped.tsv")).read()
    assert "m.csv:3" in tsv and "corrupt.wav" in tsv and "m.jsonl:2" in tsv


def test_label_only_rows_get_template_captions(tmp_path):
    write_clip(str(tmp_path / "a.wav"), 0.2, SR)
    write_clip(str(tmp_path / "b.wav"), 0.2, SR, seed=3)
    (tmp_path / "m.csv").write_text("path,labels,caption\na.wav,Dog|Bark,\nb.wav,Rain,it rains\n")
    out = str(tmp_path / "out")
    preprocess.main(["-m", str(tmp_path / "m.csv"), "--root", str(tmp_path), "-o", out, "--quiet", "-j", "1",
                     "--sample-rate", str(SR), "--label-template", "the sound of {labels}",
                     "--label-template", "{labels} can be heard", "--label-joiner", " and "])
    _, recs = _records(out)
    assert [c.decode() for c in recs["a.wav"]["captions"]] == ["the sound of Dog and Bark", "Dog and Bark can be heard"]
    assert [c.decode() for c in recs["b.wav"]["captions"]] == ["it rains"]  # 'if-missing': captions win
    out2 = str(tmp_path / "out2")
    preprocess.run([str(tmp_path / "m.csv")], out2, str(tmp_path), _opts(label_captions="always"), progress=False)
    _, recs2 = _records(out2)
    assert [c.decode() for c in recs2["b.wav"]["captions"]] == ["it rains", "this is a sound of Rain"]


def _shard_bytes(out):
    return {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out))
            if n.endswith((".tfrecord", ".index"))}


def test_deterministic_across_runs_and_worker_counts(tmp_path):
    man = make_manifest_dataset(str(tmp_path / "raw"), 10, [0.1, 0.2, 0.15], SR)
    outs = []
    for j, w in enumerate((1, 2)):
        out = str(tmp_path / f"out{j}")
        preprocess.run([man], out, str(tmp_path / "raw"), _opts(examples_per_shard=3, audio_format="flac"), workers=w,
                       progress=False)
        outs.append(_shard_bytes(out))
    assert len([n for n in outs[0] if n.endswith(".tfrecord")]) == 4  # 10 rows / 3 per shard
    assert outs[0] == outs[1]


def test_restart_redoes_only_missing_shards(tmp_path):
    man = make_manifest_dataset(str(tmp_path / "raw"), 9, 0.1, SR)
    out = str(tmp_path / "out")
    opts = _opts(examples_per_shard=3)
    preprocess.run([man], out, str(tmp_path / "raw"), opts, progress=False)
    first = _shard_bytes(out)
    names = sorted(n for n in first if n.endswith(".tfrecord"))
    mtimes = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in names}
    os.remove(os.path.join(out, names[1]))  # as if the job died before renaming shard 1
    open(os.path.join(out, names[1] + ".tmp-999"), "wb").write(b"partial")
    meta = preprocess.run([man], out, str(tmp_path / "raw"), opts, progress=False)
    assert _shard_bytes(out) == first and meta["num_examples"] == 9
    for n in (names[0], names[2]):
        assert os.stat(os.path.join(out, n)).st_mtime_ns == mtimes[n]  # not rewritten
    # a changed manifest changes the plan: affected shards are redone, stale shards removed
    with open(man, "a") as f:
        f.write(json.dumps({"path": "toy-0.wav", "caption": "same audio, new row", "id": "new"}) + "\n")
    meta = preprocess.run([man], out, str(tmp_path / "raw"), opts, progress=False)
    assert meta["num_examples"] == 10 and len(meta["splits"]["train"]["shards"]) == 4
    assert os.stat(os.path.join(out, names[0].replace("of-00003", "of-00004"))).st_size > 0
    assert not any("of-00003" in n for n in os.listdir(out))


def test_shard_size_cap(tmp_path):
    man = make_manifest_dataset(str(tmp_path / "raw"), 6, 0.5, SR)  # ~8 KB of pcm16 each
    out = str(tmp_path / "out")
    meta = preprocess.run([man], out, str(tmp_path / "raw"), _opts(audio_format="pcm16", shard_mb=17 / 1024),
                          progress=False)
    assert len(meta["splits"]["train"]["shards"]) == 3 and meta["num_examples"] == 6


def test_cli_missing_manifest_is_a_clear_error(tmp_path, capsys):
    # main raises UserError; run_cli (the module's entry point) turns it into one line and exit code 2
    assert run_cli(preprocess.main, ["-m", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: manifest ") and "nope.csv: file not found" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "o")  # nothing created on a bad invocation


def test_clotho_style_caption_columns_max_seconds_and_trim(tmp_path):
    x = write_clip(str(tmp_path / "long.wav"), 1.0, SR, seed=4)
    padded = np.concatenate([np.zeros(6000, np.float32), x[:2400], np.zeros(6000, np.float32)])
    sf.write(str(tmp_path / "padded.wav"), padded, SR, subtype="PCM_16")
    (tmp_path / "m.csv").write_text("file_name,caption_1,caption_2,caption_3\n"
                                    "long.wav,one,two,three\npadded.wav,silence around,b,c\n")
    out = str(tmp_path / "out")
    preprocess.run([str(tmp_path / "m.csv")], out, str(tmp_path), _opts(audio_format="pcm16", max_seconds=0.5),
                   progress=False)
    _, recs = _records(out)
    assert [c.decode() for c in recs["long.wav"]["captions"]] == ["one", "two", "three"]
    np.testing.assert_array_equal(audio_lib.decode_audio(recs["long.wav"]["audio"][0], "pcm16"), x[:4000])
    out2 = str(tmp_path / "out2")
    preprocess.run([str(tmp_path / "m.csv")], out2, str(tmp_path), _opts(audio_format="pcm16", trim_db=40),
                   progress=False)
    _, recs2 = _records(out2)
    n = int(recs2["padded.wav"]["num_samples"][0])
    assert 2400 <= n <= 2400 + 2 * 2048 < 14400  # edge silence removed (librosa trims in 2048-sample frames)


def test_another_job_is_refused_unless_overwrite_or_append(tmp_path):
    a = make_manifest_dataset(str(tmp_path / "raw"), 4, 0.1, SR, source="aaa")
    b = make_manifest_dataset(str(tmp_path / "raw"), 3, 0.1, SR, source="bbb", seed=1)
    root, out = str(tmp_path / "raw"), str(tmp_path / "out")
    opts = _opts(examples_per_shard=2)
    preprocess.run([a], out, root, opts, progress=False)
    built_a = _shard_bytes(out)
    (tmp_path / "out" / "README.txt").write_text("not ours")  # never touched, whatever the mode
    with pytest.raises(UserError, match=r"--out .*out already holds a dataset built by another preprocess job "
                                        r"\(manifests aaa\.jsonl\).*--overwrite.*--append"):
        preprocess.run([b], out, root, opts, progress=False)
    assert _shard_bytes(out) == built_a  # refused before anything was deleted or written
    # --append: B's shards beside A's under names of their own; dataset.json describes both
    meta = preprocess.run([b], out, root, opts, progress=False, append=True)
    assert meta["num_examples"] == 7 and len(meta["jobs"]) == 2
    assert {k: v for k, v in _shard_bytes(out).items() if k in built_a} == built_a
    tag = meta["jobs"][1]["tag"]
    assert tag.startswith("j") and meta["splits"]["train"]["shards"] == sorted(n for n in built_a if n.endswith(
        ".tfrecord")) + [f"train-{tag}-{i:05d}-of-00002.tfrecord" for i in range(2)]
    assert set(_records(out)[1]) == {f"aaa-{i}" for i in range(4)} | {f"bbb-{i}" for i in range(3)}
    # rerunning either job is the same job: nothing rewritten, the other job's shards kept
    before = _shard_bytes(out)
    mtimes = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in before}
    for m in (a, b):
        meta = preprocess.run([m], out, root, opts, progress=False)
        assert meta["num_examples"] == 7
    assert _shard_bytes(out) == before
    assert all(os.stat(os.path.join(out, n)).st_mtime_ns == t for n, t in mtimes.items())
    # --overwrite: only this job is left (the other jobs' shards are deleted, foreign files kept)
    c = make_manifest_dataset(str(tmp_path / "raw"), 2, 0.1, SR, source="ccc", seed=2)
    meta = preprocess.run([c], out, root, opts, progress=False, overwrite=True)
    assert meta["num_examples"] == 2 and [j["manifests"] for j in meta["jobs"]] == [[os.path.realpath(c)]]
    assert sorted(_shard_bytes(out)) == ["train-00000-of-00001.tfrecord", "train-00000-of-00001.tfrecord.index"]
    assert (tmp_path / "out" / "README.txt").read_text() == "not ours"


def test_append_needs_the_same_sample_rate(tmp_path):
    a = make_manifest_dataset(str(tmp_path / "raw"), 1, 0.1, SR, source="aaa")
    b = make_manifest_dataset(str(tmp_path / "raw"), 1, 0.1, SR, source="bbb", seed=1)
    out = str(tmp_path / "out")
    preprocess.run([a], out, str(tmp_path / "raw"), _opts(), progress=False)
    with pytest.raises(UserError, match=r"--append: .* holds audio at 8000 Hz, this job writes 16000 Hz"):
        preprocess.run([b], out, str(tmp_path / "raw"), _opts(sample_rate=16000), progress=False, append=True)


def test_dataset_from_before_job_records_is_adopted_by_its_own_job(tmp_path):
    # A dataset.json written before job records existed: rerunning its job must not be refused or redo shards.
    man = make_manifest_dataset(str(tmp_path / "raw"), 3, 0.1, SR)
    out = str(tmp_path / "out")
    preprocess.run([man], out, str(tmp_path / "raw"), _opts(), progress=False)
    meta = json.load(open(os.path.join(out, "dataset.json")))
    for k in ("jobs", "altered", "num_altered", "problem_counts"):
        del meta[k]
    meta["format_version"] = 1
    json.dump(meta, open(os.path.join(out, "dataset.json"), "w"))
    shard = os.path.join(out, meta["splits"]["train"]["shards"][0])
    t = os.stat(shard).st_mtime_ns
    assert preprocess.run([man], out, str(tmp_path / "raw"), _opts(), progress=False)["num_examples"] == 3
    assert os.stat(shard).st_mtime_ns == t
    other = make_manifest_dataset(str(tmp_path / "raw2"), 1, 0.1, SR)
    with pytest.raises(UserError, match="another preprocess job"):
        preprocess.run([other], out, str(tmp_path / "raw2"), _opts(), progress=False)


def test_split_names_are_checked_per_row(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    for i in range(5):
        write_clip(str(root / f"c{i}.wav"), 0.1, SR, seed=i)
    rows = [("c0.wav", "train"), ("c1.wav", "../evil"), ("c2.wav", "a/b"), ("c3.wav", ".hidden"), ("c4.wav", "val-1")]
    (root / "m.jsonl").write_text("".join(json.dumps({"path": p, "caption": "x", "split": s}) + "\n" for p, s in rows))
    out = tmp_path / "out"
    meta = preprocess.run([str(root / "m.jsonl")], str(out), str(root), _opts(), progress=False)
    assert sorted(meta["splits"]) == ["train", "val-1"] and meta["num_examples"] == 2
    assert not list(tmp_path.glob("evil*")) and sorted(os.listdir(tmp_path)) == ["out", "root"]  # nothing outside
    reasons = {s["where"].rsplit(":", 1)[1]: s["reason"] for s in meta["skipped"]}
    assert sorted(reasons) == ["2", "3", "4"] and all("is not a plain name" in r for r in reasons.values())
    assert "'../evil'" in reasons["2"] and meta["problem_counts"]["skipped"] == {"bad_split": 3}
    assert "m.jsonl:3\tc2.wav\tsplit 'a/b' is not a plain name" in (out / "skipped.tsv").read_text()


def test_paths_outside_root_are_refused_unless_allowed(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    write_clip(str(root / "in.wav"), 0.1, SR)
    write_clip(str(tmp_path / "outside.wav"), 0.1, SR, seed=1)
    rows = ["in.wav", "sub/../in.wav", str(root / "in.wav"), "../outside.wav", str(tmp_path / "outside.wav")]
    (root / "m.jsonl").write_text("".join(json.dumps({"path": p, "caption": "x", "id": str(i)}) + "\n"
                                          for i, p in enumerate(rows)))
    meta = preprocess.run([str(root / "m.jsonl")], str(tmp_path / "o1"), str(root), _opts(), progress=False)
    assert meta["num_examples"] == 3 and sorted(_records(str(tmp_path / "o1"))[1]) == ["0", "1", "2"]
    reasons = {s["where"].rsplit(":", 1)[1]: s["reason"] for s in meta["skipped"]}
    assert sorted(reasons) == ["4", "5"] and all("outside --root" in r and "--allow-outside-root" in r
                                                 for r in reasons.values())
    meta = preprocess.run([str(root / "m.jsonl")], str(tmp_path / "o2"), str(root), _opts(), progress=False,
                          allow_outside_root=True)
    assert meta["num_examples"] == 5 and meta["num_skipped"] == 0


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    man = make_manifest_dataset(str(tmp_path / "raw"), 2, 0.1, SR)
    out = tmp_path / "out"
    out.mkdir()
    dead = 4_000_000  # above Linux's pid_max: no such process
    ours = [f"train-00000-of-00001.tfrecord.tmp-{dead}", f"train-00000-of-00001.tfrecord.index.tmp-{dead}",
            f"train-00000-of-00001.tfrecord.json.tmp-{dead}", f"dataset.json.tmp-{dead}", f"skipped.tsv.tmp-{dead}"]
    live = f"train-00000-of-00001.tfrecord.tmp-{os.getppid()}"  # a writer that is still running
    foreign = ["notes.txt.tmp-12", f"mine.tmp-{dead}", "train-00000-of-00001.tfrecord.tmp-x"]
    for n in ours + [live] + foreign:
        (out / n).write_bytes(b"partial")
    preprocess.run([man], str(out), str(tmp_path / "raw"), _opts(), progress=False)
    left = set(os.listdir(out))
    assert not left & set(ours) and {live, *foreign} <= left


def test_disk_full_is_one_line_and_finished_shards_are_kept(tmp_path, capsys, monkeypatch):
    man = make_manifest_dataset(str(tmp_path / "raw"), 6, 0.1, SR)
    out = str(tmp_path / "out")
    argv = ["-m", man, "--root", str(tmp_path / "raw"), "-o", out, "--quiet", "-j", "1", "--sample-rate", str(SR),
            "--min-seconds", "0.05", "--examples-per-shard", "2"]
    real_init, calls = tfrecord.ShardWriter.__init__, []

    class FullDisk:  # the shard file: its third write (second shard) fails as file.write does, without a name
        def __init__(self, f):
            self.f = f

        def write(self, data):
            calls.append(1)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def init(self, path):
        real_init(self, path)
        self._f = FullDisk(self._f)

    monkeypatch.setattr(tfrecord.ShardWriter, "__init__", init)
    assert run_cli(preprocess.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: no space left on the device while writing ") and "train-00001-of-00003" in err
    first = os.path.join(out, "train-00000-of-00003.tfrecord")
    assert tfrecord.shard_is_complete(first) and os.path.isfile(first + ".json")
    assert not [n for n in os.listdir(out) if ".tmp-" in n or n.startswith("train-00001")]
    t = os.stat(first).st_mtime_ns
    monkeypatch.setattr(tfrecord.ShardWriter, "__init__", real_init)
    assert run_cli(preprocess.main, argv) == 0  # the rerun finishes the job, keeping the finished shard
    assert os.stat(first).st_mtime_ns == t and len(_records(out)[1]) == 6


def test_damaged_or_out_of_range_audio_is_counted_never_silently_altered(tmp_path):
    root = tmp_path
    loud = np.float32(0.5 * np.sin(np.arange(1600) / 3))
    loud[100] = 2.0  # a float WAV beyond full scale
    sf.write(str(root / "loud.wav"), loud, SR, subtype="FLOAT")
    nan = loud.copy()
    nan[5] = np.nan
    sf.write(str(root / "nan.wav"), nan, SR, subtype="FLOAT")
    write_clip(str(root / "full.wav"), 0.4, SR)
    data = (root / "full.wav").read_bytes()
    (root / "cut.wav").write_bytes(data[:44 + 2 * 1000])  # header declares 3200 frames, 1000 are there
    (root / "gone.wav").write_bytes(data[:44])  # header only
    (root / "m.csv").write_text("path,caption\n" + "".join(f"{n}.wav,{n}\n" for n in ("loud", "nan", "cut", "gone")))
    out = str(tmp_path / "out")
    meta = preprocess.run([str(root / "m.csv")], out, str(root), _opts(), progress=False)
    _, recs = _records(out)
    assert sorted(recs) == ["cut.wav", "loud.wav"]
    stored = audio_lib.decode_audio(recs["loud.wav"]["audio"][0], "pcm16")
    np.testing.assert_allclose(stored, loud / 2.0, atol=1 / 32768)  # scaled as a whole, not clipped
    assert recs["cut.wav"]["num_samples"][0] == 1000
    assert meta["problem_counts"] == {"skipped": {"non_finite": 1, "truncated": 1},
                                      "altered": {"out_of_range": 1, "truncated": 1}, "warnings": {}}
    altered = {a["path"].rsplit("/", 1)[1]: a["reason"] for a in meta["altered"]}
    assert "peak 2" in altered["loud.wav"] and "scaled by 0.5" in altered["loud.wav"]
    assert "declares 3200 frames, the file holds 1000" in altered["cut.wav"]
    skipped = {s["path"].rsplit("/", 1)[1]: s["reason"] for s in meta["skipped"]}
    assert "NaN/inf" in skipped["nan.wav"] and "holds 0" in skipped["gone.wav"]
    tsv = open(os.path.join(out, "skipped.tsv")).read()
    assert all(f"{n}.wav" in tsv for n in ("loud", "nan", "cut", "gone")) and meta["num_altered"] == 2
