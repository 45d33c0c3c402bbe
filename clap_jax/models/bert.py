"""BERT (post-LayerNorm encoder), numerically HF transformers' `BertModel`, the text tower of CLAP 2022.

Module names follow HF's state dict (`embeddings.word_embeddings`, `encoder.layer.{i}.attention.self.query`,
`...attention.output.LayerNorm`, `...intermediate.dense`, `...output.dense`, `pooler.dense`), so weights map one
to one (clap_jax.convert.msclap2022, clap_jax.convert.hf_bert).

  ids (B, L), token types (B, L), mask (B, L)
    -> word + position + token-type embeddings -> LayerNorm -> dropout
    -> n_layer x [self-attention (keys masked by `mask`) -> dense -> dropout -> LayerNorm(x + .);
                  dense -> GELU (erf) -> dense -> dropout -> LayerNorm(x + .)]
    -> hidden (B, L, hidden); pooled = tanh(pooler.dense(hidden[:, 0])) (HF's pooled output; CLAP 2022 uses the
       [CLS] hidden state itself, the pooler's weights are kept so that every weight has a home)
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections


def _dense(c, n, dtype, name):
    return nn.Dense(n, dtype=dtype, kernel_init=nn.initializers.normal(c.init_std), name=name)


def _ln(c, dtype, name):
    return nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=dtype, name=name)


class SelfAttention(nn.Module):
    config: ml_collections.ConfigDict
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, keep, train: bool = False):
        c = self.config
        b, t, h = x.shape
        nh = c.num_heads
        hd = h // nh
        split = lambda y: y.reshape(b, t, nh, hd)  # noqa: E731
        q = split(_dense(c, h, self.dtype, "query")(x))
        k = split(_dense(c, h, self.dtype, "key")(x))
        v = split(_dense(c, h, self.dtype, "value")(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(jnp.float32(hd))
        scores = jnp.where(keep[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = nn.Dropout(c.dropout)(probs, deterministic=not train).astype(self.dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, h)


class AddNorm(nn.Module):
    """dense -> dropout -> LayerNorm(residual + .)  (HF's BertSelfOutput / BertOutput)."""
    config: ml_collections.ConfigDict
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, residual, train: bool = False):
        c = self.config
        y = _dense(c, c.hidden_size, self.dtype, "dense")(x)
        y = nn.Dropout(c.dropout)(y, deterministic=not train)
        return _ln(c, self.dtype, "LayerNorm")(y + residual)


class Attention(nn.Module):
    config: ml_collections.ConfigDict
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, keep, train: bool = False):
        y = SelfAttention(self.config, self.dtype, name="self")(x, keep, train)
        return AddNorm(self.config, self.dtype, name="output")(y, x, train)


class Intermediate(nn.Module):
    config: ml_collections.ConfigDict
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.gelu(_dense(self.config, self.config.intermediate_size, self.dtype, "dense")(x), approximate=False)


class BertLayer(nn.Module):
    config: ml_collections.ConfigDict
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, keep, train: bool = False):
        a = Attention(self.config, self.dtype, name="attention")(x, keep, train)
        i = Intermediate(self.config, self.dtype, name="intermediate")(a)
        return AddNorm(self.config, self.dtype, name="output")(i, a, train)


class Embeddings(nn.Module):
    config: ml_collections.ConfigDict
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids, token_types, train: bool = False):
        c = self.config
        init = nn.initializers.normal(c.init_std)
        emb = lambda n, name: nn.Embed(n, c.hidden_size, embedding_init=init, name=name)  # noqa: E731
        pos = jnp.arange(ids.shape[1])[None, :]
        x = (emb(c.vocab_size, "word_embeddings")(ids) + emb(c.max_position_embeddings, "position_embeddings")(pos)
             + emb(c.type_vocab_size, "token_type_embeddings")(token_types))
        x = _ln(c, self.dtype, "LayerNorm")(x)
        return nn.Dropout(c.dropout)(x, deterministic=not train)


class Encoder(nn.Module):
    config: ml_collections.ConfigDict
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x, keep, train: bool = False):
        layer_cls = nn.remat(BertLayer, static_argnums=(3,)) if self.remat else BertLayer
        for i in range(self.config.num_layers):
            x = layer_cls(self.config, self.dtype, name=f"layer_{i}")(x, keep, train)
        return x


class Pooler(nn.Module):
    config: ml_collections.ConfigDict
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, cls):
        return jnp.tanh(_dense(self.config, self.config.hidden_size, self.dtype, "dense")(cls))


class Bert(nn.Module):
    """(ids, mask, token types) -> (hidden (B, L, H), pooled (B, H)). `config`: the model config's `text` group."""
    config: ml_collections.ConfigDict
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, train: bool = False):
        c = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = Embeddings(c, self.dtype, name="embeddings")(input_ids, token_type_ids, train)
        x = Encoder(c, self.dtype, self.remat, name="encoder")(x, attention_mask > 0, train)
        return x, Pooler(c, self.dtype, name="pooler")(x[:, 0])
