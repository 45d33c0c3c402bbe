"""TFRecord files of ``tf.train.Example`` records, written and read without TensorFlow.

On-disk layout of one shard ``NAME.tfrecord`` (the standard TFRecord framing, readable by ``tf.data``)::

    uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

Next to it, ``NAME.tfrecord.index`` is a ``.npy`` int64 array of shape (num_records, 2): for each record the byte
offset of its frame and its payload length. With it, record ``i`` is one ``pread`` away (random access for Grain).

``tf.train.Example`` is encoded by hand (protobuf wire format, see ``encode_example``): features are a
``dict[str, list[bytes] | list[int] | list[float]]`` (``bytes_list`` / ``int64_list`` / ``float_list``).

A shard is written to ``NAME.tfrecord.tmp-PID``, its index written atomically, then the shard renamed into place,
so a finished shard is exactly "shard and index both exist"; a killed writer leaves only ``.tmp-PID`` files
(``TMP_RE`` matches them; ``clap_jax.data.preprocess`` removes them on its next run).

Shards and indexes may live in object storage (``gs://``, ``s3://``; see ``clap_jax.files``): there a shard is
written to a local temporary file and uploaded after its index, with one put each (the shard still appears last),
and records are read by ranged reads through a block cache (``files.RangeReader``) instead of ``mmap``/``pread``.

Damage is never silent. ``read_index`` checks the index against the shard (shape, contiguous frames, the length
header at every offset; for a remote shard its size and the first and last headers, every record's CRCs being
checked when it is read); an unreadable, garbage or mismatched index is treated as absent: a warning names it and
the shard is rescanned. ``scan`` / ``build_index`` read a shard without its index: a frame whose data CRC fails is
skipped whole; a damaged length header or a cut-off tail is skipped by resynchronising on the next position where
both the length CRC and the data CRC check out. Every loss is counted (bytes skipped, records lost, where) and
logged with the file name.
"""
from __future__ import annotations

import logging
import mmap
import os
import re
import struct
from typing import Iterator, Mapping, Sequence, Union

import numpy as np

from clap_jax import files

try:
    import crc32c as _crc32c_mod

    def crc32c(data: bytes) -> int:
        return _crc32c_mod.crc32c(data)
except ImportError as _e:  # pragma: no cover - crc32c is an install requirement
    raise ImportError("clap_jax.data needs the `crc32c` package: pip install crc32c") from _e

log = logging.getLogger(__name__)
Feature = Union[Sequence[bytes], Sequence[int], Sequence[float], np.ndarray]
_MASK_DELTA = 0xA282EAD8
INDEX_SUFFIX = ".index"
TMP_RE = re.compile(r"(.+)\.tmp-(\d+)")  # our temporary files: FINAL_NAME.tmp-PID


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


def _with_path(e: OSError, path: str) -> OSError:
    """``e`` with ``path`` as its file name (a failed ``write`` on an open file says only "No space left")."""
    if e.filename is not None:
        return e
    return type(e)(e.errno, e.strerror or str(e), path) if e.errno is not None else e


def _atomic_write(path: str, payload: bytes) -> None:
    try:
        with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise _with_path(e, path) from e


def write_index(path: str, index: np.ndarray) -> None:
    """Write the (num_records, 2) int64 [offset, length] array of shard ``path`` atomically."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(index, np.int64).reshape(-1, 2))
    _atomic_write(path + INDEX_SUFFIX, buf.getvalue())


def _index_problem(path: str, idx: np.ndarray) -> str | None:
    """Why ``idx`` does not describe shard ``path`` (None if it does).

    Frames must be contiguous from byte 0 and the length header at each offset inside the file must equal the
    indexed length. A file cut short inside the indexed frames is accepted (those records read as truncated and
    are counted then); a file longer than the indexed frames means the index is stale.
    """
    if idx.ndim != 2 or idx.shape[1] != 2 or idx.dtype.kind not in "iu":
        return f"has shape {idx.shape} and dtype {idx.dtype}, expected (N, 2) integers"
    size = files.getsize(path)
    if len(idx) == 0:
        return None if size == 0 else f"lists no records but the shard has {size} bytes"
    idx = idx.astype(np.int64)
    off, n = idx[:, 0], idx[:, 1]
    if (n < 0).any() or off[0] != 0 or (off[1:] != off[:-1] + n[:-1] + 16).any():
        return "offsets are not the contiguous frames of a TFRecord file"
    end = int(off[-1] + n[-1] + 16)
    if end < size:
        return f"covers {end} bytes but the shard has {size}"
    inside = off[off + 8 <= size]
    if len(inside) and files.is_url(path):
        # remote: checking every header would read the whole shard; the first and the last frame are checked (a
        # stale or foreign index fails there or on the size above), the rest by the CRCs of every record read
        for k in sorted({0, len(inside) - 1}):
            (head,) = struct.unpack("<Q", files.read_bytes(path, int(inside[k]), int(inside[k]) + 8))
            if head != int(n[k]):
                return (f"record {k}: index says {int(n[k])} bytes, the length header at byte {int(inside[k])} "
                        f"says {head}")
    elif len(inside):
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            b = np.frombuffer(mm, np.uint8)
            heads = b[inside[:, None] + np.arange(8)].copy().view("<u8").ravel()
            del b
        finally:
            mm.close()
        bad = np.nonzero(heads != n[:len(inside)].astype(np.uint64))[0]
        if len(bad):
            k = int(bad[0])
            return (f"record {k}: index says {int(n[k])} bytes, the length header at byte {int(inside[k])} says "
                    f"{int(heads[k])} ({len(bad)} records disagree)")
    return None


def read_index(path: str, strict: bool = False, report: dict | None = None) -> np.ndarray:
    """The (num_records, 2) int64 [offset, payload length] index of shard ``path``.

    The index file is checked against the shard (``_index_problem``). One that is missing, unreadable, garbage or
    does not match is treated as absent: a warning names it and the shard is rescanned (``build_index``; its
    damage counts go to ``report``). ``strict=True`` raises CorruptRecordError instead.
    """
    ipath = path + INDEX_SUFFIX
    try:
        if files.is_url(ipath):
            import io

            idx = np.load(io.BytesIO(files.read_bytes(ipath)), allow_pickle=False)
        else:
            idx = np.load(ipath, allow_pickle=False)
        problem = _index_problem(path, idx) if isinstance(idx, np.ndarray) else "is not a single .npy array"
    except FileNotFoundError:
        if not files.isfile(path):
            raise
        problem = "is missing"
    except Exception as e:  # noqa: BLE001 - any parse failure means a garbage index; rescanning recovers it
        problem = f"cannot be read ({type(e).__name__}: {str(e).strip()[:200]})"
    if problem is None:
        return idx.astype(np.int64, copy=False)
    if strict:
        raise CorruptRecordError(f"{ipath}: offset index {problem}")
    log.warning("%s: offset index %s; ignoring it and rescanning %s", ipath, problem, path)
    return build_index(path, report)


class ShardWriter:
    """Write records to one shard; on ``close()`` write the index and atomically move the shard into place.

    >>> with ShardWriter("/data/train-00000.tfrecord") as w:
    ...     w.write(encode_example({"id": [b"a"]}))

    An OSError while writing (e.g. ENOSPC) is re-raised with the file name set; the temporary file is removed.
    A URL ``path`` is written to a local temporary file and uploaded on ``close`` (index first, shard last).
    """

    def __init__(self, path: str):
        self.path = path
        self._tmpdir = None
        if files.is_url(path):
            import tempfile

            self._tmpdir = tempfile.mkdtemp(prefix="clap_jax_shard_")
            self._tmp = os.path.join(self._tmpdir, f"{files.basename(path)}.tmp-{os.getpid()}")
        else:
            self._tmp = f"{path}.tmp-{os.getpid()}"
        try:
            self._f = open(self._tmp, "wb")
        except OSError as e:
            raise _with_path(e, self._tmp) from e
        self._offsets: list[tuple[int, int]] = []
        self._pos = 0

    def write(self, record: bytes) -> None:
        fr = frame(record)
        try:
            self._f.write(fr)
        except OSError as e:
            raise _with_path(e, self._tmp) from e
        self._offsets.append((self._pos, len(record)))
        self._pos += len(fr)

    def __len__(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
        except OSError as e:
            raise _with_path(e, self._tmp) from e
        write_index(self.path, np.array(self._offsets, np.int64).reshape(-1, 2))
        if self._tmpdir is not None:   # one put: the object appears whole, after its index
            try:
                files.upload(self._tmp, self.path)
            finally:
                import shutil

                shutil.rmtree(self._tmpdir, ignore_errors=True)
        else:
            os.replace(self._tmp, self.path)  # last: the shard appears only when complete

    def abort(self) -> None:
        try:
            self._f.close()
        except OSError:  # the close of a file whose last write failed (ENOSPC) fails again: nothing to keep
            pass
        if os.path.exists(self._tmp):
            os.remove(self._tmp)
        if self._tmpdir is not None:
            import shutil

            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def shard_is_complete(path: str) -> bool:
    """A shard is finished iff it and its index exist (the writer renames the shard last)."""
    return files.isfile(path) and files.isfile(path + INDEX_SUFFIX)


_OK, _BAD_DATA, _BAD_HEADER, _TRUNCATED = range(4)
_CRC_OF_ZERO_LENGTH = None  # masked_crc(8 zero bytes): the header of an empty record (set on first use)


def _frame_status(mv, pos: int, size: int) -> tuple[int, int]:
    """(status, payload length) of the frame starting at byte ``pos``."""
    if pos + 12 > size:
        return _TRUNCATED, 0
    (n,) = struct.unpack_from("<Q", mv, pos)
    if struct.unpack_from("<I", mv, pos + 8)[0] != masked_crc(mv[pos:pos + 8]):
        return _BAD_HEADER, n
    if pos + 16 + n > size:
        return _TRUNCATED, n
    if struct.unpack_from("<I", mv, pos + 12 + n)[0] != masked_crc(mv[pos + 12:pos + 12 + n]):
        return _BAD_DATA, n
    return _OK, n


def _resync(mv, start: int, size: int, chunk: int = 1 << 20) -> tuple[int | None, int]:
    """First position >= ``start`` holding a fully valid frame (None if none), and how many positions before it had
    a valid length header but damaged data (records lost in the stretch besides the first).

    Candidates are filtered with numpy (the length must fit in the file; an empty record must carry the fixed
    header CRC) so only plausible positions pay for a CRC check.
    """
    global _CRC_OF_ZERO_LENGTH
    if _CRC_OF_ZERO_LENGTH is None:
        _CRC_OF_ZERO_LENGTH = masked_crc(bytes(8))
    arr = np.frombuffer(mv, np.uint8)
    headers = 0
    p = start
    while p + 16 <= size:
        end = min(p + chunk, size - 15)  # candidate positions [p, end): a frame needs >= 16 bytes
        m = end - p
        win = np.lib.stride_tricks.sliding_window_view(arr[p:end + 11], 12)[:m]
        n = win[:, :8].copy().view("<u8").ravel()
        crc = win[:, 8:12].copy().view("<u4").ravel()
        room = (size - 16 - p) - np.arange(m, dtype=np.int64)
        plausible = (n <= room.astype(np.uint64)) & ((n != 0) | (crc == _CRC_OF_ZERO_LENGTH))
        for c in np.nonzero(plausible)[0]:
            q = p + int(c)
            st, _ = _frame_status(mv, q, size)
            if st == _OK:
                return q, headers
            if st == _BAD_DATA:
                headers += 1
        p = end
    return None, headers


def scan(path: str) -> tuple[np.ndarray, dict]:
    """Read shard ``path`` front to back, checking every CRC; returns (index (N, 2) of the intact records, report).

    ``report``: ``records`` (intact), ``bytes_skipped`` (exact), ``damaged`` ([start, end, reason] byte ranges),
    ``records_lost``: a frame with a valid header but bad data is one record; a stretch without a valid header
    counts one record plus every valid-header frame inside it (records whose headers are all gone cannot be told
    apart, so several mangled together count as fewer; stray bytes between records count as one).
    """
    size = files.getsize(path)
    out: list[tuple[int, int]] = []
    report = {"path": path, "records": 0, "records_lost": 0, "bytes_skipped": 0, "damaged": []}
    if size == 0:
        return np.zeros((0, 2), np.int64), report
    if files.is_url(path):   # a remote shard is read whole once (a scan reads every byte anyway)
        mm = files.read_bytes(path)
        size = len(mm)
    else:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    mv = memoryview(mm)
    try:
        pos = 0
        while pos < size:
            st, n = _frame_status(mv, pos, size)
            if st == _OK:
                out.append((pos, n))
                pos += 16 + n
                continue
            if st == _BAD_DATA:
                end, lost, why = pos + 16 + n, 1, "CRC mismatch in record data"
            else:
                q, more = _resync(mv, pos + 1, size)
                end, lost = (size if q is None else q), 1 + more
                why = ("record cut off at the end of the file" if st == _TRUNCATED and q is None
                       else "bad length header; resynchronised on the next valid record" if q is not None
                       else "bad length header; no valid record after it")
            report["records_lost"] += lost
            report["bytes_skipped"] += end - pos
            report["damaged"].append([pos, end, why])
            pos = end
    finally:
        mv.release()
        if isinstance(mm, mmap.mmap):
            mm.close()
    report["records"] = len(out)
    if report["records_lost"]:
        log.warning("%s: skipped %d damaged bytes in %d places (about %d records lost, %d intact records kept); "
                    "first at byte %d: %s", path, report["bytes_skipped"], len(report["damaged"]),
                    report["records_lost"], len(out), report["damaged"][0][0], report["damaged"][0][2])
    return np.array(out, np.int64).reshape(-1, 2), report


def build_index(path: str, report: dict | None = None) -> np.ndarray:
    """The (N, 2) [offset, length] index of the intact records of ``path`` by a CRC-checked scan (``scan``).

    Damaged frames are skipped and resynchronised past, not the end of the scan; their counts are logged and, if
    ``report`` is given, written into it.
    """
    idx, rep = scan(path)
    if report is not None:
        report.update(rep)
    return idx


def read_record(fd: int, offset: int, length: int, where: str = "?") -> bytes:
    """Read one record payload at byte ``offset`` of open file ``fd`` with both CRCs checked.

    Raises CorruptRecordError (naming ``where``) on short reads, length mismatch or CRC mismatch.
    """
    return _checked_frame(os.pread(fd, length + 16, offset), offset, length, where)


def read_record_remote(reader: "files.RangeReader", offset: int, length: int, where: str = "?") -> bytes:
    """Like ``read_record`` from a remote shard through its block cache (``files.RangeReader``)."""
    return _checked_frame(reader.read(offset, length + 16), offset, length, where)


def _checked_frame(buf: bytes, offset: int, length: int, where: str) -> bytes:
    """The payload of frame ``buf`` (read from byte ``offset``), both CRCs checked."""
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


def iter_records(path: str, report: dict | None = None, strict: bool = False) -> Iterator[bytes]:
    """Sequentially yield the CRC-checked payloads of a TFRecord file.

    Damaged stretches are skipped and counted (see ``scan``; counts in ``report`` if given, and logged);
    ``strict=True`` raises CorruptRecordError naming the file and byte offset at the first damage instead.
    """
    idx, rep = scan(path)
    if report is not None:
        report.update(rep)
    if strict and rep["damaged"]:
        start, end, why = rep["damaged"][0]
        raise CorruptRecordError(f"{path}: damaged bytes {start}-{end} ({why})")
    if files.is_url(path):
        reader = files.RangeReader(path)
        for i, (off, n) in enumerate(idx):
            yield read_record_remote(reader, int(off), int(n), f"{path} record {i}")
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        for i, (off, n) in enumerate(idx):
            yield read_record(fd, int(off), int(n), f"{path} record {i}")
    finally:
        os.close(fd)
