"""msclap's Projection head: linear1 -> gelu -> linear2 -> dropout -> residual from linear1 -> LayerNorm."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Projection(nn.Module):
    """(B, d_in) -> (B, d_out). Residual is taken after linear1 (as msclap), dropout only in training."""
    d_out: int
    dropout: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # torch nn.Linear default
        e1 = nn.Dense(self.d_out, use_bias=False, name="linear1", dtype=self.dtype, kernel_init=init)(x)
        e2 = nn.Dense(self.d_out, use_bias=False, name="linear2", dtype=self.dtype, kernel_init=init)(
            nn.gelu(e1, approximate=False))
        e2 = nn.Dropout(self.dropout)(e2, deterministic=not train)
        return nn.LayerNorm(epsilon=1e-5, name="layer_norm", dtype=self.dtype)(e1 + e2)
