"""`python -m clap_jax.train` with the trainer tests' stand-in model: the real CLI (flags, jax.distributed,
checkpoints, signals), without the real model's compile time. Used by the multi-process and resume tests."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _train_standin import StandInCLAP  # noqa: E402
from clap_jax.train import __main__ as cli  # noqa: E402
from clap_jax.train import state  # noqa: E402

state.make_model = lambda config: StandInCLAP()


def _slow_steps(argv):
    """`--step_seconds=S` (this runner's own flag): every step waits S seconds for its batch, so a signal sent
    after one checkpoint reliably lands before the run's last step however fast the machine is."""
    rest = [a for a in argv if not a.startswith("--step_seconds=")]
    seconds = [float(a.split("=", 1)[1]) for a in argv if a.startswith("--step_seconds=")]
    if seconds:
        import time

        from clap_jax.train import data as data_lib

        fetch = data_lib.Prefetcher.next

        def slow_next(self):
            time.sleep(seconds[-1])
            return fetch(self)

        data_lib.Prefetcher.next = slow_next
    return rest


if __name__ == "__main__":
    sys.argv = _slow_steps(sys.argv)
    cli.run()
