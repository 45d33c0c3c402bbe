"""Beijing Opera Percussion (Zenodo 1285212): <dir>/**/*.wav, 236 clips; the class (bangu, daluo, naobo,
xiaoluo) is the name of the folder holding the clip, or the first class name found in the file name (HEAR's
rule takes it from the file name). All clips (5 folds pooled)."""
from __future__ import annotations

from pathlib import Path

from clap_jax.eval.tasks.base import SINGLE, Clip, DatasetError, Reader, Task, audio_files, register

BEIJING_CLASSES = ("bangu", "daluo", "naobo", "xiaoluo")


def beijing_label(rel: Path) -> int:
    for part in [p.lower() for p in rel.parts[:-1]][::-1] + [rel.stem.lower()]:
        for i, c in enumerate(BEIJING_CLASSES):
            if part == c:
                return i
    for i, c in enumerate(BEIJING_CLASSES):
        if c in rel.stem.lower():
            return i
    return -1


@register
class BeijingOpera(Reader):
    name = "beijing_opera"
    tasks = ("beijing_opera",)
    candidates = ("beijing_opera_percussion_instrument_1.0", "BeijingOpera", "beijing_opera",
                  "Beijing_Opera_Percussion_Instrument_Dataset")
    marker = ""
    how_to_get = ("Download https://zenodo.org/record/1285212 and extract it to "
                  "<data-root>/beijing_opera_percussion_instrument_1.0/.")

    def read(self, path, options):
        clips = []
        for f in audio_files(Path(path)):
            rel = f.relative_to(path)
            label = beijing_label(rel)
            if label < 0:
                raise DatasetError(f"Beijing Opera clip {f}: no class name {BEIJING_CLASSES} in its path")
            clips.append(Clip(str(f), (label,)))
        if not clips:
            raise DatasetError(f"no audio under {path}")
        return [Task("beijing_opera", SINGLE, list(BEIJING_CLASSES), clips, paper_key="beijing_opera",
                     settings={"split": "all clips (5 folds pooled)"})]
