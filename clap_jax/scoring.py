"""Scores between embeddings, as msclap computes them: logit_scale x cosine similarity."""
from __future__ import annotations

import numpy as np


def l2_normalize(x, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def similarity(audio_emb, text_emb, logit_scale: float) -> np.ndarray:
    """(N_audio, N_text) = logit_scale * cosine of the (unnormalised) embeddings."""
    return float(logit_scale) * (l2_normalize(audio_emb) @ l2_normalize(text_emb).T)
