"""Shared helpers of the trainer tests: load configs/*.py, build the model under test, a tiny batch."""
import importlib.util
import os

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
