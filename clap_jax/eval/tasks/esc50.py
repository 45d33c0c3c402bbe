"""ESC-50 (Piczak 2015) and ESC50-Actions (Elizalde et al. 2021, action ratings over the ESC-50 clips).

ESC-50 layout: ESC-50-master/meta/esc50.csv (filename,fold,target,category,esc10,src_file,take) and
ESC-50-master/audio/*.wav. All 5 folds are scored and pooled (msclap issue #31); classes are the sorted
categories with '_' -> ' '; prompt 'this is the sound of {label}' (msclap 2023 example, 93.9%).

ESC50-Actions layout: action_vectors_dataset/actionvector_<variant>.csv (filename,fold,target,category + 20
action columns of mean ratings 0-4) in a directory ESC50-Actions/ (or the repository folder
Identifying_Actions_for_Sound_Event_Classification/) beside ESC-50-master/. How CLAP binarised the ratings is
unpublished: by default an action is positive when its mean rating >= 2 (options: threshold, variant).
"""
from __future__ import annotations

from pathlib import Path

from clap_jax.eval.tasks.base import (MULTI, SINGLE, Clip, DatasetError, Reader, Task, clean_label, default_prompt, option,
                                      read_csv_rows, register, require)

ESC_CANDIDATES = ("ESC-50-master", "ESC-50", "esc50/ESC-50-master", "esc50")


def _esc_dir(root: Path):
    for rel in ESC_CANDIDATES:
        if (root / rel / "meta" / "esc50.csv").exists():
            return root / rel
    return None


@register
class ESC50(Reader):
    name = "esc50"
    tasks = ("esc50",)
    how_to_get = ("Download https://github.com/karolpiczak/ESC-50/archive/master.zip and unzip it so that "
                  "<data-root>/ESC-50-master/meta/esc50.csv and <data-root>/ESC-50-master/audio/ exist.")

    def locate(self, root, options=None):
        return _esc_dir(Path(root))

    def read(self, path, options):
        rows = read_csv_rows(path / "meta" / "esc50.csv", required=("filename", "fold", "category"))
        folds = option(options, "folds", None)
        if folds is not None:
            rows = [r for r in rows if int(r["fold"]) in set(folds)]
        classes = sorted({r["category"] for r in rows})
        index = {c: i for i, c in enumerate(classes)}
        clips = [Clip(str(path / "audio" / r["filename"]), (index[r["category"]],), fold=str(int(r["fold"])))
                 for r in rows]
        return [Task("esc50", SINGLE, [clean_label(c) for c in classes], clips,
                     prompt=default_prompt("esc50"), paper_key="esc50",
                     settings={"split": f"folds {folds}" if folds else "all 5 folds pooled"})]


ACTIONS = ("blowing", "breaking", "calling", "crumpling", "dripping", "exhaling", "exploding", "gasping",
           "groaning", "pouring", "ringing", "rolling", "rotating", "scraping", "singing", "sizzling",
           "splashing", "tapping", "vibrating", "wailing")
ACTION_CANDIDATES = ("ESC50-Actions", "Identifying_Actions_for_Sound_Event_Classification",
                     "esc50_actions", "ESC-50-master")


@register
class ESC50Actions(Reader):
    name = "esc50_actions"
    tasks = ("esc50_actions",)
    how_to_get = ("Needs ESC-50 (see esc50) plus the action ratings: clone "
                  "https://github.com/bmartin1/Identifying_Actions_for_Sound_Event_Classification into "
                  "<data-root>/ESC50-Actions/ so that <data-root>/ESC50-Actions/action_vectors_dataset/"
                  "actionvector_one_per_audiofile.csv exists.")

    def locate(self, root, options=None):
        root = Path(root)
        if _esc_dir(root) is None:
            return None
        for rel in ACTION_CANDIDATES:
            d = root / rel / "action_vectors_dataset"
            if d.is_dir() and any(d.glob("actionvector_*.csv")):
                return root / rel
        return None

    def read(self, path, options):
        variant = option(options, "variant", "one_per_audiofile")
        threshold = float(option(options, "threshold", 2.0))
        csv_path = require(path / "action_vectors_dataset" / f"actionvector_{variant}.csv", "label file")
        rows = read_csv_rows(csv_path, required=("filename",) + ACTIONS)
        esc = _esc_dir(path.parent) or _esc_dir(path.parent.parent)
        if esc is None:
            raise DatasetError(f"ESC-50 audio not found beside {path} (needed by ESC50-Actions)")
        # several rows per file (three_per_audiofile): average their ratings
        sums, counts = {}, {}
        for r in rows:
            try:
                v = [float(r[a]) for a in ACTIONS]
            except ValueError as e:
                raise DatasetError(f"{csv_path}: bad rating in row for {r['filename']}: {e}") from None
            s = sums.setdefault(r["filename"], [0.0] * len(ACTIONS))
            sums[r["filename"]] = [a + b for a, b in zip(s, v)]
            counts[r["filename"]] = counts.get(r["filename"], 0) + 1
        clips = []
        for fname in sorted(sums):
            mean = [x / counts[fname] for x in sums[fname]]
            clips.append(Clip(str(esc / "audio" / fname), tuple(i for i, x in enumerate(mean) if x >= threshold)))
        return [Task("esc50_actions", MULTI, list(ACTIONS), clips, paper_key="esc50_actions",
                     settings={"split": "all 5 folds pooled", "label_csv": csv_path.name,
                               "binarisation": f"mean rating >= {threshold} (of 0-4) [U: paper's rule unknown]"})]
