"""HTSAT (hierarchical token-semantic audio transformer): msclap 2023's audio encoder, in Flax Linen.

Parameter names mirror msclap's PyTorch modules (`patch_embed.proj`, `layers_0.blocks_1.attn.qkv`, ...), so the
converter in clap_jax/convert/msclap.py is a name map. Data flow of `HTSAT.__call__`:

  waveform (B, N) -> power STFT (B, T, 513) -> log-mel (B, T, 64) -> bn0 -> [SpecAugment]
  -> T <= 1024: bicubic resize to 1024 frames; T > 1024: eval averages 689-frame crops every 344 frames,
     training takes one random 1024-frame crop (msclap's rules)
  -> fold into a (B, 256, 256) image -> patch embed (B, 64*64, 96) -> 4 Swin stages -> LayerNorm (B, 64, 768)
  -> latent = mean over tokens (B, 768);  tscam head -> clipwise (B, 527) and framewise (B, 1024, 527)
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from clap_jax.audio import frontend

LN_EPS = 1e-5
gelu_exact = lambda x: nn.gelu(x, approximate=False)  # noqa: E731  (torch nn.GELU default)


def _dense(features, name, use_bias=True, dtype=jnp.float32):
    return nn.Dense(features, use_bias=use_bias, name=name, dtype=dtype,
                    kernel_init=nn.initializers.truncated_normal(0.02), bias_init=nn.initializers.zeros)


def _torch_conv_init(fan_in: int):
    """PyTorch's default Conv2d init (msclap's HTSAT leaves its convs at it): kernel and bias U(+-1/sqrt(fan_in)).
    A zero bias here would make LayerNorm see constant vectors on silent patches: huge first-step gradients."""
    bound = fan_in ** -0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _ln(name, dtype=jnp.float32):
    return nn.LayerNorm(epsilon=LN_EPS, name=name, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# Window geometry (static numpy, computed at trace time)
# ----------------------------------------------------------------------------------------------------------------
def relative_position_index(window: int) -> np.ndarray:
    """(w*w, w*w) index into the (2w-1)^2 bias table (standard Swin)."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shifted_window_mask(res: int, window: int, shift: int) -> np.ndarray:
    """(num_windows, w*w, w*w) additive mask: -100 between tokens from different shift regions, else 0."""
    img = np.zeros((res, res), np.float32)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[hs, ws] = cnt
            cnt += 1
    win = img.reshape(res // window, window, res // window, window).transpose(0, 2, 1, 3).reshape(-1, window * window)
    diff = win[:, None, :] - win[:, :, None]
    return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


def window_partition(x: jax.Array, w: int) -> jax.Array:
    """(B, H, W, C) -> (B, nW, w*w, C), windows in row-major order."""
    b, h, wd, c = x.shape
    x = x.reshape(b, h // w, w, wd // w, w, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // w) * (wd // w), w * w, c)


def window_reverse(x: jax.Array, w: int, h: int, wd: int) -> jax.Array:
    """(B, nW, w*w, C) -> (B, H, W, C)."""
    b, _, _, c = x.shape
    x = x.reshape(b, h // w, wd // w, w, w, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, c)


# ----------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------
class AFF(nn.Module):
    """Attentional feature fusion (2-D), LAION-CLAP's `AFF(type='2D')`: x, residual (B, H, W, C) -> same.

    wei = sigmoid(local_att(x + residual) + global_att(x + residual));  out = 2 x wei + 2 residual (1 - wei),
    local_att = conv1x1 (C -> C/r) -> BN -> ReLU -> conv1x1 (C/r -> C) -> BN; global_att the same after a global
    average pool. Module names follow the torch Sequential indices (`local_att_0`, `local_att_1`, ...)."""
    channels: int
    r: int = 4
    dtype: Any = jnp.float32

    def _branch(self, x, names, train, rows):
        inter = self.channels // self.r
        conv = lambda n, name: nn.Conv(n, (1, 1), name=name, dtype=self.dtype,  # noqa: E731
                                       kernel_init=_torch_conv_init(x.shape[-1] if n == inter else inter),
                                       bias_init=_torch_conv_init(x.shape[-1] if n == inter else inter))
        bn = lambda name, y: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,  # noqa: E731
                                          name=name, dtype=self.dtype)(
            y, mask=None if rows is None else jnp.broadcast_to(rows[:, None, None, None], y.shape))
        x = jax.nn.relu(bn(names[1], conv(inter, names[0])(x)))
        return bn(names[3], conv(self.channels, names[2])(x))

    @nn.compact
    def __call__(self, x, residual, train: bool = False, rows=None):
        """`rows` (B,) bool: the rows the fusion is for; in training BatchNorm takes its statistics from them only
        (LAION-CLAP runs AFF on the longer clips alone)."""
        xa = x + residual
        xl = self._branch(xa, ("local_att_0", "local_att_1", "local_att_3", "local_att_4"), train, rows)
        xg = self._branch(jnp.mean(xa, axis=(1, 2), keepdims=True),
                          ("global_att_1", "global_att_2", "global_att_4", "global_att_5"), train, rows)
        wei = jax.nn.sigmoid(xl + xg)
        return 2 * x * wei + 2 * residual * (1 - wei)


class PatchEmbed(nn.Module):
    """(B, H, W) image -> (B, H/p * W/p, C) tokens (conv with kernel = stride = p, then LayerNorm).

    With `fusion` (LAION-CLAP's 'aff_2d' feature fusion), `local` (B, 3, H, W) are the images of three local
    crops: each goes through `mel_conv2d` (kernel = stride = (p, 3p)), their columns are laid side by side (view 0's
    columns, then view 1's, then view 2's), zero-padded or cut to the global grid's width and fused into the
    global patches by `fusion_model` (AFF) for the rows where `longer` is true; other rows keep the global patches."""
    embed_dim: int
    patch_size: int
    dtype: Any = jnp.float32
    fusion: bool = False

    @nn.compact
    def __call__(self, img, local=None, longer=None, train: bool = False):
        p = self.patch_size
        init = _torch_conv_init(p * p)
        x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", name="proj", dtype=self.dtype,
                    kernel_init=init, bias_init=init)(img[..., None])   # (B, H/p, W/p, C)
        if self.fusion and (local is not None or self.is_initializing()):
            if local is None:
                local = jnp.broadcast_to(img[:, None], (img.shape[0], 3) + img.shape[1:])
                longer = jnp.zeros((img.shape[0],), bool)
            b, v, hh, ww = local.shape
            init3 = _torch_conv_init(p * 3 * p)
            y = nn.Conv(self.embed_dim, (p, 3 * p), strides=(p, 3 * p), padding="VALID", name="mel_conv2d",
                        dtype=self.dtype, kernel_init=init3, bias_init=init3)(
                local.reshape(b * v, hh, ww)[..., None].astype(self.dtype))       # (B*3, H/p, W', C)
            _, gh, gw, c = y.shape
            y = y.reshape(b, v, gh, gw, c).transpose(0, 2, 1, 3, 4).reshape(b, gh, v * gw, c)
            tw = x.shape[2]
            y = jnp.pad(y, ((0, 0), (0, 0), (0, max(0, tw - v * gw)), (0, 0)))[:, :, :tw]
            fused = AFF(self.embed_dim, dtype=self.dtype, name="fusion_model")(x, y, train, longer)
            x = jnp.where(longer[:, None, None, None], fused, x)
        b, h, w, c = x.shape
        return _ln("norm", self.dtype)(x.reshape(b, h * w, c))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with relative position bias. (B, nW, N, C) -> same."""
    dim: int
    num_heads: int
    window: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        b, nw, n, c = x.shape
        h = self.num_heads
        table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                           ((2 * self.window - 1) ** 2, h))
        # Heads before tokens (B, nW, h, N, d): XLA:CPU's batched dots of these small (64 x d) matrices run 1.3-4x
        # faster on operands whose batch dimensions lead than when the dot has to stride over the head axis.
        qkv = _dense(3 * c, "qkv", dtype=self.dtype)(x).reshape(b, nw, n, 3, h, c // h).transpose(3, 0, 1, 4, 2, 5)
        q, k, v = qkv[0], qkv[1], qkv[2]                                         # (B, nW, h, N, d)
        q = q * (c // h) ** -0.5
        attn = jnp.einsum("bwhnd,bwhmd->bwhnm", q, k)
        bias = table[relative_position_index(self.window).reshape(-1)].reshape(n, n, h).transpose(2, 0, 1)
        attn = attn + bias[None, None].astype(attn.dtype)
        if mask is not None:
            attn = attn + mask[None, :, None].astype(attn.dtype)               # (1, nW, 1, N, N)
        attn = jax.nn.softmax(attn.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bwhnm,bwhmd->bwhnd", attn, v).transpose(0, 1, 3, 2, 4).reshape(b, nw, n, c)
        return _dense(c, "proj", dtype=self.dtype)(out)


class Mlp(nn.Module):
    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        x = gelu_exact(_dense(self.hidden, "fc1", dtype=self.dtype)(x))
        return _dense(c, "fc2", dtype=self.dtype)(x)


def drop_path(rng, x, rate: float, deterministic: bool):
    """Stochastic depth: drop the whole residual branch per example, scale survivors by 1/(1-rate)."""
    if deterministic or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate), 0.0)


class SwinBlock(nn.Module):
    """(B, H*W, C) -> same. Pre-LN window attention (shifted when `shift` > 0) + MLP, with drop-path."""
    dim: int
    num_heads: int
    resolution: int
    window: int
    shift: int
    mlp_ratio: float
    drop_path_rate: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        res = self.resolution
        window, shift = self.window, self.shift
        if res <= window:  # msclap: a stage no bigger than one window is neither shifted nor split
            window, shift = res, 0
        b, l, c = x.shape
        shortcut = x
        y = _ln("norm1", self.dtype)(x).reshape(b, res, res, c)
        if shift:
            y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
        mask = jnp.asarray(shifted_window_mask(res, window, shift)) if shift else None
        y = WindowAttention(c, self.num_heads, window, self.dtype, name="attn")(window_partition(y, window), mask)
        y = window_reverse(y, window, res, res)
        if shift:
            y = jnp.roll(y, (shift, shift), axis=(1, 2))
        y = y.reshape(b, l, c)
        det = not train
        rng = self.make_rng("dropout") if (train and self.drop_path_rate > 0) else None
        k1, k2 = jax.random.split(rng) if rng is not None else (None, None)
        x = shortcut + drop_path(k1, y, self.drop_path_rate, det)
        y = Mlp(int(c * self.mlp_ratio), self.dtype, name="mlp")(_ln("norm2", self.dtype)(x))
        return x + drop_path(k2, y, self.drop_path_rate, det)


class PatchMerging(nn.Module):
    """(B, H*W, C) -> (B, H/2*W/2, 2C): concat 2x2 neighbours [00, 10, 01, 11] -> LayerNorm -> Linear."""
    resolution: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, _, c = x.shape
        r = self.resolution
        x = x.reshape(b, r, r, c)
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        x = _ln("norm", self.dtype)(x.reshape(b, -1, 4 * c))
        return _dense(2 * c, "reduction", use_bias=False, dtype=self.dtype)(x)


class BasicLayer(nn.Module):
    """One Swin stage: `depth` blocks (odd ones shifted by window//2), then optional PatchMerging."""
    dim: int
    depth: int
    num_heads: int
    resolution: int
    window: int
    mlp_ratio: float
    drop_path_rates: tuple
    downsample: bool
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        block_cls = nn.remat(SwinBlock, static_argnums=(2,)) if self.remat else SwinBlock
        for j in range(self.depth):
            x = block_cls(self.dim, self.num_heads, self.resolution, self.window,
                          0 if j % 2 == 0 else self.window // 2, self.mlp_ratio, self.drop_path_rates[j],
                          self.dtype, name=f"blocks_{j}")(x, train)
        if self.downsample:
            x = PatchMerging(self.resolution, self.dtype, name="downsample")(x)
        return x


class HTSAT(nn.Module):
    """msclap's HTSAT_Swin_Transformer (tscam head, eval and training branches). See module docstring."""
    config: ml_collections.ConfigDict
    dtype: Any = jnp.float32
    remat: bool = False

    def setup(self):
        c = self.config
        self.freq_ratio = c.spec_size // c.mel_bins
        real, imag = frontend.stft_kernels(c.n_fft)
        self.stft_real = self.variable("constants", "stft_real", lambda: jnp.asarray(real))
        self.stft_imag = self.variable("constants", "stft_imag", lambda: jnp.asarray(imag))
        self.mel_w = self.variable("constants", "melW", lambda: jnp.asarray(
            frontend.mel_filterbank(c.mel_sr, c.n_fft, c.mel_bins, c.fmin, c.fmax)))
        self.bn0 = nn.BatchNorm(momentum=0.9, epsilon=1e-5, axis_name=None, name="bn0")
        self.patch_embed = PatchEmbed(c.embed_dim, c.patch_size, self.dtype, c.get("fusion", False),
                                      name="patch_embed")
        n = len(c.depths)
        dpr = np.linspace(0, c.drop_path_rate, sum(c.depths)).tolist()
        grid = c.spec_size // c.patch_size
        self.layers = [
            BasicLayer(c.embed_dim * 2 ** i, c.depths[i], c.num_heads[i], grid // 2 ** i, c.window_size,
                       c.mlp_ratio, tuple(dpr[sum(c.depths[:i]):sum(c.depths[:i + 1])]), i < n - 1,
                       self.remat, self.dtype, name=f"layers_{i}")
            for i in range(n)]
        self.num_features = c.embed_dim * 2 ** (n - 1)
        self.norm = _ln("norm", self.dtype)
        sf = c.spec_size // 2 ** (n - 1) // c.patch_size // self.freq_ratio
        fan_in = self.num_features * sf * 3
        self.tscam_conv = nn.Conv(c.num_classes, (sf, 3), padding=((0, 0), (1, 1)), name="tscam_conv",
                                  dtype=self.dtype, kernel_init=_torch_conv_init(fan_in),
                                  bias_init=_torch_conv_init(fan_in))
        # msclap registers `head` but never applies it on the tscam path; kept so every weight has a home.
        self.head = nn.Dense(c.num_classes, name="head")

    # -- front end ------------------------------------------------------------------------------------------------
    def log_mel(self, wav):
        """(B, N) float32 -> (B, T, mel_bins) dB."""
        c = self.config
        if c.stft == "fft":  # same transform; the stored DFT kernels are not read
            power = frontend.power_spectrogram_fft(wav.astype(jnp.float32), c.n_fft, c.hop_size)
        else:
            power = frontend.power_spectrogram(wav.astype(jnp.float32), self.stft_real.value, self.stft_imag.value,
                                               c.hop_size)
        return frontend.log_mel(power, self.mel_w.value)

    def image(self, mel):
        """(B, T <= 1024, F) -> (B, 256, 256)."""
        c = self.config
        return frontend.fold_to_image(frontend.resize_time(mel, c.spec_size * self.freq_ratio), c.spec_size,
                                      self.freq_ratio)

    # -- Swin ---------------------------------------------------------------------------------------------------
    def forward_features(self, img, train: bool, local=None, longer=None):
        """(B, 256, 256) -> dict(latent (B, D), clipwise (B, K), framewise (B, 1024, K)). `local`/`longer`: the
        fusion inputs of PatchEmbed (fusion models only)."""
        c = self.config
        x = self.patch_embed(img.astype(self.dtype), local, longer, train)
        for layer in self.layers:
            x = layer(x, train)
        x = self.norm(x)                                                # (B, L, D)
        b, l, d = x.shape
        s = int(round(l ** 0.5))
        latent = jnp.mean(x.astype(jnp.float32), axis=1)
        # tscam: (B, s, s, D) in (freq-row, time-col) order; un-stack the freq_ratio time chunks into time.
        grid = x.reshape(b, s, s, d)
        cfb = s // self.freq_ratio
        grid = grid.reshape(b, self.freq_ratio, cfb, s, d).transpose(0, 2, 1, 3, 4).reshape(b, cfb, -1, d)
        y = self.tscam_conv(grid)[:, 0].astype(jnp.float32)            # (B, T', K)
        frames = jax.nn.sigmoid(y)
        framewise = jnp.repeat(frames, 8 * c.patch_size, axis=1)
        clipwise = jax.nn.sigmoid(jnp.mean(y, axis=1))
        if self.is_initializing():  # create `head`'s parameters (unused by the tscam path, kept for parity)
            self.head(clipwise)
        return {"latent": latent, "clipwise": clipwise, "framewise": framewise}

    def forward_fusion(self, mel_views, longer, train: bool = False):
        """LAION-CLAP's fusion input: mel_views (B, 4, T <= 1024, F) = [global, front, middle, back] log-mels,
        longer (B,) bool -> dict(latent, clipwise, framewise). bn0 normalises every view over the mel bins; each
        view is resized to 1024 frames and folded; the three local views are fused into the patches of the global
        one for the `longer` rows (other rows use the global view alone, as LAION-CLAP does)."""
        c = self.config
        b, v, t, f = mel_views.shape
        x = self.bn0(mel_views.reshape(b * v, t, f), use_running_average=not train)
        if train and c.specaug:   # the same stripes on the four views of a clip (torchlibrosa draws per example)
            keep = frontend.spec_augment(self.make_rng("augment"), jnp.ones((b, t, f), x.dtype),
                                         c.specaug_time_width, c.specaug_time_stripes, c.specaug_freq_width,
                                         c.specaug_freq_stripes)
            x = (x.reshape(b, v, t, f) * keep[:, None]).reshape(b * v, t, f)
        imgs = self.image(x).reshape(b, v, c.spec_size, c.spec_size)
        longer = jnp.asarray(longer, bool).reshape(b)
        if train:   # LAION-CLAP trains the fusion branch on every batch: with no long clip, one random row is marked
            pick = jax.random.randint(self.make_rng("augment"), (), 0, b)
            longer = jnp.where(jnp.any(longer), longer, jnp.arange(b) == pick)
        return self.forward_features(imgs[:, 0], train, imgs[:, 1:], longer)

    def __call__(self, wav, train: bool = False):
        """(B, N) waveform at the configured rate -> dict(latent, clipwise, framewise)."""
        c = self.config
        x = self.log_mel(wav)                                           # (B, T, F)
        x = self.bn0(x, use_running_average=not train)
        if train and c.specaug:
            x = frontend.spec_augment(self.make_rng("augment"), x, c.specaug_time_width, c.specaug_time_stripes,
                                      c.specaug_freq_width, c.specaug_freq_stripes)
        target = c.spec_size * self.freq_ratio
        t = x.shape[1]
        if t <= target:
            return self.forward_features(self.image(x), train)
        if train:  # one random crop of `target` frames per example (msclap: randint(0, t - target - 1))
            starts = jax.random.randint(self.make_rng("augment"), (x.shape[0],), 0, t - target)
            x = jax.vmap(lambda e, s: jax.lax.dynamic_slice_in_dim(e, s, target, 0))(x, starts)
            return self.forward_features(self.image(x), train)
        # eval: average over crops of 689 frames every 344 frames (msclap hard-codes these numbers for its
        # 1024-frame target; other targets scale them: the same 0.67 / 0.34 fractions of the target)
        crop, hop = target * 689 // 1024, max(1, target * 344 // 1024)
        outs = [self.forward_features(self.image(x[:, p:p + crop]), train) for p in range(0, t - crop - 1, hop)]
        return jax.tree.map(lambda *v: sum(v) / len(v), *outs)
