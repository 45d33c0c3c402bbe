#!/usr/bin/env bash
# Installs clap_jax with CUDA 12 jax (the `gpu` extra: jax[cuda12] pinned to the release the package is tested
# with; the CUDA libraries come as wheels, only an NVIDIA driver >= 525 is needed on the host), runtime
# dependencies only, then checks that jax sees the GPUs.
# Usage: bash scripts/setup_gpu.sh     (in the venv / conda env the jobs will use; on every node, or once on a
#                                        shared filesystem)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip install -q -e ".[gpu]"
JAX_PLATFORMS=cuda "$PY" -c "import jax; d = jax.devices(); print(f'jax {jax.__version__}: {len(d)} x {d[0].device_kind}')"
