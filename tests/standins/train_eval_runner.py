"""`python -m clap_jax.train` with the trainer tests' stand-in model (tests/_train_runner.py), whose periodic eval
(`config.eval.data_root`: clap_jax.eval.hook, `clap_jax.inference.CLAP` on the training mesh) embeds with that
same stand-in model: the multi-host eval path without the real model's compile time."""
import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

import jax.numpy as jnp  # noqa: E402

from _train_standin import StandInCLAP  # noqa: E402
from clap_jax.models import registry  # noqa: E402
from clap_jax.train import __main__ as cli  # noqa: E402
from clap_jax.train import state  # noqa: E402


class EmbeddingStandIn(StandInCLAP):
    """The stand-in with the two towers CLAP's embedder calls (each runs the whole model on a dummy other input)."""

    def encode_audio(self, wave):
        ids = jnp.zeros((wave.shape[0], 4), jnp.int32)
        a, _, _ = self(wave, ids, jnp.ones_like(ids), train=False)
        return {"embedding": a}

    def encode_text(self, ids, mask):
        _, t, _ = self(jnp.zeros((ids.shape[0], 64), jnp.float32), ids, mask, train=False)
        return t


state.make_model = lambda config: EmbeddingStandIn()
registry.build_model = lambda config: EmbeddingStandIn()

if __name__ == "__main__":
    cli.run()
