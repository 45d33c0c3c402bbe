"""GPT-2 (the text tower of msclap 2023) in Flax Linen. transformers 5 ships no Flax GPT-2, so it is ours.

Names mirror HF's GPT2Model (`wte`, `wpe`, `h_{i}.ln_1`, `h_{i}.attn.c_attn`, `h_{i}.mlp.c_fc`, `ln_f`); HF's
Conv1D weights are (in, out), the same layout as a Flax Dense kernel, so conversion copies them as they are.

input_ids (B, L), attention_mask (B, L) -> last hidden state after ln_f (B, L, n_embd)
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

gelu_new = lambda x: nn.gelu(x, approximate=True)  # noqa: E731  (HF 'gelu_new': tanh approximation)


def _dense(features, name, dtype, std=0.02):
    return nn.Dense(features, name=name, dtype=dtype, kernel_init=nn.initializers.normal(std),
                    bias_init=nn.initializers.zeros)


class Attention(nn.Module):
    """Causal multi-head self-attention. (B, L, C), additive mask (B, 1, L, L) -> (B, L, C)."""
    n_head: int
    dropout: float
    proj_std: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, bias, train: bool):
        b, l, c = x.shape
        h = self.n_head
        qkv = _dense(3 * c, "c_attn", self.dtype)(x)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        q, k, v = (t.reshape(b, l, h, c // h) for t in (q, k, v))
        att = jnp.einsum("blhd,bmhd->bhlm", q, k).astype(jnp.float32) / jnp.sqrt(c // h).astype(jnp.float32)
        att = jax.nn.softmax(att + bias, axis=-1)
        att = nn.Dropout(self.dropout)(att, deterministic=not train).astype(v.dtype)
        y = jnp.einsum("bhlm,bmhd->blhd", att, v).reshape(b, l, c)
        y = _dense(c, "c_proj", self.dtype, self.proj_std)(y)
        return nn.Dropout(self.dropout)(y, deterministic=not train)


class Mlp(nn.Module):
    dropout: float
    proj_std: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        c = x.shape[-1]
        y = gelu_new(_dense(4 * c, "c_fc", self.dtype)(x))
        y = _dense(c, "c_proj", self.dtype, self.proj_std)(y)
        return nn.Dropout(self.dropout)(y, deterministic=not train)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""
    config: ml_collections.ConfigDict
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, bias, train: bool = False):
        c = self.config
        proj_std = 0.02 / (2 * c.n_layer) ** 0.5  # GPT-2's scaled init of residual projections
        ln = lambda name: nn.LayerNorm(epsilon=c.layer_norm_epsilon, name=name, dtype=self.dtype)  # noqa: E731
        x = x + Attention(c.n_head, c.dropout, proj_std, self.dtype, name="attn")(ln("ln_1")(x), bias, train)
        return x + Mlp(c.dropout, proj_std, self.dtype, name="mlp")(ln("ln_2")(x), train)


class GPT2(nn.Module):
    config: ml_collections.ConfigDict
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, train: bool = False):
        c = self.config
        b, l = input_ids.shape
        if l > c.n_positions:
            raise ValueError(f"GPT2: sequence length {l} exceeds n_positions={c.n_positions}")
        wte = nn.Embed(c.vocab_size, c.n_embd, embedding_init=nn.initializers.normal(0.02), name="wte")
        wpe = nn.Embed(c.n_positions, c.n_embd, embedding_init=nn.initializers.normal(0.01), name="wpe")
        x = wte(input_ids) + wpe(jnp.arange(l)[None])
        x = nn.Dropout(c.dropout)(x, deterministic=not train).astype(self.dtype)
        # Additive mask: causal, and padding keys masked where attention_mask == 0 (as HF does).
        allowed = jnp.tril(jnp.ones((l, l), bool))[None, None]
        if attention_mask is not None:
            allowed = allowed & (attention_mask[:, None, None, :] > 0)
        bias = jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
        block = nn.remat(Block, static_argnums=(3,)) if self.remat else Block
        for i in range(c.n_layer):
            x = block(c, self.dtype, name=f"h_{i}")(x, bias, train)
        return nn.LayerNorm(epsilon=c.layer_norm_epsilon, name="ln_f", dtype=self.dtype)(x)
