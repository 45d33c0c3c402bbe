"""Analytic FLOPs of one CLAP training example (for MFU), and peak FLOP/s per device kind.

Counts multiply-adds of the matmuls and convolutions as 2 FLOPs; element-wise work, softmax and norms are left
out (the usual convention). Training = 3 x forward (forward + backward of activations and weights); the extra
forward of rematerialisation is not counted, as is customary for MFU.
"""
from __future__ import annotations

import math


def gpt2_forward_flops(t, seq_len: int) -> float:
    d, L = t.n_embd, t.n_layer
    per_token = 2 * 12 * d * d * L + 4 * seq_len * d * L        # qkv/proj/mlp + QK^T and AV
    return per_token * seq_len


def frontend_flops(a, num_samples: int) -> float:
    """STFT (two matmuls with fixed kernels) + mel filterbank: forward only, nothing upstream needs gradients."""
    frames = num_samples // a.hop_size + 1
    n_freq = a.n_fft // 2 + 1
    return 2 * frames * a.n_fft * n_freq * 2 + 2 * frames * n_freq * a.mel_bins


def resize_flops(a, num_samples: int) -> float:
    """Bicubic resize of the log-mel along time to spec_size * freq_ratio frames (a (T_out, T) matmul), forward
    only; identity (no FLOPs) when the frame count already matches. Clips longer than the target are cropped
    (training) and not resized."""
    frames = num_samples // a.hop_size + 1
    target = a.spec_size * (a.spec_size // a.mel_bins)
    return 0.0 if frames >= target else 2.0 * target * frames * a.mel_bins


def htsat_forward_flops(a, num_samples: int) -> float:
    """Swin part of HTSAT (after the front end)."""
    flops = 0
    grid = a.spec_size // a.patch_size
    tokens = grid * grid
    flops += 2 * tokens * a.patch_size ** 2 * a.embed_dim       # patch embedding (1 input channel)
    win2 = a.window_size ** 2
    for i, depth in enumerate(a.depths):
        c = a.embed_dim * 2 ** i
        n = tokens // 4 ** i
        w2 = min(win2, n)
        flops += depth * (2 * 12 * c * c * n + 4 * w2 * c * n)
        if i < len(a.depths) - 1:
            flops += 2 * (n // 4) * (4 * c) * (2 * c)           # patch merging 4C -> 2C
    c_last = a.embed_dim * 2 ** (len(a.depths) - 1)
    n_last = tokens // 4 ** (len(a.depths) - 1)
    flops += 2 * n_last * c_last * a.num_classes * 3             # tscam conv head (kernel (F, 3))
    return flops


def clap_train_flops_per_example(model_cfg, num_samples: int) -> float:
    """3 x (HTSAT + GPT-2 + both projections) forward FLOPs for one (clip, caption) pair, plus the front end once
    and the time resize twice (forward, and its backward to the input: bn0 before it is trained; the resize
    matrix is a constant, so there is no weight gradient)."""
    family_fn = _family_flops(model_cfg)
    if family_fn is not None:   # another model family counts its own
        return family_fn(model_cfg, num_samples)
    a, t, dp = model_cfg.audio, model_cfg.text, model_cfg.d_proj
    c_last = a.embed_dim * 2 ** (len(a.depths) - 1)
    proj = 2 * (c_last * dp + dp * dp) + 2 * (t.n_embd * dp + dp * dp)
    return (frontend_flops(a, num_samples) + 2.0 * resize_flops(a, num_samples)
            + 3.0 * (htsat_forward_flops(a, num_samples) + gpt2_forward_flops(t, t.max_length) + proj))


def captioner_train_flops(model_cfg, num_samples: int) -> float:
    """The captioner (HTSAT, projection, transformer mapper, GPT-2 over prefix + tokens, LM head): 3 x forward
    plus the front end, counted whole whether a tower is frozen or not."""
    a, t, k, dp = model_cfg.audio, model_cfg.text, model_cfg.caption, model_cfg.d_proj
    c_last = a.embed_dim * 2 ** (len(a.depths) - 1)
    e, n = t.n_embd, k.clip_length + k.prefix_length
    mapper = 2 * dp * k.clip_length * e + k.num_layers * n * (2 * 4 * e * e + 2 * 2 * e * e * k.mlp_ratio
                                                              + 4 * n * e)
    seq = k.prefix_length + t.max_length
    head = 2 * seq * e * t.vocab_size
    return (frontend_flops(a, num_samples) + 2.0 * resize_flops(a, num_samples)
            + 3.0 * (htsat_forward_flops(a, num_samples) + 2 * (c_last * dp + dp * dp) + mapper
                     + gpt2_forward_flops(t, seq) + head))


def highest_precision_flops_per_example(model_cfg, num_samples: int) -> float:
    """The part of `clap_train_flops_per_example` done in float32 at Precision.HIGHEST (the STFT, mel filterbank
    and resize matmuls, for msclap-exact features): on TPU each such matmul takes 6 bf16 MXU passes."""
    a = model_cfg.audio
    if _family_flops(model_cfg) is not None and "caption" not in model_cfg:   # no time resize outside HTSAT
        return frontend_flops(a, num_samples)
    return frontend_flops(a, num_samples) + 2.0 * resize_flops(a, num_samples)


def _family_flops(model_cfg):
    """The `train_flops` hook of a model family other than msclap-2023 (clap_jax.models.registry), or None."""
    family = model_cfg.get("family", "msclap-2023")
    if family == "msclap-2023":
        return None
    from clap_jax.models import registry

    fn = registry.family(family).train_flops
    if fn is None and "caption" in model_cfg:   # an audio-prefix language model on the 2023 audio encoder
        return captioner_train_flops
    if fn is None:
        raise ValueError(f"model family {family!r} has no train_flops hook: analytic FLOPs are unknown")
    return fn


# Dense bf16 peak FLOP/s per chip (vendor figures).
PEAK_FLOPS = {
    "h100": 989e12, "h200": 989e12, "a100": 312e12, "l4": 121e12, "gh200": 989e12,
    "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12, "tpu v5": 459e12,
    "tpu v6 lite": 918e12, "tpu v6e": 918e12,
}


def peak_flops(device_kind: str, override: float | None = None) -> float | None:
    """Peak FLOP/s for a `jax.Device.device_kind`, or None if unknown (CPU): then MFU is not reported."""
    if override:
        return float(override)
    kind = device_kind.lower()
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in kind:
            return PEAK_FLOPS[key]
    return None


def fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
