"""HEAR 2021 preprocessed tasks (hear-preprocess output), scene-level ones.

Layout: <root>/{hear/tasks,tasks,hear}/<task>-<version>-<mode>/ with task_metadata.json (task_name,
embedding_type, prediction_type, ...), labelvocabulary.csv (idx,label), <split>.json ({"<file>.wav": [labels]})
and <sample_rate>/<split>/<file>.wav. k-fold tasks pool every fold; train/valid/test tasks use test.json.
The 44.1 kHz copy is used when present, else the highest rate available (the loader resamples).
Known tasks map to the paper's task (name "hear_<paper task>", same prompt and label words as the official-
layout reader); other scene tasks run under "hear_<task_name>" with the generic prompt. Event tasks (timestamp
labels) are not zero-shot classification and are skipped.
NB: HEAR audio is mono, zero-padded/trimmed to the task's duration, unlike msclap's repeat-padding.
"""
from __future__ import annotations

import json
from pathlib import Path

from clap_jax.eval.tasks.base import (MULTI, SINGLE, Clip, DatasetError, Reader, Task, clean_label, default_prompt,
                                      read_csv_rows, register, require)
from clap_jax.eval.tasks.nsynth import note_name
from clap_jax.eval.tasks.speech import CREMA, kws_text

# HEAR task_name -> (paper task, label text function)
HEAR_TASKS = {
    "esc50": ("esc50", clean_label),
    "fsd50k": ("fsd50k", clean_label),
    "tfds_gtzan_music_speech": ("gtzan_music_speech", str),
    "tfds_gtzan": ("gtzan_genres", str),
    "beijing_opera": ("beijing_opera", str.lower),
    "tfds_crema_d": ("crema_d", lambda s: CREMA.get(s.upper(), s)),
    "speech_commands": ("speech_commands", kws_text),
    "libricount": ("libricount", str),
    "nsynth_pitch": ("nsynth_pitch", lambda s: note_name(int(s))),
}
SAMPLE_RATES = ("44100", "48000", "32000", "22050", "16000")


@register
class HEAR(Reader):
    name = "hear"
    tasks = tuple(f"hear_{p}" for p, _ in HEAR_TASKS.values())
    how_to_get = ("Download HEAR 2021 task tarballs (hear-2021.0.x-<task>-...-<sr>.tar.gz; Zenodo 5885750 has "
                  "48 kHz) and extract them so that <data-root>/hear/tasks/<task-dir>/task_metadata.json exist.")

    def locate(self, root, options=None):
        for rel in ("hear/tasks", "tasks", "hear"):
            p = Path(root) / rel
            if p.is_dir() and any((d / "task_metadata.json").exists() for d in p.iterdir() if d.is_dir()):
                return p
        return None

    def read(self, path, options):
        out = []
        for d in sorted(p for p in Path(path).iterdir() if (p / "task_metadata.json").exists()):
            task = self._read_task(d)
            if task is not None:
                out.append(task)
        return out

    def _read_task(self, d: Path):
        try:
            meta = json.loads((d / "task_metadata.json").read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{d / 'task_metadata.json'}: not valid JSON ({e})") from None
        if meta.get("embedding_type", "scene") != "scene":
            return None
        hear_name = meta.get("task_name", d.name.split("-")[0])
        paper_key, text = HEAR_TASKS.get(hear_name, (None, clean_label))
        vocab = sorted(read_csv_rows(d / "labelvocabulary.csv", required=("idx", "label")), key=lambda r: int(r["idx"]))
        labels = [r["label"] for r in vocab]
        index = {l: i for i, l in enumerate(labels)}
        splits = ["test"] if (d / "test.json").exists() else sorted(p.stem for p in d.glob("fold*.json"))
        if not splits:
            raise DatasetError(f"{d}: no test.json or fold*.json")
        sr = next((s for s in SAMPLE_RATES if (d / s).is_dir()), None)
        if sr is None:
            raise DatasetError(f"{d}: no audio folder named by a sample rate ({', '.join(SAMPLE_RATES)})")
        kind = MULTI if meta.get("prediction_type") == "multilabel" else SINGLE
        clips = []
        for s in splits:
            f = require(d / f"{s}.json", "label file")
            for fname, ls in sorted(json.loads(f.read_text()).items()):
                bad = [l for l in ls if str(l) not in index]
                if bad:
                    raise DatasetError(f"{f}: {fname} has labels {bad} not in labelvocabulary.csv")
                if kind == SINGLE and len(ls) != 1:
                    raise DatasetError(f"{f}: multiclass clip {fname} has {len(ls)} labels")
                clips.append(Clip(str(d / sr / s / fname), tuple(index[str(l)] for l in ls),
                                  fold=s if s.startswith("fold") else None))
        return Task(f"hear_{paper_key or hear_name}", kind, [text(l) for l in labels], clips,
                    prompt=default_prompt(paper_key or ""), paper_key=paper_key,
                    settings={"source": f"HEAR {d.name}", "splits": splits, "sample_rate_dir": sr})
