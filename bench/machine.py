"""The machine a figure was measured on, as one header block every bench script prints first.

CPU model and the instruction-set flags that decide XLA:CPU's and oneDNN's kernels (AVX2, AVX-512, AVX512_BF16,
AVX-VNNI, AMX), cores the process may use, load average (quiet or busy), thread counts on both sides, the malloc
in use (glibc, or jemalloc/tcmalloc preloaded; transparent huge pages), the jax/jaxlib and torch versions and
XLA_FLAGS.
"""
from __future__ import annotations

import os
import platform

FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
                     "amx_bf16", "amx_int8")


def cpu_info() -> dict:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                if model != "unknown" and flags:
                    break
    except OSError:
        pass
    hypervisor = "hypervisor" in flags
    return {"model": model, "flags": [f for f in FLAGS_OF_INTEREST if f in flags], "virtualised": hypervisor}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def malloc_mode() -> str:
    pre = os.environ.get("LD_PRELOAD", "")
    kind = ("jemalloc" if "jemalloc" in pre else "tcmalloc" if "tcmalloc" in pre else
            f"preloaded {pre}" if pre else "glibc malloc")
    tun = os.environ.get("GLIBC_TUNABLES")
    if tun:
        kind += f" ({tun})"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read().split("[")[1].split("]")[0]
        kind += f", transparent huge pages {thp}"
    except (OSError, IndexError):
        pass
    return kind


def _cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + (v[4] if len(v) > 4 else 0)   # total, idle + iowait


def load(window_s: float = 1.0) -> str:
    """CPU use by everything else over `window_s` seconds (sampled now, while this process sleeps), and the load
    average (a trailing mean that lags: it still counts work that ended a minute ago)."""
    cores = usable_cores()
    try:
        import time

        t0, i0 = _cpu_times()
        time.sleep(window_s)
        t1, i1 = _cpu_times()
        busy = 1.0 - (i1 - i0) / max(1, t1 - t0)
        state = "quiet" if busy < 0.15 else "busy"
        now = f"other processes used {100 * busy:.0f} % of the CPUs over {window_s:g} s: {state}"
    except (OSError, ValueError):
        now = "CPU use of other processes unknown"
    try:
        one, five, _ = os.getloadavg()
        return f"{now}; load average {one:.1f} / {five:.1f} (1 / 5 min) on {cores} cores"
    except OSError:
        return now


def describe(torch_threads: int | None = None) -> str:
    """Multi-line header: machine, load, threads, malloc, versions, XLA_FLAGS."""
    import jax

    c = cpu_info()
    lines = [f"machine: {c['model']}{' (virtualised)' if c['virtualised'] else ''}, {usable_cores()} cores usable "
             f"of {os.cpu_count()}; flags {' '.join(c['flags']) or 'none of ' + ','.join(FLAGS_OF_INTEREST)}",
             f"{load()}; malloc: {malloc_mode()}"]
    threads = f"XLA:CPU intra-op threads = cores ({usable_cores()})"
    if torch_threads is not None:
        import torch

        threads += f"; torch {torch.__version__} intra-op threads {torch_threads}"
    lines.append(f"jax {jax.__version__} on {jax.devices()[0].platform}; {threads}")
    lines.append(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
