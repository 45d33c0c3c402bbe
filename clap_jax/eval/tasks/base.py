"""What a dataset reader produces (Task, Clip), how readers are registered, and shared helpers.

A reader is a class with
  name          registry name of the dataset family ("esc50", "hear", ...)
  tasks         names of the tasks it can produce (used by --tasks and by the "what to download" list)
  how_to_get    one paragraph: what to download and where to put it under --data-root
  locate(root, options) -> Path of the dataset directory under root, or None when the data is absent (options:
                the reader's --option values, for a reader whose data may sit elsewhere)
  read(path, options) -> list[Task]; raises DatasetError with a message naming the missing/bad file
"""
from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Iterable, Optional

from clap_jax.errors import UserError

AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".au", ".aiff", ".aif", ".m4a")

SINGLE = "single_label"
MULTI = "multi_label"
RETRIEVAL = "retrieval"
CAPTIONING = "captioning"


class DatasetError(UserError, RuntimeError):
    """A dataset is present but cannot be read: the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Clip:
    path: str
    labels: tuple = ()        # class indices (single/multi label)
    captions: tuple = ()      # reference captions (retrieval / captioning)
    fold: Optional[str] = None  # cross-validation fold the dataset puts the clip in (linear probes, fine-tuning)


@dataclasses.dataclass
class Task:
    name: str                 # unique task name, e.g. "esc50", "nsynth_pitch", "hear_esc50"
    kind: str                 # SINGLE | MULTI | RETRIEVAL
    classes: list             # label strings as written into prompts (empty for retrieval)
    clips: list               # list[Clip]
    prompt: str = "this is a sound of {label}"
    paper_key: Optional[str] = None     # key into paper.TABLE2 (None: no paper number)
    settings: dict = dataclasses.field(default_factory=dict)  # every choice behind the number
    threshold_rule: Optional[str] = None  # for F1 tasks (multi-label with a thresholded metric)

    def class_texts(self) -> list[str]:
        return [self.prompt.format(label=c) for c in self.classes]

    def describe(self) -> dict:
        d = {"kind": self.kind, "n_clips": len(self.clips), "n_classes": len(self.classes),
             "prompt": self.prompt if self.kind != RETRIEVAL else "(captions are the queries)", "paper_key": self.paper_key, **self.settings}
        if self.threshold_rule:
            d["threshold_rule"] = self.threshold_rule
        return d


# Default class prompts: msclap 2023's ESC50 template for ESC50, the CLAP 2022 templates
# elsewhere (emotion, keyword spotting, speaker counting have their own). Overridable per task in the config.
GENERIC_PROMPT = "this is a sound of {label}"
PROMPTS = {
    "esc50": "this is the sound of {label}",
    "crema_d": "this person is feeling {label}",
    "ravdess": "this person is feeling {label}",
    "speech_commands": "{label}",
    "libricount": "{label} persons speaking",
    "nsynth_pitch": "this is a sound of pitch {label}",
    "nsynth_velocity": "this is a sound of velocity {label}",
}


def default_prompt(paper_key: str) -> str:
    return PROMPTS.get(paper_key, GENERIC_PROMPT)


REGISTRY: dict = {}


def register(cls):
    """Class decorator: adds a reader (instantiated) to the registry under cls.name."""
    inst = cls()
    if inst.name in REGISTRY:
        raise ValueError(f"reader {inst.name!r} registered twice")
    REGISTRY[inst.name] = inst
    return cls


class Reader:
    name = ""
    tasks: tuple = ()
    how_to_get = ""
    # relative paths under the data root where the dataset directory may sit, and a file or folder inside it
    # whose presence identifies the dataset
    candidates: tuple = ()
    marker = ""

    def locate(self, root: Path, options: Optional[dict] = None) -> Optional[Path]:
        for rel in self.candidates:
            p = Path(root) / rel
            if (p / self.marker).exists():
                return p
        return None

    def read(self, path: Path, options: dict) -> list:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------- helpers
def require(path: Path, what: str = "file") -> Path:
    if not Path(path).exists():
        raise DatasetError(f"missing {what}: {path}")
    return Path(path)


def read_csv_rows(path: Path, delimiter: str = ",", header: bool = True, required: Iterable[str] = ()):
    """Rows of a csv (dicts when header=True, lists otherwise), with a clear error for a missing file/column."""
    require(path, "label file")
    with open(path, newline="", encoding="utf-8") as f:
        if header:
            reader = csv.DictReader(f, delimiter=delimiter, skipinitialspace=True)
            rows = list(reader)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
            return rows
        return [r for r in csv.reader(f, delimiter=delimiter, skipinitialspace=True) if r]


def clean_label(s: str) -> str:
    """msclap's label rule: underscores become spaces."""
    return s.replace("_", " ").strip()


def audio_files(folder: Path) -> list:
    """All audio files under a folder, sorted (deterministic order)."""
    out = []
    for dirpath, _, files in os.walk(folder):
        out += [Path(dirpath) / f for f in files if f.lower().endswith(AUDIO_EXTS)]
    return sorted(out)


def index_youtube_clips(folder: Path) -> dict:
    """Map YouTube id -> file for local copies of YouTube clips (AudioSet, AudioCaps, DCASE17).

    Accepts the usual naming schemes: `<ytid>.wav`, `Y<ytid>.wav`, `<ytid>_<start>[_<end>].wav`,
    `Y<ytid>_<start>_<end>.wav` (YouTube ids are 11 characters).
    """
    index = {}
    for f in audio_files(folder):
        stem = f.stem
        for cand in (stem[:11], stem[1:12] if stem.startswith("Y") else None):
            if cand and len(cand) == 11:
                index.setdefault(cand, f)
        index.setdefault(stem, f)
    return index


def option(options: dict, key: str, default):
    """Look up a reader option, recording nothing; readers write their choices into Task.settings."""
    return options.get(key, default) if options else default
