"""The paper's numbers: CLAP 2023 (arXiv 2309.05767) Table 2, its benchmark column, random baselines and
literature anchors as the paper cites them.

Each Table-2 cell is an Entry keyed by (task, metric): `task` is the harness task name (a Task's paper_key),
`metric` the key under which zeroshot.score_task reports the number.
"""
from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Entry:
    row: str                  # Table 2 row number
    title: str                # as the paper names the task
    task: str                 # harness task name / paper_key
    metric: str               # key in the task's metrics
    clap2023: float           # HTSAT-22+GPT2, 4.6M pairs
    benchmark: float          # best in the literature, or random when none existed
    benchmark_source: str
    random: Optional[float] = None   # random baseline (CLAP 2022 paper, or 1/n_classes)
    unconfirmed: bool = False        # [U] in the spec


TABLE2 = [
    Entry("1", "ESC50", "esc50", "acc", 0.939, 0.948, "[6] WavCaps", 0.02),
    Entry("2", "FSD50K", "fsd50k", "mAP", 0.485, 0.302, "[3] CLAP 2022", 0.005),
    Entry("3", "UrbanSound8K", "us8k", "acc", 0.823, 0.806, "[6] WavCaps", 0.1),
    Entry("4", "DCASE2017 Task 4", "dcase17", "f1", 0.466, 0.300, "[3] CLAP 2022", 0.05),
    Entry("5", "AudioSet", "audioset", "mAP", 0.102, 0.058, "[3] CLAP 2022", 0.0018),
    Entry("6", "VocalSound", "vocalsound", "acc", 0.800, 0.495, "[3] CLAP 2022", 1 / 6),
    Entry("7", "SESA", "sesa", "acc", 0.650, 0.250, "random (4 classes)", 0.25),
    Entry("8", "ESC50-Actions", "esc50_actions", "mAP", 0.509, 0.045, "random? [U]", 0.045, True),
    Entry("9", "TUT2017", "tut2017", "acc", 0.538, 0.296, "[3] CLAP 2022", 0.06),
    Entry("10", "GTZAN Music-Speech", "gtzan_music_speech", "acc", 0.992, 1.000, "[3] CLAP 2022", 0.5),
    Entry("11", "GTZAN Genres", "gtzan_genres", "acc", 0.584, 0.250, "[3] CLAP 2022", 0.1),
    Entry("12", "NSynth pitch", "nsynth_pitch", "acc", 0.444, 0.015, "random", 0.015, True),
    Entry("13", "NSynth velocity", "nsynth_velocity", "acc", 0.222, 0.200, "random (5 classes)", 0.2),
    Entry("14", "NSynth qualities", "nsynth_qualities", "mAP", 0.489, 0.100, "random (10 qualities)", 0.1),
    Entry("15", "Beijing Opera", "beijing_opera", "acc", 0.466, 0.4746, "[3] CLAP 2022", 0.25),
    Entry("16", "NSynth instrument family", "nsynth_family", "acc", 0.479, 0.090, "random (11 classes)", 0.09),
    Entry("17", "CREMA-D", "crema_d", "acc", 0.300, 0.178, "[3] CLAP 2022", 1 / 6),
    Entry("18", "RAVDESS", "ravdess", "acc", 0.315, 0.159, "[3] CLAP 2022", 0.125),
    Entry("19", "Speech Commands (KWS)", "speech_commands", "acc", 0.164, 0.106, "[3] CLAP 2022", 1 / 12),
    Entry("20", "LibriCount10", "libricount", "acc", 0.246, 0.178, "[3] CLAP 2022", 0.09),
    Entry("21", "AudioCaps captioning", "audiocaps_captioning", "SPIDEr", 0.455, 0.438, "[35] Prefix-AAC"),
    Entry("22", "Clotho captioning", "clotho_captioning", "SPIDEr", 0.271, 0.215, "[35] Prefix-AAC"),
    Entry("23a", "AudioCaps A→T R@1", "audiocaps", "a2t_R@1", 0.425, 0.517, "[6] WavCaps"),
    Entry("23b", "AudioCaps A→T mAP@10", "audiocaps", "a2t_mAP@10", 0.319, 0.457, "[4] LAION-CLAP"),
    Entry("24a", "Clotho A→T R@1", "clotho", "a2t_R@1", 0.229, 0.234, "[6] WavCaps"),
    Entry("24b", "Clotho A→T mAP@10", "clotho", "a2t_mAP@10", 0.155, 0.138, "[4] LAION-CLAP"),
    Entry("25a", "AudioCaps T→A R@1", "audiocaps", "t2a_R@1", 0.356, 0.397, "[6] WavCaps"),
    Entry("25b", "AudioCaps T→A mAP@10", "audiocaps", "t2a_mAP@10", 0.510, 0.510, "[4] LAION-CLAP"),
    Entry("26a", "Clotho T→A R@1", "clotho", "t2a_R@1", 0.157, 0.195, "[6] WavCaps"),
    Entry("26b", "Clotho T→A mAP@10", "clotho", "t2a_mAP@10", 0.257, 0.204, "[4] LAION-CLAP"),
]

CAPTIONING_TASKS = ("audiocaps_captioning", "clotho_captioning")

# Averages that the spec derives from Table 2 (not printed in the paper) and Table 1's own average.
AVERAGES = {
    "table2_all_30_cells": {"clap2023": 0.438, "benchmark": 0.319},
    "table2_20_classification_tasks": {"clap2023": 0.501},
    "table1_HTSAT-22+GPT2_119k_pairs_16_tasks": {"clap2023": 0.480},
}

def by_task() -> dict:
    """task -> list of its Table-2 entries."""
    out = {}
    for e in TABLE2:
        out.setdefault(e.task, []).append(e)
    return out


# CLAP 2022 (CNN14 + BERT, 128k pairs; arXiv 2206.04769), zero-shot on its 16 tasks, keyed by harness task with
# the metric the 2023 table scores it by. The values are the CNN14+BERT row of the CLAP 2023 paper's Table 1, which
# equal the CLAP 2022 paper's own zero-shot table wherever the 2023 Table 2 quotes it as [3] (FSD50K 0.302,
# DCASE17 0.300, VocalSound 0.495, TUT2017 0.296, Beijing 0.475, CREMA-D 0.178, RAVDESS 0.160,
# Speech Commands 0.106, LibriCount 0.179; GTZAN genres is 0.252 here, printed 0.250 there). AudioSet (0.058)
# is the 2023 table's [3] cell; it is not one of the 16.
CLAP2022 = {
    ("esc50", "acc"): 0.826, ("fsd50k", "mAP"): 0.302, ("us8k", "acc"): 0.732, ("dcase17", "f1"): 0.300,
    ("vocalsound", "acc"): 0.495, ("sesa", "acc"): 0.749, ("esc50_actions", "mAP"): 0.495,
    ("tut2017", "acc"): 0.296, ("gtzan_music_speech", "acc"): 1.000, ("gtzan_genres", "acc"): 0.252,
    ("beijing_opera", "acc"): 0.475, ("nsynth_family", "acc"): 0.295, ("crema_d", "acc"): 0.178,
    ("ravdess", "acc"): 0.160, ("speech_commands", "acc"): 0.106, ("libricount", "acc"): 0.179,
}
CLAP2022_EXTRA = {("audioset", "mAP"): 0.058}
AVERAGES["clap2022_16_tasks"] = {"clap2022": 0.428}


def clap2022(task: str, metric: str) -> Optional[float]:
    """The CLAP 2022 paper's number for a Table-2 cell, or None where the 2022 paper has none."""
    return CLAP2022.get((task, metric), CLAP2022_EXTRA.get((task, metric)))


# LAION-CLAP (Wu, Chen et al., "Large-scale contrastive language-audio pretraining with feature fusion and
# keyword-to-caption augmentation", ICASSP 2023), its published numbers keyed like Table 2's cells. Zero-shot
# classification: the paper's best model (LAION-Audio-630K + AudioSet with keyword-to-caption), prompt
# "This is a sound of {label}.", ESC-50 on fold 1 only (400 clips; this suite pools all 5 folds, so the two are not
# the same test). Retrieval: mAP@10 as the CLAP 2023 paper quotes LAION-CLAP ([4]) for its benchmarks; T->A R@1
# as the LAION-CLAP paper states its best model's (AudioCaps 36.7, Clotho 18.2).
LAION_CLAP = {
    ("esc50", "acc"): 0.910, ("us8k", "acc"): 0.770,
    ("audiocaps", "a2t_mAP@10"): 0.457, ("clotho", "a2t_mAP@10"): 0.138,
    ("audiocaps", "t2a_mAP@10"): 0.510, ("clotho", "t2a_mAP@10"): 0.204,
    ("audiocaps", "t2a_R@1"): 0.367, ("clotho", "t2a_R@1"): 0.182,
}
LAION_PROMPT = "This is a sound of {label}."
# LAION's zero-shot protocol for `python -m clap_jax.eval --config FILE` (the same JSON shape): its prompt for every
# classification task, ESC-50 fold 1 only.
LAION_PROTOCOL = {"prompts": {k: LAION_PROMPT for k in ("esc50", "us8k", "fsd50k", "audioset", "gtzan_genres",
                                                         "vocalsound", "tut2017", "dcase17")},
                  "options": {"esc50": {"folds": [1]}}}


def laion_clap(task: str, metric: str) -> Optional[float]:
    """LAION-CLAP's published number for a cell, or None where its paper has none."""
    return LAION_CLAP.get((task, metric))
