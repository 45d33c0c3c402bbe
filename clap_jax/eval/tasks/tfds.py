"""TensorFlow-Datasets copies of suite datasets: datasets already prepared with TFDS under
<root>/tensorflow_datasets/<builder>/ (tfds' data_dir). Needs `pip install -e .[tfds]` (tensorflow-datasets and
tensorflow-cpu) the first time: the audio of the scored splits is exported once to
<root>/tensorflow_datasets/_clap_jax_wav/<builder>/ (WAV files holding the samples TFDS yields, + labels.json) and
then scored like any other task; later runs read only the export (until another version is prepared).

Builders (TFDS has these suite datasets; `tfds build <name>` fetches them):
  crema_d             all splits pooled, as the paper pools folds; 6 emotions (codes -> words)
  gtzan               single "train" split = all 1,000 clips; 10 genres
  gtzan_music_speech  single "train" split = all clips; music / speech
  speech_commands     test split; its 12 labels include _silence_ and _unknown_
  nsynth (config full) test split (4,096 notes, the official nsynth-test); four tasks: pitch, velocity,
                      qualities, instrument family
TFDS data elsewhere, e.g. in a bucket: `--option tfds.data_dir=gs://bucket/tensorflow_datasets` (any path or
gs:// / s3:// URL; the prepared metadata and the scored splits' record files are copied once into a local cache,
and the WAV export is kept under the local cache too, so later runs read nothing from the bucket).

Tasks are named "tfds_<paper task>" and use the same prompts, class words and class order as the official-layout
readers (nsynth: clap_jax.eval.tasks.nsynth builds both). The prepared copy is read with
tfds.builder_from_directory, so the newest prepared version is used and the builder's code is not needed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from clap_jax import files as storage
from clap_jax.errors import UserError
from clap_jax.eval.tasks.base import SINGLE, Clip, DatasetError, Reader, Task, default_prompt, register
from clap_jax.eval.tasks.gtzan import GENRES
from clap_jax.eval.tasks.nsynth import nsynth_tasks
from clap_jax.eval.tasks.speech import CREMA, KWS_CLASSES, kws_text

EXPORT_FORMAT = 2   # labels.json: {"format", "prepared", "version", "sample_rate", "splits", "clips": [...]}
EXPORT_DIR = "_clap_jax_wav"

# builder -> (TFDS spec, paper task, splits scored, class names in the official reader's order, label text)
SINGLE_LABEL = {
    "crema_d": ("crema_d", "crema_d", ("train", "validation", "test"), tuple(CREMA), CREMA.get),
    "gtzan": ("gtzan", "gtzan_genres", ("train",), GENRES, str),
    "gtzan_music_speech": ("gtzan_music_speech", "gtzan_music_speech", ("train",), ("music", "speech"), str),
    "speech_commands": ("speech_commands", "speech_commands", ("test",), KWS_CLASSES, kws_text),
}
NSYNTH = ("nsynth/full", ("test",))
BUILDERS = (*SINGLE_LABEL, "nsynth")
NSYNTH_TASKS = ("nsynth_pitch", "nsynth_velocity", "nsynth_qualities", "nsynth_family")


@register
class TFDS(Reader):
    name = "tfds"
    tasks = tuple(f"tfds_{v[1]}" for v in SINGLE_LABEL.values()) + tuple(f"tfds_{t}" for t in NSYNTH_TASKS)
    how_to_get = ("pip install -e .[tfds]; `tfds build crema_d gtzan gtzan_music_speech speech_commands nsynth "
                  "--data_dir <data-root>/tensorflow_datasets`.")

    def locate(self, root, options=None):
        given = (options or {}).get("data_dir")
        p = str(given) if given else str(Path(root) / "tensorflow_datasets")
        return p if any(storage.isdir(storage.join(p, b)) for b in BUILDERS) else None

    def read(self, path, options):
        out = []
        path = str(path)
        for builder_name in BUILDERS:
            if not storage.isdir(storage.join(path, builder_name)):
                continue
            spec, splits = (SINGLE_LABEL[builder_name][0], SINGLE_LABEL[builder_name][2]) if (
                builder_name in SINGLE_LABEL) else NSYNTH
            export = export_dir(path) / builder_name
            meta = _exported(path, spec, export)
            if meta is None:   # first use (or a newer version prepared): export once, needs tfds
                meta = _export(path, spec, splits, export)
            settings = {"source": f"TFDS {spec} {meta['version']}", "splits": list(meta["splits"])}
            if builder_name == "nsynth":
                notes = {c["id"]: c for c in meta["clips"]}
                wav = {c["id"]: str(export / c["path"]) for c in meta["clips"]}
                out += nsynth_tasks(notes, wav, options, {**settings, "split": "test"}, prefix="tfds_",
                                    where=str(export / "labels.json"))
                continue
            _, paper_key, _, names, text = SINGLE_LABEL[builder_name]
            clips = []
            for c in meta["clips"]:
                if c["label"] not in names:
                    raise DatasetError(f"{export / 'labels.json'}: clip {c['path']} has label {c['label']!r}, "
                                       f"not one of {list(names)}")
                clips.append(Clip(str(export / c["path"]), (names.index(c["label"]),)))
            out.append(Task(f"tfds_{paper_key}", SINGLE, [text(n) for n in names], clips,
                            prompt=default_prompt(paper_key), paper_key=paper_key, settings=settings))
        return out


def export_dir(data_dir: str) -> Path:
    """Where the WAV export of ``data_dir``'s datasets lives: beside them for a local data dir, in the local
    TFDS cache (one folder per URL) for a bucket."""
    if not storage.is_url(data_dir):
        return Path(data_dir) / EXPORT_DIR
    from clap_jax.data import tfds_source

    digest = hashlib.sha256(data_dir.rstrip("/").encode()).hexdigest()[:12]
    return Path(tfds_source.default_staging()) / EXPORT_DIR / digest


def _exported(data_dir: str, spec: str, export: Path):
    """The export's labels.json when it is current: this format, and made from the version prepared now."""
    from clap_jax.data import tfds_source

    f = export / "labels.json"
    if not f.exists():
        return None
    try:
        meta = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("format") != EXPORT_FORMAT:
        return None
    try:
        prepared = tfds_source.find_prepared(str(data_dir), *tfds_source.parse_spec(spec))
    except UserError:
        return meta   # the prepared copy went away: the export still holds the clips
    return meta if Path(prepared).name == meta.get("version") else None


def _export(data_dir: str, spec: str, splits, export: Path) -> dict:
    from clap_jax.data import tfds_source

    try:
        tfds_source.import_tfds()
    except UserError:
        raise DatasetError(f"{data_dir} holds TFDS datasets but tensorflow-datasets is not installed "
                           f"({tfds_source.INSTALL_HINT})") from None
    try:
        builder, prepared = tfds_source.open_builder(str(data_dir), spec, splits)
        akey = tfds_source.audio_key(builder, "audio")
        sr = tfds_source.sample_rate(builder, akey)
        clips = []
        for split in splits:
            (export / split).mkdir(parents=True, exist_ok=True)
            for i, ex in enumerate(tfds_source.examples(builder, split)):
                rel = f"{split}/{i:06d}.wav"
                tfds_source.write_wav(str(export / rel), ex[akey], sr)
                clips.append(_fields(builder, ex, rel))
    except UserError as e:
        raise DatasetError(f"TFDS {spec} in {data_dir}: {e}") from None
    meta = {"format": EXPORT_FORMAT, "prepared": str(prepared), "version": str(builder.version),
            "sample_rate": sr, "splits": list(splits), "clips": clips}
    storage.write_text(str(export / "labels.json"), json.dumps(meta))   # last: marks the export complete
    return meta


def _fields(builder, ex: dict, rel: str) -> dict:
    from clap_jax.data import tfds_source

    if builder.name != "nsynth":
        return {"path": rel, "label": tfds_source.label_names(builder, "label", ex["label"])[0]}
    note = ex["id"].decode() if isinstance(ex["id"], bytes) else str(ex["id"])
    family = tfds_source.label_names(builder, "instrument/family", ex["instrument"]["family"])[0]
    return {"path": rel, "id": note, "pitch": int(ex["pitch"]), "velocity": int(ex["velocity"]),
            "instrument_family_str": family, "qualities_str": tfds_source.label_names(builder, "qualities",
                                                                                       ex["qualities"])}
