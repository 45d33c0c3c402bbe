"""FSD50K (Zenodo 4060432): FSD50K.ground_truth/{eval.csv (fname,labels,mids), vocabulary.csv (idx,label,mid,
no header)} and FSD50K.eval_audio/<fname>.wav. Eval set, 200 classes, multi-label, macro mAP. Label text:
vocabulary names with '_' -> ' ' (option label_text="raw" keeps them)."""
from __future__ import annotations

from pathlib import Path

from clap_jax.eval.tasks.base import (MULTI, Clip, DatasetError, Reader, Task, clean_label, option,
                                      read_csv_rows, register)


@register
class FSD50K(Reader):
    name = "fsd50k"
    tasks = ("fsd50k",)
    candidates = ("FSD50K", "fsd50k", ".")
    marker = "FSD50K.ground_truth"
    how_to_get = ("Download FSD50K from https://zenodo.org/record/4060432 (FSD50K.ground_truth.zip and the "
                  "FSD50K.eval_audio.z* parts) and extract them into <data-root>/FSD50K/, giving "
                  "FSD50K/FSD50K.ground_truth/eval.csv and FSD50K/FSD50K.eval_audio/*.wav.")

    def read(self, path, options):
        gt = Path(path) / "FSD50K.ground_truth"
        vocab = read_csv_rows(gt / "vocabulary.csv", header=False)
        try:
            vocab = sorted((int(r[0]), r[1]) for r in vocab)
        except (ValueError, IndexError):
            raise DatasetError(f"{gt / 'vocabulary.csv'}: expected rows idx,label,mid") from None
        classes = [name for _, name in vocab]
        index = {c: i for i, c in enumerate(classes)}
        rows = read_csv_rows(gt / "eval.csv", required=("fname", "labels"))
        clips = []
        for r in rows:
            labels = [l for l in r["labels"].split(",") if l]
            bad = [l for l in labels if l not in index]
            if bad:
                raise DatasetError(f"{gt / 'eval.csv'}: clip {r['fname']} has labels {bad} not in vocabulary.csv")
            clips.append(Clip(str(Path(path) / "FSD50K.eval_audio" / f"{r['fname']}.wav"),
                              tuple(index[l] for l in labels)))
        raw = option(options, "label_text", "clean") == "raw"
        return [Task("fsd50k", MULTI, classes if raw else [clean_label(c) for c in classes], clips,
                     paper_key="fsd50k",
                     settings={"split": "eval", "label_text": "raw vocabulary" if raw else "vocabulary, '_' -> ' '"})]
