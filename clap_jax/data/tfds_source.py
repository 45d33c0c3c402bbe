"""TensorFlow-Datasets as a source: datasets that ``tfds build`` prepared in a ``data_dir`` (local or a bucket).

Used by ``python -m clap_jax.data.preprocess --tfds NAME[/config][:version] --tfds-data-dir DIR --split S`` and by
the eval suite's TFDS reader. Needs ``pip install -e .[tfds]`` (tensorflow-datasets, tensorflow-cpu to decode).

A prepared dataset sits at ``DIR/NAME[/CONFIG]/VERSION/`` (``dataset_info.json``, ``features.json`` and the record
files); it is opened from there with ``tfds.builder_from_directory``, so the builder's code is not needed and the
data read is exactly what was prepared. Without a version the newest prepared one is used; without a config, the
only one prepared (or the builder's default config when several are).

Preprocessing goes through the manifest path so that every rule of ``preprocess`` holds unchanged: the split's
examples are exported once to a staging directory (``--tfds-staging``, default ``~/.cache/clap_jax/tfds``) as WAV
files (PCM-16 for integer audio, 32-bit float otherwise: the exported samples are the ones TFDS yields) plus a
JSONL manifest; that manifest is then preprocessed like any other (same templates for label-only rows, progress,
skip accounting, reruns). Labels come from ``label``/``labels`` (ClassLabel, a sequence of them, text, or a dict
of booleans: the names set to true), captions from ``caption``/``captions``/``text``/``description`` text
features; ``--tfds-label-key`` / ``--tfds-caption-key`` name other features (nested ones as ``a/b``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Iterator, Sequence

import numpy as np

from clap_jax import files as storage
from clap_jax.errors import UserError

DEFAULT_LABEL_KEYS = ("label", "labels")
DEFAULT_CAPTION_KEYS = ("caption", "captions", "text", "description")
_VERSION_RE = re.compile(r"\d+\.\d+\.\d+")
INSTALL_HINT = "pip install -e .[tfds]  (tensorflow-datasets and tensorflow-cpu)"
STAGING_FORMAT = 1


def import_tfds():
    """The tensorflow_datasets module, or a UserError saying how to install it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise UserError(f"reading TFDS datasets needs tensorflow-datasets and tensorflow-cpu ({e}); "
                        f"{INSTALL_HINT}") from None
    return tfds


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``name``, ``name/config``, ``name:config``, ``name/config:1.0.0``, ``name:1.0.0`` -> (name, config, version)."""
    s = (spec or "").strip()
    version = None
    if ":" in s:
        s, tail = s.split(":", 1)
        if _VERSION_RE.fullmatch(tail):
            version = tail
        elif "/" in s or not tail or "/" in tail:
            raise UserError(f"--tfds {spec!r}: expected NAME[/CONFIG][:VERSION] or NAME:CONFIG")
        else:
            s = f"{s}/{tail}"
    name, _, config = s.partition("/")
    if not re.fullmatch(r"[A-Za-z0-9_]+", name or "") or (config and not re.fullmatch(r"[A-Za-z0-9_.\-]+", config)):
        raise UserError(f"--tfds {spec!r}: not a dataset name (NAME[/CONFIG][:VERSION], e.g. crema_d or "
                        "nsynth/full:2.3.3)")
    return name, config or None, version


def _vkey(v: str):
    return tuple(int(x) for x in v.split("."))


def _versions(folder: str) -> list[str]:
    """Prepared versions in ``folder`` (subfolders named X.Y.Z holding dataset_info.json), oldest first."""
    try:
        names = storage.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    vs = [n.rstrip("/") for n in names if _VERSION_RE.fullmatch(n.rstrip("/"))]
    return sorted((v for v in vs if storage.exists(storage.join(folder, v, "dataset_info.json"))), key=_vkey)


def find_prepared(data_dir: str, name: str, config: str | None = None, version: str | None = None) -> str:
    """The directory of a prepared dataset: ``data_dir/name[/config]/version``. Errors name what is there."""
    base = storage.join(data_dir, name)
    if not storage.isdir(base):
        raise UserError(f"TFDS data dir {data_dir}: no dataset {name!r} (expected {base}/; prepare it with "
                        f"`tfds build {name} --data_dir {data_dir}`)")
    if config is None and not _versions(base):
        configs = sorted(c.rstrip("/") for c in storage.listdir(base) if _versions(storage.join(base, c.rstrip("/"))))
        if not configs:
            raise UserError(f"{base}: no prepared version of {name} (no VERSION/dataset_info.json; an unfinished "
                            "`tfds build` leaves only incomplete.* folders)")
        if len(configs) == 1:
            config = configs[0]
        else:
            config = _default_config(name)
            if config not in configs:
                raise UserError(f"{base}: several configs are prepared ({', '.join(configs)}); name one, e.g. "
                                f"--tfds {name}/{configs[0]}")
    folder = storage.join(base, config) if config else base
    have = _versions(folder)
    if not have:
        raise UserError(f"{folder}: no prepared version of {name}{'/' + config if config else ''}")
    if version is None:
        version = have[-1]
    elif version not in have:
        raise UserError(f"{folder}: version {version} is not prepared (found {', '.join(have)})")
    return storage.join(folder, version)


def _default_config(name: str) -> str | None:
    try:
        cls = import_tfds().builder_cls(name)
        default = getattr(cls, "DEFAULT_BUILDER_CONFIG_NAME", None) or (cls.BUILDER_CONFIGS[0].name
                                                                        if cls.BUILDER_CONFIGS else None)
        return default
    except Exception:  # noqa: BLE001 - no code for that name: no default to offer
        return None


def open_builder(data_dir: str, spec: str, splits: Sequence[str] | None = None, cache: str | None = None):
    """(builder, prepared directory) for ``spec`` in ``data_dir``; errors name the directory and the problem.

    A ``data_dir`` in a bucket (gs://, s3://, any fsspec URL) is read through ``clap_jax.files``: the prepared
    directory's metadata and the record files of ``splits`` (all splits when None) are mirrored once into
    ``cache`` (default: under the staging folder) and opened there. TensorFlow's own gs:// reader is not used:
    it reaches only the real GCS endpoint (no emulator, no s3://).
    """
    tfds = import_tfds()
    path = find_prepared(data_dir, *parse_spec(spec))
    local = mirror(path, splits, cache) if storage.is_url(path) else path
    try:
        return tfds.builder_from_directory(local), path
    except Exception as e:  # noqa: BLE001 - tfds raises many types; name the directory
        raise UserError(f"{path}: cannot open this TFDS dataset ({type(e).__name__}: {e})") from None


def mirror(url: str, splits: Sequence[str] | None = None, cache: str | None = None) -> str:
    """A local copy of the prepared directory ``url`` (metadata + the given splits' files); files already
    copied with the same size are kept, each new one appears whole (written to a temporary name, then renamed)."""
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:12]
    local = os.path.join(cache or os.path.join(default_staging(), "_buckets"), digest, storage.basename(url))
    os.makedirs(local, exist_ok=True)
    names = storage.listdir(url)
    meta = [n for n in names if n.endswith((".json", ".txt"))]
    if "dataset_info.json" not in meta:
        raise UserError(f"{url}: no dataset_info.json (not a prepared TFDS dataset)")
    info = json.loads(storage.read_text(storage.join(url, "dataset_info.json")))
    wanted = set(splits) if splits else {sp.get("name") for sp in info.get("splits", [])}
    prefix = info.get("name", "") + "-"
    data = [n for n in names if n.startswith(prefix) and n[len(prefix):].split(".", 1)[0] in wanted]
    for n in meta + data:
        dst = os.path.join(local, n)
        if os.path.isfile(dst) and n in data and os.path.getsize(dst) == storage.getsize(storage.join(url, n)):
            continue
        with storage.atomic_path(dst) as tmp:
            storage.download(storage.join(url, n), tmp)
    return local


def flat_features(builder) -> dict:
    """'a/b' -> feature, for every leaf feature (nested FeaturesDicts flattened with '/')."""
    tfds = import_tfds()
    out = {}

    def walk(prefix, feat):
        if isinstance(feat, tfds.features.FeaturesDict):
            for k, v in feat.items():
                walk(f"{prefix}{k}/", v)
        out[prefix.rstrip("/")] = feat

    walk("", builder.info.features)
    out.pop("", None)
    return out


def audio_key(builder, key: str | None = None) -> str:
    """The name of the dataset's audio feature (the only top-level Audio one, or ``key``)."""
    tfds = import_tfds()
    feats = flat_features(builder)
    if key:
        if key not in feats or not isinstance(feats[key], tfds.features.Audio):
            raise UserError(f"{builder.name}: {key!r} is not an audio feature (audio features: "
                            f"{[k for k, f in feats.items() if isinstance(f, tfds.features.Audio)]})")
        return key
    keys = [k for k, f in feats.items() if isinstance(f, tfds.features.Audio)]
    if len(keys) != 1:
        raise UserError(f"{builder.name}: {'no' if not keys else 'several'} audio features ({keys}); "
                        "this source reads datasets with one tfds.features.Audio")
    return keys[0]


def sample_rate(builder, key: str) -> int:
    sr = flat_features(builder)[key].sample_rate
    if not sr:
        raise UserError(f"{builder.name}: audio feature {key!r} declares no sample rate")
    return int(sr)


def _get(ex: dict, key: str):
    for part in key.split("/"):
        ex = ex[part]
    return ex


def examples(builder, split: str) -> Iterator[dict]:
    """The split's examples as numpy (nested dicts as TFDS gives them), in file order, with ``tfds_id``."""
    tfds = import_tfds()
    if split not in builder.info.splits:
        raise UserError(f"{builder.data_dir}: no split {split!r} (splits: {', '.join(builder.info.splits)})")
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False, read_config=tfds.ReadConfig(add_tfds_id=True))
        it = iter(tfds.as_numpy(ds))
        while True:
            try:
                ex = next(it)
            except StopIteration:
                return
            ex["tfds_id"] = ex["tfds_id"].decode() if isinstance(ex["tfds_id"], bytes) else str(ex["tfds_id"])
            yield ex
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - TensorFlow's errors (missing or damaged record files): name the dataset
        raise UserError(f"{builder.data_dir}: reading split {split!r} failed ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None


def is_integer_audio(audio) -> bool:
    return np.asarray(audio).dtype.kind in "iu"


def audio_float(audio) -> np.ndarray:
    """TFDS audio as float32 in [-1, 1): integer audio is 16-bit PCM (TFDS stores pydub's samples)."""
    a = np.asarray(audio)
    return a.astype(np.float32) / 32768.0 if is_integer_audio(a) else a.astype(np.float32)


def write_wav(path: str, audio, sr: int) -> None:
    """Exactly the samples TFDS yields: PCM-16 for integer audio in range, 32-bit float otherwise (atomic)."""
    import soundfile as sf

    a = np.asarray(audio)
    if is_integer_audio(a) and a.size and (a.min() < -32768 or a.max() > 32767):
        data, subtype = a.astype(np.float32) / 32768.0, "FLOAT"
    elif is_integer_audio(a):
        data, subtype = a.astype(np.int16), "PCM_16"
    else:
        data, subtype = a.astype(np.float32), "FLOAT"
    with storage.atomic_path(path) as tmp:
        sf.write(tmp, data, sr, format="WAV", subtype=subtype)


def label_names(builder, key: str, value) -> list[str]:
    """A label feature's value as a list of strings (class names, text, or the true keys of a dict of bools)."""
    tfds = import_tfds()
    feat = flat_features(builder).get(key)
    if isinstance(value, dict):
        return [k for k, v in value.items() if np.asarray(v).dtype == bool and bool(v)]
    inner = feat.feature if isinstance(feat, tfds.features.Sequence) else feat
    vals = np.asarray(value).reshape(-1).tolist()
    if isinstance(inner, tfds.features.ClassLabel):
        return [inner.int2str(int(v)) for v in vals if int(v) >= 0]   # -1: no label
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in vals]


def _texts(value) -> list[str]:
    vals = np.asarray(value, dtype=object).reshape(-1).tolist()
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in vals]


# ---------------------------------------------------------------------------------------------- preprocess


def add_arguments(p) -> None:
    """The preprocess CLI's TFDS options."""
    g = p.add_argument_group("TFDS source (instead of --manifest)")
    g.add_argument("--tfds", metavar="NAME[/CONFIG][:VERSION]",
                   help="read a dataset prepared by tensorflow-datasets (e.g. crema_d, nsynth/full, nsynth:full)")
    g.add_argument("--tfds-data-dir", help="TFDS data_dir holding it (local or gs://...; default: TFDS's own, "
                   "$TFDS_DATA_DIR or ~/tensorflow_datasets)")
    g.add_argument("--split", action="append", help="TFDS split(s) to export (repeatable or comma-separated; "
                   "default train); each becomes that split in the TFRecords")
    g.add_argument("--tfds-label-key", action="append", help="feature(s) giving labels (nested as a/b; default "
                   + "/".join(DEFAULT_LABEL_KEYS) + ")")
    g.add_argument("--tfds-caption-key", action="append", help="text feature(s) giving captions (default "
                   + "/".join(DEFAULT_CAPTION_KEYS) + ")")
    g.add_argument("--tfds-audio-key", default=None, help="the audio feature (default: the only one)")
    g.add_argument("--tfds-staging", default=None, help="where the WAV export and its manifest go (default "
                   "~/.cache/clap_jax/tfds); a rerun reuses them")


def from_args(a, progress: bool = True) -> tuple[list[str], str]:
    """(manifests, root) for the preprocess CLI: --manifest as given, or the staged export of --tfds."""
    if a.tfds and a.manifest:
        raise UserError("--tfds and --manifest exclude each other: preprocess one source per job")
    if not a.tfds:
        if not a.manifest:
            raise UserError("no input: pass --manifest FILE (repeatable) or --tfds NAME --tfds-data-dir DIR")
        return a.manifest, a.root
    if a.root:
        raise UserError("--root does not apply to --tfds (the audio comes from the TFDS data dir)")
    splits = [s.strip() for v in (a.split or ["train"]) for s in v.split(",") if s.strip()]
    manifest, root = stage(a.tfds, a.tfds_data_dir, splits, a.tfds_staging, label_keys=a.tfds_label_key,
                           caption_keys=a.tfds_caption_key, audio=a.tfds_audio_key, progress=progress)
    return [manifest], root


def default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def default_staging() -> str:
    return os.environ.get("CLAP_JAX_TFDS_STAGING") or os.path.join(os.path.expanduser("~"), ".cache", "clap_jax",
                                                                    "tfds")


def stage(spec: str, data_dir: str | None, splits: Sequence[str], staging: str | None = None,
          label_keys: Sequence[str] | None = None, caption_keys: Sequence[str] | None = None,
          audio: str | None = None, progress: bool = True) -> tuple[str, str]:
    """Export ``splits`` of a prepared TFDS dataset to WAV files + a JSONL manifest; returns (manifest, root).

    The staging folder depends only on the dataset (data dir, name, config, version) and the splits, so the same
    command names the same manifest (the same preprocess job). An export whose settings and source are unchanged
    is reused; otherwise it is redone and the manifest rewritten (the manifest is written last, atomically).
    """
    from clap_jax.data.preprocess import valid_split  # lazy: preprocess imports this module

    data_dir = data_dir or default_data_dir()
    bad = [s for s in splits if not valid_split(s)]
    if bad or not splits:
        raise UserError(f"--split {bad[0] if bad else ''!r}: a split name (letters, digits and _.-), e.g. train; "
                        "TFDS slices such as train[:10%] are not supported")
    staging = staging or default_staging()
    builder, path = open_builder(data_dir, spec, splits, os.path.join(staging, "_buckets"))
    akey = audio_key(builder, audio)
    sr = sample_rate(builder, akey)
    feats = flat_features(builder)
    lkeys = _keys(builder, feats, label_keys, DEFAULT_LABEL_KEYS, "--tfds-label-key")
    ckeys = _keys(builder, feats, caption_keys, DEFAULT_CAPTION_KEYS, "--tfds-caption-key")
    if not lkeys and not ckeys:
        raise UserError(f"{path}: no label or caption feature ({', '.join(DEFAULT_LABEL_KEYS + DEFAULT_CAPTION_KEYS)}"
                        "); name some with --tfds-label-key / --tfds-caption-key (features: "
                        f"{', '.join(sorted(feats))})")
    for s in splits:
        if s not in builder.info.splits:
            raise UserError(f"{path}: no split {s!r} (splits: {', '.join(builder.info.splits)})")
    where = path if storage.is_url(path) else os.path.realpath(path)
    digest = hashlib.sha256(json.dumps([where, sorted(set(splits))]).encode()).hexdigest()[:10]
    name = builder.name + (f"-{builder.builder_config.name}" if getattr(builder, "builder_config", None) else "")
    folder = os.path.join(staging, f"{name}-{builder.version}-{'+'.join(splits)}-{digest}")
    manifest = os.path.join(folder, f"{builder.name}.jsonl")
    stamp_path = os.path.join(folder, "export.json")
    stamp = {"format": STAGING_FORMAT, "dataset": where, "version": str(builder.version), "splits": list(splits),
             "audio_key": akey, "label_keys": lkeys, "caption_keys": ckeys,
             "num_examples": {s: int(builder.info.splits[s].num_examples) for s in splits}}
    if os.path.isfile(manifest) and os.path.isfile(stamp_path):
        try:
            if json.loads(open(stamp_path).read()) == stamp:
                return manifest, folder
        except (OSError, json.JSONDecodeError):
            pass
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(stamp_path):
        os.remove(stamp_path)   # an export cut short is never taken for a finished one
    from tqdm import tqdm

    lines = []
    total = sum(stamp["num_examples"].values())
    with tqdm(total=total, unit="clip", desc=f"tfds export {name}", disable=not progress) as bar:
        for s in splits:
            os.makedirs(os.path.join(folder, s), exist_ok=True)
            for i, ex in enumerate(examples(builder, s)):
                rel = f"{s}/{i:07d}.wav"
                write_wav(os.path.join(folder, rel), _get(ex, akey), sr)
                labels = [x for k in lkeys for x in label_names(builder, k, _get(ex, k))]
                captions = [c for k in ckeys for c in _texts(_get(ex, k)) if c.strip()]
                row = {"path": rel, "id": f"{name}/{ex['tfds_id']}", "labels": labels, "source": builder.name,
                       "split": s}
                if captions:
                    row["captions"] = captions
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
                bar.update(1)
    storage.write_text(manifest, "".join(lines))
    storage.write_text(stamp_path, json.dumps(stamp, indent=1))   # last: the export is complete
    return manifest, folder


def _keys(builder, feats: dict, given, defaults, flag) -> list[str]:
    if given:
        missing = [k for k in given if k not in feats]
        if missing:
            raise UserError(f"{builder.name}: {flag} {missing[0]!r} is not a feature (features: "
                            f"{', '.join(sorted(feats))})")
        return list(given)
    return [k for k in defaults if k in feats]
