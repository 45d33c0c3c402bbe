"""The CLAP model: HTSAT audio tower + GPT-2 text tower, each with a Projection, and a learnable logit scale.

Module tree (mirrors msclap's state dict):
  audio_encoder.base   HTSAT            waveform (B, N) -> latent (B, 768), clipwise (B, 527)
  audio_encoder.projection               (B, 768) -> (B, d_proj)
  caption_encoder.base GPT2             ids (B, 77) -> hidden (B, 77, 768), pooled at count(ids != 0) - 1
  caption_encoder.projection             (B, 768) -> (B, d_proj)
  logit_scale                            scalar, init log(1/0.07); callers exp() it (and clamp it in training)

Variable collections: 'params' (trainable), 'batch_stats' (HTSAT bn0), 'constants' (mel filterbank, STFT kernels).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from clap_jax.models import config as model_config
from clap_jax.models import registry
from clap_jax.models.gpt2 import GPT2
from clap_jax.models.htsat import HTSAT
from clap_jax.models.projection import Projection


def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


class AudioEncoder(nn.Module):
    config: ml_collections.ConfigDict

    def setup(self):
        c = self.config
        self.base = HTSAT(c.audio, _dtype(c.dtype), c.remat, name="base")
        self.projection = Projection(c.d_proj, c.proj_dropout, _dtype(c.dtype), name="projection")

    def __call__(self, wav, train: bool = False):
        """(B, N) -> dict(embedding (B, d_proj), latent (B, 768), clipwise (B, K), framewise (B, 1024, K))."""
        out = self.base(wav, train)
        out["embedding"] = self.projection(out["latent"], train).astype(jnp.float32)
        return out


class TextEncoder(nn.Module):
    config: ml_collections.ConfigDict

    def setup(self):
        c = self.config
        self.base = GPT2(c.text, _dtype(c.dtype), c.remat, name="base")
        self.projection = Projection(c.d_proj, c.proj_dropout, _dtype(c.dtype), name="projection")

    def __call__(self, input_ids, attention_mask=None, train: bool = False):
        """(B, L) ids -> (B, d_proj). Pooled at msclap's index: count(ids != 0) - 1 (id 0 is the pad '!')."""
        hidden = self.base(input_ids, attention_mask, train)
        idx = jnp.sum(input_ids != 0, axis=-1) - 1
        pooled = jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]
        return self.projection(pooled, train).astype(jnp.float32)


class CLAPModel(nn.Module):
    config: ml_collections.ConfigDict

    def setup(self):
        self.audio_encoder = AudioEncoder(self.config, name="audio_encoder")
        self.caption_encoder = TextEncoder(self.config, name="caption_encoder")
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


def _example_inputs(config: ml_collections.ConfigDict, batch: int) -> tuple:
    """(waveform, input_ids, attention_mask) shapes of one batch at the config's clip and text length."""
    n, t = model_config.clip_samples(config), config.text.max_length
    return (jax.ShapeDtypeStruct((batch, n), jnp.float32), jax.ShapeDtypeStruct((batch, t), jnp.int32),
            jax.ShapeDtypeStruct((batch, t), jnp.int32))


def _tokenizer(config: ml_collections.ConfigDict, source: str | None = None):
    from clap_jax.text.tokenizer import ClapTokenizer

    return ClapTokenizer(source, max_length=config.text.max_length)


registry.register(registry.Family(
    name="msclap-2023",
    configs={"msclap-2023": model_config.clap_2023, "msclap-2023-tiny": model_config.tiny},
    build=CLAPModel, tokenizer=_tokenizer, example_inputs=_example_inputs))
