"""Shared helpers of the trainer tests: load configs/*.py, build the model under test, a tiny batch."""
import atexit
import hashlib
import importlib.util
import os
import shutil
import tempfile

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The trainer tests build the same small programs many times (each run jits its own step): a compilation cache,
# fresh per test session, lets identical programs compile once. Subprocess runs share it (see test_train_resume).
COMPILE_CACHE = tempfile.mkdtemp(prefix="clap_jax_train_tests_cache_")
atexit.register(shutil.rmtree, COMPILE_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", COMPILE_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def load_config(name: str, arg: str = ""):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def make_model(config, deterministic: bool = False):
    """The model the trainer tests run. `deterministic`: no dropout / augmentation, so that a float64
    reference draws no random numbers whose values depend on the dtype."""
    from _train_standin import StandInCLAP
    return StandInCLAP(dropout=0.0 if deterministic else 0.1)


def mesh(shape):
    from jax.sharding import Mesh
    return Mesh(np.asarray(jax.devices()[:8]).reshape(shape), ("data", "fsdp", "tensor"))


def tree_digest(d) -> str:
    """Names and contents of every file under `d`: equal digests mean nothing changed."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(d)):
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(p.encode() + open(p, "rb").read())
        h.update(repr(sorted(dirs)).encode())
    return h.hexdigest()
