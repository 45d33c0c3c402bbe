"""PANNs CNN14, the audio tower of CLAP 2022, as msclap 1.3.4 builds it (`Cnn14` in msclap/models/audio.py).

  waveform (B, N) @ 44.1 kHz
    -> reflect-padded power STFT (n_fft = window 1024, hop 320, periodic Hann)   (B, T, 513), T = N // 320 + 1
    -> log-mel: librosa slaney filterbank built for the model's own rate (44.1 kHz, 50..14000 Hz, 64 bins), dB
    -> bn0: BatchNorm over the mel bins                                          (B, T, 64)
    -> 6 conv blocks (3x3 conv, BN, ReLU, 3x3 conv, BN, ReLU, 2x2 average pool; the last one not pooled), each
       followed by dropout 0.2 in training                                       (B, T/32, 2, 2048)
    -> mean over frequency, then max + mean over time                            (B, 2048)
    -> dropout 0.5, fc1 + ReLU = the latent (dropout 0.5 again in training)      (B, out_emb)
    -> clipwise = sigmoid(fc_audioset(latent before its dropout))                (B, 527)

Any clip length works (global pooling); msclap feeds 5 s clips (repeat-padded or cropped beforehand).

BatchNorm (`TorchBatchNorm`) follows torch's `BatchNorm1d/2d` exactly, in eval (running statistics) and in
training (normalise with the biased batch variance; update the running variance with the unbiased one, momentum
0.1). Its running statistics live in the 'batch_stats' collection.

Batch statistics under data parallelism and FSDP: the trainer runs the step as one jitted program over global,
batch-sharded arrays, so the mean and variance computed here are those of the *whole global batch*: the compiler
inserts the cross-device reductions, the statistics are synchronised, and the result equals a single-device run
on the same batch (FSDP shards only the parameters, never the batch statistics' reduction). `axis_name` is only
for running the model inside `shard_map`/`pmap`, where each device sees its own rows: None there gives
per-device statistics (as torch DDP without SyncBatchNorm, which is how CLAP 2022 was trained), a mesh axis name
gives statistics synchronised over that axis (as SyncBatchNorm).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from clap_jax.audio import frontend

_torch_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")   # torch Linear/Conv default weights


def _torch_bias_init(fan_in: int):
    bound = 1.0 / fan_in ** 0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class TorchBatchNorm(nn.Module):
    """torch.nn.BatchNorm over the last axis: params scale/bias, batch_stats mean/var (see module docstring)."""
    momentum: float = 0.1          # torch's convention: new = (1 - m) * running + m * batch
    epsilon: float = 1e-5
    axis_name: str | None = None   # only inside shard_map/pmap: synchronise the batch statistics over this axis

    @nn.compact
    def __call__(self, x, use_running_average: bool = True):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        x32 = x.astype(jnp.float32)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            n = 1
            for a in axes:
                n *= x.shape[a]
            mean = jnp.mean(x32, axes)
            mean_sq = jnp.mean(jnp.square(x32), axes)
            if self.axis_name is not None:
                mean, mean_sq = jax.lax.pmean((mean, mean_sq), self.axis_name)
                n = n * jax.lax.psum(1, self.axis_name)
            var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * mean
                ra_var.value = (1 - m) * ra_var.value + m * var * (n / max(n - 1, 1))
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(x.dtype)


class ConvBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> average pool (NHWC: (B, time, freq, C))."""
    features: int
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, pool: tuple[int, int], train: bool):
        for i in (1, 2):
            x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                        kernel_init=_torch_init, name=f"conv{i}")(x)
            x = TorchBatchNorm(axis_name=self.axis_name, name=f"bn{i}")(x, use_running_average=not train)
            x = nn.relu(x)
        if pool != (1, 1):
            x = nn.avg_pool(x, pool, strides=pool, padding="VALID")
        return x


class Cnn14(nn.Module):
    """msclap's Cnn14 (see module docstring). Output dict: latent (B, out_emb), clipwise (B, num_classes)."""
    config: ml_collections.ConfigDict       # the model config's `audio` group
    dtype: Any = jnp.float32
    axis_name: str | None = None

    def setup(self):
        c = self.config
        real, imag = frontend.stft_kernels(c.n_fft)
        self.stft_real = self.variable("constants", "stft_real", lambda: jnp.asarray(real))
        self.stft_imag = self.variable("constants", "stft_imag", lambda: jnp.asarray(imag))
        self.mel_w = self.variable("constants", "melW", lambda: jnp.asarray(
            frontend.mel_filterbank(c.mel_sr, c.n_fft, c.mel_bins, c.fmin, c.fmax)))
        self.bn0 = TorchBatchNorm(axis_name=self.axis_name, name="bn0")
        self.blocks = [ConvBlock(ch, self.dtype, self.axis_name, name=f"conv_block{i + 1}")
                       for i, ch in enumerate(c.channels)]
        d_last = c.channels[-1]
        self.fc1 = nn.Dense(c.out_emb, dtype=self.dtype, kernel_init=_torch_init,
                            bias_init=_torch_bias_init(d_last), name="fc1")
        self.fc_audioset = nn.Dense(c.num_classes, dtype=self.dtype, kernel_init=_torch_init,
                                    bias_init=_torch_bias_init(c.out_emb), name="fc_audioset")
        self.block_dropout = nn.Dropout(c.dropout)
        self.fc_dropout = nn.Dropout(c.fc_dropout)

    def log_mel(self, wav):
        """(B, N) float32 -> (B, T, mel_bins) dB (torchlibrosa's Spectrogram + LogmelFilterBank, ref 1, no top_db)."""
        c = self.config
        if c.stft == "fft":
            power = frontend.power_spectrogram_fft(wav.astype(jnp.float32), c.n_fft, c.hop_size)
        else:
            power = frontend.power_spectrogram(wav.astype(jnp.float32), self.stft_real.value, self.stft_imag.value,
                                               c.hop_size)
        return frontend.log_mel(power, self.mel_w.value)

    def __call__(self, wav, train: bool = False):
        x = self.log_mel(wav)                                             # (B, T, F)
        x = self.bn0(x, use_running_average=not train)
        x = x[..., None].astype(self.dtype)                               # (B, T, F, 1)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, (1, 1) if i == last else (2, 2), train)
            x = self.block_dropout(x, deterministic=not train)
        x = jnp.mean(x.astype(jnp.float32), axis=2)                       # over frequency: (B, T', C)
        x = jnp.max(x, axis=1) + jnp.mean(x, axis=1)                      # (B, C)
        x = self.fc_dropout(x, deterministic=not train)
        x = nn.relu(self.fc1(x.astype(self.dtype))).astype(jnp.float32)
        clipwise = jax.nn.sigmoid(self.fc_audioset(x.astype(self.dtype)).astype(jnp.float32))
        latent = self.fc_dropout(x, deterministic=not train)
        return {"latent": latent, "clipwise": clipwise}
