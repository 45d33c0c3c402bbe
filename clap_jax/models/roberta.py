"""RoBERTa (HF transformers' `RobertaModel`), LAION-CLAP's text tower: BERT's encoder and pooler
(clap_jax.models.bert) with RoBERTa's embeddings.

  ids (B, L), mask (B, L)
    -> word + position + token-type (one type) embeddings -> LayerNorm -> dropout
       position ids count the non-pad tokens from pad_token_id + 1: cumsum(ids != pad) * (ids != pad) + pad
    -> BERT encoder (post-LayerNorm, keys masked by `mask`) -> hidden (B, L, H)
    -> pooled = tanh(pooler.dense(hidden[:, 0]))   (what LAION-CLAP projects)

Module names follow HF's state dict (`embeddings.word_embeddings`, `encoder.layer_{i}...`, `pooler.dense`).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from clap_jax.models.bert import Encoder, Pooler, _ln


def roberta_base() -> ml_collections.ConfigDict:
    """roberta-base's shape (HF RobertaConfig as the roberta-base checkpoint sets it)."""
    c = ml_collections.ConfigDict()
    c.vocab_size = 50265
    c.hidden_size = 768
    c.num_layers = 12
    c.num_heads = 12
    c.intermediate_size = 3072
    c.max_position_embeddings = 514
    c.type_vocab_size = 1
    c.layer_norm_eps = 1e-5
    c.pad_token_id = 1
    c.dropout = 0.1                # hidden and attention dropout (training only)
    c.init_std = 0.02
    c.max_length = 77              # tokenizer length (LAION-CLAP)
    return c


def position_ids(ids: jnp.ndarray, pad: int) -> jnp.ndarray:
    """HF's `create_position_ids_from_input_ids`: pads get `pad`, tokens pad + 1, pad + 2, ... in order."""
    keep = (ids != pad).astype(jnp.int32)
    return jnp.cumsum(keep, axis=1) * keep + pad


class RobertaEmbeddings(nn.Module):
    config: ml_collections.ConfigDict
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids, train: bool = False):
        c = self.config
        init = nn.initializers.normal(c.init_std)
        emb = lambda n, name: nn.Embed(n, c.hidden_size, embedding_init=init, name=name)  # noqa: E731
        x = (emb(c.vocab_size, "word_embeddings")(ids)
             + emb(c.max_position_embeddings, "position_embeddings")(position_ids(ids, c.pad_token_id))
             + emb(c.type_vocab_size, "token_type_embeddings")(jnp.zeros_like(ids)))
        x = _ln(c, self.dtype, "LayerNorm")(x)
        return nn.Dropout(c.dropout)(x, deterministic=not train)


class Roberta(nn.Module):
    """(ids, mask) -> (hidden (B, L, H), pooled (B, H)). `config`: the model config's `text` group."""
    config: ml_collections.ConfigDict
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, train: bool = False):
        c = self.config
        if attention_mask is None:
            attention_mask = (input_ids != c.pad_token_id).astype(jnp.int32)
        x = RobertaEmbeddings(c, self.dtype, name="embeddings")(input_ids, train)
        x = Encoder(c, self.dtype, self.remat, name="encoder")(x, attention_mask > 0, train)
        return x, Pooler(c, self.dtype, name="pooler")(x[:, 0])
