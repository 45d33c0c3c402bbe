"""`python -m clap_jax.train --config configs/<name>.py[:args] --workdir DIR [--config.field=value ...]`

Bad input (an unknown or invalid config field, a workdir that is a file or read-only, missing data, a full disk)
is reported as one `error: ...` line and exit code 2; `--debug` (or CLAP_JAX_DEBUG=1) shows the traceback.
"""
import json
import sys

if __name__ == "__main__":  # before the heavy imports below: the re-exec would otherwise pay for them twice
    from clap_jax import hostmem

    hostmem.reexec_with_hugepages()  # 2 MiB pages for XLA's per-step host buffers (clap_jax/hostmem.py)

import jax
from absl import app, flags
from ml_collections import config_flags

from clap_jax import errors
from clap_jax.train import config as config_lib
from clap_jax.train import distributed
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
_DEBUG = flags.DEFINE_boolean("debug", False, "Show tracebacks for input errors (also CLAP_JAX_DEBUG=1)")

_HELP = ("-h", "--help", "-?", "--helpshort", "--helpfull")


def main(argv):
    del argv
    distributed.init_distributed(_COORD.value, _NPROC.value, _PID.value, _DIST.value)
    config = _load_config()
    config_lib.validate_config(config)  # ConfigError naming the field (unknown fields too) before any compute
    summary = train.train_and_evaluate(config, _WORKDIR.value)
    if _LOSSES.value:
        if jax.process_index() == 0:
            with open(_LOSSES.value, "w") as f:
                json.dump({"losses": {str(k): v for k, v in summary["losses"].items()},
                           "stopped": summary["stopped"], "start_step": summary["start_step"],
                           "end_step": summary["end_step"]}, f)


def _config_arg(argv) -> str:
    for i, a in enumerate(argv):
        if a in ("--config", "-config") and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(("--config=", "-config=")):
            return a.split("=", 1)[1]
    return "?"


def _load_config():
    """The parsed config. config_flags defers a config file's load error to the first use: one line for it."""
    try:
        config = _CONFIG.value
        config.keys()
    except OSError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise errors.UserError(f"--config {_config_arg(sys.argv)}: cannot load it: {lines[-1] if lines else e}") from e
    return config


def _config_overrides(argv) -> list[str]:
    """The dotted fields of `--config.a.b=value` arguments."""
    out = []
    for a in argv:
        name = a.split("=", 1)[0].lstrip("-")
        if name.startswith("config."):
            out.append(name[len("config."):])
        elif name.startswith("noconfig."):
            out.append(name[len("noconfig."):])
    return out


def _flag_error_message(e: BaseException, argv) -> str:
    """One line for a command line that does not parse."""
    known = set(config_lib.field_paths(config_lib.base()))
    for field in _config_overrides(argv):  # a typo in an override: name it and the nearest known field
        if field not in known:
            return f"--config.{field}: {config_lib.unknown_field_message(field)}"
    one_line = lambda text: " ".join(str(text).split())  # noqa: E731
    if isinstance(e, flags.Error) and not str(e).startswith(("flag --config=", "flag --config:")):
        return one_line(e)  # an unknown flag, a bad value of --workdir / --config.x.y: absl names the flag
    cause = e  # the config file failed to load: config_flags wraps its error, report the innermost one
    while (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    return f"--config {_config_arg(argv)}: " + one_line(errors.describe(cause) or f"{type(cause).__name__}: {cause}")


def _parse_flags(argv):
    """absl's parser, with its errors (and those of the config file it loads) as one line and exit code 2."""
    try:
        return flags.FLAGS(argv)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - flag parsing runs the config file: anything can come out of it
        if errors.debug_requested(argv):
            raise
        print(f"error: {_flag_error_message(e, argv[1:])}", file=sys.stderr)
        sys.exit(errors.EXIT_USER_ERROR)


def run(main_fn=main, argv=None, usage: str = "--config configs/tiny.py --workdir /tmp/run") -> None:
    """The entry point: absl flags, `--help` exits 0, input errors are one line (see module docstring).
    `python -m clap_jax.train.compile` shares it (`usage`: the example its missing-`--config` error shows)."""
    argv = list(sys.argv if argv is None else argv)
    if any(a in _HELP for a in argv[1:]):
        flags.FLAGS.mark_as_parsed()  # absl prints and exits 1 on --help; help is no error here
        print(flags.FLAGS.main_module_help() if "--helpfull" not in argv else flags.FLAGS.get_help())
        sys.exit(0)
    if not any(a in ("--config", "-config") or a.startswith(("--config=", "-config=")) for a in argv[1:]):
        print(f"error: --config is required, e.g. {usage}", file=sys.stderr)
        sys.exit(errors.EXIT_USER_ERROR)
    app.run(lambda rest: errors.run_cli(lambda _: main_fn(rest), ["--debug"] if _DEBUG.value else []),
            argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
