"""Tiny fixtures in each dataset's official layout (file names, csv/json columns), written by the tests.

Every class of every task is a pure tone (unique across the whole fixture root). A clip holds the tones of its
labels (several for multi-label clips and for clips shared by several tasks, e.g. NSynth). The writer records
which tone stands for which (task, label text); `tone_embedder(tasks)` turns that into a ToneEmbedder that
scores 100% exactly when a reader produces the right clips, labels and label words.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from clap_jax.eval.fake import ToneEmbedder


class Writer:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.next_freq = 200.0
        self.groups = {}         # task name -> {label text: freq}
        self.captions = {}       # task name -> {freq: [captions]}

    def tone(self, group: str, text: str) -> float:
        g = self.groups.setdefault(group, {})
        if text not in g:
            g[text] = self.next_freq
            self.next_freq += 30.0
            assert self.next_freq < 7800, "fixture ran out of tones"
        return g[text]

    def caption_tone(self, group: str, captions: list) -> float:
        f = self.next_freq
        self.next_freq += 30.0
        self.captions.setdefault(group, {})[f] = list(captions)
        return f

    def wav(self, rel: str, freqs, sr: int = 16000, seconds: float = 1.0, channels: int = 1,
            subtype: str = "PCM_16", fmt: str | None = None) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(sr * seconds)) / sr
        y = sum(0.2 * np.sin(2 * np.pi * f * t) for f in freqs) if freqs else 0.01 * np.ones_like(t)
        y = y / max(1.0, np.abs(y).max() / 0.9)
        if channels > 1:
            y = np.stack([y] * channels, axis=1)
        sf.write(path, y, sr, subtype=subtype, format=fmt)
        return path

    def text(self, rel: str, content: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        return path

    def csv(self, rel: str, header, rows, delimiter=",") -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f, delimiter=delimiter)
            if header:
                w.writerow(header)
            w.writerows(rows)
        return path


def tone_embedder(writer: Writer, tasks) -> ToneEmbedder:
    tones = {}
    for t in tasks:
        for text, f in writer.groups.get(t.name, {}).items():
            tones.setdefault(f, []).append(t.prompt.format(label=text))
        for f, caps in writer.captions.get(t.name, {}).items():
            tones.setdefault(f, []).extend(caps)
    return ToneEmbedder(tones)


# ------------------------------------------------------------------------------------------------ datasets
def esc50(w: Writer, actions: bool = True):
    cats = ["dog", "chirping_birds", "door_wood_knock"]
    acts = ["blowing", "breaking", "calling", "crumpling", "dripping", "exhaling", "exploding", "gasping",
            "groaning", "pouring", "ringing", "rolling", "rotating", "scraping", "singing", "sizzling",
            "splashing", "tapping", "vibrating", "wailing"]
    positives = {0: ["calling"], 1: ["singing", "calling"], 2: ["tapping"], 3: ["calling"], 4: ["singing"],
                 5: ["tapping", "breaking"]}
    rows, arows = [], []
    for i in range(6):
        target = i % 3
        fold = 1 + i % 5
        fname = f"{fold}-{100032 + i}-A-{target}.wav"
        rows.append([fname, fold, target, cats[target], "False", 100032 + i, "A"])
        freqs = [w.tone("esc50", cats[target].replace("_", " "))]
        if actions:
            ratings = [round(0.3 * ((i + k) % 5), 2) for k in range(20)]  # all < 2 ...
            for a in positives[i]:
                ratings[acts.index(a)] = 3.0 if a != "breaking" else 2.0   # ... except the positives (>= 2)
                freqs.append(w.tone("esc50_actions", a))
            arows.append([fname, fold, target, cats[target]] + ratings)
        w.wav(f"ESC-50-master/audio/{fname}", freqs, sr=44100, seconds=1.0)
    w.csv("ESC-50-master/meta/esc50.csv", ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows)
    if actions:
        w.csv("ESC50-Actions/action_vectors_dataset/actionvector_one_per_audiofile.csv",
              ["filename", "fold", "target", "category"] + acts, arows)


def us8k(w: Writer):
    names = ["air_conditioner", "car_horn", "children_playing"]
    rows = []
    for i in range(6):
        cid, fold = i % 3, 1 + i % 10
        fname = f"{100 + i}-{cid}-0-{i}.wav"
        sr, ch, sub = [(44100, 2, "PCM_24"), (22050, 1, "PCM_16"), (48000, 1, "FLOAT")][i % 3]
        w.wav(f"UrbanSound8K/audio/fold{fold}/{fname}", [w.tone("us8k", names[cid].replace("_", " "))],
              sr=sr, channels=ch, subtype=sub, seconds=0.5)
        rows.append([fname, 100 + i, 0.0, 0.5, 1, fold, cid, names[cid]])
    w.csv("UrbanSound8K/metadata/UrbanSound8K.csv",
          ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"], rows)


def fsd50k(w: Writer):
    vocab = [(0, "Accelerating_and_revving_and_vroom", "/m/07q2z82"), (1, "Bark", "/m/05tny_"),
             (2, "Dog", "/m/0bt9lr"), (3, "Zipper_(clothing)", "/m/01s0vc")]
    w.csv("FSD50K/FSD50K.ground_truth/vocabulary.csv", None, vocab)
    clips = [(37199, [1, 2]), (175151, [0]), (253463, [2]), (329838, [1, 2])]   # class 3 has no positive
    rows = []
    for fname, ls in clips:
        w.wav(f"FSD50K/FSD50K.eval_audio/{fname}.wav",
              [w.tone("fsd50k", vocab[l][1].replace("_", " ")) for l in ls], sr=44100, seconds=0.8)
        rows.append([fname, ",".join(vocab[l][1] for l in ls), ",".join(vocab[l][2] for l in ls)])
    w.csv("FSD50K/FSD50K.ground_truth/eval.csv", ["fname", "labels", "mids"], rows)
    w.csv("FSD50K/FSD50K.ground_truth/dev.csv", ["fname", "labels", "mids", "split"], [[1, "Bark", "/m/05tny_", "train"]])


def dcase17(w: Writer):
    clips = [("-0RWZT-miFs", 420, ["Car", "Car passing by"]), ("0Bk9ZYRPc2k", 30, ["Train horn"]),
             ("1r0Lw8FJXC0", 0, ["Screaming"]), ("2DLaQkYhuDA", 10, ["Car"])]
    rows = []
    for ytid, start, labels in clips:
        name = f"{ytid}_{start:.3f}_{start + 10:.3f}.wav"
        for l in labels:
            rows.append([name, f"{start:.3f}", f"{start + 10:.3f}", l])
        w.wav(f"DCASE2017_task4/audio/evaluation/Y{name}", [w.tone("dcase17", l) for l in labels], seconds=0.5)
    rows.append(["zzzzzzzzzzz_0.000_10.000.wav", "0.000", "10.000", "Bus"])   # listed, not downloaded
    w.csv("DCASE2017_task4/groundtruth_release/groundtruth_weak_label_evaluation_set.csv", None, rows, delimiter="\t")


def audioset(w: Writer):
    labels = [(0, "/m/09x0r", "Speech"), (1, "/m/05zppz", "Male speech, man speaking"), (2, "/m/0jbk", "Animal"),
              (3, "/m/068hy", "Domestic animals, pets")]
    w.csv("AudioSet/class_labels_indices.csv", ["index", "mid", "display_name"], labels)
    segs = [("--4gqARaEJE", [2, 3]), ("--BfvyPmVMo", [0, 1]), ("--U7joUcTCo", [0]), ("-0BIyqJj9ZU", [2])]
    lines = ["# Segments csv created Sun Mar  5 10:54:25 2017",
             "# num_ytids=5, num_segs=5, num_unique_labels=4, num_positive_labels=8",
             "# YTID, start_seconds, end_seconds, positive_labels"]
    for ytid, ls in segs:
        lines.append(f'{ytid}, 30.000, 40.000, "{",".join(labels[l][1] for l in ls)}"')
        w.wav(f"AudioSet/audio/eval_segments/Y{ytid}.wav", [w.tone("audioset", labels[l][2]) for l in ls],
              sr=32000, seconds=0.5)
    lines.append('-5QrBL6MzLg, 0.000, 10.000, "/m/09x0r"')   # no local copy
    w.text("AudioSet/eval_segments.csv", "\n".join(lines) + "\n")


def vocalsound(w: Writer):
    labels = [(0, "/m/01j3sz", "Laughter"), (1, "/m/07plz5l", "Sigh"), (2, "/m/01b_21", "Cough"),
              (3, "/m/0dl9sf8", "Throat clearing"), (4, "/m/01hsr_", "Sneeze"), (5, "/m/07ppn3j", "Sniff")]
    w.csv("vocalsound_16k/class_labels_indices_vs.csv", ["index", "mid", "display_name"], labels)
    data = []
    for i, (idx, mid, name) in enumerate(labels):
        fname = f"f00{10 + i}_0_{name.lower().replace(' ', '')}.wav"
        w.wav(f"vocalsound_16k/audio_16k/{fname}", [w.tone("vocalsound", name)], seconds=0.5)
        data.append({"wav": f"/data/sls/scratch/yuangong/vocalsound2/data/vs_processed/data_16k/{fname}", "labels": mid})
    w.text("vocalsound_16k/datafiles/te.json", json.dumps({"data": data}))


def sesa(w: Writer):
    for i, c in enumerate(["casual", "gunshot", "explosion", "siren", "casual"]):
        w.wav(f"SESA/test/{c}_{i:03d}.wav", [w.tone("sesa", c)], seconds=0.5)
    w.wav("SESA/train/casual_100.wav", [300.0], seconds=0.5)


def tut2017(w: Writer):
    rows = []
    for i, c in enumerate(["beach", "cafe/restaurant", "city_center", "beach"]):
        w.wav(f"TUT-acoustic-scenes-2017-evaluation/audio/{i + 1}.wav", [w.tone("tut2017", c.replace("_", " "))],
              sr=44100, seconds=0.5, channels=2, subtype="PCM_24")
        rows.append([f"audio/{i + 1}.wav", c])
    w.csv("TUT-acoustic-scenes-2017-evaluation/meta.txt", None, rows, delimiter="\t")


def gtzan(w: Writer):
    genres = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
    for g in genres:
        w.wav(f"genres/{g}/{g}.00000.au", [w.tone("gtzan_genres", g)], sr=22050, seconds=0.5, fmt="AU")
    for c in ("music", "speech"):
        for i in range(2):
            w.wav(f"music_speech/{c}_wav/{c}{i}.wav", [w.tone("gtzan_music_speech", c)], sr=22050, seconds=0.5)


def nsynth(w: Writer):
    from clap_jax.eval.tasks.nsynth import note_name
    notes = [("bass_synthetic_033", 22, 50, "bass", ["dark"]), ("guitar_acoustic_010", 60, 127, "guitar",
             ["bright", "percussive"]), ("keyboard_electronic_001", 60, 25, "keyboard", []),
             ("vocal_acoustic_000", 72, 100, "vocal", ["reverb"])]
    qual = ["bright", "dark", "distortion", "fast_decay", "long_release", "multiphonic", "nonlinear_env",
            "percussive", "reverb", "tempo-synced"]
    fam = ["bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string", "synth_lead", "vocal"]
    meta = {}
    for inst, pitch, vel, family, qs in notes:
        key = f"{inst}-{pitch:03d}-{vel:03d}"
        freqs = [w.tone("nsynth_pitch", note_name(pitch)), w.tone("nsynth_velocity", str(vel)),
                 w.tone("nsynth_family", family.replace("_", " "))] + \
                [w.tone("nsynth_qualities", q.replace("_", " ")) for q in qs]
        w.wav(f"nsynth-test/audio/{key}.wav", freqs, seconds=0.5)
        meta[key] = {"note": 1, "note_str": key, "sample_rate": 16000, "pitch": pitch, "velocity": vel,
                     "instrument": 1, "instrument_str": inst, "instrument_family": fam.index(family),
                     "instrument_family_str": family, "instrument_source": 1,
                     "instrument_source_str": inst.split("_")[1], "qualities": [int(q in qs) for q in qual],
                     "qualities_str": qs}
    w.text("nsynth-test/examples.json", json.dumps(meta))


def beijing(w: Writer):
    for c in ("bangu", "daluo", "naobo", "xiaoluo"):
        for i in range(2):
            w.wav(f"beijing_opera_percussion_instrument_1.0/{c}/{c}-{i + 1}.wav", [w.tone("beijing_opera", c)],
                  sr=44100, seconds=0.5)


def crema_d(w: Writer):
    words = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
    for i, (code, word) in enumerate(words.items()):
        w.wav(f"CREMA-D/AudioWAV/10{i:02d}_DFA_{code}_XX.wav", [w.tone("crema_d", word)], seconds=0.5)


def ravdess(w: Writer):
    emos = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    for e in range(1, 9):
        w.wav(f"RAVDESS/Audio_Speech_Actors_01-24/Actor_01/03-01-{e:02d}-01-01-01-01.wav",
              [w.tone("ravdess", emos[e - 1])], sr=48000, seconds=0.5)
    w.wav("RAVDESS/Audio_Song_Actors_01-24/Actor_02/03-02-03-02-01-01-02.wav", [w.tone("ravdess", "happy")],
          sr=48000, seconds=0.5)


def speech_commands(w: Writer):
    for c in ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_silence_", "_unknown_"):
        w.wav(f"speech_commands_test_set_v0.02/{c}/0a2b400e_nohash_0.wav", [w.tone("speech_commands", c.strip("_"))],
              seconds=1.0)


def libricount(w: Writer):
    for n in (0, 3, 10):
        p = w.wav(f"LibriCount10-0dB/test/{n}_{1000 + n}.wav", [w.tone("libricount", str(n))], seconds=0.5)
        p.with_suffix(".json").write_text(json.dumps([{"sex": "F", "activity": [[0, 1]]}] * n))


def audiocaps(w: Writer):
    rows, k = [], 0
    for ytid in ("---1_cCGK4M", "--0w1YA1Hm4", "-AheI8Epim4"):
        caps = [f"{ytid} caption {j}: a dog barks and a {['car', 'bird', 'man'][j % 3]} passes" for j in range(5)]
        f = w.caption_tone("audiocaps", caps)
        w.wav(f"audiocaps/audio/test/Y{ytid}.wav", [f], sr=32000, seconds=0.5)
        for c in caps:
            rows.append([100000 + k, ytid, 30, c])
            k += 1
    rows.append([200000, "notlocal123", 0, "a missing clip"])
    w.csv("audiocaps/dataset/test.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], rows)


def clotho(w: Writer):
    rows = []
    for name in ("Forest ambience 2.wav", "rain_on_tin_roof.wav", "Market, busy (1).wav"):
        caps = [f"{name} described, variant {j}" for j in range(5)]
        f = w.caption_tone("clotho", caps)
        w.wav(f"clotho/clotho_audio_evaluation/{name}", [f], sr=44100, seconds=0.5)
        rows.append([name] + caps)
    w.csv("clotho/clotho_captions_evaluation.csv", ["file_name"] + [f"caption_{i}" for i in range(1, 6)], rows)


def hear(w: Writer):
    base = "hear/tasks/tfds_crema_d-1.0.0-full"
    w.text(f"{base}/task_metadata.json", json.dumps({
        "task_name": "tfds_crema_d", "version": "1.0.0", "embedding_type": "scene", "prediction_type": "multiclass",
        "split_mode": "new_split_kfold", "nfolds": 2, "sample_duration": 5.0, "evaluation": ["top1_acc"],
        "mode": "full"}))
    codes = {"ANG": "angry", "HAP": "happy", "SAD": "sad"}
    w.csv(f"{base}/labelvocabulary.csv", ["idx", "label"], [[i, c] for i, c in enumerate(sorted(codes))])
    for fold, items in (("fold00", ["ANG", "HAP"]), ("fold01", ["SAD", "ANG"])):
        split = {}
        for i, c in enumerate(items):
            fname = f"10{i}{fold[-1]}_IEO_{c}_HI.wav"
            w.wav(f"{base}/48000/{fold}/{fname}", [w.tone("hear_crema_d", codes[c])], sr=48000, seconds=0.5)
            split[fname] = [c]
        w.text(f"{base}/{fold}.json", json.dumps(split))
    ev = "hear/tasks/dcase2016_task2-hear2021-full"   # an event task: skipped by the reader
    w.text(f"{ev}/task_metadata.json", json.dumps({"task_name": "dcase2016_task2", "embedding_type": "event",
                                                   "prediction_type": "multilabel"}))


def builtin(w: Writer, n_per_class: int = 2, sr: int = 16000, seconds: float = 0.5, name_prefix: str = ""):
    classes = ["beep", "buzz", "hum"]
    single, multi, retr = [], [], []
    for i in range(n_per_class * len(classes)):
        c = classes[i % 3]
        p = f"clips/s{i:04d}.wav"
        w.wav(f"synthetic/{p}", [w.tone(f"builtin_{name_prefix}tones", c)], sr=sr, seconds=seconds)
        single.append({"path": p, "labels": [c]})
    for i, ls in enumerate([["beep"], ["beep", "hum"], ["buzz"], ["hum", "buzz"]]):
        p = f"clips/m{i:04d}.wav"
        w.wav(f"synthetic/{p}", [w.tone(f"builtin_{name_prefix}mix", c) for c in ls], sr=sr, seconds=seconds)
        multi.append({"path": p, "labels": ls})
    for i in range(3):
        caps = [f"synthetic scene {i}, take {j}" for j in range(2)]
        p = f"clips/r{i:04d}.wav"
        w.wav(f"synthetic/{p}", [w.caption_tone(f"builtin_{name_prefix}captions", caps)], sr=sr, seconds=seconds)
        retr.append({"path": p, "captions": caps})
    spec = {"tasks": [
        {"name": f"{name_prefix}tones", "type": "single_label", "prompt": "a {label} tone", "classes": classes,
         "clips": single},
        {"name": f"{name_prefix}mix", "type": "multi_label", "prompt": "this is a sound of {label}",
         "classes": classes, "clips": multi},
        {"name": f"{name_prefix}captions", "type": "retrieval", "clips": retr}]}
    w.text("synthetic/eval_tasks.json", json.dumps(spec, indent=1))


ALL = {"esc50": esc50, "us8k": us8k, "fsd50k": fsd50k, "dcase17": dcase17, "audioset": audioset,
       "vocalsound": vocalsound, "sesa": sesa, "tut2017": tut2017, "gtzan": gtzan, "nsynth": nsynth,
       "beijing_opera": beijing, "crema_d": crema_d, "ravdess": ravdess, "speech_commands": speech_commands,
       "libricount": libricount, "audiocaps": audiocaps, "clotho": clotho, "hear": hear, "builtin": builtin}


def write_all(root: Path) -> Writer:
    w = Writer(root)
    for f in ALL.values():
        f(w)
    return w
