"""Errors a user can act on, and how every command-line entry point reports them.

A `UserError` (and the errors that derive from it: a bad checkpoint, an unreadable audio file, a dataset that is
not where it should be, an invalid config) is the user's input being wrong: the CLIs print it as one line,
`error: <what and where>`, and exit non-zero, with no traceback. `--debug` (or `CLAP_JAX_DEBUG=1`) shows the
traceback instead. Anything else is a bug in clap_jax and keeps its traceback.

    def main(argv=None) -> int: ...
    if __name__ == "__main__":
        sys.exit(run_cli(main))
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Callable, Sequence

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Bad input (file, field, argument): the message names it and says what to do."""


class ConfigError(UserError, ValueError):
    """An invalid or unknown config field (rejected before any compute)."""


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("CLAP_JAX_DEBUG", "") not in ("", "0")


def describe(e: BaseException) -> str | None:
    """One line for an error the user can fix, or None when it is a bug (keep the traceback)."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        where = e.filename or "the output directory"
        return f"no space left on the device while writing {where}: free some space and rerun (finished work is kept)"
    if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        what = {FileNotFoundError: "no such file or directory", NotADirectoryError: "not a directory",
                IsADirectoryError: "is a directory, expected a file", PermissionError: "permission denied"}
        kind = next(v for k, v in what.items() if isinstance(e, k))
        return f"{e.filename}: {kind}" if e.filename else str(e)
    return None


def run_cli(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)` and turn user errors into one `error: ...` line on stderr and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        rc = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the point is to sort every error into "yours" or "ours"
        msg = describe(e)
        if msg is None or debug:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0 if rc is None else int(rc)
