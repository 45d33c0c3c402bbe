"""The CLAP 2022 model family ('msclap-2022'): CNN14 audio tower + BERT text tower, each with a Projection to
1024-d, and a learnable logit scale; msclap 1.3.4's `version='2022'` (config_2022.yml) exactly.

Module tree (mirrors msclap's state dict):
  audio_encoder.base        Cnn14   waveform (B, N) @ 44.1 kHz -> latent (B, 2048), clipwise (B, 527)
  audio_encoder.projection          (B, 2048) -> (B, d_proj)
  caption_encoder.base      Bert    ids (B, 100) -> hidden (B, 100, 768), pooled at [CLS] (position 0)
  caption_encoder.projection        (B, 768) -> (B, d_proj)
  logit_scale                       scalar, init log(1/0.07)

Geometry from msclap's config_2022.yml: 44.1 kHz, 5 s clips, STFT window 1024 (the YAML's `n_fft: 1028` is not
read by msclap's Cnn14: its STFT size is `window_size`), hop 320, 64 mel bins over 50-14000 Hz with the filterbank
built for 44.1 kHz (unlike msclap 2023's 32 kHz one), text length 100, d_proj 1024.

Text: one segment per caption, so BERT's token types are all 0 (what msclap's tokenizer returns as
`token_type_ids`); the model takes (ids, mask) like the 2023 family and makes the zero token types itself.

Variable collections: 'params', 'batch_stats' (every BatchNorm of CNN14; see clap_jax.models.cnn14 for how they
behave under data parallelism and FSDP), 'constants' (mel filterbank, STFT kernels).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from clap_jax.audio.io import num_samples
from clap_jax.models import registry
from clap_jax.models.bert import Bert
from clap_jax.models.cnn14 import Cnn14
from clap_jax.models.projection import Projection

FAMILY = "msclap-2022"


def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------
def audio_2022() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.sample_rate = 44100
    c.duration = 5.0               # seconds per clip (220500 samples)
    c.n_fft = 1024                 # msclap: window_size (the STFT size its Cnn14 uses)
    c.hop_size = 320
    c.mel_bins = 64
    c.mel_sr = 44100               # filterbank built for the model's own rate
    c.fmin = 50.0
    c.fmax = 14000.0
    c.stft = "fft"                 # 'fft': by rFFT (faster); 'matmul': the conv STFT with the stored kernels
    c.channels = (64, 128, 256, 512, 1024, 2048)   # the six conv blocks
    c.out_emb = 2048               # fc1 width = the latent fed to the projection
    c.num_classes = 527            # fc_audioset (AudioSet)
    c.dropout = 0.2                # after each conv block (training only)
    c.fc_dropout = 0.5             # before and after fc1 (training only)
    return c


def text_2022() -> ml_collections.ConfigDict:
    """bert-base-uncased (HF BertConfig defaults)."""
    c = ml_collections.ConfigDict()
    c.vocab_size = 30522
    c.hidden_size = 768
    c.num_layers = 12
    c.num_heads = 12
    c.intermediate_size = 3072
    c.max_position_embeddings = 512
    c.type_vocab_size = 2
    c.layer_norm_eps = 1e-12
    c.dropout = 0.1                # hidden and attention dropout (training only)
    c.init_std = 0.02
    c.max_length = 100             # tokenizer length (msclap's text_len)
    return c


def clap_2022() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.family = FAMILY
    c.audio = audio_2022()
    c.text = text_2022()
    c.d_proj = 1024
    c.proj_dropout = 0.5
    c.logit_scale_init = math.log(1 / 0.07)
    c.dtype = "float32"
    c.remat = False                # rematerialise BERT layers
    return c


def tiny_2022() -> ml_collections.ConfigDict:
    """Same code paths at a size that compiles and runs in seconds on a CPU."""
    c = clap_2022()
    c.audio.channels = (4, 8, 8, 16, 16, 32)
    c.audio.out_emb = 32
    c.audio.num_classes = 10
    c.text.hidden_size = 32
    c.text.num_layers = 2
    c.text.num_heads = 2
    c.text.intermediate_size = 64
    c.text.max_position_embeddings = 128
    c.d_proj = 32
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the field for any inconsistent setting of a msclap-2022 config."""
    a, t = c.audio, c.text

    def need(ok, field, msg):
        if not ok:
            raise ValueError(f"model config: {field}: {msg}")

    need(len(a.channels) >= 1 and all(int(x) > 0 for x in a.channels), "audio.channels",
         "must be a non-empty tuple of positive widths")
    need(a.stft in ("matmul", "fft"), "audio.stft", f"unknown STFT implementation {a.stft!r} ('matmul', 'fft')")
    need(a.mel_bins >= 2 ** (len(a.channels) - 1), "audio.mel_bins",
         f"{a.mel_bins} bins cannot be pooled {len(a.channels) - 1} times by 2")
    need(a.sample_rate > 0 and a.duration > 0, "audio.sample_rate/duration", "must be positive")
    need(0 < a.fmin < a.fmax <= a.mel_sr / 2, "audio.fmin/fmax", "need 0 < fmin < fmax <= mel_sr / 2")
    need(0.0 <= a.dropout < 1.0 and 0.0 <= a.fc_dropout < 1.0, "audio.dropout/fc_dropout", "must be in [0, 1)")
    need(t.hidden_size % t.num_heads == 0, "text.num_heads", f"must divide hidden_size={t.hidden_size}")
    need(2 <= t.max_length <= t.max_position_embeddings, "text.max_length",
         f"must be in [2, max_position_embeddings={t.max_position_embeddings}]")
    need(c.dtype in ("float32", "bfloat16", "float16"), "dtype", f"unknown dtype {c.dtype!r}")
    need(0.0 <= c.proj_dropout < 1.0, "proj_dropout", "must be in [0, 1)")


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------
class AudioEncoder2022(nn.Module):
    config: ml_collections.ConfigDict
    bn_axis_name: str | None = None

    def setup(self):
        c = self.config
        self.base = Cnn14(c.audio, _dtype(c.dtype), self.bn_axis_name, name="base")
        self.projection = Projection(c.d_proj, c.proj_dropout, _dtype(c.dtype), name="projection")

    def __call__(self, wav, train: bool = False):
        """(B, N) -> dict(embedding (B, d_proj), latent (B, out_emb), clipwise (B, K))."""
        out = self.base(wav, train)
        out["embedding"] = self.projection(out["latent"], train).astype(jnp.float32)
        return out


class TextEncoder2022(nn.Module):
    config: ml_collections.ConfigDict

    def setup(self):
        c = self.config
        self.base = Bert(c.text, _dtype(c.dtype), c.remat, name="base")
        self.projection = Projection(c.d_proj, c.proj_dropout, _dtype(c.dtype), name="projection")

    def __call__(self, input_ids, attention_mask=None, train: bool = False):
        """(B, L) ids -> (B, d_proj): the [CLS] hidden state (position 0), projected."""
        hidden, _ = self.base(input_ids, attention_mask, jnp.zeros_like(input_ids), train)
        return self.projection(hidden[:, 0], train).astype(jnp.float32)


class CLAP2022(nn.Module):
    """Same interface as the 2023 family's CLAPModel: __call__, encode_audio, encode_text.

    `bn_axis_name`: only when the model runs inside shard_map/pmap (see clap_jax.models.cnn14)."""
    config: ml_collections.ConfigDict
    bn_axis_name: str | None = None

    def setup(self):
        self.audio_encoder = AudioEncoder2022(self.config, self.bn_axis_name, name="audio_encoder")
        self.caption_encoder = TextEncoder2022(self.config, name="caption_encoder")
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.config.logit_scale_init), ())

    def encode_audio(self, wav, train: bool = False):
        return self.audio_encoder(wav, train)

    def encode_text(self, input_ids, attention_mask=None, train: bool = False):
        return self.caption_encoder(input_ids, attention_mask, train)

    def __call__(self, wav, input_ids, attention_mask=None, train: bool = False):
        """-> (audio_emb (B, d_proj), text_emb (B, d_proj), logit_scale (raw log value)). Unnormalised."""
        audio = self.audio_encoder(wav, train)["embedding"]
        text = self.caption_encoder(input_ids, attention_mask, train)
        return audio, text, self.logit_scale


def train_flops(config: ml_collections.ConfigDict, samples: int) -> float:
    """Analytic FLOPs of one training example (2 per multiply-add; convolutions, matmuls and attention only):
    the front end once (STFT + mel, no gradient), 3 x the forward of CNN14, BERT and both projections."""
    a, t, dp = config.audio, config.text, config.d_proj
    frames = samples // a.hop_size + 1
    n_freq = a.n_fft // 2 + 1
    front = 2 * frames * a.n_fft * n_freq * 2 + 2 * frames * n_freq * a.mel_bins
    cnn, tt, ff, cin = 0.0, frames, a.mel_bins, 1
    for i, ch in enumerate(a.channels):
        cnn += 2 * tt * ff * 9 * (cin * ch + ch * ch)
        cin = ch
        if i < len(a.channels) - 1:
            tt, ff = tt // 2, ff // 2
    cnn += 2 * (cin * a.out_emb + a.out_emb * a.num_classes)
    h, L, s = t.hidden_size, t.num_layers, t.max_length
    bert = s * L * (2 * (4 * h * h + 2 * h * t.intermediate_size) + 4 * s * h)
    proj = 2 * (a.out_emb * dp + dp * dp) + 2 * (h * dp + dp * dp)
    return float(front + 3.0 * (cnn + bert + proj))


# ----------------------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------------------
def _example_inputs(config: ml_collections.ConfigDict, batch: int) -> tuple:
    n, t = num_samples(config.audio.duration, config.audio.sample_rate), config.text.max_length
    return (jax.ShapeDtypeStruct((batch, n), jnp.float32), jax.ShapeDtypeStruct((batch, t), jnp.int32),
            jax.ShapeDtypeStruct((batch, t), jnp.int32))


def _tokenizer(config: ml_collections.ConfigDict, source: str | None = None):
    from clap_jax.text.bert_tokenizer import BertWordPieceTokenizer

    return BertWordPieceTokenizer(source, max_length=config.text.max_length)


registry.register(registry.Family(
    name=FAMILY,
    configs={"msclap-2022": clap_2022, "msclap-2022-tiny": tiny_2022},
    build=CLAP2022, tokenizer=_tokenizer, example_inputs=_example_inputs, validate=validate,
    train_flops=train_flops))
