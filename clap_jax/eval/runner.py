"""Run the zero-shot suite: find datasets under a root, read them, embed (cached), score, collect results.

Python use (the trainer runs a subset periodically):

    from clap_jax.eval import evaluate
    results = evaluate(embedder, "/data/eval", tasks="esc50,builtin", cache_dir="/tmp/clap_cache")
    results["tasks"]["esc50"]["metrics"]["acc"]

Config (a dict, or a JSON file for the CLI) overrides the documented defaults; every choice ends up in the
results next to the number:
    {"prompts": {"<task>": "template with {label}"},
     "options": {"<reader>": {"<option>": value}},        e.g. {"dcase17": {"split": "testing"}}
     "threshold_rule": {"<task>": "top1"},
     "labels": {"<task>": {"<class word>": "<replacement>"}}}      e.g. {"gtzan_genres": {"hiphop": "hip hop"}}
"""
from __future__ import annotations

import dataclasses
import datetime
import time
import traceback
from pathlib import Path
from typing import Optional

from clap_jax.eval import captioning, paper
from clap_jax.eval.clips import ClipError, LoaderConfig
from clap_jax.eval.embed import EmbeddingCache, embed_audio, embed_texts
from clap_jax.eval.tasks import REGISTRY, DatasetError
from clap_jax.eval.zeroshot import score_task, texts_for

CAPTIONING_PENDING = ("pending a captioner: the captioning tasks run with captioner weights (--weights "
                      "clapcap_weights_2023.pth, msclap's clapcap), scored with CIDEr-D, SPICE and SPIDEr.")


def _wanted(spec) -> Optional[set]:
    if spec is None or spec == "all" or spec == ["all"]:
        return None
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return {s.strip() for s in items if s.strip()}


def _selected(reader, wanted) -> bool:
    return (wanted is None or reader.name in wanted or any(t in wanted for t in reader.tasks)
            or any(w.startswith(reader.name + "_") for w in wanted))   # builtin_<name>, hear_<task>


def unknown_task_names(tasks) -> list:
    """Names in a --tasks list that no reader can produce (typos)."""
    wanted = _wanted(tasks) or set()
    return sorted(w for w in wanted if not any(_selected(r, {w}) for r in REGISTRY.values()))


def discover(data_root, tasks="all", config: Optional[dict] = None):
    """([(reader, dataset_dir)], [reader whose data is absent]) for the selected readers."""
    wanted = _wanted(tasks)
    options = (config or {}).get("options", {})
    found, missing = [], []
    for reader in REGISTRY.values():
        if not _selected(reader, wanted):
            continue
        path = reader.locate(Path(data_root), options.get(reader.name, {}))
        (found if path is not None else missing).append((reader, path) if path is not None else reader)
    return found, missing


def load_tasks(data_root, tasks="all", config: Optional[dict] = None):
    """Read every selected dataset found under data_root. Returns (tasks, errors, missing_readers)."""
    config = config or {}
    wanted = _wanted(tasks)
    found, missing = discover(data_root, tasks, config)
    out, errors = [], {}
    for reader, path in found:
        try:
            got = reader.read(path, config.get("options", {}).get(reader.name, {}))
        except DatasetError as e:
            errors[reader.name] = f"{reader.name}: {e}"
            continue
        for t in got:
            if wanted is not None and not ({reader.name, t.name, t.paper_key} & wanted):
                continue
            if t.name in config.get("prompts", {}):
                t.prompt = config["prompts"][t.name]
            renames = config.get("labels", {}).get(t.name)
            if renames:   # class words as written into prompts, e.g. {"hiphop": "hip hop"}
                t.classes = [renames.get(c, c) for c in t.classes]
                t.settings["label_overrides"] = dict(renames)
            if t.name in config.get("threshold_rule", {}):
                t.threshold_rule = config["threshold_rule"][t.name]
            t.settings.setdefault("dataset_dir", str(path))
            out.append(t)
    return out, errors, missing


def evaluate(embedder, data_root, tasks="all", config: Optional[dict] = None, cache_dir: Optional[str] = None,
             loader: LoaderConfig = LoaderConfig(), batch_size: int = 64, workers: int = 4,
             progress: bool = True, skip_bad_clips: bool = False, log=print) -> dict:
    """Evaluate one embedder on every selected task found under data_root; returns the results dict.

    A dataset that cannot be read, or a clip that cannot be decoded, fails only its own task: the message
    (naming the file) goes to results["errors"] and the other tasks still run. With skip_bad_clips the bad
    clips are dropped instead and listed under the task's "dropped_clips".
    """
    for name in unknown_task_names(tasks):
        log(f"[eval] WARNING: no reader produces a task named {name!r}; known: "
            + ", ".join(sorted({t for r in REGISTRY.values() for t in r.tasks})))
    cache_id = getattr(embedder, "cache_id", None)
    if captioning.is_captioner(embedder):   # captioner weights: the captioning tasks (and only those) run
        got = captioning.evaluate_captioning(embedder, data_root, tasks, (config or {}).get("options"),
                                             (config or {}).get("spice_jar"), progress=progress, log=log)
        return {"checkpoint": cache_id, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"), "data_root": str(data_root), "logit_scale": None,
                "loader": dataclasses.asdict(loader), "batch_size": batch_size, "pending": {}, **got}
    cache = EmbeddingCache(cache_dir, cache_id)
    task_list, errors, missing = load_tasks(data_root, tasks, config)
    results = {
        "checkpoint": cache_id,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data_root": str(data_root),
        "logit_scale": float(embedder.logit_scale),
        "loader": dataclasses.asdict(loader),
        "batch_size": batch_size,
        "tasks": {},
        # a dataset that cannot be read fails each task it would have produced
        "errors": {t: msg for name, msg in errors.items() for t in REGISTRY[name].tasks},
        "missing": [{"reader": r.name, "tasks": list(r.tasks), "how_to_get": r.how_to_get} for r in missing],
        "pending": {t: CAPTIONING_PENDING for t in paper.CAPTIONING_TASKS
                    if _wanted(tasks) is None or t in _wanted(tasks)},
    }
    for name, msg in errors.items():
        log(f"[eval] ERROR {msg}")
    shared_audio = {}   # tasks over the same clips (NSynth x4, ESC50 + Actions) embed them once
    for task in task_list:
        t0 = time.time()
        dropped = []

        def on_error(path, exc, _dropped=dropped):
            _dropped.append(str(exc))
            log(f"[eval] {task.name}: skipping unreadable clip: {exc}")

        hits_before = cache.hits
        try:
            paths = tuple(c.path for c in task.clips)
            if paths in shared_audio:
                audio_emb, kept, earlier_drops = shared_audio[paths]
                dropped += earlier_drops
                audio_source = "shared with an earlier task"
            else:
                audio_emb, kept = embed_audio(embedder, task.name, list(paths), cache, loader, batch_size, workers,
                                              progress, on_error=on_error if skip_bad_clips else None)
                shared_audio[paths] = (audio_emb, kept, list(dropped))
                audio_source = "hit" if cache.hits > hits_before else "miss"
            texts, _ = texts_for(task)
            text_emb = embed_texts(embedder, task.name, texts, cache)
            m = score_task(task, audio_emb, text_emb, embedder.logit_scale, kept)
        except (ClipError, DatasetError, ValueError, RuntimeError) as e:
            msg = f"{task.name}: {e}"
            results["errors"][task.name] = msg
            log(f"[eval] ERROR {msg}")
            if not isinstance(e, (ClipError, DatasetError)):
                log(traceback.format_exc())
            continue
        entry = {"metrics": m, "settings": task.describe(), "seconds": round(time.time() - t0, 3),
                 "cache": audio_source}
        if dropped:
            entry["dropped_clips"] = dropped
        results["tasks"][task.name] = entry
        shown = ", ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float))
        log(f"[eval] {task.name}: {shown} ({len(kept)} clips, {entry['seconds']} s, cache {entry['cache']})")
    return results


def _matches(name: str, task: str, entry: dict) -> bool:
    """Whether a --tasks name asked for this task (by task name, reader name or paper key)."""
    if name == task or entry.get("settings", {}).get("paper_key") == name:
        return True
    reader = REGISTRY.get(name)
    return reader is not None and (task in reader.tasks or task.startswith(name + "_"))


def requested_failures(results: dict, tasks="all") -> dict:
    """{task or requested name: why it produced no result} for one `evaluate` result.

    Every task that failed (unreadable dataset, bad clip) is listed. Names given explicitly in `tasks` that
    produced nothing are listed too (unknown name, data not found, pending); with tasks="all" a dataset that is
    simply absent is normal use and is not a failure."""
    wanted = _wanted(tasks)
    failed = {t: msg if msg.startswith(f"{t}:") else f"{t}: {msg}" for t, msg in results.get("errors", {}).items()
              if wanted is None or any(_matches(w, t, {}) for w in wanted)}   # a broken reader lists all its tasks
    if wanted is None:
        return failed
    unknown = set(unknown_task_names(tasks))
    missing = {m["reader"] for m in results.get("missing", [])}
    for name in sorted(wanted):
        if any(_matches(name, t, {}) for t in failed):
            continue   # already listed with its own error
        if any(_matches(name, t, e) for t, e in results.get("tasks", {}).items()):
            continue
        if name in results.get("pending", {}):
            failed[name] = f"{name}: {results['pending'][name]}"
        elif name in unknown:
            failed[name] = f"{name}: no such task (python -m clap_jax.eval --list shows the datasets)"
        elif any(_selected(REGISTRY[r], {name}) for r in missing if r in REGISTRY):
            failed[name] = f"{name}: its data was not found under {results.get('data_root')}"
        else:
            failed[name] = f"{name}: produced no task"
    return failed


def summary(results: dict) -> dict:
    """Flat {"<task>/<metric>": value} of the headline numbers (for a trainer's metric writer)."""
    out = {}
    for name, entry in results.get("tasks", {}).items():
        kind = entry["settings"]["kind"]
        keys = {"single_label": ("acc",), "multi_label": ("mAP", "f1"),
                "retrieval": ("a2t_R@1", "a2t_mAP@10", "t2a_R@1", "t2a_mAP@10"), "captioning": captioning.METRICS}[kind]
        out.update({f"{name}/{k}": float(entry["metrics"][k]) for k in keys if k in entry["metrics"]})
    return out
