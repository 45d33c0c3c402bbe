"""Host memory: back large malloc'ed buffers with transparent huge pages (Linux, glibc >= 2.35).

XLA's CPU runtime allocates each execution's temporaries (1.7 GB for a full-size CLAP train step at batch 2) and
every non-donated output with malloc; above 32 MB glibc serves those with a fresh mmap, so every step pays a page
fault and a page zeroing per 4 KiB touched. With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` glibc madvises those
regions for 2 MiB transparent huge pages: 512x fewer faults. Numerics are unchanged (same program, same bits);
`bench/bench_train_step.py --no-hugepages` measures the difference.

glibc reads tunables once at process start, so the entry points (`python -m clap_jax.train`, `.eval`,
`bench/bench_train_step.py`) call `reexec_with_hugepages()` before their heavy imports: it re-executes the same
command line with the tunable added (same PID, so signals and launchers are unaffected). Opt out with
`CLAP_JAX_HUGEPAGES=0`.
"""
from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "CLAP_JAX_HUGEPAGES"
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # 'glibc 2.36'
    except (AttributeError, ValueError, OSError):
        return None
    if name != "glibc":
        return None
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def thp_mode() -> str | None:
    """'always', 'madvise' or 'never' (the bracketed entry of the kernel's setting); None if unknown."""
    try:
        text = open(_THP).read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def supported() -> bool:
    v = glibc_version()
    return sys.platform.startswith("linux") and v is not None and v >= (2, 35) and thp_mode() in ("always", "madvise")


def enabled(environ=os.environ) -> bool:
    """Whether this process was started with the tunable set (to any value other than 0)."""
    for item in environ.get("GLIBC_TUNABLES", "").split(":"):
        key, _, value = item.partition("=")
        if key == TUNABLE:
            return value not in ("", "0")
    return False


def with_hugepages(environ=os.environ) -> dict:
    """A copy of `environ` with the tunable added to GLIBC_TUNABLES (other tunables kept)."""
    env = dict(environ)
    items = [i for i in env.get("GLIBC_TUNABLES", "").split(":") if i and not i.startswith(TUNABLE + "=")]
    env["GLIBC_TUNABLES"] = ":".join(items + [f"{TUNABLE}=1"])
    return env


def reexec_with_hugepages() -> None:
    """Re-execute this process's command line with huge-page malloc, once, where it helps and is allowed.
    Call it first thing in a `__main__` (before anything large is allocated); returns if nothing to do."""
    if os.environ.get(OPT_OUT, "1") == "0" or enabled() or not supported():
        return
    argv = getattr(sys, "orig_argv", None)
    if not argv:
        return
    env = with_hugepages()  # the child sees the tunable in its environment: enabled() stops any loop
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable] + list(argv[1:]), env)
    except OSError:  # keep running as we are
        return


def describe() -> str:
    if enabled():
        return f"huge-page malloc on ({TUNABLE}=1, THP {thp_mode()})"
    return f"huge-page malloc off (GLIBC_TUNABLES lacks {TUNABLE}=1; THP {thp_mode()})"
