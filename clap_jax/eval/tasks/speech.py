"""Speech tasks: CREMA-D, RAVDESS, Speech Commands v2 (KWS) and LibriCount10.

CREMA-D: <dir>/AudioWAV/<actor>_<sentence>_<EMO>_<level>.wav; all clips; 6 emotions (codes -> words).
RAVDESS: <dir>/Audio_Speech_Actors_01-24/Actor_XX/03-01-EE-II-SS-RR-AA.wav and Audio_Song_Actors_01-24/...
         (any folder depth); audio-only files (modality 03); subset default "speech+song" (2.5k files, as CLAP
         2022 counts) [U], option subset="speech"; 8 emotions from field EE.
Speech Commands v2: either the test-set archive (<dir>/<class>/*.wav with the 12 classes, including _silence_
         and _unknown_) or the full archive (<dir>/testing_list.txt; words outside the 10 keywords become
         _unknown_; no _silence_ clips). Label text: the keyword; "_silence_" -> "silence", "_unknown_" ->
         "unknown" [U]. Prompt: the keyword alone (CLAP 2022).
LibriCount10 (0 dB): <dir>/<count>_<...>.wav (count 0..10 is the label); prompt "{label} persons speaking".
"""
from __future__ import annotations

import re
from pathlib import Path

from clap_jax.eval.tasks.base import (SINGLE, Clip, DatasetError, Reader, Task, audio_files, default_prompt,
                                      option, register, require)

CREMA = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
RAVDESS_EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
KWS_CLASSES = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_silence_", "_unknown_")


def kws_text(label: str) -> str:
    return label.strip("_")


@register
class CremaD(Reader):
    name = "crema_d"
    tasks = ("crema_d",)
    candidates = ("CREMA-D", "crema-d", "crema_d", "CremaD", ".")
    marker = "AudioWAV"
    how_to_get = ("Get CREMA-D (https://github.com/CheyneyComputerScience/CREMA-D, git-lfs) so that "
                  "<data-root>/CREMA-D/AudioWAV/*.wav exist.")

    def read(self, path, options):
        codes = list(CREMA)
        clips = []
        for f in audio_files(Path(path) / "AudioWAV"):
            parts = f.stem.split("_")
            if len(parts) < 3 or parts[2] not in CREMA:
                raise DatasetError(f"CREMA-D clip {f}: expected <actor>_<sentence>_<EMO>_<level>, EMO in {codes}")
            clips.append(Clip(str(f), (codes.index(parts[2]),)))
        if not clips:
            raise DatasetError(f"no audio in {Path(path) / 'AudioWAV'}")
        return [Task("crema_d", SINGLE, [CREMA[c] for c in codes], clips, prompt=default_prompt("crema_d"),
                     paper_key="crema_d", settings={"split": "all clips (5 folds pooled)"})]


RAVDESS_NAME = re.compile(r"(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)")


@register
class RAVDESS(Reader):
    name = "ravdess"
    tasks = ("ravdess",)
    candidates = ("RAVDESS", "ravdess", ".")
    how_to_get = ("Download Audio_Speech_Actors_01-24.zip and Audio_Song_Actors_01-24.zip (Zenodo 1188976) and "
                  "extract them into <data-root>/RAVDESS/Audio_Speech_Actors_01-24/ and .../Audio_Song_Actors_01-24/.")

    def locate(self, root, options=None):
        for rel in self.candidates:
            p = Path(root) / rel
            if (p / "Audio_Speech_Actors_01-24").is_dir() or (p / "Audio_Song_Actors_01-24").is_dir():
                return p
        return None

    def read(self, path, options):
        subset = option(options, "subset", "speech+song")
        wanted = {"speech": {"01"}, "song": {"02"}, "speech+song": {"01", "02"}}[subset]
        clips = []
        for f in audio_files(Path(path)):
            m = RAVDESS_NAME.fullmatch(f.stem)
            if not m:
                raise DatasetError(f"RAVDESS clip {f}: name is not MM-VV-EE-II-SS-RR-AA")
            if m.group(1) != "03" or m.group(2) not in wanted:
                continue
            e = int(m.group(3))
            if not 1 <= e <= 8:
                raise DatasetError(f"RAVDESS clip {f}: emotion code {m.group(3)} not in 01..08")
            clips.append(Clip(str(f), (e - 1,)))
        if not clips:
            raise DatasetError(f"no RAVDESS audio-only clip under {path}")
        return [Task("ravdess", SINGLE, list(RAVDESS_EMOTIONS), clips, prompt=default_prompt("ravdess"),
                     paper_key="ravdess", settings={"split": "all clips", "subset": subset + " [U]"})]


@register
class SpeechCommands(Reader):
    name = "speech_commands"
    tasks = ("speech_commands",)
    candidates = ("speech_commands_test_set_v0.02", "speech_commands_v0.02", "SpeechCommands/speech_commands_v0.02",
                  "speech_commands")
    how_to_get = ("Download speech_commands_test_set_v0.02.tar.gz (download.tensorflow.org/data/) and extract it "
                  "into <data-root>/speech_commands_test_set_v0.02/ (12 class folders); or extract the full "
                  "speech_commands_v0.02.tar.gz into <data-root>/speech_commands_v0.02/ (uses testing_list.txt).")

    def locate(self, root, options=None):
        for rel in self.candidates:
            p = Path(root) / rel
            if (p / "testing_list.txt").exists() or (p / "_unknown_").is_dir() or (p / "yes").is_dir():
                return p
        return None

    def read(self, path, options):
        path = Path(path)
        clips = []
        if (path / "testing_list.txt").exists():
            mode = "full archive, testing_list.txt (no _silence_ clips)"
            for line in (path / "testing_list.txt").read_text().split():
                word = line.split("/")[0]
                label = word if word in KWS_CLASSES[:10] else "_unknown_"
                clips.append(Clip(str(path / line), (KWS_CLASSES.index(label),)))
        else:
            mode = "test-set archive (12 class folders)"
            for i, c in enumerate(KWS_CLASSES):
                d = require(path / c, "class folder")
                clips += [Clip(str(f), (i,)) for f in audio_files(d)]
        return [Task("speech_commands", SINGLE, [kws_text(c) for c in KWS_CLASSES], clips,
                     prompt=default_prompt("speech_commands"), paper_key="speech_commands",
                     settings={"split": "test", "source": mode, "label_text": "_silence_->silence, _unknown_->unknown [U]"})]


@register
class LibriCount(Reader):
    name = "libricount"
    tasks = ("libricount",)
    candidates = ("LibriCount10-0dB", "LibriCount10-0dB/test", "libricount", "LibriCount")
    how_to_get = ("Download LibriCount10-0dB.zip (https://zenodo.org/record/1216072) and extract it to "
                  "<data-root>/LibriCount10-0dB/ (files <count>_<...>.wav).")

    def locate(self, root, options=None):
        for rel in self.candidates:
            p = Path(root) / rel
            if p.is_dir() and any(re.match(r"\d+_", f.name) for f in p.glob("*.wav")):
                return p
        return None

    def read(self, path, options):
        clips = []
        for f in audio_files(Path(path)):
            m = re.match(r"(\d+)_", f.name)
            if not m or int(m.group(1)) > 10:
                raise DatasetError(f"LibriCount clip {f}: name must start with the speaker count 0..10 and '_'")
            clips.append(Clip(str(f), (int(m.group(1)),)))
        return [Task("libricount", SINGLE, [str(n) for n in range(11)], clips, prompt=default_prompt("libricount"),
                     paper_key="libricount", settings={"split": "all clips (5 folds pooled)"})]
