"""The LAION-CLAP model family ('laion-clap'): HTSAT (tiny or base, with or without feature fusion) + RoBERTa,
both projected by a 2-layer MLP to a 512-d joint space, two logit scales; laion_clap 1.1.7's `CLAP_Module`
(`clap_module/model.py`, `htsat.py`, `feature_fusion.py`, the HTSAT-tiny / HTSAT-base model configs).

Module tree (mirrors laion_clap's state dict, `module.` prefix stripped):
  audio_branch          HTSAT   waveform (B, 480000) @ 48 kHz -> latent (B, 768 | 1024)
                                fused models: mel views (B, 4, 1001, 64) + longer (B,) -> latent
  audio_projection_0/_2         Linear -> ReLU -> Linear (latent -> 512)
  text_branch           Roberta ids (B, 77) -> pooled (B, 768) (tanh pooler at <s>)
  text_projection_0/_2          Linear -> ReLU -> Linear (768 -> 512)
  audio_transform / text_transform  MLPLayers [512, 512, 512] (sequential_0 -> ReLU -> dropout -> sequential_3):
                                applied to the normalised embeddings in laion_clap's MLP loss only
  logit_scale_a, logit_scale_t  scalars, init log(1/0.07)

Audio input (see clap_jax.audio.fusion for the host side): unfused models take the 10 s waveform and compute the
Slaney log-mel inside (like msclap's HTSAT, at 48 kHz / hop 480); fused models take `{'mel_fusion', 'longer'}`
(the HTK log-mel views laion_clap computes in preprocessing) or a plain (B, 480000) waveform, whose HTK log-mel
they compute inside as the four identical views of a clip that is not longer than 10 s.

Embeddings as laion_clap's `get_audio_embedding` / `get_text_embedding` return them: projection, then L2
normalisation (`normalize=True`, the default of `audio_embedding` / `text_embedding`).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from clap_jax.audio import frontend
from clap_jax.audio.fusion import htk_mel_filterbank
from clap_jax.audio.io import num_samples
from clap_jax.models import registry
from clap_jax.models.config import audio_2023
from clap_jax.models.htsat import HTSAT
from clap_jax.models.roberta import Roberta, roberta_base

FAMILY = "laion-clap"


def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------
def audio_laion(size: str = "tiny", fusion: bool = False) -> ml_collections.ConfigDict:
    """HTSAT as laion_clap's `create_htsat_model` builds it for HTSAT-tiny / HTSAT-base."""
    c = audio_2023()
    c.sample_rate = 48000
    c.duration = 10.0              # 480000 samples
    c.n_fft = 1024
    c.hop_size = 480
    c.mel_bins = 64
    c.mel_sr = 48000               # the Slaney filterbank is built for the model's own rate (unlike msclap 2023)
    c.fmin = 50.0
    c.fmax = 14000.0
    c.stft = "fft"                 # same transform as torchlibrosa's conv STFT; the stored kernels are not read
    c.embed_dim = {"tiny": 96, "base": 128}[size]
    c.depths = {"tiny": (2, 2, 6, 2), "base": (2, 2, 12, 2)}[size]
    c.num_heads = (4, 8, 16, 32)
    c.window_size = 8
    c.num_classes = 527
    c.fusion = fusion              # 'aff_2d' feature fusion in the patch embedding (laion: enable_fusion=True)
    return c


def laion_config(size: str = "tiny", fusion: bool = False) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.family = FAMILY
    c.audio = audio_laion(size, fusion)
    c.text = roberta_base()
    c.d_joint = 512                # joint embedding size (laion: joint_embed_shape)
    c.mlp_dropout = 0.1            # dropout inside audio_transform / text_transform (training only)
    c.logit_scale_init = math.log(1 / 0.07)
    c.dtype = "float32"
    c.remat = False
    return c


def tiny(fusion: bool = False) -> ml_collections.ConfigDict:
    """Same code paths at a size that compiles and runs in seconds on a CPU (the 48 kHz, 10 s geometry kept)."""
    c = laion_config("tiny", fusion)
    c.audio.embed_dim = 8
    c.audio.depths = (1, 2, 1, 1)
    c.audio.num_heads = (1, 2, 2, 4)
    c.audio.num_classes = 10
    c.text.vocab_size = 50265      # real tokenizer ids
    c.text.hidden_size = 32
    c.text.num_layers = 2
    c.text.num_heads = 2
    c.text.intermediate_size = 64
    c.text.max_position_embeddings = 80
    c.d_joint = 32
    return c


CONFIGS = {
    "laion-htsat-tiny": lambda: laion_config("tiny", False),
    "laion-htsat-tiny-fusion": lambda: laion_config("tiny", True),
    "laion-htsat-base": lambda: laion_config("base", False),
    "laion-htsat-base-fusion": lambda: laion_config("base", True),
    "laion-clap-tiny": lambda: tiny(False),
    "laion-clap-tiny-fusion": lambda: tiny(True),
}


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the field for any inconsistent setting of a laion-clap config."""
    a, t = c.audio, c.text

    def need(ok, field, msg):
        if not ok:
            raise ValueError(f"model config: {field}: {msg}")

    need(len(a.depths) == len(a.num_heads), "audio.depths/num_heads", "must have the same length")
    need(a.spec_size % a.mel_bins == 0, "audio.spec_size", f"must be a multiple of mel_bins={a.mel_bins}")
    need(a.spec_size % a.patch_size == 0, "audio.patch_size", "must divide spec_size")
    for i, h in enumerate(a.num_heads):
        need((a.embed_dim * 2 ** i) % h == 0, f"audio.num_heads[{i}]", f"must divide stage dim {a.embed_dim * 2 ** i}")
    need(a.stft in ("matmul", "fft"), "audio.stft", f"unknown STFT implementation {a.stft!r} ('matmul', 'fft')")
    need(num_samples(a.duration, a.sample_rate) // a.hop_size + 1 <= a.spec_size * (a.spec_size // a.mel_bins),
         "audio.duration", "the clip has more frames than the HTSAT image holds")
    need(0 < a.fmin < a.fmax <= a.sample_rate / 2, "audio.fmin/fmax", "need 0 < fmin < fmax <= sample_rate / 2")
    need(t.hidden_size % t.num_heads == 0, "text.num_heads", f"must divide hidden_size={t.hidden_size}")
    need(2 <= t.max_length <= t.max_position_embeddings - t.pad_token_id - 1, "text.max_length",
         f"must leave room for RoBERTa's position offset (max_position_embeddings={t.max_position_embeddings})")
    need(c.dtype in ("float32", "bfloat16", "float16"), "dtype", f"unknown dtype {c.dtype!r}")
    need(0.0 <= c.mlp_dropout < 1.0, "mlp_dropout", "must be in [0, 1)")


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------
def _linear(n, name, dtype):
    init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")   # torch nn.Linear default
    return nn.Dense(n, name=name, dtype=dtype, kernel_init=init,
                    bias_init=lambda k, s, d=jnp.float32: jnp.zeros(s, d))


class MLPLayers(nn.Module):
    """laion_clap's MLPLayers(units=[d, d, d]): Linear -> ReLU -> Dropout -> Linear."""
    d: int
    dropout: float
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jax.nn.relu(_linear(self.d, "sequential_0", self.dtype)(x))
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        return _linear(self.d, "sequential_3", self.dtype)(x)


class LaionCLAP(nn.Module):
    """Interface of the other families (`__call__`, `encode_audio`, `encode_text`) plus `transforms` and
    `logit_scales`. `encode_audio` takes a waveform (B, N) or a dict {'mel_fusion', 'longer'[, 'waveform']}."""
    config: ml_collections.ConfigDict

    def setup(self):
        c = self.config
        dt = _dtype(c.dtype)
        self.audio_branch = HTSAT(c.audio, dt, c.remat, name="audio_branch")
        self.text_branch = Roberta(c.text, dt, c.remat, name="text_branch")
        self.audio_projection_0 = _linear(c.d_joint, "audio_projection_0", dt)
        self.audio_projection_2 = _linear(c.d_joint, "audio_projection_2", dt)
        self.text_projection_0 = _linear(c.d_joint, "text_projection_0", dt)
        self.text_projection_2 = _linear(c.d_joint, "text_projection_2", dt)
        self.audio_transform = MLPLayers(c.d_joint, c.mlp_dropout, dt, name="audio_transform")
        self.text_transform = MLPLayers(c.d_joint, c.mlp_dropout, dt, name="text_transform")
        init = nn.initializers.constant(c.logit_scale_init)
        self.logit_scale_a = self.param("logit_scale_a", init, ())
        self.logit_scale_t = self.param("logit_scale_t", init, ())

    def _fusion_views(self, wav):
        """(B, N) -> (B, 4, T, F) HTK log-mel views of clips no longer than the clip length, longer = False."""
        a = self.config.audio
        power = frontend.power_spectrogram_fft(wav.astype(jnp.float32), a.n_fft, a.hop_size)
        fb = jnp.asarray(htk_mel_filterbank(a.sample_rate, a.n_fft, a.mel_bins, a.fmin, a.fmax))
        mel = frontend.log_mel(power, fb)
        return jnp.broadcast_to(mel[:, None], (mel.shape[0], 4) + mel.shape[1:]), jnp.zeros((wav.shape[0],), bool)

    def encode_audio(self, audio, train: bool = False):
        """-> dict(embedding (B, d_joint) unnormalised, latent, clipwise, framewise)."""
        if self.config.audio.get("fusion", False):
            if isinstance(audio, dict) and "mel_fusion" in audio:
                views, longer = audio["mel_fusion"], audio["longer"]
            else:
                views, longer = self._fusion_views(audio["waveform"] if isinstance(audio, dict) else audio)
            out = self.audio_branch.forward_fusion(views, longer, train)
        else:
            out = self.audio_branch(audio["waveform"] if isinstance(audio, dict) else audio, train)
        x = jax.nn.relu(self.audio_projection_0(out["latent"]))
        out["embedding"] = self.audio_projection_2(x).astype(jnp.float32)
        return out

    def encode_text(self, input_ids, attention_mask=None, train: bool = False):
        """(B, L) ids -> (B, d_joint) unnormalised: RoBERTa's pooled output through text_projection."""
        _, pooled = self.text_branch(input_ids, attention_mask, train)
        x = jax.nn.relu(self.text_projection_0(pooled))
        return self.text_projection_2(x).astype(jnp.float32)

    def transforms(self, audio_normed, text_normed, train: bool = False):
        """laion_clap's audio_transform / text_transform (MLP loss) of the normalised embeddings."""
        return (self.audio_transform(audio_normed, train).astype(jnp.float32),
                self.text_transform(text_normed, train).astype(jnp.float32))

    def logit_scales(self):
        """(log scale a, log scale t): raw values; laion_clap's `get_logit_scale` returns their exp()."""
        return self.logit_scale_a, self.logit_scale_t

    def train_outputs(self, wav, input_ids, attention_mask=None, train: bool = False):
        """laion_clap's `CLAP.forward`: (audio, text normalised (B, d_joint), their audio_transform /
        text_transform outputs, logit_scale_a, logit_scale_t (raw log values)), for its MLP loss."""
        a = normalize(self.encode_audio(wav, train)["embedding"])
        t = normalize(self.encode_text(input_ids, attention_mask, train))
        am, tm = self.transforms(a, t, train)
        return a, t, am, tm, self.logit_scale_a, self.logit_scale_t

    def __call__(self, wav, input_ids, attention_mask=None, train: bool = False):
        """-> (audio_emb, text_emb, logit_scale_a (raw log value)). Unnormalised; the contrastive loss uses
        logit_scale_a for both directions, as laion_clap's ClipLoss does without its MLP loss."""
        audio = self.encode_audio(wav, train)["embedding"]
        text = self.encode_text(input_ids, attention_mask, train)
        if self.is_initializing():   # create the transforms' parameters (used by the MLP loss only)
            self.transforms(audio, text)
        return audio, text, self.logit_scale_a


def normalize(x):
    """L2 normalisation as torch's F.normalize (eps 1e-12)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def train_flops(config: ml_collections.ConfigDict, samples: int) -> float:
    """Analytic FLOPs of one training example (2 per multiply-add): the front end once (STFT + mel, no gradient)
    and the time resize twice, 3 x the forward of HTSAT (global view; the fusion branch's local convolutions and
    AFF are not counted), RoBERTa and both projections."""
    a, t, d = config.audio, config.text, config.d_joint
    frames = samples // a.hop_size + 1
    n_freq = a.n_fft // 2 + 1
    target = a.spec_size * (a.spec_size // a.mel_bins)
    front = 2 * frames * a.n_fft * n_freq * 2 + 2 * frames * n_freq * a.mel_bins
    resize = 0.0 if frames >= target else 2.0 * target * frames * a.mel_bins
    grid = a.spec_size // a.patch_size
    tokens = grid * grid
    swin = 2 * tokens * a.patch_size ** 2 * a.embed_dim
    for i, depth in enumerate(a.depths):
        c, n = a.embed_dim * 2 ** i, tokens // 4 ** i
        swin += depth * (2 * 12 * c * c * n + 4 * min(a.window_size ** 2, n) * c * n)
        if i < len(a.depths) - 1:
            swin += 2 * (n // 4) * (4 * c) * (2 * c)
    latent = a.embed_dim * 2 ** (len(a.depths) - 1)
    swin += 2 * (tokens // 4 ** (len(a.depths) - 1)) * latent * a.num_classes * 3
    h, L, s = t.hidden_size, t.num_layers, t.max_length
    roberta = s * L * (2 * (4 * h * h + 2 * h * t.intermediate_size) + 4 * s * h)
    proj = 2 * (latent * d + d * d) + 2 * (h * d + d * d)
    return float(front + 2.0 * resize + 3.0 * (swin + roberta + proj))


# ----------------------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------------------
def _example_inputs(config: ml_collections.ConfigDict, batch: int) -> tuple:
    n, t = num_samples(config.audio.duration, config.audio.sample_rate), config.text.max_length
    return (jax.ShapeDtypeStruct((batch, n), jnp.float32), jax.ShapeDtypeStruct((batch, t), jnp.int32),
            jax.ShapeDtypeStruct((batch, t), jnp.int32))


def _tokenizer(config: ml_collections.ConfigDict, source: str | None = None):
    from clap_jax.text.roberta_tokenizer import RobertaTokenizer

    return RobertaTokenizer(source, max_length=config.text.max_length)


registry.register(registry.Family(
    name=FAMILY, configs=CONFIGS, build=LaionCLAP, tokenizer=_tokenizer, example_inputs=_example_inputs,
    validate=validate, train_flops=train_flops, objective="laion"))
