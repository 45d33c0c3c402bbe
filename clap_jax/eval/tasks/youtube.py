"""Datasets of 10-s YouTube clips that users download themselves: AudioSet (eval set) and DCASE2017 task 4.

Local clips are matched to the label lists by YouTube id, whatever the naming scheme (`<ytid>.wav`,
`Y<ytid>.wav`, `<ytid>_<start>.wav`, `Y<ytid>_<start>_<end>.wav`, in any subfolder). Clips that are no longer
downloadable are left out; the task records how many were listed and found.

AudioSet layout: <dir>/eval_segments.csv ('# YTID, start_seconds, end_seconds, positive_labels', comment lines
start with '#'), <dir>/class_labels_indices.csv (index,mid,display_name), clips anywhere under <dir>.
527 classes named by display_name; multi-label; macro mAP.

DCASE2017 task 4 layout (repository ankitshah009/Task-4-Large-scale-weakly-supervised-sound-event-detection-
for-smart-cars): <dir>/groundtruth_release/groundtruth_weak_label_{testing,evaluation}_set.csv (tab separated:
file, start, end, label; one row per label) and the clips anywhere under <dir>. 17 classes; multi-label;
micro instance-based F1. Split default "evaluation" (1,103 clips) [U: the paper's choice, testing = 488];
binarisation default "top1" [U], see metrics.binarize; both are options and go into the results.
"""
from __future__ import annotations

import re
from pathlib import Path

from clap_jax.eval.tasks.base import (MULTI, Clip, DatasetError, Reader, Task, index_youtube_clips, option,
                                      read_csv_rows, register, require)


def _parse_segments(path: Path):
    require(path, "label file")
    rows = []
    import csv
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.reader((line for line in f if not line.lstrip().startswith("#")), skipinitialspace=True):
            if not r:
                continue
            if len(r) < 4:
                raise DatasetError(f"{path}: expected 'YTID, start, end, \"labels\"', got {r}")
            rows.append((r[0].strip(), float(r[1]), [m for m in r[3].split(",") if m]))
    return rows


@register
class AudioSet(Reader):
    name = "audioset"
    tasks = ("audioset",)
    candidates = ("AudioSet", "audioset", "audioset/eval")
    marker = "eval_segments.csv"
    how_to_get = ("Put eval_segments.csv and class_labels_indices.csv (research.google.com/audioset/download."
                  "html) in <data-root>/AudioSet/ and your local 10-s eval clips (named by YouTube id, e.g. "
                  "Y<ytid>.wav or <ytid>_<start>.wav) anywhere under it.")

    def read(self, path, options):
        path = Path(path)
        labels = read_csv_rows(path / "class_labels_indices.csv", required=("index", "mid", "display_name"))
        labels = sorted(labels, key=lambda r: int(r["index"]))
        classes = [r["display_name"] for r in labels]
        index = {r["mid"]: i for i, r in enumerate(labels)}
        segments = _parse_segments(path / "eval_segments.csv")
        local = index_youtube_clips(path)
        clips, unknown = [], set()
        for ytid, _, mids in segments:
            if ytid not in local:
                continue
            unknown |= {m for m in mids if m not in index}
            clips.append(Clip(str(local[ytid]), tuple(index[m] for m in mids if m in index)))
        if unknown:
            raise DatasetError(f"{path / 'eval_segments.csv'}: labels {sorted(unknown)[:5]} not in class_labels_indices.csv")
        if not clips:
            raise DatasetError(f"no local clip under {path} matches a YouTube id of eval_segments.csv")
        return [Task("audioset", MULTI, classes, clips, paper_key="audioset",
                     settings={"split": "eval", "clips_listed": len(segments), "clips_found": len(clips)})]


DCASE17_CLASSES = ("Train horn", "Air horn, truck horn", "Car alarm", "Reversing beeps", "Bicycle", "Skateboard",
                   "Ambulance (siren)", "Fire engine, fire truck (siren)", "Civil defense siren",
                   "Police car (siren)", "Screaming", "Car", "Car passing by", "Bus", "Truck", "Motorcycle", "Train")


def _ytid(name: str) -> str:
    stem = Path(name).stem if name.lower().endswith((".wav", ".flac")) else name
    m = re.fullmatch(r"(.+)_(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)", stem)
    base = m.group(1) if m else stem
    return base[1:] if len(base) == 12 and base.startswith("Y") else base


@register
class DCASE2017Task4(Reader):
    name = "dcase17"
    tasks = ("dcase17",)
    candidates = ("DCASE2017_task4", "dcase2017_task4", "dcase17",
                  "Task-4-Large-scale-weakly-supervised-sound-event-detection-for-smart-cars")
    marker = "groundtruth_release"
    how_to_get = ("Clone https://github.com/ankitshah009/Task-4-Large-scale-weakly-supervised-sound-event-"
                  "detection-for-smart-cars into <data-root>/DCASE2017_task4/ and download the testing/"
                  "evaluation clips (its download_audio.py, or the organisers' evaluation zip) anywhere under it.")

    def read(self, path, options):
        path = Path(path)
        split = option(options, "split", "evaluation")
        rule = option(options, "threshold_rule", "top1")
        csv_path = path / "groundtruth_release" / f"groundtruth_weak_label_{split}_set.csv"
        rows = read_csv_rows(csv_path, delimiter="\t", header=False)
        index = {c: i for i, c in enumerate(DCASE17_CLASSES)}
        per_clip = {}
        for r in rows:
            if len(r) < 4:
                raise DatasetError(f"{csv_path}: expected 'file<TAB>start<TAB>end<TAB>label', got {r}")
            label = r[3].strip()
            if label not in index:
                raise DatasetError(f"{csv_path}: unknown label {label!r} for {r[0]}")
            per_clip.setdefault(_ytid(r[0]), set()).add(index[label])
        local = index_youtube_clips(path)
        clips = [Clip(str(local[y]), tuple(sorted(l))) for y, l in sorted(per_clip.items()) if y in local]
        if not clips:
            raise DatasetError(f"no local clip under {path} matches a file of {csv_path.name}")
        return [Task("dcase17", MULTI, list(DCASE17_CLASSES), clips, paper_key="dcase17", threshold_rule=rule,
                     settings={"split": split, "clips_listed": len(per_clip), "clips_found": len(clips),
                               "f1": "micro instance-based; decisions by threshold_rule [U: paper's rule]"})]
