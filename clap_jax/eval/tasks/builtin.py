"""Built-in suite: zero-shot tasks on the project's own synthetic held-out clips (no download needed).

Format (written by clap_jax/data/synthetic.py; any directory with this file works):

    <dir>/eval_tasks.json = {"tasks": [
        {"name": "tones",                        # task name; results appear as "builtin_<name>"
         "type": "single_label",                 # "single_label" | "multi_label" | "retrieval"
         "prompt": "this is a sound of {label}", # class prompt template (classification only)
         "classes": ["beep", "buzz"],            # label strings (classification only)
         "clips": [{"path": "clips/0001.wav",    # relative to <dir> (absolute paths also accepted)
                    "labels": ["beep"],          # class names (exactly one for single_label)
                    "captions": ["a beep"]}]}    # retrieval only: one or more captions per clip
    ]}

<dir> is the data root itself or a direct subdirectory of it (e.g. <root>/synthetic/eval_tasks.json).

The shared-clips variant written by `python -m clap_jax.data.synthetic` ("format": "clap_jax.eval_tasks/1") is
read too: one top-level "clips" list ({"path", "captions": [..], "labels": {label_key: value}}), relative to
"audio_root"; tasks {"name", "type": "zero_shot_classification" | "retrieval", "label_key", "class_names",
"prompt" with "{}", optional "label_map" {value: class name}, "caption_key"}.
"""
from __future__ import annotations

import json
from pathlib import Path

from clap_jax.eval.tasks.base import (MULTI, RETRIEVAL, SINGLE, Clip, DatasetError, Reader, Task, register,
                                      require)

TASKS_FILE = "eval_tasks.json"


@register
class Builtin(Reader):
    name = "builtin"
    tasks = ("builtin",)
    how_to_get = ("No download: generate the synthetic held-out set with clap_jax.data.synthetic; it writes "
                  f"{TASKS_FILE} into its output directory. Point --data-root at it or at its parent.")

    def locate(self, root, options=None):
        root = Path(root)
        if (root / TASKS_FILE).exists():
            return root
        if root.is_dir():
            for sub in sorted(root.iterdir()):
                if (sub / TASKS_FILE).exists():
                    return sub
        return None

    def read(self, path, options):
        f = require(Path(path) / TASKS_FILE, "task file")
        try:
            spec = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{f}: not valid JSON ({e})") from None
        if isinstance(spec.get("clips"), list):
            spec = _from_shared_clips(spec, f)
        out = []
        for i, t in enumerate(spec.get("tasks", [])):
            where = f"{f}: task {i} ({t.get('name', '?')})"
            for key in ("name", "type", "clips"):
                if key not in t:
                    raise DatasetError(f"{where}: missing key {key!r}")
            kind = t["type"]
            if kind not in (SINGLE, MULTI, RETRIEVAL):
                raise DatasetError(f"{where}: type must be single_label, multi_label or retrieval, not {kind!r}")
            classes = list(t.get("classes", []))
            index = {c: k for k, c in enumerate(classes)}
            clips = []
            for j, c in enumerate(t["clips"]):
                p = Path(c["path"]) if Path(c["path"]).is_absolute() else Path(path) / c["path"]
                if kind == RETRIEVAL:
                    if not c.get("captions"):
                        raise DatasetError(f"{where}: clip {c['path']} has no captions")
                    clips.append(Clip(str(p), captions=tuple(c["captions"])))
                    continue
                labels = c.get("labels", [])
                unknown = [l for l in labels if l not in index]
                if unknown:
                    raise DatasetError(f"{where}: clip {c['path']} has labels {unknown} not in classes")
                if kind == SINGLE and len(labels) != 1:
                    raise DatasetError(f"{where}: single_label clip {c['path']} has {len(labels)} labels")
                clips.append(Clip(str(p), labels=tuple(index[l] for l in labels)))
            out.append(Task(f"builtin_{t['name']}", kind, classes, clips,
                            prompt=t.get("prompt", "this is a sound of {label}"),
                            settings={"source": "builtin synthetic suite"}))
        if not out:
            raise DatasetError(f"{f}: no tasks")
        return out


def _from_shared_clips(spec: dict, f: Path) -> dict:
    """Convert the "clap_jax.eval_tasks/1" layout (shared clips, labels by key) to the per-task layout."""
    root = spec.get("audio_root", ".")
    tasks = []
    for t in spec.get("tasks", []):
        name = t.get("name", "?")
        if t.get("type") == "retrieval":
            key = t.get("caption_key", "captions")
            clips = [{"path": str(Path(root) / c["path"]), "captions": c.get(key, [])} for c in spec["clips"]]
            tasks.append({"name": name, "type": RETRIEVAL, "clips": clips})
            continue
        if t.get("type") != "zero_shot_classification":
            raise DatasetError(f"{f}: task {name}: unknown type {t.get('type')!r}")
        key, label_map = t.get("label_key", name), t.get("label_map", {})
        clips = []
        for c in spec["clips"]:
            if key not in c.get("labels", {}):
                raise DatasetError(f"{f}: clip {c.get('path')} has no label {key!r} (task {name})")
            raw = c["labels"][key]
            clips.append({"path": str(Path(root) / c["path"]), "labels": [label_map.get(raw, raw)]})
        tasks.append({"name": name, "type": SINGLE, "classes": list(t.get("class_names", [])),
                      "prompt": t.get("prompt", "this is a sound of {}").replace("{}", "{label}"), "clips": clips})
    return {"tasks": tasks}
