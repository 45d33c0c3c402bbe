"""Paths for local files and object storage (``gs://``, ``s3://``, any fsspec URL), and files that appear complete
or not at all.

Local paths keep plain ``os`` calls. A URL goes through fsspec (gcsfs for ``gs://``, s3fs for ``s3://``); the
helpers here (``exists``, ``isfile``, ``isdir``, ``listdir``, ``makedirs``, ``remove``, ``getsize``, ``open``,
``read_bytes``, ``join``...) take either. Object stores have no directories (``makedirs`` does nothing there)
and no rename.

Atomic writes: locally, write to a temporary sibling (``NAME.tmp-PID``) and rename it over ``NAME``; a killed
writer leaves only the temporary file (the data preprocessor cleans those up on its next run). On an object store,
write to a local temporary file and upload it with one single-object put, which the store makes visible whole or
not at all; nothing temporary is left in the bucket.

Credentials and endpoints come from the usual environment of each client: ``GOOGLE_APPLICATION_CREDENTIALS`` (or
``gcloud auth application-default login``) and ``STORAGE_EMULATOR_HOST`` for gcsfs; ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE``, ``AWS_REGION`` and ``AWS_ENDPOINT_URL`` (S3-compatible stores) for
s3fs.

``RangeReader`` reads byte ranges of a remote object through a small block cache (read-ahead): random access to
records without one request per record.
"""
from __future__ import annotations

import builtins
import collections
import contextlib
import os
import posixpath
import re
import shutil
import tempfile
import threading

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")

# orbax's paths (etils.epath) go through fsspec too: with TensorFlow installed, epath would otherwise use TF's gfile
# for gs:// and s3://, which has no s3:// in TF 2.x and ignores STORAGE_EMULATOR_HOST / AWS_ENDPOINT_URL.
# Set EPATH_USE_TF=true before importing clap_jax to keep gfile.
os.environ.setdefault("EPATH_USE_TF", "false")


def is_url(path) -> bool:
    """True for ``scheme://...`` (gs://, s3://, memory://, ...), False for local paths."""
    return bool(_URL.match(os.fspath(path))) and not os.fspath(path).startswith("file://")


def _local(path) -> str:
    p = os.fspath(path)
    return p[len("file://"):] if p.startswith("file://") else p


def filesystem(path):
    """(fsspec filesystem, path as that filesystem names it) for URL ``path``."""
    import fsspec

    path = os.fspath(path)
    kwargs = {}
    if path.startswith(("gs://", "gcs://")) and os.environ.get("STORAGE_EMULATOR_HOST"):
        # an emulator speaks only the JSON API: no gRPC bucket-type probe (a 60 s timeout per bucket otherwise)
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        kwargs["token"] = "anon"
    fs, p = fsspec.core.url_to_fs(path, **kwargs)
    return fs, p


def join(base, *parts) -> str:
    base = os.fspath(base)
    if is_url(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def basename(path) -> str:
    path = os.fspath(path)
    return posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(path)


def dirname(path) -> str:
    path = os.fspath(path)
    return posixpath.dirname(path.rstrip("/")) if is_url(path) else os.path.dirname(path)


def exists(path) -> bool:
    if not is_url(path):
        return os.path.exists(_local(path))
    fs, p = filesystem(path)
    return fs.exists(p)


def isfile(path) -> bool:
    if not is_url(path):
        return os.path.isfile(_local(path))
    fs, p = filesystem(path)
    return fs.isfile(p)


def isdir(path) -> bool:
    """A local directory; on an object store, a prefix with at least one object under it (or a bucket)."""
    if not is_url(path):
        return os.path.isdir(_local(path))
    fs, p = filesystem(path)
    return fs.isdir(p)


def listdir(path) -> list[str]:
    """The names directly under ``path`` (files and "directories"), like ``os.listdir``; [] for a URL prefix
    with nothing under it."""
    if not is_url(path):
        return os.listdir(_local(path))
    fs, p = filesystem(path)   # (an object store cannot tell an empty "directory" from a missing one: [])
    try:
        entries = fs.ls(p, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return sorted({posixpath.basename(e.rstrip("/")) for e in entries} - {""})


def makedirs(path, exist_ok: bool = True) -> None:
    """``os.makedirs``; nothing to do on an object store (a prefix exists once an object is written under it)."""
    if not is_url(path):
        os.makedirs(_local(path), exist_ok=exist_ok)


def remove(path) -> None:
    if not is_url(path):
        os.remove(_local(path))
        return
    fs, p = filesystem(path)
    fs.rm_file(p)


def rmtree(path) -> None:
    """Remove a directory tree (a local one, or every object under a prefix); a missing one is fine."""
    if not is_url(path):
        shutil.rmtree(_local(path), ignore_errors=True)
        return
    fs, p = filesystem(path)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(p, recursive=True)


def getsize(path) -> int:
    if not is_url(path):
        return os.path.getsize(_local(path))
    fs, p = filesystem(path)
    return int(fs.size(p))


def open(path, mode: str = "r", **kwargs):  # noqa: A001 - the builtin, for paths and URLs alike
    """``open`` for local paths, ``fsspec.open`` for URLs (writes to a URL become visible on close)."""
    if not is_url(path):
        return builtins.open(_local(path), mode, **kwargs)
    fs, p = filesystem(path)
    return fs.open(p, mode, **kwargs)


def read_bytes(path, start: int | None = None, end: int | None = None) -> bytes:
    """The file's bytes (or ``[start, end)`` of them: one ranged request on an object store)."""
    if not is_url(path):
        with builtins.open(_local(path), "rb") as f:
            if start:
                f.seek(start)
            return f.read() if end is None else f.read(end - (start or 0))
    fs, p = filesystem(path)
    return fs.cat_file(p, start=start, end=end)


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def upload(local: str, url: str) -> None:
    """Copy a local file or directory tree to ``url`` (one put per file)."""
    fs, p = filesystem(url)
    if os.path.isdir(local):
        for dirpath, _, names in os.walk(local):
            rel = os.path.relpath(dirpath, local)
            for n in names:
                dst = posixpath.join(p, n) if rel == "." else posixpath.join(p, rel.replace(os.sep, "/"), n)
                fs.put_file(os.path.join(dirpath, n), dst)
    else:
        fs.put_file(local, p)


def download(url: str, local: str) -> None:
    """Copy the object or the tree under prefix ``url`` to ``local``."""
    fs, p = filesystem(url)
    if fs.isdir(p):
        fs.get(p.rstrip("/") + "/", local.rstrip(os.sep) + os.sep, recursive=True)
    else:
        fs.get_file(p, local)


@contextlib.contextmanager
def local_copy(path):
    """A local path holding ``path``: itself when local, else a temporary download (removed afterwards)."""
    if not is_url(path):
        yield _local(path)
        return
    tmp = tempfile.mkdtemp(prefix="clap_jax_dl_")
    try:
        dst = os.path.join(tmp, basename(path) or "object")
        download(os.fspath(path), dst)
        yield dst
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_file_mode() -> int:
    """0666 minus the umask: what `open()` would give (safetensors and mkstemp write 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temp_name(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary local path to write; on success it becomes ``path`` (renamed over it with the usual
    permissions, or uploaded with one put when ``path`` is a URL), on failure it is removed."""
    path = os.fspath(path)
    if is_url(path):
        tmpdir = tempfile.mkdtemp(prefix="clap_jax_up_")
        tmp = os.path.join(tmpdir, basename(path) or "object")
        try:
            yield tmp
            fs, p = filesystem(path)
            fs.put_file(tmp, p)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return
    path = _local(path)
    tmp = temp_name(path)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp, builtins.open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp, builtins.open(tmp, "w") as f:
        f.write(text)


class RangeReader:
    """Random reads of one remote object through an LRU cache of aligned blocks.

    A read fetches the blocks it touches (one ranged request per missing run of blocks) and keeps the last
    ``cache_blocks`` of them, so records that lie together (a shard's records in order, or a shuffled batch
    hitting the same block) cost one request per block instead of one per record. Thread-safe; one per process
    (not picklable: the data source makes a new one after a fork or spawn).
    """

    BLOCK_SIZE = 4 << 20
    CACHE_BLOCKS = 16

    def __init__(self, url: str, size: int | None = None, block_size: int | None = None,
                 cache_blocks: int | None = None):
        self.url = url
        self.block_size = block_size or self.BLOCK_SIZE
        self.cache_blocks = cache_blocks or self.CACHE_BLOCKS
        self._fs, self._path = filesystem(url)
        self.size = int(self._fs.size(self._path)) if size is None else size
        self._blocks: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.requests = 0  # ranged requests made (for tests and tuning)

    def __len__(self) -> int:
        return self.size

    def _fetch(self, first: int, last: int) -> None:
        """Load blocks first..last (inclusive) that are not cached, one request per missing run."""
        b = first
        while b <= last:
            if b in self._blocks:
                self._blocks.move_to_end(b)
                b += 1
                continue
            e = b
            while e + 1 <= last and e + 1 not in self._blocks:
                e += 1
            start, end = b * self.block_size, min((e + 1) * self.block_size, self.size)
            data = self._fs.cat_file(self._path, start=start, end=end)
            self.requests += 1
            for k in range(b, e + 1):
                self._blocks[k] = data[(k - b) * self.block_size:(k - b + 1) * self.block_size]
            b = e + 1
        while len(self._blocks) > max(self.cache_blocks, last - first + 1):
            self._blocks.popitem(last=False)

    def read(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` (fewer at the end of the object, like ``pread``)."""
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        first, last = offset // self.block_size, (end - 1) // self.block_size
        with self._lock:
            self._fetch(first, last)
            parts = [self._blocks[k] for k in range(first, last + 1)]
        base = first * self.block_size
        buf = parts[0] if len(parts) == 1 else b"".join(parts)
        return buf[offset - base:end - base]
