"""Preprocess audio-caption manifests into sharded TFRecords (no TensorFlow needed).

    python -m clap_jax.data.preprocess --manifest train.csv --root /audio --out /data/mine --workers 8

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
* ``dataset.json``: counts, hours per split and source, shard list, audio settings, skipped rows with reasons.
* ``skipped.tsv``: ``where<TAB>path<TAB>reason`` for every skipped or malformed row.

Each record is a ``tf.train.Example`` with: ``id`` (bytes), ``uid`` (int64, stable 31-bit hash of id), ``audio``
(bytes in ``audio_format``: 'flac' or 'pcm16', mono), ``sample_rate``, ``num_samples`` (int64), ``duration``
(float, seconds), ``captions`` (bytes list, UTF-8), ``labels`` (bytes list), ``source``, ``split`` (bytes).

Shards are planned from the manifests alone (by count, optionally by estimated size), so the output is the same
for the same input whatever the number of workers, and a rerun only redoes shards that are missing or whose
planned rows changed. Bad input never stops the job: it is skipped, counted and listed.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import sys
import threading
import time
from typing import Iterable, Sequence

from clap_jax.data import audio as audio_lib
from clap_jax.data import tfrecord

log = logging.getLogger(__name__)
METADATA = "dataset.json"
FORMAT_VERSION = 1
_PATH_COLS = ("path", "audio", "file", "filename", "file_name", "audio_path")
_LABEL_COLS = ("labels", "keywords", "label", "tags")
_SHARD_RE = re.compile(r"(.+-\d{5}-of-\d{5}\.tfrecord)(\.index|\.json|\.tmp-\d+|\.index\.tmp-\d+|\.json\.tmp-\d+)?")


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


# ---------------------------------------------------------------------------------------------- manifests


def _raw_rows(manifest: str) -> Iterable[tuple[int, dict | None, str | None]]:
    """Yield (line_number, fields, error) for each data row of a CSV or JSONL manifest."""
    if manifest.endswith((".jsonl", ".json")):
        with open(manifest, encoding="utf-8") as f:
            for ln, line in enumerate(f, 1):
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
    with open(manifest, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
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


def read_manifests(manifests: Sequence[str], root: str, opts: Options) -> tuple[list[Row], list[dict]]:
    """Validate all rows. Returns (rows, problems); each problem is {'where', 'path', 'reason'}.

    Problems with ``'fatal': False`` are warnings about a row that is kept (e.g. one empty caption of several).
    """
    rows, problems, seen = [], [], {}
    for manifest in manifests:
        default_source = os.path.splitext(os.path.basename(manifest))[0]
        for ln, obj, err in _raw_rows(manifest):
            where = f"{manifest}:{ln}"
            if err is not None:
                problems.append({"where": where, "path": "", "reason": f"malformed manifest row: {err}"})
                continue
            path = next((obj[k] for k in _PATH_COLS if obj.get(k)), None)
            if not isinstance(path, str) or not path.strip():
                problems.append({"where": where, "path": "", "reason": "malformed manifest row: no audio path "
                                 f"(need one of the columns {', '.join(_PATH_COLS)})"})
                continue
            path = path.strip()
            caps = _split_list(obj.get("captions")) + _split_list(obj.get("caption"))
            if any(not isinstance(c, str) for c in caps):
                problems.append({"where": where, "path": path, "reason": "malformed manifest row: caption is not "
                                 "a string"})
                continue
            labels = next((_split_list(obj[k]) for k in _LABEL_COLS if obj.get(k)), [])
            labels = [str(x).strip() for x in labels if str(x).strip()]
            nonempty = [c.strip() for c in caps if c.strip()]
            if len(nonempty) < len(caps):
                fatal = not nonempty and not labels
                problems.append({"where": where, "path": path, "fatal": fatal,
                                 "reason": "empty caption" + (" (row skipped: nothing else to learn from)"
                                                              if fatal else " dropped (row kept)")})
                if fatal:
                    continue
            if opts.label_captions == "always" or (opts.label_captions == "if-missing" and not nonempty):
                if labels:
                    joined = opts.label_joiner.join(labels)
                    nonempty += [t.format(labels=joined) for t in opts.label_templates]
            if not nonempty:
                problems.append({"where": where, "path": path, "reason": "malformed manifest row: no caption and no "
                                 "labels"})
                continue
            ex_id = str(obj.get("id") or path)
            if ex_id in seen:
                problems.append({"where": where, "path": path, "reason": f"duplicate id {ex_id!r} (first at "
                                 f"{seen[ex_id]}); row skipped"})
                continue
            seen[ex_id] = where
            full = path if os.path.isabs(path) else os.path.join(root, path)
            rows.append(Row(where=where, path=full, id=ex_id, captions=nonempty, labels=labels,
                            source=str(obj.get("source") or default_source),
                            split=str(obj.get("split") or opts.default_split)))
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


def plan_shards(rows: Sequence[Row], opts: Options) -> list[dict]:
    """Group rows by split (manifest order) into shards of <= examples_per_shard rows (and <= shard_mb, estimated).

    Returns a list of tasks {'name', 'split', 'rows': [Row as dict], 'plan_hash'} with deterministic names.
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
        for i, g in enumerate(groups):
            rows_d = [dataclasses.asdict(r) for r in g]
            h = hashlib.sha256(json.dumps([rows_d, _settings(opts)], sort_keys=True).encode()).hexdigest()[:16]
            tasks.append({"name": f"{split}-{i:05d}-of-{len(groups):05d}.tfrecord", "split": split,
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


def process_shard(task: dict, out_dir: str, opts: Options, progress=None) -> dict:
    """Write one shard (atomically) and its stats sidecar; returns the stats dict. Never raises on bad audio.

    ``progress(n)`` is called after each row (for the progress bar).
    """
    path = os.path.join(out_dir, task["name"])
    stats = {"name": task["name"], "split": task["split"], "plan_hash": task["plan_hash"], "num_examples": 0,
             "seconds": 0.0, "sources": {}, "skipped": [], "num_rows": len(task["rows"])}
    min_samples = int(round(opts.min_seconds * opts.sample_rate))
    with tfrecord.ShardWriter(path) as w:
        for r in task["rows"]:
            if progress is not None:
                progress(1)
            try:
                wave = audio_lib.load_audio(r["path"], opts.sample_rate, max_seconds=opts.max_seconds,
                                            trim_db=opts.trim_db)
                if wave.shape[0] < max(min_samples, 1):
                    raise audio_lib.AudioError(f"{r['path']}: too short ({wave.shape[0] / opts.sample_rate:.3f} s "
                                               f"< --min-seconds {opts.min_seconds})")
                if not wave.any():
                    raise audio_lib.AudioError(f"{r['path']}: silent (all samples are zero)")
            except audio_lib.AudioError as e:
                stats["skipped"].append({"where": r["where"], "path": r["path"], "reason": str(e)})
                continue
            w.write(make_example(r, wave, opts))
            secs = wave.shape[0] / opts.sample_rate
            stats["num_examples"] += 1
            stats["seconds"] += secs
            s = stats["sources"].setdefault(r["source"], [0, 0.0])
            s[0] += 1
            s[1] += secs
    tfrecord._atomic_write(path + ".json", json.dumps(stats, indent=1, sort_keys=True).encode())
    return stats


def _done_stats(out_dir: str, task: dict) -> dict | None:
    path = os.path.join(out_dir, task["name"])
    if not (tfrecord.shard_is_complete(path) and os.path.isfile(path + ".json")):
        return None
    try:
        with open(path + ".json") as f:
            st = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return st if st.get("plan_hash") == task["plan_hash"] else None


_PROGRESS_QUEUE = None


def _init_worker(queue) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = queue


def _worker(args):
    task, out_dir, opts = args
    return process_shard(task, out_dir, opts, progress=_PROGRESS_QUEUE.put if _PROGRESS_QUEUE is not None else None)


def run(manifests: Sequence[str], out_dir: str, root: str = "", opts: Options | None = None, workers: int = 1,
        progress: bool = True) -> dict:
    """Preprocess ``manifests`` into ``out_dir``; returns the dataset metadata (also written to dataset.json)."""
    opts = opts or Options()
    if opts.audio_format not in audio_lib.FORMATS:
        raise ValueError(f"--format must be one of {audio_lib.FORMATS}, got {opts.audio_format!r}")
    for m in manifests:
        if not os.path.isfile(m):
            raise FileNotFoundError(f"manifest {m}: file not found")
    os.makedirs(out_dir, exist_ok=True)
    rows, problems = read_manifests(manifests, root, opts)
    tasks = plan_shards(rows, opts)
    planned = {t["name"] for t in tasks}
    for fn in os.listdir(out_dir):  # our shards from an older plan (other manifests/settings): remove them
        m = _SHARD_RE.fullmatch(fn)
        if m and m.group(1) not in planned:
            os.remove(os.path.join(out_dir, fn))
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
    bar.close()
    meta = _metadata([results[t["name"]] for t in tasks], problems, manifests, opts)
    meta["elapsed_seconds_this_run"] = round(time.time() - t0, 3)
    tfrecord._atomic_write(os.path.join(out_dir, METADATA), json.dumps(meta, indent=1, sort_keys=True).encode())
    with open(os.path.join(out_dir, "skipped.tsv"), "w", encoding="utf-8") as f:
        f.write("where\tpath\treason\n")
        for s in meta["skipped"] + meta["warnings"]:
            f.write(f"{s['where']}\t{s['path']}\t{s['reason']}\n")
    return meta


def _metadata(stats: list[dict], problems: list[dict], manifests, opts: Options) -> dict:
    splits, sources, skipped = {}, {}, []
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
    skipped = [p for p in problems if p.get("fatal", True)] + skipped
    for p in skipped:
        p.pop("fatal", None)
    warnings = [{k: v for k, v in p.items() if k != "fatal"} for p in problems if p.get("fatal") is False]
    return {
        "format_version": FORMAT_VERSION,
        "num_examples": sum(s["num_examples"] for s in splits.values()),
        "hours": sum(s["hours"] for s in splits.values()),
        "splits": splits,
        "sources": sources,
        "num_skipped": len(skipped),
        "skipped": skipped,
        "warnings": warnings,
        "manifests": list(manifests),
        "settings": _settings(opts),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clap_jax.data.preprocess", description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", "-m", action="append", required=True, help="CSV or JSONL manifest (repeatable)")
    p.add_argument("--root", default="", help="directory that relative audio paths are relative to")
    p.add_argument("--out", "-o", required=True, help="output directory")
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
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(levelname)s %(message)s")
    opts = Options(sample_rate=a.sample_rate, audio_format=a.audio_format, min_seconds=a.min_seconds,
                   max_seconds=a.max_seconds, trim_db=a.trim_db, examples_per_shard=a.examples_per_shard,
                   shard_mb=a.shard_mb, label_templates=tuple(a.label_template or Options.label_templates),
                   label_joiner=a.label_joiner, label_captions=a.label_captions, default_split=a.default_split)
    try:
        meta = run(a.manifest, a.out, a.root, opts, workers=a.workers, progress=not a.quiet)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {meta['num_examples']} examples ({meta['hours']:.3f} h) to {a.out}; "
          f"skipped {meta['num_skipped']} (see {os.path.join(a.out, 'skipped.tsv')})")
    for s in meta["skipped"]:
        print(f"  skipped {s['where']}: {s['reason']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
