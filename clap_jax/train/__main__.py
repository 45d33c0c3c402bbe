"""`python -m clap_jax.train --config configs/<name>.py[:args] --workdir DIR [--config.field=value ...]`"""
import sys

if __name__ == "__main__":  # before the heavy imports below: the re-exec would otherwise pay for them twice
    from clap_jax import hostmem

    hostmem.reexec_with_hugepages()  # 2 MiB pages for XLA's per-step host buffers (clap_jax/hostmem.py)

from absl import app, flags
from ml_collections import config_flags

from clap_jax.train import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config(arg)), e.g. configs/tiny.py:arg")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, TensorBoard events. Resumed if present.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process without a "
                             "cluster manager); with --num_processes and --process_id")
_NPROC = flags.DEFINE_integer("num_processes", None, "Total number of processes (with --coordinator_address)")
_PID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address)")
_DIST = flags.DEFINE_enum("distributed", "auto", ["auto", "none", "force"],
                          "auto: initialise jax.distributed on TPU pods / SLURM / JAX_COORDINATOR_ADDRESS; "
                          "force: always call jax.distributed.initialize(); none: single process")
_LOSSES = flags.DEFINE_string("losses_out", None, "Optional JSON file to write {step: loss} to (process 0)")


def main(argv):
    del argv
    train.init_distributed(_COORD.value, _NPROC.value, _PID.value, _DIST.value)
    try:
        train.validate_config(_CONFIG.value)
    except ValueError as e:  # before any compute: say which field, no traceback
        print(f"invalid config: {e}", file=sys.stderr)
        sys.exit(2)
    summary = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    if _LOSSES.value:
        import json
        import jax
        if jax.process_index() == 0:
            with open(_LOSSES.value, "w") as f:
                json.dump({"losses": {str(k): v for k, v in summary["losses"].items()},
                           "stopped": summary["stopped"], "start_step": summary["start_step"],
                           "end_step": summary["end_step"]}, f)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
