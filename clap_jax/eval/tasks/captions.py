"""Caption datasets, scored as retrieval in both directions (captioning/SPIDEr awaits a captioner).

AudioCaps: <dir>/dataset/test.csv (audiocap_id,youtube_id,start_time,caption; the cdjkim/audiocaps repo) or
<dir>/test.csv, with the 10-s test clips anywhere under <dir>, named by YouTube id. Captions are grouped per
clip (5 each in the test split); clips not available locally are left out and counted.
Clotho v2.1: <dir>/clotho_captions_evaluation.csv (file_name,caption_1..caption_5) and the audio in
<dir>/clotho_audio_evaluation/ (or <dir>/evaluation/). Evaluation split, 1,045 clips x 5 captions.
"""
from __future__ import annotations

from pathlib import Path

from clap_jax.eval.tasks.base import (RETRIEVAL, Clip, DatasetError, Reader, Task, index_youtube_clips, option,
                                      read_csv_rows, register)


@register
class AudioCaps(Reader):
    name = "audiocaps"
    tasks = ("audiocaps",)
    how_to_get = ("Clone https://github.com/cdjkim/audiocaps into <data-root>/audiocaps/ (dataset/test.csv) and "
                  "put your 10-s test clips, named by YouTube id, anywhere under <data-root>/audiocaps/.")

    def locate(self, root, options=None):
        for rel in ("audiocaps", "AudioCaps"):
            p = Path(root) / rel
            if (p / "dataset" / "test.csv").exists() or (p / "test.csv").exists():
                return p
        return None

    def read(self, path, options):
        path = Path(path)
        split = option(options, "split", "test")
        csv_path = path / "dataset" / f"{split}.csv"
        if not csv_path.exists():
            csv_path = path / f"{split}.csv"
        rows = read_csv_rows(csv_path, required=("youtube_id", "caption"))
        caps = {}
        for r in rows:
            caps.setdefault(r["youtube_id"], []).append(r["caption"].strip())
        local = index_youtube_clips(path)
        clips = [Clip(str(local[y]), captions=tuple(c)) for y, c in caps.items() if y in local]
        if not clips:
            raise DatasetError(f"no local clip under {path} matches a youtube_id of {csv_path}")
        return [Task("audiocaps", RETRIEVAL, [], clips, paper_key="audiocaps",
                     settings={"split": split, "clips_listed": len(caps), "clips_found": len(clips)})]


@register
class Clotho(Reader):
    name = "clotho"
    tasks = ("clotho",)
    candidates = ("clotho", "Clotho", "clotho_v2.1", "clotho-v2.1", ".")
    marker = "clotho_captions_evaluation.csv"
    how_to_get = ("Download Clotho v2.1 (https://zenodo.org/record/4783391: clotho_captions_evaluation.csv and "
                  "clotho_audio_evaluation.7z) into <data-root>/clotho/, audio in clotho/clotho_audio_evaluation/.")

    def read(self, path, options):
        path = Path(path)
        split = option(options, "split", "evaluation")
        csv_path = path / f"clotho_captions_{split}.csv"
        cols = tuple(f"caption_{i}" for i in range(1, 6))
        rows = read_csv_rows(csv_path, required=("file_name",) + cols)
        audio_dir = next((d for d in (path / f"clotho_audio_{split}", path / split, path / "audio" / split)
                          if d.is_dir()), None)
        if audio_dir is None:
            raise DatasetError(f"missing audio folder: {path / f'clotho_audio_{split}'}")
        clips = [Clip(str(audio_dir / r["file_name"]), captions=tuple(r[c].strip() for c in cols)) for r in rows]
        return [Task("clotho", RETRIEVAL, [], clips, paper_key="clotho", settings={"split": split})]
