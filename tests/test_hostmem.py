"""Huge-page malloc for the entry points (clap_jax/hostmem.py): environment handling, the re-exec, and that it
really cuts page faults on this machine's kernel."""
import os
import subprocess
import sys

from clap_jax import hostmem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _clean_env():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hostmem.OPT_OUT)}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_enabled_parses_tunables():
    assert not hostmem.enabled({})
    assert not hostmem.enabled({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert not hostmem.enabled({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert hostmem.enabled({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"})


def test_with_hugepages_keeps_other_tunables_and_replaces_its_own():
    env = hostmem.with_hugepages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0", "A": "b"})
    assert env["A"] == "b"
    assert env["GLIBC_TUNABLES"].split(":") == ["glibc.malloc.arena_max=2", "glibc.malloc.hugetlb=1"]
    assert hostmem.enabled(env)
    assert hostmem.with_hugepages({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


_PROBE = """
import os, sys
from clap_jax import hostmem
hostmem.reexec_with_hugepages()
print("PID", os.getpid(), "TUNABLES", os.environ.get("GLIBC_TUNABLES", ""), "ARGS", sys.argv[1:])
"""


def test_reexec_keeps_pid_and_arguments_and_honours_opt_out():
    out = subprocess.run([sys.executable, "-c", _PROBE, "x", "--flag=1"], env=_clean_env(), capture_output=True,
                         text=True, check=True).stdout
    fields = out.split()
    assert fields[fields.index("ARGS") + 1:] == ["['x',", "'--flag=1']"]
    if hostmem.supported():
        assert "glibc.malloc.hugetlb=1" in out
    else:
        assert "glibc.malloc.hugetlb" not in out
    env = dict(_clean_env(), **{hostmem.OPT_OUT: "0"})
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True).stdout
    assert "glibc.malloc.hugetlb" not in out


_FAULTS = """
import ctypes, resource
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
n = 256 * 2**20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):   # like XLA's per-execution buffers: malloc (a fresh mmap above 32 MiB), touch, free
    p = libc.malloc(n)
    libc.memset(p, 1, n)
    libc.free(p)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_hugepage_malloc_cuts_page_faults():
    """The point of it: a fresh large malloc faults in 2 MiB pages, not 4 KiB ones. (numpy madvises its own
    large arrays already; XLA and PyTorch go through plain malloc.)"""
    def faults(env):
        return int(subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True,
                                  check=True).stdout.split()[-1])
    base = faults(_clean_env())
    assert base > 4 * 256 * 2**20 // 4096 // 2  # 4 KiB pages: about one fault per page
    if hostmem.supported():
        huge = faults(hostmem.with_hugepages(_clean_env()))
        assert huge * 20 < base, (huge, base)
