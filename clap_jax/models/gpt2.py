"""GPT-2 (the text tower of msclap 2023) in Flax Linen. transformers 5 ships no Flax GPT-2, so it is ours.

Names mirror HF's GPT2Model (`wte`, `wpe`, `h_{i}.ln_1`, `h_{i}.attn.c_attn`, `h_{i}.mlp.c_fc`, `ln_f`); HF's
Conv1D weights are (in, out), the same layout as a Flax Dense kernel, so conversion copies them as they are.

input_ids (B, L), attention_mask (B, L) -> last hidden state after ln_f (B, L, n_embd)

Decoders (the captioner) also feed embeddings in front of the tokens (`prefix_embeds`), read logits through the
token embedding (`lm_logits`), and decode step by step with cached keys/values (`init_cache`, `forward_cached`,
functions of the same parameter tree).
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
        # (B, h, L, d): batch dimensions leading, which XLA:CPU's batched dots run fastest
        q, k, v = (t.reshape(b, l, h, c // h).transpose(0, 2, 1, 3) for t in (q, k, v))
        att = jnp.einsum("bhld,bhmd->bhlm", q, k).astype(jnp.float32) / jnp.sqrt(c // h).astype(jnp.float32)
        att = jax.nn.softmax(att + bias, axis=-1)
        att = nn.Dropout(self.dropout)(att, deterministic=not train).astype(v.dtype)
        y = jnp.einsum("bhlm,bhmd->bhld", att, v).transpose(0, 2, 1, 3).reshape(b, l, c)
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
    def __call__(self, input_ids, attention_mask=None, train: bool = False, prefix_embeds=None):
        """`prefix_embeds` (B, P, n_embd): embeddings placed before the tokens' (always attended to); the output
        then covers P + L positions."""
        c = self.config
        wte = nn.Embed(c.vocab_size, c.n_embd, embedding_init=nn.initializers.normal(0.02), name="wte")
        wpe = nn.Embed(c.n_positions, c.n_embd, embedding_init=nn.initializers.normal(0.01), name="wpe")
        x = wte(input_ids)
        if prefix_embeds is not None:
            x = jnp.concatenate([prefix_embeds.astype(x.dtype), x], axis=1)
            if attention_mask is not None:
                attention_mask = jnp.concatenate(
                    [jnp.ones(prefix_embeds.shape[:2], attention_mask.dtype), attention_mask], axis=1)
        b, l = x.shape[:2]
        if l > c.n_positions:
            raise ValueError(f"GPT2: sequence length {l} exceeds n_positions={c.n_positions}")
        x = x + wpe(jnp.arange(l)[None])
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


# ----------------------------------------------------------------------------------------------------------------
# Functional forms of the same parameter tree: the tied LM head and cached (incremental) decoding.
# ----------------------------------------------------------------------------------------------------------------
def lm_logits(params, hidden):
    """Hidden states (..., n_embd) -> logits (..., vocab) through the token embedding (GPT-2's tied LM head)."""
    emb = params["wte"]["embedding"]
    return jnp.einsum("...c,vc->...v", hidden.astype(jnp.float32), emb.astype(jnp.float32))


def init_cache(config: ml_collections.ConfigDict, batch: int, length: int, dtype=jnp.float32) -> dict:
    """Empty key/value cache for `length` positions: {'k', 'v'}: (n_layer, batch, length, n_head, head_dim)."""
    c = config
    shape = (c.n_layer, batch, length, c.n_head, c.n_embd // c.n_head)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def forward_cached(params, config: ml_collections.ConfigDict, x, cache: dict, start):
    """Run the blocks (inference, no dropout) on input embeddings `x` (B, T, n_embd) at positions start..start+T-1,
    attending causally to the cache's first `start` positions plus `x` itself.

    -> (hidden after ln_f (B, T, n_embd), cache with these T positions written). `start` may be traced; the
    cache's length is static, so one compiled step serves every position."""
    c = config
    b, t, e = x.shape
    h, d = c.n_head, e // c.n_head
    ln = lambda p, y: nn.LayerNorm(epsilon=c.layer_norm_epsilon).apply({"params": p}, y)  # noqa: E731
    dense = lambda p, y: nn.Dense(p["kernel"].shape[-1]).apply({"params": p}, y)  # noqa: E731
    pos = start + jnp.arange(t)
    x = x + jnp.take(params["wpe"]["embedding"], pos, axis=0)[None]
    length = cache["k"].shape[2]
    allowed = jnp.arange(length)[None, :] <= pos[:, None]                  # (T, S)
    bias = jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min)[None, None]
    ks, vs = [], []
    for i in range(c.n_layer):
        p = params[f"h_{i}"]
        q, k, v = jnp.split(dense(p["attn"]["c_attn"], ln(p["ln_1"], x)), 3, axis=-1)
        q, k, v = (y.reshape(b, t, h, d) for y in (q, k, v))
        kc = jax.lax.dynamic_update_slice(cache["k"][i], k.astype(cache["k"].dtype), (0, start, 0, 0))
        vc = jax.lax.dynamic_update_slice(cache["v"][i], v.astype(cache["v"].dtype), (0, start, 0, 0))
        ks.append(kc)
        vs.append(vc)
        att = jnp.einsum("blhd,bmhd->bhlm", q, kc).astype(jnp.float32) / jnp.sqrt(d).astype(jnp.float32)
        att = jax.nn.softmax(att + bias, axis=-1).astype(vc.dtype)
        y = jnp.einsum("bhlm,bmhd->blhd", att, vc).reshape(b, t, e)
        x = x + dense(p["attn"]["c_proj"], y)
        x = x + dense(p["mlp"]["c_proj"], gelu_new(dense(p["mlp"]["c_fc"], ln(p["ln_2"], x))))
    return ln(params["ln_f"], x), {"k": jnp.stack(ks), "v": jnp.stack(vs)}
