"""TUT Acoustic Scenes 2017 (DCASE2017 task 1). <dir>/meta.txt (tab separated: audio/<file>.wav, scene label[,
source]) or <dir>/evaluation_setup/evaluate.txt, clips in <dir>/audio/. 10-s binaural stereo at 44.1 kHz: the
loader down-mixes (msclap concatenates the channels; --channels concat matches it).
Split default "evaluation" (TUT-acoustic-scenes-2017-evaluation, 1,620 clips) [U]; option split="development"
scores the 4,680 development clips instead. 15 classes, '_' -> ' '."""
from __future__ import annotations

from pathlib import Path

from clap_jax.eval.tasks.base import (SINGLE, Clip, DatasetError, Reader, Task, clean_label, option,
                                      read_csv_rows, register)

DIRS = {"evaluation": "TUT-acoustic-scenes-2017-evaluation", "development": "TUT-acoustic-scenes-2017-development"}


@register
class TUT2017(Reader):
    name = "tut2017"
    tasks = ("tut2017",)
    how_to_get = ("Download TUT Acoustic Scenes 2017 evaluation (https://zenodo.org/record/1040168: meta and "
                  "audio zips) and extract them so that <data-root>/TUT-acoustic-scenes-2017-evaluation/meta.txt "
                  "and .../audio/ exist (development set, Zenodo 400515, for split=development).")

    def locate(self, root, options=None):
        for d in DIRS.values():
            p = Path(root) / d
            if (p / "meta.txt").exists() or (p / "evaluation_setup").is_dir():
                return p
        return None

    def read(self, path, options):
        split = option(options, "split", "evaluation")
        path = Path(path).parent / DIRS[split]
        meta = path / "meta.txt"
        if not meta.exists():
            meta = path / "evaluation_setup" / "evaluate.txt"
        if not meta.exists():
            raise DatasetError(f"missing label file: {path / 'meta.txt'}")
        rows = read_csv_rows(meta, delimiter="\t", header=False)
        bad = [r for r in rows if len(r) < 2]
        if bad:
            raise DatasetError(f"{meta}: rows need 'audio/<file>.wav<TAB>label', got {bad[0]}")
        classes = sorted({r[1].strip() for r in rows})
        index = {c: i for i, c in enumerate(classes)}
        clips = [Clip(str(path / r[0].strip()), (index[r[1].strip()],)) for r in rows]
        return [Task("tut2017", SINGLE, [clean_label(c) for c in classes], clips, paper_key="tut2017",
                     settings={"split": split, "label_file": str(meta.relative_to(path))})]
