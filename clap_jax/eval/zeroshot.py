"""Zero-shot scoring as CLAP 2023 does it (paper section 2.3, msclap's ESC50 example).

logits = logit_scale * cosine(audio, prompt(class)); softmax for single-label tasks, sigmoid for multi-label
(neither changes argmax or per-class ranking, so accuracy and mAP are the same on raw logits; only the
thresholded F1 depends on it). Retrieval: the texts are all captions, "treated as classes"; logits unaltered.
"""
from __future__ import annotations

import numpy as np

from clap_jax.eval import metrics
from clap_jax.scoring import similarity
from clap_jax.eval.tasks.base import MULTI, RETRIEVAL, SINGLE, Task


def texts_for(task: Task) -> tuple[list, np.ndarray | None]:
    """The texts to embed for a task and, for retrieval, caption -> clip index."""
    if task.kind == RETRIEVAL:
        texts, owner = [], []
        for i, c in enumerate(task.clips):
            texts += list(c.captions)
            owner += [i] * len(c.captions)
        return texts, np.asarray(owner)
    return task.class_texts(), None


def score_task(task: Task, audio_emb: np.ndarray, text_emb: np.ndarray, logit_scale: float,
               clip_indices=None) -> dict:
    """Metrics of one task. clip_indices: which of task.clips the rows of audio_emb are (default: all)."""
    clips = task.clips if clip_indices is None else [task.clips[i] for i in clip_indices]
    if len(clips) != audio_emb.shape[0]:
        raise ValueError(f"{task.name}: {audio_emb.shape[0]} audio embeddings for {len(clips)} clips")
    logits = similarity(audio_emb, text_emb, logit_scale)
    if task.kind == SINGLE:
        y = np.asarray([c.labels[0] for c in clips])
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        return {"acc": metrics.accuracy(probs, y), "n_clips": len(clips)}
    if task.kind == MULTI:
        targets = np.zeros(logits.shape, dtype=bool)
        for n, c in enumerate(clips):
            targets[n, list(c.labels)] = True
        probs = 1.0 / (1.0 + np.exp(-logits))
        m, info = metrics.macro_map(targets, probs, return_info=True)
        out = {"mAP": m, "n_clips": len(clips), **info}
        if task.threshold_rule:
            f = metrics.instance_f1(targets, metrics.binarize(logits, task.threshold_rule))
            out.update({"f1": f["f1"], "precision": f["precision"], "recall": f["recall"]})
        return out
    if task.kind == RETRIEVAL:
        if clip_indices is not None and len(clip_indices) != len(task.clips):
            # captions of dropped clips must go too: rebuild caption ownership over the kept clips
            keep = {old: new for new, old in enumerate(clip_indices)}
            _, owner = texts_for(task)
            mask = np.asarray([o in keep for o in owner])
            logits = logits[:, mask]
            owner = np.asarray([keep[o] for o in owner[mask]])
        else:
            _, owner = texts_for(task)
        return {**metrics.retrieval_metrics(logits, owner), "n_clips": len(clips), "n_captions": len(owner)}
    raise ValueError(f"{task.name}: unknown task kind {task.kind!r}")
