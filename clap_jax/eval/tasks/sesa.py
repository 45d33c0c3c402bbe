"""SESA (Spadini, Zenodo 3519845): <dir>/test/*.wav (and train/), the label is the file-name prefix
(casual_000.wav, gunshot_..., explosion_..., siren_...). Test split, 105 clips, 4 classes."""
from __future__ import annotations

import re
from pathlib import Path

from clap_jax.eval.tasks.base import SINGLE, Clip, DatasetError, Reader, Task, audio_files, option, register

SESA_CLASSES = ("casual", "gunshot", "explosion", "siren")


@register
class SESA(Reader):
    name = "sesa"
    tasks = ("sesa",)
    candidates = ("SESA", "sesa", "sesa-dataset", "SESA/SESA")
    marker = "test"
    how_to_get = "Download SESA from https://zenodo.org/record/3519845 and extract it so that <data-root>/SESA/test/*.wav exist."

    def read(self, path, options):
        split = option(options, "split", "test")
        files = audio_files(Path(path) / split)
        clips = []
        for f in files:
            m = re.match(r"(casual|gunshot|explosion|siren)", f.name.lower())
            if not m:
                raise DatasetError(f"SESA clip {f} does not start with one of {SESA_CLASSES}")
            clips.append(Clip(str(f), (SESA_CLASSES.index(m.group(1)),)))
        if not clips:
            raise DatasetError(f"no audio in {Path(path) / split}")
        return [Task("sesa", SINGLE, list(SESA_CLASSES), clips, paper_key="sesa", settings={"split": split})]
