"""GTZAN genres and GTZAN music-speech (all clips; k-fold sets are pooled).

Genres: <dir>/{blues,classical,...}/<genre>.000NN.au (marsyas 'genres/'), or the Kaggle copy
'genres_original/<genre>/*.wav'; 10 classes, labels = folder names.
Music-speech: <dir>/music_wav/*.wav and <dir>/speech_wav/*.wav (marsyas 'music_speech/'); 2 classes.
"""
from __future__ import annotations

from pathlib import Path

from clap_jax.eval.tasks.base import SINGLE, Clip, DatasetError, Reader, Task, audio_files, register

GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")


@register
class GTZANGenres(Reader):
    name = "gtzan_genres"
    tasks = ("gtzan_genres",)
    candidates = ("genres", "gtzan/genres", "GTZAN/genres", "genres_original", "Data/genres_original",
                  "gtzan/genres_original", "gtzan/Data/genres_original")
    marker = "blues"
    how_to_get = ("Download GTZAN (marsyas genres.tar.gz, or Kaggle 'gtzan-dataset-music-genre-classification') "
                  "so that <data-root>/genres/<genre>/*.au (or <data-root>/genres_original/<genre>/*.wav) exist.")

    def read(self, path, options):
        clips = []
        for i, g in enumerate(GENRES):
            if not (Path(path) / g).is_dir():
                raise DatasetError(f"missing genre folder: {Path(path) / g}")
            clips += [Clip(str(f), (i,)) for f in audio_files(Path(path) / g)]
        return [Task("gtzan_genres", SINGLE, list(GENRES), clips, paper_key="gtzan_genres",
                     settings={"split": "all clips (10 folds pooled)"})]


@register
class GTZANMusicSpeech(Reader):
    name = "gtzan_music_speech"
    tasks = ("gtzan_music_speech",)
    candidates = ("music_speech", "gtzan/music_speech", "GTZAN/music_speech", "gtzan_music_speech/music_speech")
    marker = "music_wav"
    how_to_get = ("Download the GTZAN music/speech collection (marsyas music_speech.tar.gz) so that "
                  "<data-root>/music_speech/music_wav/ and .../speech_wav/ exist.")

    def read(self, path, options):
        clips = []
        for i, c in enumerate(("music", "speech")):
            d = Path(path) / f"{c}_wav"
            if not d.is_dir():
                raise DatasetError(f"missing folder: {d}")
            clips += [Clip(str(f), (i,)) for f in audio_files(d)]
        return [Task("gtzan_music_speech", SINGLE, ["music", "speech"], clips, paper_key="gtzan_music_speech",
                     settings={"split": "all clips (10 folds pooled)"})]
