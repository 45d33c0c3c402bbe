"""Grain pipeline: layout, crops, determinism, orbax resume, host sharding, corruption, mixing, global arrays."""
import logging
import os

import jax
import numpy as np
import pytest

from clap_jax.data import audio as audio_lib
from clap_jax.data import pipeline, tfrecord
from data_fixtures import make_tfrecord_dataset
from clap_jax.text.tokenizer import ClapTokenizer

SR, DUR = 8000, 0.25
L = int(SR * DUR)  # 2000 samples per example
N = 24


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("toy"))
    # lengths: 0.1 s (short: repeat-padded), 0.25 s (exact), 0.6 s (long: cropped)
    make_tfrecord_dataset(out, N, [0.1, 0.25, 0.6], SR, examples_per_shard=7)
    return out


def _build(d, **kw):
    kw.setdefault("per_host_batch_size", 4)
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    kw.setdefault("sample_rate", SR)
    kw.setdefault("duration", DUR)
    return pipeline.build_dataset(d, **kw)


def _take(it, k):
    return [next(it) for _ in range(k)]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _originals(d):
    """id -> (full float32 waveform, captions) read straight from the shards."""
    out = {}
    for p in pipeline.shard_paths(d):
        for r in tfrecord.iter_records(p):
            ex = tfrecord.decode_example(r)
            out[int(ex["uid"][0])] = (audio_lib.decode_audio(ex["audio"][0], "pcm16"),
                                      [c.decode() for c in ex["captions"]])
    return out


def test_batch_layout_crop_pad_and_tokens(data_dir):
    batches = list(_build(data_dir, num_epochs=1))
    assert len(batches) == N // 4
    b = batches[0]
    assert b["audio"].shape == (4, L) and b["audio"].dtype == np.float32
    assert b["input_ids"].shape == (4, 77) and b["input_ids"].dtype == np.int32
    assert b["attention_mask"].shape == (4, 77) and b["attention_mask"].dtype == np.int32
    assert b["id"].shape == (4,) and b["id"].dtype == np.int32
    orig, tok = _originals(data_dir), ClapTokenizer()
    kinds = set()
    for b in batches:
        for i in range(4):
            wave, caps = orig[int(b["id"][i])]
            a = b["audio"][i]
            if wave.size < L:  # msclap repeat-padding
                np.testing.assert_array_equal(a, np.tile(wave, -(-L // wave.size))[:L])
                kinds.add("pad")
            else:  # a contiguous window of the original
                starts = [s for s in range(wave.size - L + 1) if np.array_equal(wave[s:s + L], a)]
                assert starts, "audio is not a window of the clip"
                kinds.add("crop" if wave.size > L else "exact")
            ids, mask = tok(caps)
            assert any(np.array_equal(b["input_ids"][i], ids[j]) and np.array_equal(b["attention_mask"][i], mask[j])
                       for j in range(len(caps)))
    assert kinds == {"pad", "crop", "exact"}


def test_same_seed_same_batches_different_seed_differs(data_dir):
    a = _take(iter(_build(data_dir, seed=3)), 9)  # 9 batches > 1 epoch
    b = _take(iter(_build(data_dir, seed=3)), 9)
    _same(a, b)
    c = _take(iter(_build(data_dir, seed=4)), 9)
    assert not all(np.array_equal(x["id"], y["id"]) for x, y in zip(a, c))
    # epochs are reshuffled and long clips get new crops per epoch
    ep0 = np.concatenate([x["id"] for x in a[:6]])
    ep1 = np.concatenate([x["id"] for x in _take(iter(_build(data_dir, seed=3)), 12)[6:]])
    assert sorted(ep0) == sorted(ep1) and not np.array_equal(ep0, ep1)


def test_restore_from_orbax_gives_identical_next_batches(data_dir, tmp_path):
    import orbax.checkpoint as ocp

    ref = _take(iter(_build(data_dir, seed=7)), 10)
    it = pipeline.ClapDataIterator(_build(data_dir, seed=7))
    _take(it, 4)
    mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
    mngr.save(4, args=ocp.args.Composite(data=pipeline.checkpoint_args(it),
                                         state=ocp.args.StandardSave({"step": np.arange(4)})))
    mngr.wait_until_finished()
    _take(it, 2)  # keep going past the checkpoint, as a preempted job would
    fresh = pipeline.ClapDataIterator(_build(data_dir, seed=7))
    restored = ocp.CheckpointManager(str(tmp_path / "ckpt")).restore(
        4, args=ocp.args.Composite(data=pipeline.checkpoint_args(fresh, restore=True),
                                   state=ocp.args.StandardRestore({"step": np.zeros(4, np.int64)})))
    np.testing.assert_array_equal(restored["state"]["step"], np.arange(4))
    _same(_take(fresh, 6), ref[4:10])
    # plain state dicts work too
    it2 = pipeline.ClapDataIterator(_build(data_dir, seed=7))
    it2.set_state(fresh.get_state())
    it3 = iter(_build(data_dir, seed=7))
    _take(it3, 10)
    _same(_take(it2, 2), _take(it3, 2))


def test_two_hosts_see_each_example_once_per_epoch(data_dir):
    ids = []
    for h in range(2):
        host = [x["id"] for x in _build(data_dir, num_epochs=1, process_index=h, process_count=2, seed=1,
                                        per_host_batch_size=3)]
        assert len(host) == N // 2 // 3
        ids.append(np.concatenate(host))
    assert not set(ids[0]) & set(ids[1])
    assert sorted(np.concatenate(ids)) == sorted(_originals(data_dir))


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupt_record_and_truncated_shard_are_skipped_and_counted(data_dir, tmp_path, caplog):
    d = _copy(data_dir, str(tmp_path / "bad"))
    paths = pipeline.shard_paths(d)
    idx = tfrecord.read_index(paths[0])
    with open(paths[0], "r+b") as f:  # flip one byte inside record 2 of shard 0
        f.seek(int(idx[2, 0]) + 12 + 100)
        byte = f.read(1)
        f.seek(int(idx[2, 0]) + 12 + 100)
        f.write(bytes([byte[0] ^ 1]))
    last = tfrecord.read_index(paths[-1])
    with open(paths[-1], "r+b") as f:  # cut the last shard inside its last record
        f.truncate(int(last[-1, 0]) + 30)
    orig = _originals(data_dir)
    src = pipeline.TFRecordDataSource(paths)
    assert src[2] is None and src[len(src) - 1] is None and src.num_corrupt == 2
    with caplog.at_level(logging.WARNING):
        got = np.concatenate([x["id"] for x in _build(d, num_epochs=1, per_host_batch_size=1, read_threads=1)])
    assert len(got) == N - 2 and len(set(got)) == N - 2 and set(got) < set(orig)
    text = caplog.text
    assert "CRC mismatch" in text and os.path.basename(paths[0]) + " record 2" in text
    assert "truncated record" in text and os.path.basename(paths[-1]) in text


def test_mixing_two_datasets_by_weight(data_dir, tmp_path):
    other = str(tmp_path / "other")
    make_tfrecord_dataset(other, 10, 0.2, SR, source="other", seed=5)
    batches = _take(iter(_build([data_dir, other], weights=[3, 1], per_host_batch_size=8, seed=2)), 25)
    which = np.concatenate([b["dataset"] for b in batches])
    assert abs((which == 1).mean() - 0.25) < 0.02
    assert len(set(np.concatenate([b["id"] for b in batches])[which == 1])) == 10  # the small one cycles
    again = _take(iter(_build([data_dir, other], weights=[3, 1], per_host_batch_size=8, seed=2)), 25)
    _same(batches, again)
    it = iter(_build([data_dir, other], weights=[3, 1], per_host_batch_size=8, seed=2))
    _take(it, 7)
    resumed = iter(_build([data_dir, other], weights=[3, 1], per_host_batch_size=8, seed=2))
    resumed.set_state(it.get_state())
    _same(_take(resumed, 5), batches[7:12])  # a mixture resumes exactly too
    with pytest.raises(ValueError, match="num_epochs=None"):
        _build([data_dir, other], num_epochs=1)


def test_global_batch_sharded_over_mesh_data_axis(data_dir):
    from jax.sharding import Mesh

    devs = np.array(jax.devices())
    assert devs.size == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    mesh = Mesh(devs.reshape(4, 2), ("data", "model"))
    it = pipeline.make_iterator(data_dir, per_host_batch_size=8, mesh=mesh, data_axes="data", process_index=0,
                                process_count=1, sample_rate=SR, duration=DUR, seed=0)
    b = next(it)
    local = next(iter(_build(data_dir, per_host_batch_size=8, seed=0)))
    for k in ("audio", "input_ids", "attention_mask", "id"):
        assert isinstance(b[k], jax.Array) and b[k].shape == local[k].shape
        np.testing.assert_array_equal(np.asarray(b[k]), local[k])
        assert b[k].sharding.spec[0] in ("data", ("data",))
    shards = b["audio"].addressable_shards
    assert len(shards) == 8 and {s.data.shape for s in shards} == {(2, L)}  # 8 rows over 4 data groups
    mesh2 = Mesh(devs.reshape(2, 4), ("data", "fsdp"))
    b2 = pipeline.make_global_batch(local, mesh2, ("data", "fsdp"))
    assert {s.data.shape for s in b2["audio"].addressable_shards} == {(1, L)}


def test_worker_processes_deterministic_and_resumable(data_dir):
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain's spawned workers read absl flags
    kw = dict(seed=5, worker_count=2, per_host_batch_size=4)
    it = pipeline.ClapDataIterator(_build(data_dir, **kw))
    try:
        first = _take(it, 3)
        state = it.get_state()
        rest = _take(it, 3)
    finally:
        it.close()
    # workers split the host stream: the first 6 batches hold exactly the first 24 positions of the in-process run
    inproc = np.concatenate([b["id"] for b in _take(iter(_build(data_dir, seed=5, per_host_batch_size=4)), 6)])
    assert sorted(np.concatenate([b["id"] for b in first + rest])) == sorted(inproc)
    it2 = pipeline.ClapDataIterator(_build(data_dir, **kw))
    try:
        it2.set_state(state)
        _same(_take(it2, 3), rest)
    finally:
        it2.close()


def test_finite_epochs_give_every_host_the_same_number_of_batches(data_dir):
    # 24 examples, 2 epochs, 5 hosts x batch 2: 48 // 10 = 4 full batches on every host (8 positions dropped)
    counts = [len(list(_build(data_dir, num_epochs=2, process_index=h, process_count=5, per_host_batch_size=2)))
              for h in range(5)]
    assert counts == [4] * 5


def test_source_keeps_few_files_open(data_dir, monkeypatch):
    monkeypatch.setattr(pipeline.TFRecordDataSource, "MAX_OPEN_FILES", 2)
    src = pipeline.TFRecordDataSource(pipeline.shard_paths(data_dir))
    assert len(src.paths) == 4
    got = [src[i] for i in range(len(src))] + [src[0]]
    assert all(g is not None for g in got) and len(src._fds) == 2 and bytes(got[0]) == bytes(got[-1])


def test_config_mistakes_are_clear_errors(data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"preprocessed at 8000 Hz but the pipeline wants 44100 Hz"):
        _build(data_dir, sample_rate=44100)
    with pytest.raises(FileNotFoundError, match="nowhere: not a directory"):
        _build(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="no split 'test'"):
        _build(data_dir, split="test")


def test_eval_mode_in_order_first_window_first_caption(data_dir):
    orig, tok = _originals(data_dir), ClapTokenizer()
    batches = list(_build(data_dir, num_epochs=1, shuffle=False, crop="start", caption="first",
                          drop_remainder=False, per_host_batch_size=5))
    assert [len(b["id"]) for b in batches] == [5, 5, 5, 5, 4]
    ids = np.concatenate([b["id"] for b in batches])
    assert list(ids) == list(orig)  # shard order
    for b in batches:
        for i, uid in enumerate(b["id"]):
            wave, caps = orig[int(uid)]
            np.testing.assert_array_equal(b["audio"][i], np.tile(wave, -(-L // wave.size))[:L])
            np.testing.assert_array_equal(b["input_ids"][i], tok(caps[:1])[0][0])
    centre = next(iter(_build(data_dir, num_epochs=1, shuffle=False, crop="center", per_host_batch_size=3)))
    wave = orig[int(centre["id"][2])][0]  # third clip is the long one (0.6 s)
    s = (wave.size - L) // 2
    np.testing.assert_array_equal(centre["audio"][2], wave[s:s + L])
