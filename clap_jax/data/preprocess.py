"""Preprocess audio-caption manifests into sharded TFRecords (no TensorFlow needed).

    python -m clap_jax.data.preprocess --manifest train.csv --root /audio --out /data/mine --workers 8
    python -m clap_jax.data.preprocess --tfds crema_d --tfds-data-dir DIR --split train --out /data/crema  # tfds_source

Manifests (several may be given; rows keep their order, manifests in the order given):

* CSV with a header. Columns: ``path`` (or ``audio``/``file``/``file_name``; relative to ``--root``), ``caption`` and/or
  ``captions`` and/or any ``caption_*`` columns (several captions in one cell separated by ``|``), optional
  ``labels`` (or ``keywords``; ``|``-separated), ``source``, ``split``, ``id``.
* JSONL, one object per line: ``{"path": str, "caption": str | "captions": [str], "labels": [str] | str,
  "source": str, "split": str, "id": str}``.

Rows with labels but no caption get captions from ``--label-template`` (default ``"this is a sound of {labels}"``,
labels joined by ", "; the paper's AudioSet treatment); ``--label-captions always`` adds them to every labelled row.

Output in ``--out``:

* ``{split}-{i:05d}-of-{n:05d}.tfrecord`` + ``.tfrecord.index`` (offsets, see ``tfrecord.py``) +
  ``.tfrecord.json`` (that shard's stats; written last, marks the shard finished for restarts).
* ``dataset.json``: counts, hours per split and source, shard list, audio settings, skipped rows with reasons,
  altered rows with what was done, ``problem_counts`` by kind, and ``jobs`` (what built which shards).
* ``skipped.tsv``: ``where<TAB>path<TAB>reason`` for every skipped row, every kept row that was altered and
  every warning (``where`` is ``manifest:line``).

Each record is a ``tf.train.Example`` with: ``id`` (bytes), ``uid`` (int64, stable 31-bit hash of id), ``audio``
(bytes in ``audio_format``: 'flac' or 'pcm16', mono), ``sample_rate``, ``num_samples`` (int64), ``duration``
(float, seconds), ``captions`` (bytes list, UTF-8), ``labels`` (bytes list), ``source``, ``split`` (bytes).

Shards are planned from the manifests alone (by count, optionally by estimated size), so the output is the same
for the same input whatever the number of workers, and a rerun only redoes shards that are missing or whose
planned rows changed. Bad rows and bad audio never stop the job: they are skipped, counted and listed.

Jobs, reruns, --overwrite and --append:
  A job is identified by its manifests (real paths, any order) and --root (real path). Its fingerprint and the
  shard names it plans are recorded in dataset.json ``jobs`` when it starts. Rerunning the same job (with other
  options or edited manifests it is still the same job) redoes only the shards that are missing or whose planned
  rows or settings changed, and removes the shards of its own older plan. Another job into an --out that already
  holds a preprocessed dataset (dataset.json or shard files) is refused, unless asked:
    --overwrite  replace it: the shards and dataset.json of every other job in --out are deleted first;
    --append     add this job beside it: its shards are named {split}-j{fingerprint[:8]}-{i}-of-{n}.tfrecord
                 (no collisions), the same --sample-rate is required, dataset.json then describes every job.
  Only our own files are ever deleted: shards with their .index/.json, dataset.json, skipped.tsv, and the
  temporary files NAME.tmp-PID that a killed run leaves (when that process is gone). Anything else is left alone.

Rows that are refused (skipped and listed in skipped.tsv with manifest:line and reason; the job goes on):
  * audio paths outside --root (absolute paths elsewhere, or ``..`` leading out; checked on the path as written,
    symlinks inside --root are followed), unless --allow-outside-root. Without --root the current directory is
    the root.
  * a ``split`` that is not a plain name (letters, digits and ``_.-``, starting with a letter or digit, at most 64
    characters), since it becomes part of a file name.
  * malformed rows, no path or caption, duplicate ids; unreadable, empty, NaN/inf, too short or silent audio.

Audio that decodes but is damaged or out of range is kept and recorded (``altered`` in dataset.json and a line in
skipped.tsv): a WAV cut short (its header declares more frames than the file holds) keeps the frames present;
samples beyond [-1, 1] (float files, resampling overshoot) are scaled down to peak 1 (never clipped) and the factor
is recorded. ``problem_counts`` in dataset.json counts every skipped, altered and warned row by kind.

Errors that stop the job (one ``error:`` line, exit code 2, finished shards kept): a missing manifest or --root,
--out being a file, a manifest that is not UTF-8 or not readable as CSV (the line is named), a manifest without
usable rows, another job's dataset in --out, a full disk (the file being written is named; free space and rerun).
"""
from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import struct
import sys
import threading
import time
from typing import Iterable, Iterator, Sequence

import numpy as np

from clap_jax import files as storage
from clap_jax.data import audio as audio_lib
from clap_jax.data import tfds_source, tfrecord
from clap_jax.errors import UserError, run_cli

log = logging.getLogger(__name__)
METADATA = "dataset.json"
SKIPPED = "skipped.tsv"
FORMAT_VERSION = 2  # 2: ``jobs``, ``altered``, ``problem_counts``
_PATH_COLS = ("path", "audio", "file", "filename", "file_name", "audio_path")
_LABEL_COLS = ("labels", "keywords", "label", "tags")
_SHARD_RE = re.compile(r"(.+-\d{5}-of-\d{5}\.tfrecord)(\.index|\.json)?")
_SPLIT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PEAK = 32767 / 32768  # the largest magnitude int16 storage represents on both sides


@dataclasses.dataclass
class Row:
    """One manifest row after validation. ``where`` is ``manifest:line`` for messages."""
    where: str
    path: str
    id: str
    captions: list[str]
    labels: list[str]
    source: str
    split: str


@dataclasses.dataclass
class Options:
    """Processing settings (all recorded in dataset.json)."""
    sample_rate: int = 44100
    audio_format: str = "pcm16"
    min_seconds: float = 0.1
    max_seconds: float | None = None
    trim_db: float | None = None
    examples_per_shard: int = 1000
    shard_mb: float | None = None
    label_templates: tuple[str, ...] = ("this is a sound of {labels}",)
    label_joiner: str = ", "
    label_captions: str = "if-missing"  # 'if-missing' | 'always' | 'never'
    default_split: str = "train"
    caption_generator: str = "template"  # or a local HF seq2seq model dir (clap_jax.data.keyword_captions)


def stable_uid(example_id: str) -> int:
    """A stable non-negative 31-bit integer id from the string id (fits int32 for JAX)."""
    return int.from_bytes(hashlib.blake2b(example_id.encode(), digest_size=8).digest(), "little") & 0x7FFFFFFF


def _split_list(v) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [s.strip() for s in v.split("|")]
    if isinstance(v, (list, tuple)):
        return [s.strip() if isinstance(s, str) else s for s in v]
    return [v]


def valid_split(name) -> bool:
    """A split name that is safe as part of a file name (no path separators, no leading dot)."""
    return isinstance(name, str) and _SPLIT_RE.fullmatch(name) is not None


def _problem(where: str, path: str, kind: str, reason: str, fatal: bool = True) -> dict:
    return {"where": where, "path": path, "kind": kind, "reason": reason, "fatal": fatal}


# ---------------------------------------------------------------------------------------------- manifests


def _text_lines(manifest: str) -> Iterator[str]:
    """The manifest's lines as text; a line that is not UTF-8 stops the job with its line number."""
    with open(manifest, "rb") as f:
        for ln, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"manifest {manifest}:{ln}: not UTF-8 text ({e.reason} at byte {e.start} of the "
                                "line); save the manifest as UTF-8") from None
            yield line.lstrip("\ufeff") if ln == 1 else line


def _raw_rows(manifest: str) -> Iterable[tuple[int, dict | None, str | None]]:
    """Yield (line_number, fields, error) for each data row of a CSV or JSONL manifest."""
    if manifest.endswith((".jsonl", ".json")):
        for ln, line in enumerate(_text_lines(manifest), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield ln, None, f"invalid JSON ({e.msg} at column {e.colno})"
                continue
            if not isinstance(obj, dict):
                yield ln, None, f"expected a JSON object, got {type(obj).__name__}"
                continue
            yield ln, obj, None
        return
    reader = csv.reader(_text_lines(manifest))
    try:
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            return
        for rec in reader:
            ln = reader.line_num
            if not rec or all(not c.strip() for c in rec):
                continue
            if len(rec) != len(header):
                yield ln, None, f"has {len(rec)} fields, header has {len(header)}"
                continue
            obj: dict = {}
            for h, c in zip(header, rec):
                if h == "caption" or h == "captions" or h.startswith("caption_"):
                    obj.setdefault("captions", []).extend(_split_list(c) if c.strip() else [c])
                else:
                    obj[h] = c
            yield ln, obj, None
    except csv.Error as e:  # e.g. a field over the csv limit: an unclosed quote swallowing the rest of the file
        raise UserError(f"manifest {manifest}:{reader.line_num}: unreadable CSV ({e}); check the quoting "
                        "around that line") from None


def _inside(path: str, root: str) -> bool:
    """Whether ``path`` (as written, ``..`` resolved lexically) lies under directory ``root``."""
    ap, ar = os.path.abspath(path), os.path.abspath(root or ".")
    return ap == ar or ap.startswith(ar.rstrip(os.sep) + os.sep)


def read_manifests(manifests: Sequence[str], root: str, opts: Options,
                   allow_outside_root: bool = False) -> tuple[list[Row], list[dict]]:
    """Validate all rows. Returns (rows, problems); each problem is {'where', 'path', 'kind', 'reason', 'fatal'}.

    Problems with ``'fatal': False`` are warnings about a row that is kept (e.g. one empty caption of several).
    """
    rows, problems, seen = [], [], {}
    for manifest in manifests:
        default_source = os.path.splitext(os.path.basename(manifest))[0]
        for ln, obj, err in _raw_rows(manifest):
            where = f"{manifest}:{ln}"
            if err is not None:
                problems.append(_problem(where, "", "malformed_row", f"malformed manifest row: {err}"))
                continue
            path = next((obj[k] for k in _PATH_COLS if obj.get(k)), None)
            if not isinstance(path, str) or not path.strip():
                problems.append(_problem(where, "", "no_path", "malformed manifest row: no audio path "
                                         f"(need one of the columns {', '.join(_PATH_COLS)})"))
                continue
            path = path.strip()
            split = obj.get("split") or opts.default_split
            if isinstance(split, int) and not isinstance(split, bool):
                split = str(split)
            if not valid_split(split):
                problems.append(_problem(where, path, "bad_split", f"split {split!r} is not a plain name (letters, "
                                         "digits and _.-, starting with a letter or digit, at most 64 characters); "
                                         "row skipped"))
                continue
            full = path if os.path.isabs(path) else os.path.join(root, path)
            if not allow_outside_root and not _inside(full, root):
                problems.append(_problem(where, path, "outside_root", f"audio path is outside --root "
                                         f"{os.path.abspath(root or '.')}; row skipped (pass --allow-outside-root "
                                         "to read it)"))
                continue
            caps = _split_list(obj.get("captions")) + _split_list(obj.get("caption"))
            if any(not isinstance(c, str) for c in caps):
                problems.append(_problem(where, path, "bad_caption", "malformed manifest row: caption is not a "
                                         "string"))
                continue
            labels = next((_split_list(obj[k]) for k in _LABEL_COLS if obj.get(k)), [])
            labels = [str(x).strip() for x in labels if str(x).strip()]
            nonempty = [c.strip() for c in caps if c.strip()]
            if len(nonempty) < len(caps):
                fatal = not nonempty and not labels
                problems.append(_problem(where, path, "empty_caption", "empty caption" + (
                    " (row skipped: nothing else to learn from)" if fatal else " dropped (row kept)"), fatal))
                if fatal:
                    continue
            if opts.label_captions == "always" or (opts.label_captions == "if-missing" and not nonempty):
                if labels:
                    joined = opts.label_joiner.join(labels)
                    nonempty += [t.format(labels=joined) for t in opts.label_templates]
            if not nonempty:
                problems.append(_problem(where, path, "no_caption", "malformed manifest row: no caption and no "
                                         "labels"))
                continue
            ex_id = str(obj.get("id") or path)
            if ex_id in seen:
                problems.append(_problem(where, path, "duplicate_id", f"duplicate id {ex_id!r} (first at "
                                         f"{seen[ex_id]}); row skipped"))
                continue
            seen[ex_id] = where
            rows.append(Row(where=where, path=full, id=ex_id, captions=nonempty, labels=labels,
                            source=str(obj.get("source") or default_source), split=str(split)))
    return rows, problems


# ---------------------------------------------------------------------------------------------- sharding


def _estimate_bytes(row: Row, opts: Options) -> float:
    try:
        info = audio_lib.sf.info(row.path)
        secs = info.frames / max(info.samplerate, 1)
    except Exception:  # noqa: BLE001 - unreadable here is reported later by the worker
        return 0.0
    if opts.max_seconds:
        secs = min(secs, opts.max_seconds)
    return secs * opts.sample_rate * 2 * (0.6 if opts.audio_format == "flac" else 1.0)


def plan_shards(rows: Sequence[Row], opts: Options, tag: str = "") -> list[dict]:
    """Group rows by split (manifest order) into shards of <= examples_per_shard rows (and <= shard_mb, estimated).

    Returns a list of tasks {'name', 'split', 'rows': [Row as dict], 'plan_hash'} with deterministic names
    ``{split}-{i:05d}-of-{n:05d}.tfrecord`` (``{split}-{tag}-...`` for a job appended beside others).
    """
    by_split: dict[str, list[Row]] = {}
    for r in rows:
        by_split.setdefault(r.split, []).append(r)
    tasks = []
    for split in sorted(by_split):
        groups, cur, cur_bytes = [], [], 0.0
        for r in by_split[split]:
            b = _estimate_bytes(r, opts) if opts.shard_mb else 0.0
            if cur and (len(cur) >= opts.examples_per_shard or
                        (opts.shard_mb and cur_bytes + b > opts.shard_mb * 2**20)):
                groups.append(cur)
                cur, cur_bytes = [], 0.0
            cur.append(r)
            cur_bytes += b
        if cur:
            groups.append(cur)
        stem = f"{split}-{tag}" if tag else split
        for i, g in enumerate(groups):
            rows_d = [dataclasses.asdict(r) for r in g]
            h = hashlib.sha256(json.dumps([rows_d, _settings(opts)], sort_keys=True).encode()).hexdigest()[:16]
            tasks.append({"name": f"{stem}-{i:05d}-of-{len(groups):05d}.tfrecord", "split": split,
                          "rows": rows_d, "plan_hash": h})
    return tasks


def _settings(opts: Options) -> dict:
    """The options that change shard contents."""
    d = dataclasses.asdict(opts)
    d.pop("examples_per_shard")
    d.pop("shard_mb")
    return d


def make_example(row: Row | dict, wave, opts: Options) -> bytes:
    """Serialize one record (schema in the module docstring) from a float32 (n,) waveform."""
    r = row if isinstance(row, dict) else dataclasses.asdict(row)
    return tfrecord.encode_example({
        "id": [r["id"].encode()],
        "uid": [stable_uid(r["id"])],
        "audio": [audio_lib.encode_audio(wave, opts.sample_rate, opts.audio_format)],
        "audio_format": [opts.audio_format.encode()],
        "sample_rate": [opts.sample_rate],
        "num_samples": [int(wave.shape[0])],
        "duration": [float(wave.shape[0] / opts.sample_rate)],
        "captions": [c.encode() for c in r["captions"]],
        "labels": [c.encode() for c in r["labels"]],
        "source": [r["source"].encode()],
        "split": [r["split"].encode()],
    })


def wav_shortfall(path: str) -> tuple[int, int] | None:
    """(frames the header declares, frames present) for a RIFF/WAVE file cut short, else None.

    soundfile silently decodes what is there and reports that as the length, so the cut is only visible in the
    ``data`` chunk size. Streamed WAVs (data size 0 or 0xFFFFFFFF) and other formats give None.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            pos, block = 12, 0
            while pos + 8 <= size:
                f.seek(pos)
                cid, n = struct.unpack("<4sI", f.read(8))
                if cid == b"fmt ":
                    fmt = f.read(min(n, 16))
                    block = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else 0
                elif cid == b"data":
                    if not block or n in (0, 0xFFFFFFFF):
                        return None
                    have = size - pos - 8
                    return (n // block, have // block) if have < n else None
                pos += 8 + n + (n & 1)
    except (OSError, struct.error):
        return None
    return None


def _audio_kind(msg: str) -> str:
    for key, kind in (("file not found", "not_found"), ("cannot decode", "undecodable"), ("empty audio", "empty"),
                      ("NaN/inf", "non_finite"), ("too short", "too_short"), ("silent", "silent")):
        if key in msg:
            return kind
    return "bad_audio"


def process_shard(task: dict, out_dir: str, opts: Options, progress=None) -> dict:
    """Write one shard (atomically) and its stats sidecar; returns the stats dict. Never raises on bad audio.

    Rows whose audio cannot be used are listed in ``skipped``; rows kept but changed (cut-short file, samples
    scaled into [-1, 1]) in ``altered``. ``progress(n)`` is called after each row (for the progress bar).
    """
    path = storage.join(out_dir, task["name"])
    stats = {"name": task["name"], "split": task["split"], "plan_hash": task["plan_hash"], "num_examples": 0,
             "seconds": 0.0, "sources": {}, "skipped": [], "altered": [], "num_rows": len(task["rows"])}
    min_samples = int(round(opts.min_seconds * opts.sample_rate))
    with tfrecord.ShardWriter(path) as w:
        for r in task["rows"]:
            if progress is not None:
                progress(1)
            short = wav_shortfall(r["path"])
            cut = (f"file cut short: its header declares {short[0]} frames, the file holds {short[1]}"
                   if short else "")
            try:
                wave = audio_lib.load_audio(r["path"], opts.sample_rate, max_seconds=opts.max_seconds,
                                            trim_db=opts.trim_db)
                if wave.shape[0] < max(min_samples, 1):
                    raise audio_lib.AudioError(f"{r['path']}: too short ({wave.shape[0] / opts.sample_rate:.3f} s "
                                               f"< --min-seconds {opts.min_seconds})")
                if not wave.any():
                    raise audio_lib.AudioError(f"{r['path']}: silent (all samples are zero)")
            except audio_lib.AudioError as e:
                stats["skipped"].append({"where": r["where"], "path": r["path"],
                                         "kind": "truncated" if short else _audio_kind(str(e)),
                                         "reason": f"{e}; {cut}" if short else str(e)})
                continue
            if short:
                stats["altered"].append({"where": r["where"], "path": r["path"], "kind": "truncated",
                                         "reason": f"{cut}; kept the {short[1]} frames present (row kept)"})
            peak = float(np.abs(wave).max())
            if peak > 1.0:  # never clip: scale the whole clip down so its peak fits int16 storage
                scale = _PEAK / peak
                wave = (wave * np.float32(scale)).astype(np.float32)
                stats["altered"].append({"where": r["where"], "path": r["path"], "kind": "out_of_range",
                                         "reason": f"samples beyond [-1, 1] (peak {peak:.4g}): scaled by "
                                                   f"{scale:.4g} to peak 1, not clipped (row kept)"})
            w.write(make_example(r, wave, opts))
            secs = wave.shape[0] / opts.sample_rate
            stats["num_examples"] += 1
            stats["seconds"] += secs
            s = stats["sources"].setdefault(r["source"], [0, 0.0])
            s[0] += 1
            s[1] += secs
    tfrecord._atomic_write(path + ".json", json.dumps(stats, indent=1, sort_keys=True).encode())
    return stats


def _read_stats(out_dir: str, name: str) -> dict | None:
    path = storage.join(out_dir, name)
    if not (tfrecord.shard_is_complete(path) and storage.isfile(path + ".json")):
        return None
    try:
        st = json.loads(storage.read_text(path + ".json"))
    except (OSError, ValueError):
        return None
    return st if isinstance(st, dict) else None


def _done_stats(out_dir: str, task: dict) -> dict | None:
    st = _read_stats(out_dir, task["name"])
    return st if st is not None and st.get("plan_hash") == task["plan_hash"] else None


_PROGRESS_QUEUE = None


def _init_worker(queue) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = queue


def _worker(args):
    task, out_dir, opts = args
    return process_shard(task, out_dir, opts, progress=_PROGRESS_QUEUE.put if _PROGRESS_QUEUE is not None else None)


# ---------------------------------------------------------------------------------------------- the output directory


def job_fingerprint(manifests: Sequence[str], root: str) -> str:
    """What identifies a job: its manifests and --root, by real path (options and manifest contents do not)."""
    key = {"manifests": sorted(os.path.realpath(m) for m in manifests), "root": os.path.realpath(root or ".")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers from an earlier failed call in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: exists, someone else's
        return True
    return True


def clean_stale_temps(out_dir: str) -> list[str]:
    """Remove ``NAME.tmp-PID`` files of our own outputs left by a killed run (PID gone); returns their names.

    Only temporaries of our file names (shards, their .index/.json, dataset.json, skipped.tsv) are touched.
    """
    removed = []
    for fn in sorted(storage.listdir(out_dir)):
        m = tfrecord.TMP_RE.fullmatch(fn)
        if not m or not (_SHARD_RE.fullmatch(m.group(1)) or m.group(1) in (METADATA, SKIPPED)):
            continue
        if _pid_alive(int(m.group(2))):
            log.warning("%s: left alone, its writer (pid %s) is still running", storage.join(out_dir, fn),
                        m.group(2))
            continue
        try:
            storage.remove(storage.join(out_dir, fn))
            removed.append(fn)
        except FileNotFoundError:
            pass
    if removed:
        log.info("removed %d temporary files of a killed run from %s", len(removed), out_dir)
    return removed


def _shard_files(out_dir: str) -> dict[str, list[str]]:
    """Our shard files in ``out_dir``: {shard name: [file names (shard, .index, .json)]}."""
    out: dict[str, list[str]] = {}
    for fn in storage.listdir(out_dir):
        m = _SHARD_RE.fullmatch(fn)
        if m:
            out.setdefault(m.group(1), []).append(fn)
    return out


def _remove_shards(out_dir: str, files: dict[str, list[str]], names: Iterable[str]) -> None:
    for name in names:
        for fn in files.get(name, ()):
            try:
                storage.remove(storage.join(out_dir, fn))
            except FileNotFoundError:
                pass


def _existing_jobs(out_dir: str, manifests: Sequence[str], fingerprint: str) -> tuple[list[dict] | None, str]:
    """The job records of ``out_dir``'s dataset.json ([] if there is none), or (None, why) if they are unknown.

    A dataset.json from before job records (format 1) whose manifests are this job's is adopted as this job.
    """
    path = storage.join(out_dir, METADATA)
    try:
        meta = json.loads(storage.read_text(path))
    except FileNotFoundError:
        return [], ""
    except (OSError, ValueError) as e:
        return None, f"its {METADATA} is unreadable ({type(e).__name__})"
    if not isinstance(meta, dict):
        return None, f"its {METADATA} is not a JSON object"
    if isinstance(meta.get("jobs"), list):
        return [j for j in meta["jobs"] if isinstance(j, dict) and "fingerprint" in j], ""
    old = [os.path.realpath(m) for m in meta.get("manifests") or []]
    if old and sorted(old) == sorted(os.path.realpath(m) for m in manifests):
        shards = [n for sp in (meta.get("splits") or {}).values() for n in sp.get("shards", [])]
        return [{"fingerprint": fingerprint, "tag": "", "shards": shards, "complete": True, "problems": []}], ""
    return None, f"its {METADATA} comes from manifests {', '.join(meta.get('manifests') or ['?'])}"


def _describe_jobs(jobs: list[dict]) -> str:
    ms = [os.path.basename(m) for j in jobs for m in j.get("manifests", [])]
    return "manifests " + ", ".join(ms[:4]) + (f" and {len(ms) - 4} more" if len(ms) > 4 else "") if ms else ""


def run(manifests: Sequence[str], out_dir: str, root: str = "", opts: Options | None = None, workers: int = 1,
        progress: bool = True, overwrite: bool = False, append: bool = False,
        allow_outside_root: bool = False) -> dict:
    """Preprocess ``manifests`` into ``out_dir``; returns the dataset metadata (also written to dataset.json).

    ``overwrite`` / ``append`` / ``allow_outside_root``: see the module docstring. Raises UserError (nothing
    written) for bad arguments, unreadable manifests, a manifest without usable rows, or another job's dataset
    in ``out_dir``; an OSError while writing (e.g. ENOSPC) propagates with the file name, finished shards kept.
    """
    opts = opts or Options()
    if overwrite and append:
        raise UserError("--overwrite and --append exclude each other: replace the dataset in --out, or add to it")
    if opts.audio_format not in audio_lib.FORMATS:
        raise UserError(f"--format must be one of {audio_lib.FORMATS}, got {opts.audio_format!r}")
    if not valid_split(opts.default_split):
        raise UserError(f"--default-split {opts.default_split!r}: not a plain name (letters, digits and _.-, "
                        "starting with a letter or digit, at most 64 characters)")
    if not manifests:
        raise UserError("no --manifest given")
    for m in manifests:
        if not os.path.exists(m):
            raise UserError(f"manifest {m}: file not found")
        if not os.path.isfile(m):
            raise UserError(f"manifest {m}: not a file")
    if root and not os.path.isdir(root):
        raise UserError(f"--root {root}: " + ("not a directory" if os.path.exists(root) else "no such directory"))
    if storage.isfile(out_dir):
        raise UserError(f"--out {out_dir}: is a file, not a directory; choose a directory")

    rows, problems = read_manifests(manifests, root, opts, allow_outside_root)
    if opts.caption_generator != "template":   # keyword-to-caption for labelled rows
        from clap_jax.data import keyword_captions

        keyword_captions.caption_rows(rows, opts.label_templates, opts.label_joiner, opts.label_captions,
                                      keyword_captions.make_generator(opts.caption_generator, opts.label_joiner))
    usable = collections.Counter(r.where.rsplit(":", 1)[0] for r in rows)
    for m in manifests:
        if not usable[m]:
            mine = [p for p in problems if p["where"].rsplit(":", 1)[0] == m and p["fatal"]]
            if not mine:
                raise UserError(f"manifest {m}: no rows (an empty file, or a CSV header without data rows)")
            raise UserError(f"manifest {m}: no usable rows ({len(mine)} skipped; first: line "
                            f"{mine[0]['where'].rsplit(':', 1)[1]}: {mine[0]['reason']})")

    fp = job_fingerprint(manifests, root)
    storage.makedirs(out_dir, exist_ok=True)
    jobs, why = _existing_jobs(out_dir, manifests, fp)
    files = _shard_files(out_dir)
    mine = next((j for j in jobs or [] if j["fingerprint"] == fp), None)
    others = [j for j in jobs or [] if j is not mine]
    orphans = set(files) - {n for j in jobs or [] for n in j.get("shards", [])}
    if jobs is None or (mine is None and (others or orphans)):  # another job's dataset is here
        if not (overwrite or (append and jobs is not None)):
            what = why or _describe_jobs(others) or f"{len(files)} shards not described by {METADATA}"
            hint = ("pass --overwrite to replace it or --append to add this job's shards beside it" if jobs is not None
                    else "pass --overwrite to replace it (--append needs a readable dataset.json)")
            raise UserError(f"--out {out_dir} already holds a dataset built by another preprocess job ({what}); "
                            f"{hint}, or choose another --out")
    if overwrite:  # every other job's shards go; this job's own finished shards are still valid
        others, orphans, doomed = [], set(), set(files) - set(mine["shards"] if mine else [])
    else:
        doomed = set()
    if append and others:
        theirs = {(j.get("settings") or {}).get("sample_rate") for j in others} - {None}
        if theirs and theirs != {opts.sample_rate}:
            raise UserError(f"--append: {out_dir} holds audio at {', '.join(map(str, sorted(theirs)))} Hz, this job "
                            f"writes {opts.sample_rate} Hz; pass the same --sample-rate or choose another --out")
    tag = mine.get("tag", "") if mine else ("" if not others else f"j{fp[:8]}")
    tasks = plan_shards(rows, opts, tag)
    planned = {t["name"] for t in tasks}
    clash = planned & ({n for j in others for n in j.get("shards", [])} | orphans)
    if clash:
        raise UserError(f"--out {out_dir}: shard {sorted(clash)[0]} of this job would replace another job's; "
                        "use another --out or --overwrite")

    # all checks passed: from here on the directory is changed
    clean_stale_temps(out_dir)
    if orphans:
        log.warning("%s: %d shard files not described by %s are left alone: %s", out_dir, len(orphans), METADATA,
                    ", ".join(sorted(orphans)[:3]))
    _remove_shards(out_dir, files, doomed)
    if overwrite:
        for fn in (METADATA, SKIPPED):
            if storage.exists(storage.join(out_dir, fn)):
                storage.remove(storage.join(out_dir, fn))
    if mine:
        _remove_shards(out_dir, files, set(mine["shards"]) - planned)  # this job's shards from an older plan
    job = {"fingerprint": fp, "tag": tag, "manifests": [os.path.realpath(m) for m in manifests],
           "root": os.path.realpath(root or "."), "settings": _settings(opts),
           "examples_per_shard": opts.examples_per_shard, "shard_mb": opts.shard_mb,
           "allow_outside_root": allow_outside_root, "shards": [t["name"] for t in tasks], "complete": False,
           "problems": []}
    all_jobs = list(jobs or []) if not overwrite else []
    if mine is not None and mine in all_jobs:
        all_jobs[all_jobs.index(mine)] = job
    else:
        all_jobs = [j for j in all_jobs if j is not mine] + [job]
    _write_metadata(out_dir, all_jobs, {})  # the job is recorded before any shard of it is written

    results, todo = {}, []
    for t in tasks:
        st = _done_stats(out_dir, t)
        if st is None:
            todo.append(t)
        else:
            results[t["name"]] = st
    total_rows = sum(len(t["rows"]) for t in todo)
    log.info("%d rows in %d shards; %d shards already done, %d to write", len(rows), len(tasks),
             len(tasks) - len(todo), len(todo))
    from tqdm import tqdm

    bar = tqdm(total=total_rows, unit="clip", desc="preprocess", disable=not progress, file=sys.stderr)
    t0 = time.time()
    try:
        if todo and (workers <= 1 or len(todo) == 1):
            for t in todo:
                st = process_shard(t, out_dir, opts, progress=bar.update)
                results[st["name"]] = st
        elif todo:
            ctx = mp.get_context("spawn")  # no fork: safe whatever threads the caller runs
            queue = ctx.Queue()
            stop = threading.Event()

            def drain():  # per-clip progress from the workers
                while not stop.is_set() or not queue.empty():
                    try:
                        bar.update(queue.get(timeout=0.2))
                    except Exception:  # noqa: BLE001 - queue.Empty or closed at exit
                        pass

            th = threading.Thread(target=drain, daemon=True)
            th.start()
            with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(queue,)) as pool:
                try:
                    for st in pool.imap_unordered(_worker, [(t, out_dir, opts) for t in todo]):
                        results[st["name"]] = st
                finally:
                    stop.set()
                    th.join()
    finally:
        bar.close()
    job["complete"] = True
    job["problems"] = [{k: v for k, v in p.items()} for p in problems]
    return _write_metadata(out_dir, all_jobs, results, {"elapsed_seconds_this_run": round(time.time() - t0, 3)})


def _write_metadata(out_dir: str, jobs: list[dict], fresh: dict[str, dict], extra: dict | None = None) -> dict:
    """Aggregate the finished jobs into dataset.json and skipped.tsv; ``fresh`` are shard stats already in memory."""
    stats, problems = [], []
    for j in jobs:
        if not j.get("complete"):
            continue
        for name in j["shards"]:
            st = fresh.get(name) or _read_stats(out_dir, name)
            if st is None:
                log.warning("%s: shard %s of job %s is missing or unfinished; rerun that job", out_dir, name,
                            _describe_jobs([j]) or j["fingerprint"])
                continue
            stats.append(st)
        problems += j.get("problems", [])
    meta = _metadata(stats, problems, [m for j in jobs for m in j.get("manifests", [])],
                     next((j["settings"] for j in jobs if j.get("settings")), None))
    meta["jobs"] = jobs
    meta.update(extra or {})
    tfrecord._atomic_write(storage.join(out_dir, METADATA), json.dumps(meta, indent=1, sort_keys=True).encode())
    lines = ["where\tpath\treason\n"] + [f"{s['where']}\t{s['path']}\t{s['reason']}\n"
                                          for s in meta["skipped"] + meta["altered"] + meta["warnings"]]
    tfrecord._atomic_write(storage.join(out_dir, SKIPPED), "".join(lines).encode("utf-8"))
    return meta


def _metadata(stats: list[dict], problems: list[dict], manifests, settings: dict | None) -> dict:
    splits, sources, skipped, altered = {}, {}, [], []
    for st in stats:
        sp = splits.setdefault(st["split"], {"num_examples": 0, "hours": 0.0, "shards": []})
        sp["num_examples"] += st["num_examples"]
        sp["hours"] += st["seconds"] / 3600
        sp["shards"].append(st["name"])
        for src, (n, secs) in st["sources"].items():
            s = sources.setdefault(src, {"num_examples": 0, "hours": 0.0})
            s["num_examples"] += n
            s["hours"] += secs / 3600
        skipped += st["skipped"]
        altered += st.get("altered", [])
    skipped = [{k: v for k, v in p.items() if k != "fatal"} for p in problems if p.get("fatal", True)] + skipped
    warnings = [{k: v for k, v in p.items() if k != "fatal"} for p in problems if p.get("fatal") is False]
    counts = {name: dict(sorted(collections.Counter(p.get("kind", "other") for p in lst).items()))
              for name, lst in (("skipped", skipped), ("altered", altered), ("warnings", warnings))}
    return {
        "format_version": FORMAT_VERSION,
        "num_examples": sum(s["num_examples"] for s in splits.values()),
        "hours": sum(s["hours"] for s in splits.values()),
        "splits": splits,
        "sources": sources,
        "num_skipped": len(skipped),
        "skipped": skipped,
        "num_altered": len(altered),
        "altered": altered,
        "warnings": warnings,
        "problem_counts": counts,
        "manifests": list(manifests),
        "settings": settings,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clap_jax.data.preprocess", description=__doc__.split("\n\n")[0],
                                epilog=__doc__[__doc__.index("Jobs, reruns"):],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", "-m", action="append", help="CSV or JSONL manifest (repeatable); or --tfds")
    p.add_argument("--root", default="", help="directory that relative audio paths are relative to; paths outside "
                   "it are refused (default: the current directory)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="read audio paths outside --root (absolute paths, '..') instead of skipping those rows")
    p.add_argument("--out", "-o", required=True, help="output directory")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true",
                      help="replace the dataset another job left in --out (its shards are deleted)")
    mode.add_argument("--append", action="store_true",
                      help="add this job's shards beside the dataset in --out; dataset.json describes both")
    p.add_argument("--workers", "-j", type=int, default=os.cpu_count() or 1)
    p.add_argument("--sample-rate", type=int, default=44100)
    p.add_argument("--format", dest="audio_format", choices=audio_lib.FORMATS, default="pcm16",
                   help="pcm16: ~10x faster to decode (default); flac: ~20-40%% smaller, lossless for 16-bit")
    p.add_argument("--min-seconds", type=float, default=0.1, help="skip clips shorter than this")
    p.add_argument("--max-seconds", type=float, default=None, help="keep only the first N seconds")
    p.add_argument("--trim-db", type=float, default=None, help="trim leading/trailing audio this many dB below peak")
    p.add_argument("--examples-per-shard", type=int, default=1000)
    p.add_argument("--shard-mb", type=float, default=None, help="also cap shards at about this many MiB")
    p.add_argument("--label-template", action="append", default=None,
                   help="caption template for labels, '{labels}' is replaced (repeatable)")
    p.add_argument("--label-joiner", default=", ")
    p.add_argument("--label-captions", choices=("if-missing", "always", "never"), default="if-missing")
    p.add_argument("--default-split", default="train")
    p.add_argument("--caption-generator", default="template",
                   help="captions for labelled rows: 'template' (--label-template) or a local HF seq2seq model "
                   "directory, e.g. a T5 keyword-to-caption model (clap_jax.data.keyword_captions)")
    p.add_argument("--quiet", action="store_true")
    tfds_source.add_arguments(p)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(levelname)s %(message)s")
    opts = Options(sample_rate=a.sample_rate, audio_format=a.audio_format, min_seconds=a.min_seconds,
                   max_seconds=a.max_seconds, trim_db=a.trim_db, examples_per_shard=a.examples_per_shard,
                   shard_mb=a.shard_mb, label_templates=tuple(a.label_template or Options.label_templates),
                   label_joiner=a.label_joiner, label_captions=a.label_captions, default_split=a.default_split,
                   caption_generator=a.caption_generator)
    a.manifest, a.root = tfds_source.from_args(a, progress=not a.quiet)  # --tfds: its export's manifest
    meta = run(a.manifest, a.out, a.root, opts, workers=a.workers, progress=not a.quiet, overwrite=a.overwrite,
               append=a.append, allow_outside_root=a.allow_outside_root)
    print(f"wrote {meta['num_examples']} examples ({meta['hours']:.3f} h) to {a.out}; "
          f"skipped {meta['num_skipped']}, altered {meta['num_altered']} (see {storage.join(a.out, SKIPPED)})")
    shown = meta["skipped"] + meta["altered"]
    for s in shown[:20]:
        print(f"  {'altered' if s in meta['altered'] else 'skipped'} {s['where']}: {s['reason']}", file=sys.stderr)
    if len(shown) > 20:
        print(f"  ... and {len(shown) - 20} more in {storage.join(a.out, SKIPPED)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
