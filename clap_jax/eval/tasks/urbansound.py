"""UrbanSound8K: UrbanSound8K/metadata/UrbanSound8K.csv (slice_file_name,fsID,start,end,salience,fold,classID,
class) and UrbanSound8K/audio/fold<k>/<slice_file_name>. All 10 folds pooled; classes ordered by classID,
'_' -> ' '. Files vary in rate and channels: the loader resamples and down-mixes."""
from __future__ import annotations

from pathlib import Path

from clap_jax.eval.tasks.base import (SINGLE, Clip, DatasetError, Reader, Task, clean_label, option,
                                      read_csv_rows, register)


@register
class UrbanSound8K(Reader):
    name = "us8k"
    tasks = ("us8k",)
    candidates = ("UrbanSound8K", "urbansound8k", "us8k/UrbanSound8K")
    marker = "metadata/UrbanSound8K.csv"
    how_to_get = ("Download UrbanSound8K (https://urbansounddataset.weebly.com/urbansound8k.html, or Zenodo "
                  "1203745) and extract it so that <data-root>/UrbanSound8K/metadata/UrbanSound8K.csv and "
                  "<data-root>/UrbanSound8K/audio/fold1..fold10/ exist.")

    def read(self, path, options):
        rows = read_csv_rows(Path(path) / self.marker, required=("slice_file_name", "fold", "classID", "class"))
        folds = option(options, "folds", None)
        if folds is not None:
            rows = [r for r in rows if int(r["fold"]) in set(folds)]
        names = {}
        for r in rows:
            names.setdefault(int(r["classID"]), r["class"])
        ids = sorted(names)
        if ids != list(range(len(ids))):
            raise DatasetError(f"{path / self.marker}: classID values {ids} are not 0..{len(ids) - 1}")
        clips = [Clip(str(Path(path) / "audio" / f"fold{r['fold']}" / r["slice_file_name"]), (int(r["classID"]),))
                 for r in rows]
        return [Task("us8k", SINGLE, [clean_label(names[i]) for i in ids], clips, paper_key="us8k",
                     settings={"split": f"folds {folds}" if folds else "all 10 folds pooled"})]
