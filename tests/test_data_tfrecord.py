"""TFRecord / tf.train.Example codec, shard writer, offset index, CRC checks; audio byte formats."""
import os

import numpy as np
import pytest

from clap_jax.audio import io as audio_io
from clap_jax.data import audio as audio_lib
from clap_jax.data import tfrecord


def _example_proto_class():
    """tf.train.Example built from a hand-written descriptor with the real protobuf runtime (no TensorFlow)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="ex_test.proto", package="tfx", syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto

    def msg(name, fields, nested=()):
        m = fdp.message_type.add(name=name) if not nested else nested
        for fname, num, ftype, label, tname in fields:
            f = m.field.add(name=fname, number=num, type=ftype, label=label)
            if tname:
                f.type_name = tname
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    msg("BytesList", [("value", 1, F.TYPE_BYTES, rep, None)])
    msg("FloatList", [("value", 1, F.TYPE_FLOAT, rep, None)])
    msg("Int64List", [("value", 1, F.TYPE_INT64, rep, None)])
    feat = msg("Feature", [("bytes_list", 1, F.TYPE_MESSAGE, opt, ".tfx.BytesList"),
                           ("float_list", 2, F.TYPE_MESSAGE, opt, ".tfx.FloatList"),
                           ("int64_list", 3, F.TYPE_MESSAGE, opt, ".tfx.Int64List")])
    feat.oneof_decl.add(name="kind")
    for f in feat.field:
        f.oneof_index = 0
    feats = fdp.message_type.add(name="Features")
    entry = feats.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".tfx.Feature")
    feats.field.add(name="feature", number=1, type=F.TYPE_MESSAGE, label=rep, type_name=".tfx.Features.FeatureEntry")
    msg("Example", [("features", 1, F.TYPE_MESSAGE, opt, ".tfx.Features")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tfx.Example"))


FEATURES = {"id": [b"clip-1"], "captions": ["a dog barks \u00e9\u4e2d", b"second"], "empty": [],
            "ints": [0, 1, -5, 2**40, -(2**62)], "floats": [0.5, -1.25, 3.0e6], "audio": [bytes(range(256)) * 40]}


def _check(d):
    assert d["id"] == [b"clip-1"]
    assert d["captions"] == ["a dog barks \u00e9\u4e2d".encode(), b"second"]
    assert list(d["ints"]) == FEATURES["ints"] and d["ints"].dtype == np.int64
    np.testing.assert_array_equal(d["floats"], np.float32(FEATURES["floats"]))
    assert d["audio"] == FEATURES["audio"]
    assert len(d["empty"]) == 0


def test_example_roundtrip_all_feature_kinds():
    data = tfrecord.encode_example(FEATURES)
    _check(tfrecord.decode_example(data))
    assert tfrecord.encode_example(dict(reversed(list(FEATURES.items())))) == data  # key order does not matter


def test_example_wire_format_matches_protobuf_runtime():
    Example = _example_proto_class()
    ours = tfrecord.encode_example(FEATURES)
    parsed = Example.FromString(ours)  # the protobuf runtime reads our bytes
    fm = parsed.features.feature
    assert list(fm["ints"].int64_list.value) == FEATURES["ints"]
    assert list(fm["captions"].bytes_list.value)[1] == b"second"
    np.testing.assert_allclose(list(fm["floats"].float_list.value), FEATURES["floats"], rtol=1e-6)
    _check(tfrecord.decode_example(parsed.SerializeToString()))  # and we read the runtime's bytes


def test_decode_rejects_garbage():
    with pytest.raises(ValueError, match="malformed|wire type|past the end"):
        tfrecord.decode_example(b"\x0a\xff\xff\x03abc")


def test_masked_crc_reference_value():
    # CRC-32C check value of "123456789" is 0xE3069283 (RFC 3720); TFRecord masks it.
    assert tfrecord.crc32c(b"123456789") == 0xE3069283
    c = 0xE3069283
    assert tfrecord.masked_crc(b"123456789") == (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _write_shard(path, n=12, seed=0):
    rng = np.random.default_rng(seed)
    recs = [rng.bytes(int(rng.integers(0, 3000))) for _ in range(n)]
    with tfrecord.ShardWriter(path) as w:
        assert not os.path.exists(path)  # written to a temporary name until closed
        for r in recs:
            w.write(r)
    return recs


def test_shard_writer_index_random_access(tmp_path):
    path = str(tmp_path / "s.tfrecord")
    recs = _write_shard(path)
    assert tfrecord.shard_is_complete(path)
    idx = tfrecord.read_index(path)
    assert idx.shape == (12, 2)
    np.testing.assert_array_equal(idx, tfrecord.build_index(path))
    fd = os.open(path, os.O_RDONLY)
    for i in np.random.default_rng(1).permutation(12):
        assert tfrecord.read_record(fd, int(idx[i, 0]), int(idx[i, 1]), path) == recs[i]
    os.close(fd)
    assert list(tfrecord.iter_records(path)) == recs
    assert sorted(os.listdir(tmp_path)) == ["s.tfrecord", "s.tfrecord.index"]


def test_writer_failure_leaves_no_shard(tmp_path):
    path = str(tmp_path / "s.tfrecord")
    with pytest.raises(RuntimeError):
        with tfrecord.ShardWriter(path) as w:
            w.write(b"x")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("where", ["data", "data_crc", "length"])
def test_flipped_byte_detected_other_records_intact(tmp_path, where):
    path = str(tmp_path / "s.tfrecord")
    recs = _write_shard(path)
    idx = tfrecord.read_index(path)
    off, n = int(idx[3, 0]), int(idx[3, 1])
    pos = {"data": off + 12 + n // 2, "data_crc": off + 12 + n + 1, "length": off + 2}[where]
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x40]))
    fd = os.open(path, os.O_RDONLY)
    with pytest.raises(tfrecord.CorruptRecordError, match=r"s\.tfrecord record 3.*(CRC|length)"):
        tfrecord.read_record(fd, off, n, f"{path} record 3")
    for i in range(12):
        if i != 3:
            assert tfrecord.read_record(fd, int(idx[i, 0]), int(idx[i, 1]), path) == recs[i]
    os.close(fd)


def test_truncated_shard(tmp_path):
    path = str(tmp_path / "s.tfrecord")
    recs = _write_shard(path)
    idx = tfrecord.read_index(path)
    with open(path, "r+b") as f:
        f.truncate(int(idx[7, 0]) + 20)  # cut inside record 7
    fd = os.open(path, os.O_RDONLY)
    for i in range(7):
        assert tfrecord.read_record(fd, int(idx[i, 0]), int(idx[i, 1]), path) == recs[i]
    for i in (7, 8):
        with pytest.raises(tfrecord.CorruptRecordError, match="truncated record"):
            tfrecord.read_record(fd, int(idx[i, 0]), int(idx[i, 1]), f"{path} record {i}")
    os.close(fd)
    report = {}
    assert len(tfrecord.build_index(path, report)) == 7  # the cut-off tail is not indexed...
    assert report["records_lost"] == 1 and report["bytes_skipped"] == 20  # ...but counted


def _flip(path, pos, mask=0x40):
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ mask]))


@pytest.mark.parametrize("damage", ["length", "length_crc", "data", "two_headers", "zeros", "garbage_inserted"])
def test_scan_resyncs_past_damage_and_counts_the_loss(tmp_path, damage, caplog):
    # Without its index a shard is read front to back; one bad frame must not hide the records after it.
    path = str(tmp_path / "s.tfrecord")
    recs = _write_shard(path, n=12, seed=3)
    idx = tfrecord.read_index(path)
    os.remove(path + tfrecord.INDEX_SUFFIX)
    off = [int(o) for o in idx[:, 0]]
    lost = {3}
    if damage == "length":
        _flip(path, off[3] + 1)
    elif damage == "length_crc":
        _flip(path, off[3] + 9)
    elif damage == "data":
        _flip(path, off[3] + 12 + int(idx[3, 1]) // 2)
    elif damage == "two_headers":  # two neighbouring records lose their length header
        _flip(path, off[3] + 1)
        _flip(path, off[4] + 1)
        lost = {3, 4}
    elif damage == "zeros":  # a block of zeros over records 3 and 4 (what a crash can leave on disk)
        with open(path, "r+b") as f:
            f.seek(off[3])
            f.write(bytes(off[5] - off[3]))
        lost = {3, 4}
    else:  # 1000 stray bytes between records 2 and 3: nothing is lost, the bytes are skipped
        data = open(path, "rb").read()
        open(path, "wb").write(data[:off[3]] + np.random.default_rng(0).bytes(1000) + data[off[3]:])
        lost = set()
    report = {}
    with caplog.at_level("WARNING"):
        got = list(tfrecord.iter_records(path, report))
    assert got == [r for i, r in enumerate(recs) if i not in lost]
    if damage == "garbage_inserted":
        assert report["bytes_skipped"] == 1000 and report["damaged"][0][:2] == [off[3], off[3] + 1000]
    else:  # bytes are exact; records in one damaged stretch cannot be told apart, so at least one is counted
        assert report["bytes_skipped"] == sum(int(idx[i, 1]) + 16 for i in lost)
        assert 1 <= report["records_lost"] <= len(lost) and report["records"] == 12 - len(lost)
    assert "s.tfrecord: skipped" in caplog.text and "records lost" in caplog.text
    with pytest.raises(tfrecord.CorruptRecordError, match=r"s\.tfrecord: damaged bytes"):
        list(tfrecord.iter_records(path, strict=True))


def _garbage_index(path, kind, tmp_path):
    ipath = path + tfrecord.INDEX_SUFFIX
    if kind == "pickle":  # numpy refuses pickles ("load it unsafely"); it must not crash the reader
        import pickle

        open(ipath, "wb").write(pickle.dumps({"not": "an index"}))
    elif kind == "random":
        open(ipath, "wb").write(np.random.default_rng(0).bytes(300))
    elif kind == "empty":
        open(ipath, "wb").close()
    elif kind == "wrong_shape":
        np.save(open(ipath, "wb"), np.zeros((3, 3), np.int64))
    elif kind == "other_shard":  # a valid index of a different shard
        other = str(tmp_path / "other.tfrecord")
        _write_shard(other, n=12, seed=9)
        os.replace(other + tfrecord.INDEX_SUFFIX, ipath)
    elif kind == "stale":  # the index of an older, shorter version of the shard
        idx = tfrecord.read_index(path)
        tfrecord.write_index(path, idx[:5])


@pytest.mark.parametrize("kind", ["pickle", "random", "empty", "wrong_shape", "other_shard", "stale"])
def test_bad_index_is_treated_as_absent(tmp_path, kind, caplog):
    path = str(tmp_path / "s.tfrecord")
    recs = _write_shard(path)
    good = tfrecord.read_index(path)
    _garbage_index(path, kind, tmp_path)
    with caplog.at_level("WARNING"):
        idx = tfrecord.read_index(path)
    np.testing.assert_array_equal(idx, good)  # rescanned
    assert "s.tfrecord.index: offset index" in caplog.text and "rescanning" in caplog.text
    with pytest.raises(tfrecord.CorruptRecordError, match=r"s\.tfrecord\.index"):
        tfrecord.read_index(path, strict=True)
    fd = os.open(path, os.O_RDONLY)
    assert [tfrecord.read_record(fd, int(o), int(n)) for o, n in idx] == recs
    os.close(fd)


def test_index_of_a_truncated_shard_is_kept(tmp_path, caplog):
    # The shard's own index still tells exactly which records the cut removed (they read as truncated).
    path = str(tmp_path / "s.tfrecord")
    _write_shard(path)
    good = tfrecord.read_index(path)
    with open(path, "r+b") as f:
        f.truncate(int(good[-1, 0]) + 30)
    with caplog.at_level("WARNING"):
        np.testing.assert_array_equal(tfrecord.read_index(path), good)
    assert "rescanning" not in caplog.text


def test_audio_pcm16_exact_flac_within_codec_precision():
    rng = np.random.default_rng(0)
    x = (0.5 * rng.standard_normal(5000)).clip(-0.999, 0.999).astype(np.float32)
    q = audio_lib.to_int16(x).astype(np.float32) / 32768
    for fmt in audio_lib.FORMATS:
        y = audio_lib.decode_audio(audio_lib.encode_audio(x, 8000, fmt), fmt)
        assert y.dtype == np.float32 and y.shape == x.shape
        np.testing.assert_array_equal(audio_lib.decode_audio(audio_lib.encode_audio(q, 8000, fmt), fmt), q)
        assert np.abs(y - x).max() <= 0.5 / 32768 + 1e-7
        # a window decodes to the same samples as the full clip
        np.testing.assert_array_equal(audio_lib.decode_audio(audio_lib.encode_audio(x, 8000, fmt), fmt, 1234, 999),
                                      y[1234:2233])
    # full scale: +1.0 is stored as 32767/32768 (one step below), -1.0 exactly
    np.testing.assert_array_equal(audio_lib.to_int16(np.float32([1.0, -1.0, 2.0])), [32767, -32768, 32767])


def test_repeat_pad_and_crop_rules():
    x = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(audio_io.repeat_pad(x, 8), [0, 1, 2, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(audio_io.repeat_pad(x, 3), x)
    np.testing.assert_array_equal(audio_io.repeat_pad(np.arange(10, dtype=np.float32), 4), [0, 1, 2, 3])
    rng = np.random.default_rng(0)
    starts = {audio_io.crop_start(10, 4, "random", rng) for _ in range(200)}
    assert starts == set(range(7))
    assert audio_io.crop_start(4, 4, "random", rng) == 0 and audio_io.crop_start(3, 4, "random", rng) == 0
