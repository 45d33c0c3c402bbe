"""LAION-CLAP's audio input, on the host: int16 round trip, repeat-padding, random crops and the feature-fusion
views of long clips (laion_clap 1.1.7, `training/data.py: get_audio_features`, numbers from its HTSAT configs).

  wave (N,) float @ 48 kHz --quantize_int16--> the same values a 16-bit file would hold
  N <= clip:  repeat the whole clip int(clip / N) times, zero-pad to `clip` samples; fused models also get the
              HTK log-mel of that padded clip four times and longer=False
  N >  clip:  unfused: one crop of `clip` samples at rng.randint(0, N - clip + 1), longer=True
              fused:   HTK log-mel of the whole clip (T = N // hop + 1 frames); if T == clip // hop + 1 (a clip
                       less than one hop longer) the whole mel four times and longer=False; else three chunks of
                       clip // hop + 1 frames, one start drawn from each third of the possible starts
                       (rng.choice x 3), the global view = the whole mel resized to the chunk length (bilinear with
                       antialias, torchvision's Resize), longer=True; then the waveform crop (rng.randint) as for
                       unfused models.

The random draws are made in laion_clap's order with a `numpy.random.RandomState` (`choice` x 3, then
`randint`), so a RandomState seeded like numpy's global generator gives laion_clap's crop positions.

The fused path's mel is not the unfused model's: laion_clap computes it with torchaudio (HTK mel scale, no filter
normalisation) while the model's own front end uses librosa's Slaney filterbank; the two differ by tens of dB.
"""
from __future__ import annotations

import functools

import numpy as np


def quantize_int16(wave: np.ndarray) -> np.ndarray:
    """clip to [-1, 1], * 32767, truncate to int16, / 32767 (float32): laion_clap's round trip."""
    x = np.clip(np.asarray(wave, np.float32), -1.0, 1.0)
    return ((x * np.float32(32767.0)).astype(np.int16) / 32767.0).astype(np.float32)


def repeat_pad(wave: np.ndarray, n: int) -> np.ndarray:
    """Shorter than n: int(n / len) whole copies then zeros (laion's 'repeatpad'); length n: untouched."""
    wave = np.asarray(wave, np.float32)
    if len(wave) == 0:
        raise ValueError("repeat_pad: empty clip")
    if len(wave) >= n:
        return wave
    rep = np.tile(wave, int(n / len(wave)))
    return np.pad(rep, (0, n - len(rep)))


@functools.lru_cache(maxsize=8)
def htk_mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_fft//2+1, n_mels) float32 triangular filters on the HTK mel scale, no normalisation (torchaudio's
    `melscale_fbanks(..., norm=None, mel_scale='htk')`)."""
    hz_to_mel = lambda f: 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)  # noqa: E731
    mel_to_hz = lambda m: 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)  # noqa: E731
    freqs = np.linspace(0, sr // 2, n_fft // 2 + 1)
    f_pts = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down, up)).astype(np.float32)


def _hann(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


def htk_log_mel(wave: np.ndarray, sr: int = 48000, n_fft: int = 1024, hop: int = 480, n_mels: int = 64,
                fmin: float = 50.0, fmax: float = 14000.0) -> np.ndarray:
    """(N,) -> (N // hop + 1, n_mels) float32 dB: centred reflect-padded periodic-Hann power STFT, HTK mel,
    10 * log10(max(x, 1e-10)) (laion_clap's `get_mel`). In float32 as torchaudio computes it (scipy's rFFT keeps
    float32, numpy's would go to float64 at twice the cost); the dB values agree with a float64 computation to
    about 1e-4 dB."""
    import scipy.fft

    x = np.asarray(wave, np.float32)
    pad = n_fft // 2
    if len(x) <= pad:
        raise ValueError(f"htk_log_mel: a clip of {len(x)} samples is too short for reflect padding ({pad})")
    x = np.pad(x, pad, mode="reflect")
    t = (len(x) - n_fft) // hop + 1
    frames = np.lib.stride_tricks.as_strided(x, (t, n_fft), (x.strides[0] * hop, x.strides[0]))
    spec = scipy.fft.rfft(frames * _hann(n_fft).astype(np.float32), axis=-1)
    power = spec.real ** 2 + spec.imag ** 2
    mel = power @ htk_mel_filterbank(sr, n_fft, n_mels, fmin, fmax).astype(np.float32)
    return 10.0 * np.log10(np.maximum(mel, np.float32(1e-10)))


@functools.lru_cache(maxsize=32)
def antialias_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of PyTorch's bilinear interpolation with antialias=True, align_corners=False (the
    triangle filter widened by the downscale factor, each row normalised; PIL's resampling)."""
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        j = np.arange(xmin, xmax)
        w = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) * invscale))
        total = w.sum()
        m[i, xmin:xmax] = w / total if total > 0 else w
    return m.astype(np.float32)


def laion_audio_input(wave: np.ndarray, rng: np.random.RandomState, clip_samples: int = 480000,
                      fusion: bool = False, sr: int = 48000, n_fft: int = 1024, hop: int = 480, n_mels: int = 64,
                      fmin: float = 50.0, fmax: float = 14000.0, quantize: bool = True) -> dict:
    """One clip -> {'waveform': (clip_samples,), 'longer': bool, 'mel_fusion': (4, clip//hop + 1, n_mels) when
    `fusion`} exactly as laion_clap's `get_audio_features(..., 'fusion' | 'rand_trunc', 'repeatpad')`, with its
    random draws taken from `rng` (see the module docstring)."""
    wave = np.asarray(wave, np.float32)
    if wave.ndim != 1 or len(wave) == 0:
        raise ValueError(f"laion_audio_input: expected a non-empty mono clip (N,), got shape {wave.shape}")
    if quantize:
        wave = quantize_int16(wave)
    mel = functools.partial(htk_log_mel, sr=sr, n_fft=n_fft, hop=hop, n_mels=n_mels, fmin=fmin, fmax=fmax)
    out = {"longer": False}
    if len(wave) > clip_samples:
        out["longer"] = not fusion   # laion's 'rand_trunc' marks every cropped clip longer (unused by the model)
        if fusion:
            m = mel(wave)
            chunk = clip_samples // hop + 1
            total = m.shape[0]
            if chunk == total:
                out["mel_fusion"] = np.stack([m] * 4)
            else:
                ranges = np.array_split(list(range(0, total - chunk + 1)), 3)
                ranges = [r if len(r) else [0] for r in ranges]
                starts = [rng.choice(r) for r in ranges]
                shrink = antialias_resize_matrix(total, chunk) @ m
                out["mel_fusion"] = np.stack([shrink] + [m[s:s + chunk] for s in starts]).astype(np.float32)
                out["longer"] = True
        start = rng.randint(0, len(wave) - clip_samples + 1)
        out["waveform"] = wave[start:start + clip_samples]
    else:
        out["waveform"] = repeat_pad(wave, clip_samples)
        if fusion:
            out["mel_fusion"] = np.stack([mel(out["waveform"])] * 4)
    return out


def batch_inputs(items: list[dict]) -> dict:
    """Stack `laion_audio_input` results: waveform (B, N), longer (B,), mel_fusion (B, 4, T, F) when present."""
    out = {"waveform": np.stack([d["waveform"] for d in items]),
           "longer": np.asarray([d["longer"] for d in items], bool)}
    if all("mel_fusion" in d for d in items):
        out["mel_fusion"] = np.stack([d["mel_fusion"] for d in items])
    return out


class FixedDraws:
    """Stands in for the RandomState of `laion_audio_input` with chosen positions: `starts` (the three local-crop
    starts in frames, used in order) and `wave_start` (the waveform crop), or, where they are not given, the first
    ('start') or the middle ('center') position of each range: deterministic views for evaluation."""

    def __init__(self, starts=None, wave_start: int | None = None, mode: str = "start"):
        if mode not in ("start", "center"):
            raise ValueError(f"FixedDraws: mode must be 'start' or 'center', got {mode!r}")
        self.starts = None if starts is None else [int(s) for s in starts]
        self.wave_start, self.mode = wave_start, mode
        self.drawn: list[int] = []   # the local-crop starts given out, in order

    def choice(self, r):
        r = np.asarray(r)
        if self.starts is not None:
            s = self.starts[len(self.drawn)]
            if s not in r:
                raise ValueError(f"FixedDraws: start {s} is outside its range [{r.min()}, {r.max()}]")
        else:
            s = int(r[0] if self.mode == "start" else r[len(r) // 2])
        self.drawn.append(s)
        return s

    def randint(self, lo: int, hi: int) -> int:
        if self.wave_start is not None:
            return int(self.wave_start)
        return int(lo if self.mode == "start" else (lo + hi - 1) // 2)


class RecordedDraws:
    """A seeded RandomState for `laion_audio_input` that remembers the local-crop starts it drew (`drawn`)."""

    def __init__(self, seed: int):
        self.state = np.random.RandomState(seed)
        self.drawn: list[int] = []

    def choice(self, r):
        s = int(self.state.choice(r))
        self.drawn.append(s)
        return s

    def randint(self, lo: int, hi: int) -> int:
        return int(self.state.randint(lo, hi))


def settings(model_config) -> dict | None:
    """The keyword arguments of `laion_audio_input`'s mel for a fused model config (sr, n_fft, hop, n_mels,
    fmin, fmax), or None when the model takes no fusion input."""
    a = model_config.get("audio")
    if a is None or not a.get("fusion", False):
        return None
    return dict(sr=int(a.sample_rate), n_fft=int(a.n_fft), hop=int(a.hop_size), n_mels=int(a.mel_bins),
                fmin=float(a.fmin), fmax=float(a.fmax))
