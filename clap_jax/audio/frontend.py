"""Audio front end, as msclap's HTSAT computes it inside the model.

waveform (B, N) @ 44.1 kHz
  -> reflect-padded STFT power (n_fft 1024, hop 320, periodic Hann)        (B, T, 513),  T = N // 320 + 1
  -> mel filterbank (librosa slaney mel, built for sr 32000 / 50..14000 Hz)  (B, T, 64)
  -> 10 * log10(max(mel, 1e-10))
  [-> BatchNorm over mel bins, SpecAugment: in the model, they carry state/randomness]
  -> bicubic resize along time to 1024 frames (PyTorch align_corners=True, A=-0.75)
  -> fold the four 256-frame chunks on top of each other                     (B, 256, 256)

The filterbank and the STFT kernels are *constants of the model* (collection 'constants'), initialised here and
overwritten by a checkpoint's values when one is loaded (msclap stores them in its state dict).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_fft//2+1, n_mels) float32, librosa's slaney-normalised mel filterbank transposed (msclap's `melW`)."""
    import librosa

    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).T.astype(np.float32)


def hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window (scipy's fftbins=True), float64 (n_fft,)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)


def stft_kernels(n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """Windowed DFT matrices (n_fft, n_fft//2+1): frame @ real, frame @ imag = torchlibrosa's conv STFT."""
    n = np.arange(n_fft)
    window = hann_window(n_fft)
    k = np.arange(n_fft // 2 + 1)
    angle = -2 * np.pi * np.outer(n, k) / n_fft
    return ((np.cos(angle) * window[:, None]).astype(np.float32),
            (np.sin(angle) * window[:, None]).astype(np.float32))


def frame(x: jax.Array, n_fft: int, hop: int) -> jax.Array:
    """(B, N) -> (B, T, n_fft) frames of the reflect-padded signal (center=True)."""
    pad = n_fft // 2
    x = jnp.pad(x, ((0, 0), (pad, pad)), mode="reflect")
    t = (x.shape[1] - n_fft) // hop + 1
    # Strided framing as a reshape when possible: hop divides nothing in general, so gather by index.
    idx = np.arange(t)[:, None] * hop + np.arange(n_fft)[None, :]
    return x[:, idx]


def power_spectrogram(x: jax.Array, real_k: jax.Array, imag_k: jax.Array, hop: int) -> jax.Array:
    """(B, N) -> (B, T, n_fft//2+1) |STFT|^2."""
    n_fft = real_k.shape[0]
    frames = frame(x, n_fft, hop)
    hp = jax.lax.Precision.HIGHEST
    re = jnp.einsum("btn,nk->btk", frames, real_k, precision=hp)
    im = jnp.einsum("btn,nk->btk", frames, imag_k, precision=hp)
    return re * re + im * im


def power_spectrogram_fft(x: jax.Array, n_fft: int, hop: int) -> jax.Array:
    """(B, N) -> (B, T, n_fft//2+1) |STFT|^2 by FFT: the same periodic-Hann STFT as `power_spectrogram` with
    `stft_kernels(n_fft)` (equal to float32 rounding), without the O(n_fft^2) DFT matmuls (~2x faster on CPU)."""
    window = jnp.asarray(hann_window(n_fft), jnp.float32)
    spec = jnp.fft.rfft(frame(x, n_fft, hop) * window, axis=-1)
    return spec.real * spec.real + spec.imag * spec.imag


def log_mel(power: jax.Array, mel_w: jax.Array, amin: float = 1e-10) -> jax.Array:
    """(B, T, F) power -> (B, T, n_mels) dB (ref 1.0, no top_db)."""
    mel = jnp.einsum("btf,fm->btm", power, mel_w, precision=jax.lax.Precision.HIGHEST)
    return 10.0 * jnp.log10(jnp.maximum(mel, amin))


@functools.lru_cache(maxsize=32)
def bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """(n_out, n_in) matrix of PyTorch's 1-D bicubic interpolation with align_corners=True.

    src = dst * (n_in - 1) / (n_out - 1); taps at floor(src) - 1 .. + 2, indices clamped to the border;
    cubic convolution weights with A = -0.75.
    """
    # PyTorch does this arithmetic in float32 (CPU opmath for float); doing the same keeps the taps bit-close.
    f32 = np.float32
    m = np.zeros((n_out, n_in), np.float32)
    scale = f32(n_in - 1) / f32(n_out - 1) if n_out > 1 else f32(0)
    a = f32(a)

    def near(x):  # |x| <= 1
        return ((a + f32(2)) * x - (a + f32(3))) * x * x + f32(1)

    def far(x):  # 1 < |x| < 2
        return ((a * x - f32(5) * a) * x + f32(8) * a) * x - f32(4) * a

    for d in range(n_out):
        src = f32(scale * f32(d))
        i0 = int(np.floor(src))
        t = f32(src - f32(i0))
        weights = (far(t + f32(1)), near(t), near(f32(1) - t), far(f32(2) - t))
        for j, w in zip(range(i0 - 1, i0 + 3), weights):
            m[d, min(max(j, 0), n_in - 1)] += w
    return m.astype(np.float32)


def resize_time(x: jax.Array, n_out: int) -> jax.Array:
    """(B, T, F) -> (B, n_out, F) by PyTorch-exact bicubic (identity when T == n_out)."""
    t = x.shape[1]
    if t == n_out:
        return x
    w = jnp.asarray(bicubic_matrix(t, n_out))
    return jnp.einsum("ot,btf->bof", w, x, precision=jax.lax.Precision.HIGHEST)


def fold_to_image(x: jax.Array, spec_size: int, freq_ratio: int) -> jax.Array:
    """(B, spec_size*freq_ratio, F) -> (B, spec_size, spec_size): stack the time chunks along height.

    img[k*F + f, c] = x[k*spec_size + c, f] for chunk k in 0..freq_ratio-1 (msclap's reshape_wav2img).
    """
    b, t, f = x.shape
    if t != spec_size * freq_ratio or f * freq_ratio != spec_size:
        raise ValueError(f"fold_to_image: expected ({spec_size * freq_ratio}, {spec_size // freq_ratio}) "
                         f"frames x mel bins, got {(t, f)}")
    x = x.reshape(b, freq_ratio, spec_size, f)        # (B, k, c, f)
    x = jnp.transpose(x, (0, 1, 3, 2))                # (B, k, f, c)
    return x.reshape(b, freq_ratio * f, spec_size)


def spec_augment(rng: jax.Array, x: jax.Array, time_width: int = 64, time_stripes: int = 2,
                 freq_width: int = 8, freq_stripes: int = 2) -> jax.Array:
    """torchlibrosa SpecAugmentation on (B, T, F): per example, stripes of width U{0..w-1} zeroed at a start
    U{0..total-width-1}, independently along time and mel bins."""
    b, t, f = x.shape

    def stripes(key, total, max_width, num):
        kw, ks = jax.random.split(key)
        width = jax.random.randint(kw, (b, num), 0, max_width)
        start = (jax.random.uniform(ks, (b, num)) * (total - width)).astype(jnp.int32)
        pos = jnp.arange(total)
        hit = (pos[None, None, :] >= start[..., None]) & (pos[None, None, :] < (start + width)[..., None])
        return jnp.any(hit, axis=1)  # (B, total)

    kt, kf = jax.random.split(rng)
    drop_t = stripes(kt, t, time_width, time_stripes)
    drop_f = stripes(kf, f, freq_width, freq_stripes)
    keep = ~(drop_t[:, :, None] | drop_f[:, None, :])
    return jnp.where(keep, x, 0.0)
