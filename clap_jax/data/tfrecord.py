"""TFRecord files of ``tf.train.Example`` records, written and read without TensorFlow.

On-disk layout of one shard ``NAME.tfrecord`` (the standard TFRecord framing, readable by ``tf.data``)::

    uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

Next to it, ``NAME.tfrecord.index`` is a ``.npy`` int64 array of shape (num_records, 2): for each record the byte
offset of its frame and its payload length. With it, record ``i`` is one ``pread`` away (random access for Grain).

``tf.train.Example`` is encoded by hand (protobuf wire format, see ``encode_example``): features are a
``dict[str, list[bytes] | list[int] | list[float]]`` (``bytes_list`` / ``int64_list`` / ``float_list``).

A shard is written to ``NAME.tfrecord.tmp-PID``, its index written atomically, then the shard renamed into place,
so a finished shard is exactly "shard and index both exist"; a killed writer leaves only ``.tmp`` files.
"""
from __future__ import annotations

import os
import struct
from typing import Iterator, Mapping, Sequence, Union

import numpy as np

try:
    import crc32c as _crc32c_mod

    def crc32c(data: bytes) -> int:
        return _crc32c_mod.crc32c(data)
except ImportError as _e:  # pragma: no cover - crc32c is an install requirement
    raise ImportError("clap_jax.data needs the `crc32c` package: pip install crc32c") from _e

Feature = Union[Sequence[bytes], Sequence[int], Sequence[float], np.ndarray]
_MASK_DELTA = 0xA282EAD8
INDEX_SUFFIX = ".index"


class CorruptRecordError(IOError):
    """A record whose framing or checksum does not match; the message names the file, record and problem."""


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32-C of ``data``."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------------------------
# protobuf wire format for tf.train.Example
#   Example  { Features features = 1; }
#   Features { map<string, Feature> feature = 1; }      (map entry: key = 1, value = 2)
#   Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
#   BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
#   Int64List { repeated int64 value = 1 [packed]; }
# ----------------------------------------------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 two's complement, as protobuf does
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def _encode_feature(name: str, value: Feature) -> bytes:
    if isinstance(value, (bytes, str, int, float, np.generic)):
        value = [value]
    arr = value if isinstance(value, np.ndarray) else None
    if arr is None and len(value) and isinstance(value[0], (bytes, str)):
        kind = "bytes"
    elif arr is None:
        arr = np.asarray(value)
        kind = "int" if arr.dtype.kind in "iub" or len(value) == 0 else "float"
    else:
        kind = "int" if arr.dtype.kind in "iub" else "float"
    if kind == "bytes":
        body = b"".join(_ld(1, v.encode() if isinstance(v, str) else bytes(v)) for v in value)
        feat = _ld(1, body)
    elif kind == "int":
        body = b"".join(_varint(int(v)) for v in np.asarray(arr, np.int64).ravel())
        feat = _ld(3, _ld(1, body) if body else b"")
    else:
        body = np.asarray(arr, "<f4").ravel().tobytes()
        feat = _ld(2, _ld(1, body) if body else b"")
    entry = _ld(1, name.encode()) + _ld(2, feat)
    return _ld(1, entry)


def encode_example(features: Mapping[str, Feature]) -> bytes:
    """Serialize a ``tf.train.Example``. Keys are written sorted, so equal inputs give equal bytes.

    Values: a list of bytes/str -> bytes_list; ints (or an int array) -> int64_list; floats -> float_list.
    """
    return _ld(1, b"".join(_encode_feature(k, features[k]) for k in sorted(features)))


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, object]]:
    """Yield (field_number, wire_type, value) over a message; value is an int or a zero-copy memoryview slice."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _read_varint(buf, pos)
        elif wt == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > end:
                raise ValueError("length-delimited field runs past the end of the message")
            v = buf[pos:pos + n]
            pos += n
        elif wt == 5:
            v = buf[pos:pos + 4]
            pos += 4
        elif wt == 1:
            v = buf[pos:pos + 8]
            pos += 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield field, wt, v


def _decode_feature(buf: memoryview, copy: bool):
    for field, _, lst in _fields(buf):
        if field == 1:
            return [bytes(v) if copy else v for f, _, v in _fields(lst) if f == 1]
        if field == 2:
            vals = []
            for f, wt, v in _fields(lst):
                if f == 1:
                    vals.append(np.frombuffer(v, "<f4"))
            return np.concatenate(vals).astype(np.float32) if vals else np.zeros(0, np.float32)
        if field == 3:
            vals = []
            for f, wt, v in _fields(lst):
                if f != 1:
                    continue
                if wt == 0:
                    vals.append(v)
                else:  # packed
                    p = 0
                    while p < len(v):
                        x, p = _read_varint(v, p)
                        vals.append(x)
            return np.array([x - (1 << 64) if x >= 1 << 63 else x for x in vals], np.int64)
    return []


def decode_example(data: bytes | memoryview, copy: bool = True) -> dict:
    """Parse a serialized ``tf.train.Example`` into ``{name: list[bytes] | int64 array | float32 array}``.

    With ``copy=False`` bytes values are zero-copy ``memoryview`` slices of ``data`` (for large audio payloads).
    Raises ValueError on malformed bytes.
    """
    out = {}
    try:
        for f, _, feats in _fields(memoryview(data)):
            if f != 1:
                continue
            for f2, _, entry in _fields(feats):
                if f2 != 1:
                    continue
                key, val = None, memoryview(b"")
                for f3, _, v in _fields(entry):
                    if f3 == 1:
                        key = bytes(v).decode()
                    elif f3 == 2:
                        val = v
                out[key] = _decode_feature(val, copy)
    except (IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed tf.train.Example: {e}") from e
    return out


# ----------------------------------------------------------------------------------------------------------------
# framing, writing, indexing, reading
# ----------------------------------------------------------------------------------------------------------------

def frame(data: bytes) -> bytes:
    """One TFRecord frame around ``data`` (16 bytes of overhead)."""
    n = struct.pack("<Q", len(data))
    return n + struct.pack("<I", masked_crc(n)) + data + struct.pack("<I", masked_crc(data))


def _atomic_write(path: str, payload: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_index(path: str, index: np.ndarray) -> None:
    """Write the (num_records, 2) int64 [offset, length] array of shard ``path`` atomically."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(index, np.int64).reshape(-1, 2))
    _atomic_write(path + INDEX_SUFFIX, buf.getvalue())


def read_index(path: str) -> np.ndarray:
    """The (num_records, 2) int64 [offset, payload length] index of shard ``path``."""
    try:
        idx = np.load(path + INDEX_SUFFIX, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CorruptRecordError(f"{path}{INDEX_SUFFIX}: cannot read offset index ({e})") from e
    if idx.ndim != 2 or idx.shape[1] != 2:
        raise CorruptRecordError(f"{path}{INDEX_SUFFIX}: index has shape {idx.shape}, expected (N, 2)")
    return idx


class ShardWriter:
    """Write records to one shard; on ``close()`` write the index and atomically move the shard into place.

    >>> with ShardWriter("/data/train-00000.tfrecord") as w:
    ...     w.write(encode_example({"id": [b"a"]}))
    """

    def __init__(self, path: str):
        self.path = path
        self._tmp = f"{path}.tmp-{os.getpid()}"
        self._f = open(self._tmp, "wb")
        self._offsets: list[tuple[int, int]] = []
        self._pos = 0

    def write(self, record: bytes) -> None:
        fr = frame(record)
        self._f.write(fr)
        self._offsets.append((self._pos, len(record)))
        self._pos += len(fr)

    def __len__(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        write_index(self.path, np.array(self._offsets, np.int64).reshape(-1, 2))
        os.replace(self._tmp, self.path)  # last: the shard appears only when complete

    def abort(self) -> None:
        self._f.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def shard_is_complete(path: str) -> bool:
    """A shard is finished iff it and its index exist (the writer renames the shard last)."""
    return os.path.isfile(path) and os.path.isfile(path + INDEX_SUFFIX)


def build_index(path: str) -> np.ndarray:
    """Scan a TFRecord file sequentially and return its (N, 2) [offset, length] index (for foreign files).

    Stops at the first truncated frame (a partial tail is not indexed).
    """
    out = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        pos = 0
        while pos + 12 <= size:
            head = f.read(12)
            (n,) = struct.unpack("<Q", head[:8])
            if pos + 16 + n > size:
                break
            out.append((pos, n))
            pos += 16 + n
            f.seek(pos)
    return np.array(out, np.int64).reshape(-1, 2)


def read_record(fd: int, offset: int, length: int, where: str = "?") -> bytes:
    """Read one record payload at byte ``offset`` of open file ``fd`` with both CRCs checked.

    Raises CorruptRecordError (naming ``where``) on short reads, length mismatch or CRC mismatch.
    """
    buf = os.pread(fd, length + 16, offset)
    if len(buf) != length + 16:
        raise CorruptRecordError(f"{where}: truncated record at byte {offset} "
                                 f"(wanted {length + 16} bytes, file has {len(buf)} left)")
    head = buf[:8]
    (n,) = struct.unpack("<Q", head)
    if n != length or struct.unpack("<I", buf[8:12])[0] != masked_crc(head):
        raise CorruptRecordError(f"{where}: bad length header at byte {offset} (index says {length}, file {n})")
    data = buf[12:12 + length]
    if struct.unpack("<I", buf[12 + length:])[0] != masked_crc(data):
        raise CorruptRecordError(f"{where}: CRC mismatch in record data at byte {offset}")
    return data


def read_record_view(buf, offset: int, length: int, where: str = "?") -> memoryview:
    """Like ``read_record`` over an in-memory buffer (e.g. an ``mmap`` of the shard); returns a zero-copy view."""
    mv = memoryview(buf)
    if offset + length + 16 > len(mv):
        raise CorruptRecordError(f"{where}: truncated record at byte {offset} "
                                 f"(wanted {length + 16} bytes, file has {max(len(mv) - offset, 0)} left)")
    (n,) = struct.unpack_from("<Q", mv, offset)
    if n != length or struct.unpack_from("<I", mv, offset + 8)[0] != masked_crc(mv[offset:offset + 8]):
        raise CorruptRecordError(f"{where}: bad length header at byte {offset} (index says {length}, file {n})")
    data = mv[offset + 12:offset + 12 + length]
    if struct.unpack_from("<I", mv, offset + 12 + length)[0] != masked_crc(data):
        raise CorruptRecordError(f"{where}: CRC mismatch in record data at byte {offset}")
    return data


def iter_records(path: str) -> Iterator[bytes]:
    """Sequentially yield the CRC-checked payloads of a TFRecord file (raises CorruptRecordError on damage)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for i, (off, n) in enumerate(build_index(path)):
            yield read_record(fd, int(off), int(n), f"{path} record {i}")
    finally:
        os.close(fd)
