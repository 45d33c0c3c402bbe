"""Shared fixtures. Tests run on CPU; scripts/test.sh sets 8 simulated devices."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))  # tests/msclap_oracle.py

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_cfg():
    from clap_jax.models import config as model_config

    return model_config.tiny()


@pytest.fixture(scope="session")
def tiny_msclap(tiny_cfg):
    """msclap's real model at the tiny size, random weights (eval mode)."""
    from msclap_oracle import build_msclap

    return build_msclap(tiny_cfg, seed=3)


@pytest.fixture(scope="session")
def tiny_msclap_state(tiny_msclap):
    return {k: v.numpy() for k, v in tiny_msclap.state_dict().items()}


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / (np.abs(ref).max() + 1e-30))
