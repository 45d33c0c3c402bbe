"""VocalSound (Gong et al. 2022): <dir>/datafiles/te.json ({"data": [{"wav": path, "labels": mid}]}),
class_labels_indices_vs.csv (index,mid,display_name; in <dir>, <dir>/datafiles or <dir>/data) and the audio in
<dir>/audio_16k/ (or audio_44k/, option audio="audio_44k"). Test split; 6 classes named by display_name.
The json's wav paths are from the authors' machine: clips are found by file name in the audio folder."""
from __future__ import annotations

import json
from pathlib import Path

from clap_jax.eval.tasks.base import (SINGLE, Clip, DatasetError, Reader, Task, option, read_csv_rows, register,
                                      require)


@register
class VocalSound(Reader):
    name = "vocalsound"
    tasks = ("vocalsound",)
    candidates = ("vocalsound_16k", "VocalSound", "vocalsound", "vocalsound_44k")
    marker = "datafiles"
    how_to_get = ("Download VocalSound (https://github.com/YuanGongND/vocalsound: vs_release_16k.zip) and "
                  "extract it to <data-root>/vocalsound_16k/ (datafiles/te.json, audio_16k/); put the repo's "
                  "class_labels_indices_vs.csv in the same folder if the zip lacks it.")

    def read(self, path, options):
        path = Path(path)
        split = option(options, "split", "te")
        data_json = require(path / "datafiles" / f"{split}.json", "label file")
        csv_path = next((p for p in (path / "class_labels_indices_vs.csv", path / "datafiles" / "class_labels_indices_vs.csv",
                                     path / "data" / "class_labels_indices_vs.csv") if p.exists()), None)
        if csv_path is None:
            raise DatasetError(f"missing label file: {path / 'class_labels_indices_vs.csv'}")
        labels = sorted(read_csv_rows(csv_path, required=("index", "mid", "display_name")), key=lambda r: int(r["index"]))
        index = {r["mid"]: i for i, r in enumerate(labels)}
        audio_dir = path / option(options, "audio", "audio_16k" if (path / "audio_16k").is_dir() else "audio_44k")
        try:
            entries = json.loads(data_json.read_text())["data"]
        except (json.JSONDecodeError, KeyError) as e:
            raise DatasetError(f"{data_json}: expected {{\"data\": [{{\"wav\", \"labels\"}}]}} ({e})") from None
        clips = []
        for e in entries:
            mid = e["labels"].split(",")[0]
            if mid not in index:
                raise DatasetError(f"{data_json}: label {mid!r} of {e['wav']} not in {csv_path.name}")
            clips.append(Clip(str(audio_dir / Path(e["wav"]).name), (index[mid],)))
        return [Task("vocalsound", SINGLE, [r["display_name"] for r in labels], clips, paper_key="vocalsound",
                     settings={"split": f"{split}.json", "audio": audio_dir.name})]
