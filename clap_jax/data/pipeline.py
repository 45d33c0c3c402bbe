"""Grain input pipeline: preprocessed TFRecord shards -> per-host batches -> one global batch on the mesh.

Data flow (every step is a lazy, index-addressed ``grain.MapDataset`` until batching, so the whole pipeline is a
pure function of (seed, position) and its state is one small JSON):

    TFRecordDataSource(shards of one dataset dir)      random access through the offset indexes, CRC-checked
      -> shuffle(seed_i)                               global shuffle, reshuffled every epoch (shuffle=False: off)
      -> repeat(num_epochs)                            None = forever
      -> random_map(DecodeCrop)                        decode audio, msclap crop / repeat-pad, pick a caption;
                                                       rng seeded by (seed, position): resumes see the same crops
      [-> MapDataset.mix(datasets, weights)]           several dataset dirs mixed by weight
      -> slice(process_index::process_count)           per-host sharding: hosts see disjoint positions
      -> map(Tokenize)                                 GPT-2 BPE of the record's caption (per record: in the read
                                                       threads, or the worker processes when there are any)
      -> to_iter_dataset (threads) -> batch(per_host_batch) -> mp_prefetch(worker processes)
      -> make_global_batch                             jax.make_array_from_process_local_data, NamedSharding over
                                                       the mesh's data axes

One element / host batch (B = per-host batch, L = duration x sample_rate samples, T = text_length tokens)::

    {'audio': float32 (B, L), 'input_ids': int32 (B, T), 'attention_mask': int32 (B, T),
     'id': int32 (B,) (stable hash of the record id), 'dataset': int32 (B,) (index into ``data_dirs``)}

With ``audio_dtype='int16'`` the audio stays in its stored form, int16 (half the bytes to copy between processes
and to the devices); ``audio.int16_to_float`` (or the trainer, on the device) gives the float32 values exactly.

A corrupt record (CRC/framing/parse/audio error) is skipped and counted (``TFRecordDataSource.num_corrupt`` /
``DecodeCrop.num_bad`` in the process that read it). The first few are logged one by one (shard and record), then
one summary line at most every ``BadRecords.SUMMARY_EVERY_S`` seconds. ``max_consecutive_bad`` bad records in a row
(nothing good in between) raise ``BadDataError`` naming the data: all-corrupt data stops, it does not spin forever.

Typical use in a training loop (``mesh`` with a 'data' axis; orbax CheckpointManager ``mngr``)::

    it = make_iterator(["/data/audiocaps", "/data/clotho"], weights=[2, 1], per_host_batch_size=32, seed=0,
                       worker_count=4, mesh=mesh, data_axes="data")
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=checkpoint_args(it)))
    mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                               data=checkpoint_args(it, restore=True)))
    batch = next(it)   # global jax arrays sharded over 'data'

Worker processes (``worker_count > 0``) are spawned: call from under ``if __name__ == "__main__":``; outside an
absl app, ``from absl import flags; flags.FLAGS.mark_as_parsed()`` first.
"""
from __future__ import annotations

import bisect
import functools
import json
import logging
import mmap
import os
import threading
import time
from typing import Any, Sequence

import grain
import numpy as np

from clap_jax.audio import io as audio_io
from clap_jax.data import audio as audio_lib
from clap_jax import files
from clap_jax.data import tfrecord
from clap_jax.errors import UserError

log = logging.getLogger(__name__)
CROPS = tuple(c for c in audio_io.CROP_MODES if c != "unseeded")  # every crop here is reproducible


def read_metadata(data_dir: str) -> dict | None:
    """The dataset.json written by the preprocessing CLI, or None if absent."""
    path = files.join(data_dir, "dataset.json")
    try:
        return json.loads(files.read_text(path))
    except (FileNotFoundError, IsADirectoryError):
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable dataset metadata ({e})") from e


def shard_paths(data_dir: str, split: str = "train") -> list[str]:
    """The shard files of ``split`` in a preprocessed directory (from dataset.json, else by file name)."""
    if not files.isdir(data_dir):
        raise FileNotFoundError(f"{data_dir}: not a directory (expected the --out of clap_jax.data.preprocess)")
    meta = read_metadata(data_dir)
    if meta is not None:
        if split not in meta["splits"]:
            raise ValueError(f"{data_dir}: no split {split!r} (has {sorted(meta['splits'])})")
        names = meta["splits"][split]["shards"]
    else:
        names = sorted(n for n in files.listdir(data_dir) if n.startswith(f"{split}-") and n.endswith(".tfrecord"))
    if not names:
        raise ValueError(f"{data_dir}: no shards for split {split!r}")
    return [files.join(data_dir, n) for n in names]


class BadDataError(UserError):
    """Too many bad records in a row: the data is corrupt (or not what the pipeline expects)."""


class BadRecords:
    """Bad records of one dataset in this process: counts them, rate-limits their warnings, and raises
    BadDataError after ``limit`` in a row. Shared by the dataset's source (corrupt bytes) and DecodeCrop
    (undecodable records); thread-safe (Grain reads in threads), one per process after pickling."""

    LOG_FIRST = 5          # bad records logged one by one
    SUMMARY_EVERY_S = 30.0  # then one summary line at most this often

    def __init__(self, where: str, paths: Sequence[str] = (), limit: int | None = 1000):
        self.where, self.paths, self.limit = where, list(paths), limit
        self.total = self.consecutive = self._since_summary = 0
        self._last_summary = 0.0
        self._lock = threading.Lock()

    def __getstate__(self):
        d = dict(self.__dict__)
        del d["_lock"]
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def good(self) -> None:
        self.consecutive = 0  # (a racy reset only delays the error by a record or so)

    def bad(self, what: str) -> None:
        with self._lock:
            self.total += 1
            self.consecutive += 1
            self._since_summary += 1
            total, consecutive = self.total, self.consecutive
            if total <= self.LOG_FIRST:
                log.warning("skipping bad record (%d so far in this process%s): %s", total,
                            "; further ones are summarised" if total == self.LOG_FIRST else "", what)
                self._last_summary = time.monotonic()
                self._since_summary = 0
            elif time.monotonic() - self._last_summary >= self.SUMMARY_EVERY_S:
                log.warning("skipped %d more bad records in %s (%d so far in this process; latest: %s)",
                            self._since_summary, self.where, total, what)
                self._last_summary = time.monotonic()
                self._since_summary = 0
        if self.limit and consecutive >= self.limit:
            shards = ", ".join(files.basename(p) for p in self.paths[:3]) + (
                f" and {len(self.paths) - 3} more" if len(self.paths) > 3 else "")
            raise BadDataError(
                f"{self.where}: {consecutive} bad records in a row ({total} bad in all in this process; shards "
                f"{shards or '?'}; latest: {what}); the data looks corrupt: check or rebuild it with python -m "
                f"clap_jax.data.preprocess (data.max_consecutive_bad_records={self.limit} sets this limit)")


class TFRecordDataSource:
    """Random-access Grain data source over TFRecord shards with offset indexes.

    ``source[i]`` -> the serialized record ``i`` (a zero-copy memoryview into the shard's mmap, CRC-checked) in
    shard order, or ``None`` if it is corrupt (truncated, bad length, CRC mismatch): that is logged with shard and
    record number and counted in ``num_corrupt``. A shard without an index file is scanned once (with a warning).
    Picklable (shards are mapped again in each process). Shards must not change while being read.
    Shards in object storage (URLs) are read by ranged requests through a block cache per shard
    (``files.RangeReader``: aligned blocks of ``REMOTE_BLOCK_SIZE`` bytes, the last ``REMOTE_CACHE_BLOCKS`` kept)
    instead of ``mmap``; a record then comes as ``bytes``.
    """

    def __init__(self, paths: Sequence[str], bad_records: BadRecords | None = None):
        self.paths = list(paths)
        self.bad_records = bad_records if bad_records is not None else BadRecords(
            files.dirname(self.paths[0]) if self.paths else "?", self.paths, limit=None)
        self._indexes = []
        for p in self.paths:
            if not files.isfile(p):
                raise FileNotFoundError(f"{p}: shard not found")
            if files.isfile(p + tfrecord.INDEX_SUFFIX):
                self._indexes.append(tfrecord.read_index(p))
            else:
                log.warning("%s: no offset index, scanning the shard", p)
                self._indexes.append(tfrecord.build_index(p))
        self._starts = np.cumsum([0] + [len(i) for i in self._indexes]).tolist()
        self.num_corrupt = 0
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self._starts[-1]

    def __repr__(self) -> str:
        return f"TFRecordDataSource({len(self.paths)} shards, {len(self)} records, first={self.paths[:1]})"

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_fds"] = {}
        return d

    MAX_OPEN_FILES = 128
    REMOTE_BLOCK_SIZE = 4 << 20   # a few records of 10 s audio per block: read-ahead without reading much unused
    REMOTE_CACHE_BLOCKS = 8       # per shard, per process

    def _map(self, shard: int):
        """The shard's read-only mmap (this process's own; at most MAX_OPEN_FILES kept, least recently used go)."""
        if self._pid != os.getpid():  # after fork/spawn: never share mappings with the parent
            self._fds, self._pid = {}, os.getpid()
        mm = self._fds.pop(shard, None)
        if mm is None:
            if len(self._fds) >= self.MAX_OPEN_FILES:
                self._fds.pop(next(iter(self._fds)))  # unmapped once no reader holds a view of it
            if files.is_url(self.paths[shard]):
                mm = files.RangeReader(self.paths[shard], block_size=self.REMOTE_BLOCK_SIZE,
                                       cache_blocks=self.REMOTE_CACHE_BLOCKS)
            else:
                with open(self.paths[shard], "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._fds[shard] = mm  # (re)insert as most recently used
        return mm

    def locate(self, index: int) -> tuple[int, int]:
        """Global record index -> (shard number, record number within the shard)."""
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range [0, {len(self)})")
        s = bisect.bisect_right(self._starts, index) - 1
        return s, index - self._starts[s]

    def __getitem__(self, index: int) -> memoryview | None:
        s, r = self.locate(int(index))
        off, n = self._indexes[s][r]
        try:
            src = self._map(s)
            if isinstance(src, files.RangeReader):
                return tfrecord.read_record_remote(src, int(off), int(n), f"{self.paths[s]} record {r}")
            return tfrecord.read_record_view(src, int(off), int(n), f"{self.paths[s]} record {r}")
        except tfrecord.CorruptRecordError as e:
            self.num_corrupt += 1
            self.bad_records.bad(f"corrupt: {e}")
            return None


_TOKENIZER_LOCK = threading.Lock()


DEFAULT_FAMILY = "msclap-2023"


@functools.lru_cache(maxsize=16)
def _family_tokenizer(family: str, source: str | None, max_length: int):
    """The tokenizer a model family trains with (GPT-2 BPE for CLAP 2023, BERT WordPiece for CLAP 2022), one per
    (family, vocabulary, length) in each process."""
    import ml_collections

    from clap_jax.models import registry

    return registry.tokenizer(ml_collections.ConfigDict({"family": family, "text": {"max_length": max_length}}),
                              source)


@functools.lru_cache(maxsize=4)
def _tokenizer(source: str | None, max_length: int, family: str = DEFAULT_FAMILY):
    with _TOKENIZER_LOCK:  # transformers' lazy imports are not thread-safe; Grain reads in threads
        if family != DEFAULT_FAMILY:
            return _family_tokenizer(family, source, max_length)
        from clap_jax.text.tokenizer import ClapTokenizer

        return ClapTokenizer(source, max_length=max_length)


@functools.lru_cache(maxsize=65536)
def _tokenize(caption: str, source: str | None, max_length: int,
              family: str = DEFAULT_FAMILY) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = _tokenizer(source, max_length, family)([caption])
    return ids[0], mask[0]


class DecodeCrop(grain.transforms.RandomMap):
    """Serialized record -> model example, deterministic in the rng Grain derives from (seed, position).

    Output: {'audio': float32 (num_samples,) (int16 with ``audio_dtype='int16'``), 'caption': bytes (UTF-8),
    'id': int32 (), 'dataset': int32 ()} (``Tokenize`` turns the caption into token ids). Long clips: a ``num_samples`` window, uniformly random
    (``crop='random'``, msclap training) or the first / centre one (``'start'``/``'center'``, for evaluation); clips
    of n <= num_samples samples: tiled ceil(num_samples/n) times and cut (msclap). One caption, drawn uniformly
    (``caption='random'``) or the first.
    Returns None (skipped, counted in ``num_bad``) for a record that does not parse or decode.

    ``fusion`` (the mel settings of ``clap_jax.audio.fusion.settings``, for LAION-CLAP models with feature
    fusion): the whole clip is decoded and made into laion_clap's fusion input instead of 'audio':
    'mel_fusion' float32 (4, num_samples // hop + 1, n_mels), 'longer' bool (), 'fusion_starts' int32 (3,) (the
    local crops' first frames, -1 for clips not longer than num_samples). The draws come from a RandomState seeded
    from ``rng`` (``crop='random'``) or are the first / middle position of each range ('start' / 'center').
    """

    def __init__(self, sample_rate: int, num_samples: int, dataset_index: int = 0, where: str = "",
                 crop: str = "random", caption: str = "random", bad_records: BadRecords | None = None,
                 audio_dtype: str = "float32", fusion: dict | None = None):
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if caption not in ("random", "first"):
            raise ValueError(f"caption must be 'random' or 'first', got {caption!r}")
        if audio_dtype not in ("float32", "int16"):
            raise ValueError(f"audio_dtype must be 'float32' or 'int16', got {audio_dtype!r}")
        self.audio_dtype = audio_dtype
        self.fusion = dict(fusion) if fusion else None
        if self.fusion and self.fusion["sr"] != sample_rate:
            raise ValueError(f"fusion mel rate {self.fusion['sr']} != pipeline sample rate {sample_rate}")
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.dataset_index = dataset_index
        self.where = where
        self.crop = crop
        self.caption = caption
        self.num_bad = 0
        self.bad_records = bad_records if bad_records is not None else BadRecords(where or "?", limit=None)

    def random_map(self, element: bytes | None, rng: np.random.Generator) -> dict | None:
        if element is None:
            return None
        try:
            ex = tfrecord.decode_example(element, copy=False)  # audio stays a view: only the crop is copied
            sr = int(ex["sample_rate"][0])
            if sr != self.sample_rate:
                raise ValueError(f"record sample rate {sr} != pipeline sample rate {self.sample_rate}; "
                                 "preprocess with --sample-rate to match the model")
            if self.fusion:
                out = self._fusion_input(ex, rng)
            else:
                start = audio_io.crop_start(int(ex["num_samples"][0]), self.num_samples, self.crop, rng)
                wave = audio_lib.decode_audio_int16(ex["audio"][0], bytes(ex["audio_format"][0]).decode(), start,
                                                    self.num_samples)   # only the window is decoded
                wave = audio_io.repeat_pad(wave, self.num_samples)
                if self.audio_dtype == "float32":
                    wave = audio_lib.int16_to_float(wave)
                out = {"audio": wave}
            caps = ex["captions"]
            pick = int(rng.integers(len(caps))) if len(caps) > 1 and self.caption == "random" else 0
            caption = bytes(caps[pick]).decode()
            uid = int(ex["uid"][0])
        except Exception as e:  # noqa: BLE001 - a bad record is skipped and counted, never fatal
            self.num_bad += 1
            self.bad_records.bad(f"undecodable record in {self.where}: {type(e).__name__}: {e}")
            return None
        self.bad_records.good()
        return {**out, "caption": np.bytes_(caption.encode()), "id": np.int32(uid),
                "dataset": np.int32(self.dataset_index)}

    def _fusion_input(self, ex: dict, rng: np.random.Generator) -> dict:
        """The whole clip -> laion_clap's fusion input (see the class docstring)."""
        from clap_jax.audio import fusion as fusion_lib

        q = audio_lib.decode_audio_int16(ex["audio"][0], bytes(ex["audio_format"][0]).decode())
        if self.crop == "random":
            draws = fusion_lib.RecordedDraws(int(rng.integers(2 ** 32)))
        else:
            draws = fusion_lib.FixedDraws(mode=self.crop)
        x = fusion_lib.laion_audio_input(audio_lib.int16_to_float(q), draws, clip_samples=self.num_samples,
                                         fusion=True, **self.fusion)
        starts = draws.drawn if x["longer"] else []
        return {"mel_fusion": x["mel_fusion"], "longer": np.bool_(x["longer"]),
                "fusion_starts": np.asarray(starts + [-1] * (3 - len(starts)), np.int32)}


class Tokenize(grain.transforms.Map):
    """Example with 'caption' (bytes) -> with 'input_ids', 'attention_mask' int32 (max_length,), no 'caption'
    (max_length is the model's text length).

    Per record, before batching: it runs where the records are read (Grain's read threads, or the worker processes
    when ``worker_count`` > 0), not in the main process that feeds the devices. Each process loads the tokenizer
    once; GPT-2 BPE is ~0.05 ms a caption, cached.
    """

    def __init__(self, tokenizer: str | None = None, max_length: int = 77, family: str = DEFAULT_FAMILY,
                 prompt: str | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.family = family
        # multi-task records: the task's prompt first, the caption is the answer; one prompt for every record, or
        # a sequence of them indexed by the record's 'dataset' (the position of its directory in data_dirs)
        self.prompt = prompt if prompt is None or isinstance(prompt, str) else tuple(prompt)

    def map(self, example: dict) -> dict:
        example = dict(example)
        text = bytes(example.pop("caption")).decode()
        if self.prompt is not None:   # + 'loss_mask': 1 on the answer tokens only (clap_jax.data.multitask)
            from clap_jax.data import multitask

            tok = _tokenizer(self.tokenizer, self.max_length, self.family)
            prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[int(example["dataset"])]
            ids, mask, loss = multitask.encode(tok, prompt, text, self.max_length)
            example["input_ids"], example["attention_mask"], example["loss_mask"] = ids, mask, loss
            return example
        ids, mask = _tokenize(text, self.tokenizer, self.max_length, self.family)
        example["input_ids"], example["attention_mask"] = ids, mask
        return example


def build_dataset(data_dirs: str | Sequence[str], *, per_host_batch_size: int, split: str = "train",
                  weights: Sequence[float] | None = None, seed: int = 0, num_epochs: int | None = None,
                  sample_rate: int = 44100, duration: float = 7.0, process_index: int | None = None,
                  process_count: int | None = None, worker_count: int = 0, worker_buffer_size: int = 2,
                  read_threads: int | None = None, drop_remainder: bool = True, tokenizer: str | None = None,
                  text_length: int = 77, shuffle: bool = True, crop: str = "random",
                  caption: str = "random", max_consecutive_bad: int | None = 1000,
                  audio_dtype: str = "float32", tokenizer_family: str = DEFAULT_FAMILY,
                  prompt: str | Sequence[str] | None = None, fusion: dict | None = None) -> grain.IterDataset:
    """The Grain dataset of host batches (see module docstring for the flow and the element layout).

    ``data_dirs``: one preprocessed directory, or several mixed by ``weights`` (then the stream is infinite, each
    source reshuffled at each of its own epochs, and ``num_epochs`` must be None). ``process_index/count`` default
    to ``jax.process_index()/process_count()``; with finite epochs and ``drop_remainder`` every host gets the same
    number of batches (a corrupt record makes its host's stream one element shorter: train with
    ``num_epochs=None`` and count steps). ``read_threads``: threads reading + decoding per process (default 2
    in-process, 1 per worker process, where more threads only add GIL contention). ``worker_count`` > 0 adds
    ``mp_prefetch`` worker processes; a restored state needs the same ``worker_count`` and host count.

    ``max_consecutive_bad``: bad records in a row (per dataset and process) that raise BadDataError (None: never).
    ``audio_dtype``: 'float32' (values in [-1, 1)) or 'int16' (the stored samples; see the module docstring).
    ``tokenizer_family``: the model family whose tokenizer makes the token ids ('msclap-2023': GPT-2 BPE, built in;
    'msclap-2022': BERT WordPiece from the vocabulary ``tokenizer`` names), ``text_length`` ids per caption.
    ``prompt``: multi-task prompt/answer records: each row is ``prompt`` then the record's caption as the answer,
    with a ``loss_mask`` on the answer tokens (clap_jax.data.multitask.encode; GPT-2 tokenizer); a sequence of
    prompts, one per directory of ``data_dirs``, mixes the tasks within each batch (each record gets its
    directory's prompt).
    ``fusion``: LAION-CLAP feature fusion (``clap_jax.audio.fusion.settings`` of the model config): elements hold
    'mel_fusion', 'longer' and 'fusion_starts' made from the whole clip instead of 'audio' (see ``DecodeCrop``).

    For evaluation: ``shuffle=False, crop='start', caption='first', num_epochs=1, drop_remainder=False`` gives
    every record once, in shard order (split over hosts).
    """
    if isinstance(data_dirs, str):
        data_dirs = [data_dirs]
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if len(data_dirs) > 1 and num_epochs is not None:
        raise ValueError("mixing several datasets gives an infinite stream: use num_epochs=None")
    if weights is not None and len(weights) != len(data_dirs):
        raise ValueError(f"{len(weights)} weights for {len(data_dirs)} data_dirs")
    if prompt is not None and not isinstance(prompt, str) and len(prompt) != len(data_dirs):
        raise ValueError(f"{len(prompt)} prompts for {len(data_dirs)} data_dirs")
    num_samples = audio_io.num_samples(duration, sample_rate)
    _tokenize("a", tokenizer, text_length, tokenizer_family)  # load now: a missing vocabulary fails here
    parts = []
    for i, d in enumerate(data_dirs):
        stored_sr = ((read_metadata(d) or {}).get("settings") or {}).get("sample_rate")
        if stored_sr is not None and stored_sr != sample_rate:
            raise ValueError(f"{d}: preprocessed at {stored_sr} Hz but the pipeline wants {sample_rate} Hz; rerun "
                             f"clap_jax.data.preprocess with --sample-rate {sample_rate}")
        paths = shard_paths(d, split)
        bad = BadRecords(d, paths, max_consecutive_bad)
        src = TFRecordDataSource(paths, bad)
        ds = grain.MapDataset.source(src)
        if shuffle:
            ds = ds.shuffle(seed=_derive(seed, i, 0))
        ds = ds.repeat(num_epochs if len(data_dirs) == 1 else None)
        ds = ds.random_map(DecodeCrop(sample_rate, num_samples, i, where=d, crop=crop, caption=caption,
                                      bad_records=bad, audio_dtype=audio_dtype, fusion=fusion),
                           seed=_derive(seed, i, 1))
        parts.append(ds)
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)
    if num_epochs is not None and drop_remainder:  # every host gets the same number of full batches
        ds = ds[: len(ds) // (per_host_batch_size * process_count) * (per_host_batch_size * process_count)]
    ds = ds[process_index::process_count]
    ds = ds.map(Tokenize(tokenizer, text_length, tokenizer_family, prompt))  # (a bad record's None passes through Grain's map untouched)
    if read_threads is None:
        read_threads = 1 if worker_count > 0 else 2
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                              prefetch_buffer_size=max(2 * per_host_batch_size, 8)))
    it = it.batch(per_host_batch_size, drop_remainder=drop_remainder)
    if worker_count > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                         per_worker_buffer_size=worker_buffer_size))
    return it


def _derive(seed: int, *parts: int) -> int:
    """A 32-bit seed from (seed, parts): independent streams per dataset and per use."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


def make_global_batch(batch: dict, mesh, data_axes: str | Sequence[str] = ("data",)) -> dict:
    """Host batch (leading dim B) -> global jax arrays (leading dim B * process_count) sharded over ``data_axes``.

    Uses ``jax.make_array_from_process_local_data`` with ``NamedSharding(mesh, P(data_axes))``; the remaining dims
    are replicated. Non-numeric leaves stay host-local numpy.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    axes = (data_axes,) if isinstance(data_axes, str) else tuple(data_axes)
    sharding = NamedSharding(mesh, PartitionSpec(axes))
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.dtype.kind in "biuf":
            out[k] = jax.make_array_from_process_local_data(sharding, v)
        else:
            out[k] = v
    return out


class ClapDataIterator:
    """Iterator of batches (global jax arrays when a mesh is given, else host numpy) with checkpointable state.

    ``grain_iterator`` is the underlying ``grain.DatasetIterator``; save/restore it next to the train state with
    ``checkpoint_args(it)`` / ``checkpoint_args(it, restore=True)`` in an ``orbax`` ``Composite``.
    """

    def __init__(self, dataset: grain.IterDataset, mesh=None, data_axes: str | Sequence[str] = ("data",),
                 worker_count: int | None = None):
        self.grain_iterator = iter(dataset)
        self.mesh, self.data_axes, self.worker_count = mesh, data_axes, worker_count

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        try:
            batch = next(self.grain_iterator)
        except Exception as e:
            cause = e  # Grain may re-raise a reader's error wrapped: surface ours as itself (one line for the CLI)
            while cause is not None and not isinstance(cause, BadDataError):
                cause = cause.__cause__ or cause.__context__
            if cause is not None and cause is not e:
                raise cause from e
            raise
        return batch if self.mesh is None else make_global_batch(batch, self.mesh, self.data_axes)

    def get_state(self) -> dict:
        """Grain's state, plus the number of worker processes it was made with ('worker_count'): Grain's state
        of n workers fails to restore into fewer and silently gives other batches in more."""
        state = self.grain_iterator.get_state()
        if self.worker_count is not None and isinstance(state, dict):
            state = {**state, "worker_count": self.worker_count}
        return state

    def set_state(self, state: dict) -> None:
        if isinstance(state, dict) and "worker_count" in state:
            state = dict(state)
            saved = state.pop("worker_count")
            if self.worker_count is not None and saved != self.worker_count:
                raise UserError(f"the data iterator state was saved with {saved} worker processes, this iterator "
                                f"has {self.worker_count}: its position cannot be restored (data.num_workers="
                                f"{saved} resumes it)")
        self.grain_iterator.set_state(state)

    def close(self) -> None:
        close = getattr(self.grain_iterator, "close", None)
        if close is not None:
            close()


def make_iterator(data_dirs, *, per_host_batch_size: int, mesh=None, data_axes=("data",), **kwargs
                  ) -> ClapDataIterator:
    """``build_dataset(...)`` wrapped in a ClapDataIterator (global batches over ``mesh`` when given)."""
    return ClapDataIterator(build_dataset(data_dirs, per_host_batch_size=per_host_batch_size, **kwargs), mesh,
                            data_axes, worker_count=kwargs.get("worker_count", 0))


def checkpoint_args(iterator: ClapDataIterator | Any, restore: bool = False):
    """Orbax args for the data iterator state, to put in ``ocp.args.Composite(..., data=checkpoint_args(it))``.

    Uses Grain's ``grain.checkpoint.CheckpointSave/CheckpointRestore`` (one JSON per process). On restore the
    iterator is updated in place and its next batch is the one an uninterrupted run would have produced next.
    """
    import grain.checkpoint as gc

    it = getattr(iterator, "grain_iterator", iterator)
    return gc.CheckpointRestore(item=it) if restore else gc.CheckpointSave(item=it)
