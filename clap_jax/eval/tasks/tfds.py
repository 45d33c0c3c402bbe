"""TensorFlow-Datasets copies of suite datasets: datasets already prepared with TFDS under
<root>/tensorflow_datasets/<builder>/ (tfds' data_dir). Needs `tensorflow-datasets` and, to decode audio,
`tensorflow-cpu`. The audio of the scored splits is exported once to
<root>/tensorflow_datasets/_clap_jax_wav/<builder>/ (wav + labels.json) and then scored like any other task.

Builders (TFDS has these suite datasets; none needs a manual download directory, `tfds build <name>` fetches
them): crema_d (all splits pooled, as the paper pools folds), gtzan and gtzan_music_speech (single "train"
split = all clips), speech_commands (test split; its 12 labels include _silence_ and _unknown_).
Tasks are named "tfds_<paper task>" and use the same prompts and label words as the official-layout readers.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clap_jax.eval.tasks.base import SINGLE, Clip, DatasetError, Reader, Task, default_prompt, register
from clap_jax.eval.tasks.speech import CREMA, kws_text

# builder -> (paper task, splits scored, label text)
BUILDERS = {
    "crema_d": ("crema_d", ("train", "validation", "test"), lambda s: CREMA.get(s, s)),
    "gtzan": ("gtzan_genres", ("train",), str),
    "gtzan_music_speech": ("gtzan_music_speech", ("train",), str),
    "speech_commands": ("speech_commands", ("test",), kws_text),
}


@register
class TFDS(Reader):
    name = "tfds"
    tasks = tuple(f"tfds_{p}" for p, _, _ in BUILDERS.values())
    how_to_get = ("pip install tensorflow-datasets tensorflow-cpu; `tfds build crema_d gtzan gtzan_music_speech "
                  "speech_commands --data_dir <data-root>/tensorflow_datasets`.")

    def locate(self, root):
        p = Path(root) / "tensorflow_datasets"
        return p if any((p / b).is_dir() for b in BUILDERS) else None

    def read(self, path, options):
        out = []
        for builder_name, (paper_key, splits, text) in BUILDERS.items():
            if not (Path(path) / builder_name).is_dir():
                continue
            export = Path(path) / "_clap_jax_wav" / builder_name
            meta = export / "labels.json"
            if not meta.exists():   # first use: export once (needs tfds); later runs only read the wavs
                try:
                    import tensorflow_datasets as tfds
                except ImportError:
                    raise DatasetError(f"{path} holds TFDS datasets but tensorflow-datasets is not installed "
                                       "(pip install tensorflow-datasets tensorflow-cpu)") from None
                self._export(tfds, builder_name, Path(path), splits, export)
            spec = json.loads(meta.read_text())
            clips = [Clip(str(export / f), (label,)) for f, label in spec["clips"]]
            out.append(Task(f"tfds_{paper_key}", SINGLE, [text(n) for n in spec["names"]], clips,
                            prompt=default_prompt(paper_key), paper_key=paper_key,
                            settings={"source": f"TFDS {builder_name} {spec['version']}", "splits": list(splits)}))
        return out

    @staticmethod
    def _export(tfds, builder_name, data_dir, splits, export):
        import soundfile as sf

        try:
            builder = tfds.builder(builder_name, data_dir=str(data_dir))
            names = list(builder.info.features["label"].names)
            sr = int(builder.info.features["audio"].sample_rate)
        except Exception as e:  # noqa: BLE001 - tfds raises many types; name the dataset
            raise DatasetError(f"cannot open TFDS dataset {builder_name} in {data_dir}: {e}") from None
        export.mkdir(parents=True, exist_ok=True)
        clips = []
        for split in splits:
            for i, ex in enumerate(tfds.as_numpy(builder.as_dataset(split=split))):
                audio = np.asarray(ex["audio"])
                if audio.dtype.kind in "iu":  # TFDS stores PCM integers
                    audio = audio.astype(np.float32) / 32768.0
                rel = f"{split}/{i:06d}.wav"
                (export / split).mkdir(exist_ok=True)
                sf.write(export / rel, audio, sr)
                clips.append((rel, int(ex["label"])))
        (export / "labels.json").write_text(json.dumps(
            {"names": names, "sample_rate": sr, "version": str(getattr(builder.info, "version", "")), "clips": clips}))
