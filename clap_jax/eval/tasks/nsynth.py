"""NSynth (Engel et al. 2017): <dir>/examples.json ({note_str: {pitch, velocity, instrument_family_str,
qualities_str, ...}}) and <dir>/audio/<note_str>.wav. Official test split (nsynth-test, 4,096 notes) [U].
Four tasks from the same clips:
  nsynth_pitch     classes = the MIDI pitches present in the split (about 1/66 random, matching the paper's
                   0.015 baseline) [U]; label text = note name ("C4"), option pitch_label="midi" for numbers
  nsynth_velocity  5 classes (25, 50, 75, 100, 127)
  nsynth_qualities 10 qualities, multi-label, macro mAP
  nsynth_family    11 instrument families (synth_lead kept even if absent from the split)
"""
from __future__ import annotations

import json
from pathlib import Path

from clap_jax.eval.tasks.base import (MULTI, SINGLE, Clip, DatasetError, Reader, Task, clean_label,
                                      default_prompt, option, register, require)

QUALITIES = ("bright", "dark", "distortion", "fast_decay", "long_release", "multiphonic", "nonlinear_env",
             "percussive", "reverb", "tempo-synced")
FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string", "synth_lead",
            "vocal")
VELOCITIES = (25, 50, 75, 100, 127)
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def note_name(midi: int) -> str:
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


@register
class NSynth(Reader):
    name = "nsynth"
    tasks = ("nsynth_pitch", "nsynth_velocity", "nsynth_qualities", "nsynth_family")
    candidates = ("nsynth-test", "nsynth/nsynth-test", "NSynth/nsynth-test")
    marker = "examples.json"
    how_to_get = ("Download nsynth-test.jsonwav.tar.gz (magenta.tensorflow.org/datasets/nsynth) and extract it "
                  "so that <data-root>/nsynth-test/examples.json and .../audio/ exist.")

    def read(self, path, options):
        path = Path(path)
        f = require(path / "examples.json", "label file")
        try:
            notes = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{f}: not valid JSON ({e})") from None
        keys = sorted(notes)
        for k in keys:
            missing = {"pitch", "velocity", "instrument_family_str", "qualities_str"} - set(notes[k])
            if missing:
                raise DatasetError(f"{f}: note {k} lacks {sorted(missing)}")
        wav = {k: str(path / "audio" / f"{k}.wav") for k in keys}
        return nsynth_tasks(notes, wav, options, {"split": path.name}, where=str(f))


def nsynth_tasks(notes: dict, wav: dict, options, settings: dict, prefix: str = "", where: str = "") -> list:
    """The four tasks over the same notes ({key: {pitch, velocity, instrument_family_str, qualities_str}}, clips
    in sorted key order); ``prefix`` names another copy of the data (e.g. "tfds_"), same prompts and classes;
    ``where`` (the label file) starts the error messages."""
    keys = sorted(notes)
    for k in keys:
        if int(notes[k]["velocity"]) not in VELOCITIES:
            raise DatasetError(f"{where}: note {k}: velocity {notes[k]['velocity']} is not one of {VELOCITIES}")
        if notes[k]["instrument_family_str"] not in FAMILIES:
            raise DatasetError(f"{where}: note {k}: instrument family {notes[k]['instrument_family_str']!r} is not "
                               f"one of {FAMILIES}")
        bad = [q for q in notes[k]["qualities_str"] if q not in QUALITIES]
        if bad:
            raise DatasetError(f"{where}: note {k}: unknown qualities {bad} (known: {QUALITIES})")
    pitches = sorted({int(notes[k]["pitch"]) for k in keys})
    pitch_label = option(options, "pitch_label", "note")
    p_text = [note_name(p) if pitch_label == "note" else str(p) for p in pitches]
    tasks = [
        Task(prefix + "nsynth_pitch", SINGLE, p_text,
             [Clip(wav[k], (pitches.index(int(notes[k]["pitch"])),)) for k in keys],
             prompt=default_prompt("nsynth_pitch"), paper_key="nsynth_pitch",
             settings={**settings, "classes": f"{len(pitches)} pitches present in the split [U]",
                       "pitch_label": pitch_label}),
        Task(prefix + "nsynth_velocity", SINGLE, [str(v) for v in VELOCITIES],
             [Clip(wav[k], (VELOCITIES.index(int(notes[k]["velocity"])),)) for k in keys],
             prompt=default_prompt("nsynth_velocity"), paper_key="nsynth_velocity", settings=dict(settings)),
        Task(prefix + "nsynth_qualities", MULTI, [clean_label(q) for q in QUALITIES],
             [Clip(wav[k], tuple(QUALITIES.index(q) for q in notes[k]["qualities_str"])) for k in keys],
             paper_key="nsynth_qualities", settings=dict(settings)),
        Task(prefix + "nsynth_family", SINGLE, [clean_label(c) for c in FAMILIES],
             [Clip(wav[k], (FAMILIES.index(notes[k]["instrument_family_str"]),)) for k in keys],
             paper_key="nsynth_family", settings=dict(settings)),
    ]
    return tasks
