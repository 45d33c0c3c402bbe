"""Metrics of the CLAP 2023 zero-shot suite (the metrics the CLAP 2023 paper reports per task).

All functions take plain numpy arrays and return Python floats (or dicts of floats):

  accuracy              mean(argmax_c scores[n, c] == y[n])
  average_precision     one class, sklearn `average_precision_score` semantics (step-wise, no interpolation)
  macro_map             unweighted mean of per-class AP; classes without a positive are dropped (and counted)
  binarize              the threshold rules for thresholded metrics (DCASE17 F1)
  instance_f1           micro / instance-based F1 (TP, FP, FN pooled over every (clip, label) pair)
  retrieval_metrics     R@k and mAP@10 in both directions (text->audio: DCASE 2022 task 6B;
                        audio->text: best rank among the references for R@k, LAION/WavCaps mAP@10)
  cider_d               CIDEr-D (corpus idf over references, clipped n-gram TF-IDF, Gaussian length penalty)
"""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np


# ----------------------------------------------------------------------------------------------- classification
def accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy. scores: (N, C); targets: (N,) class indices."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"accuracy: scores {scores.shape} and targets {targets.shape} do not match")
    if len(targets) == 0:
        raise ValueError("accuracy: no examples")
    return float(np.mean(np.argmax(scores, axis=1) == targets))


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """AP of one class, as sklearn.metrics.average_precision_score: sum_n (R_n - R_{n-1}) P_n over the
    distinct score thresholds (tied scores form one threshold). NaN when there is no positive."""
    y_true = np.asarray(y_true).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos = int(y_true.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y_true[order]
    tp = np.cumsum(t)
    fp = np.cumsum(~t)
    # keep the last index of each run of tied scores: that is where a threshold takes effect
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    prev_recall = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev_recall) * precision))


def macro_map(targets: np.ndarray, scores: np.ndarray, return_info: bool = False):
    """Macro mAP over classes. targets: (N, C) binary; scores: (N, C).

    Classes with no positive example have an undefined AP (sklearn warns and, depending on version, counts
    them as 0 or NaN); here they are dropped from the mean, and `return_info` says how many were dropped.
    """
    targets, scores = np.asarray(targets), np.asarray(scores)
    if targets.shape != scores.shape or targets.ndim != 2:
        raise ValueError(f"macro_map: targets {targets.shape} and scores {scores.shape} do not match")
    aps = np.array([average_precision(targets[:, c], scores[:, c]) for c in range(targets.shape[1])])
    valid = ~np.isnan(aps)
    if not valid.any():
        raise ValueError("macro_map: no class has a positive example")
    value = float(aps[valid].mean())
    if return_info:
        return value, {"classes_scored": int(valid.sum()), "classes_without_positives": int((~valid).sum())}
    return value


# ----------------------------------------------------------------------------------------------- thresholded
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def binarize(logits: np.ndarray, rule: str) -> np.ndarray:
    """Binary decisions (N, C) from logits (N, C) by a named rule.

    rules:  "top1", "top<k>"         the k highest-scoring classes of each clip are positive
            "sigmoid>0.5"            sigmoid(logit) > t
            "softmax>0.1"            softmax over classes > t
            "top1+sigmoid>0.5"       the top class, plus every class with sigmoid(logit) > t
    The paper does not say which rule CLAP 2023 used for DCASE17 F1; the harness default is "top1"
    (each clip gets its most likely class; DCASE17 clips mostly carry one label) and the rule is written
    into the results.
    """
    logits = np.asarray(logits, dtype=np.float64)
    out = np.zeros(logits.shape, dtype=bool)
    for part in rule.split("+"):
        m = re.fullmatch(r"top(\d+)", part)
        if m:
            k = int(m.group(1))
            idx = np.argsort(-logits, axis=1, kind="mergesort")[:, :k]
            np.put_along_axis(out, idx, True, axis=1)
            continue
        m = re.fullmatch(r"(sigmoid|softmax)>([0-9.]+)", part)
        if m:
            probs = _sigmoid(logits) if m.group(1) == "sigmoid" else _softmax(logits)
            out |= probs > float(m.group(2))
            continue
        raise ValueError(f"unknown threshold rule {part!r} in {rule!r} (use topK, sigmoid>T, softmax>T, joined by +)")
    return out


def instance_f1(targets: np.ndarray, predictions: np.ndarray) -> dict:
    """Micro-averaged, instance-based P/R/F1 (DCASE2017 task 4 subtask A): TP/FP/FN pooled over all pairs."""
    t = np.asarray(targets).astype(bool)
    p = np.asarray(predictions).astype(bool)
    if t.shape != p.shape:
        raise ValueError(f"instance_f1: targets {t.shape} and predictions {p.shape} do not match")
    tp = int(np.sum(t & p))
    fp = int(np.sum(~t & p))
    fn = int(np.sum(t & ~p))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall, "tp": tp, "fp": fp, "fn": fn}


# ----------------------------------------------------------------------------------------------- retrieval
def _ranks_of_targets(sim: np.ndarray, targets: list[list[int]]) -> list[np.ndarray]:
    """For each query row of sim (Q, K), the 1-based ranks of its target columns (ties broken by index)."""
    order = np.argsort(-sim, axis=1, kind="mergesort")
    rank_of = np.empty_like(order)
    rows = np.arange(sim.shape[0])[:, None]
    rank_of[rows, order] = np.arange(1, sim.shape[1] + 1)[None, :]
    return [np.sort(rank_of[q, list(t)]) for q, t in enumerate(targets)]


def retrieval_metrics(sim: np.ndarray, text_to_audio: np.ndarray, ks=(1, 5, 10)) -> dict:
    """Both retrieval directions from one similarity matrix.

    sim: (N_audio, N_text) similarities; text_to_audio: (N_text,) index of the audio each caption describes.
    text->audio: one correct audio per caption; R@k = fraction of captions whose audio ranks <= k;
                 mAP@10 = mean over captions of 1/rank if rank <= 10 else 0 (DCASE 2022 task 6B).
    audio->text: each audio has its own captions (5 in AudioCaps/Clotho); R@k uses the best (minimum) rank
                 of them; mAP@10 = mean over audios of sum_i (i / r_i) / n_refs over the sorted ranks r_i <= 10
                 (LAION-CLAP / WavCaps convention).
    """
    sim = np.asarray(sim, dtype=np.float64)
    t2a_idx = np.asarray(text_to_audio)
    n_audio, n_text = sim.shape
    if t2a_idx.shape != (n_text,):
        raise ValueError(f"retrieval_metrics: {n_text} captions but {t2a_idx.shape} caption->audio indices")
    out = {}
    t2a = np.array([r[0] for r in _ranks_of_targets(sim.T, [[a] for a in t2a_idx])])
    for k in ks:
        out[f"t2a_R@{k}"] = float(np.mean(t2a <= k))
    out["t2a_mAP@10"] = float(np.mean(np.where(t2a <= 10, 1.0 / t2a, 0.0)))
    refs = [np.nonzero(t2a_idx == a)[0] for a in range(n_audio)]
    if any(len(r) == 0 for r in refs):
        raise ValueError("retrieval_metrics: an audio clip has no caption")
    a2t = _ranks_of_targets(sim, refs)
    for k in ks:
        out[f"a2t_R@{k}"] = float(np.mean([r[0] <= k for r in a2t]))
    aps = []
    for r in a2t:
        hits = r[r <= 10]
        aps.append(sum((i + 1) / rank for i, rank in enumerate(hits)) / len(r))
    out["a2t_mAP@10"] = float(np.mean(aps))
    return out


# ----------------------------------------------------------------------------------------------- captioning
def tokenize_caption(text: str) -> list[str]:
    """Lower-case word tokens without punctuation (close to the PTB tokenizer + punctuation removal that the
    COCO caption tools apply before CIDEr)."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def _ngrams(tokens: list[str], n_max: int) -> list[Counter]:
    return [Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)) for n in range(1, n_max + 1)]


def cider_d(candidates: list[str], references: list[list[str]], n_max: int = 4, sigma: float = 6.0,
            return_per_item: bool = False):
    """Corpus CIDEr-D (Vedantam et al. 2015, the COCO-caption/DCASE variant), times 10.

    Document frequencies come from the references of the whole corpus (one document per item);
    idf = log(max(1, N) / max(1, df)); TF-IDF vectors per n; the candidate's counts are clipped by the
    reference's (min); cosine-like product divided by both norms; Gaussian penalty exp(-(len_c - len_r)^2 /
    (2 sigma^2)); averaged over references and n = 1..4.
    """
    if len(candidates) != len(references):
        raise ValueError(f"cider_d: {len(candidates)} candidates but {len(references)} reference lists")
    cand = [_ngrams(tokenize_caption(c), n_max) for c in candidates]
    refs = [[_ngrams(tokenize_caption(r), n_max) for r in rs] for rs in references]
    df = Counter()
    for rs in refs:
        df.update({g for r in rs for counts in r for g in counts})
    log_n = math.log(float(max(1, len(candidates))))

    def vec(counts_per_n):
        vs, norms = [], []
        for counts in counts_per_n:
            v = {g: tf * (log_n - math.log(max(1.0, df[g]))) for g, tf in counts.items()}
            vs.append(v)
            norms.append(math.sqrt(sum(x * x for x in v.values())))
        length = sum(counts_per_n[0].values())
        return vs, norms, length

    scores = []
    for c, rs in zip(cand, refs):
        vc, nc, lc = vec(c)
        per_n = np.zeros(n_max)
        for r in rs:
            vr, nr, lr = vec(r)
            penalty = math.exp(-((lc - lr) ** 2) / (2 * sigma ** 2))
            for n in range(n_max):
                dot = sum(min(x, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, x in vc[n].items())
                if nc[n] and nr[n]:
                    per_n[n] += penalty * dot / (nc[n] * nr[n])
        scores.append(10.0 * float(per_n.mean()) / max(1, len(rs)))
    corpus = float(np.mean(scores)) if scores else 0.0
    return (corpus, scores) if return_per_item else corpus
