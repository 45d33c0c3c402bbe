"""`python -m clap_jax.train` with the trainer tests' stand-in model: the real CLI (flags, jax.distributed,
checkpoints, signals), without the real model's compile time. Used by the multi-process and resume tests."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _train_standin import StandInCLAP  # noqa: E402
from clap_jax.train import __main__ as cli  # noqa: E402
from clap_jax.train import state  # noqa: E402

state.make_model = lambda config: StandInCLAP()

if __name__ == "__main__":
    cli.run()
