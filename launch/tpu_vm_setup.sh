#!/usr/bin/env bash
# Run on each TPU VM host by `launch/tpu_pod.sh setup`, from the unpacked code directory's parent: builds the venv
# ~/$VENV with Python $PYTHON_VERSION and installs this package's runtime dependencies plus jax[tpu] (the
# `tpuvm` extra of setup.py, pinned to the jax release the package is tested with). No test stack (torch, msclap).
#
# The TPU VM images (tpu-ubuntu2204-base, v2-alpha-tpuv5, v2-alpha-tpuv6e, ...) ship Python 3.10; jax 0.10 needs
# 3.11 or newer, so the venv's Python comes from uv (a standalone CPython build it downloads; no apt, no sudo).
# Idempotent: a second run only installs what changed.
set -euo pipefail
VENV="${VENV:-clap_venv}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
code="$(cd "$(dirname "$0")/.." && pwd)"
cd "$HOME"
export PATH="$HOME/.local/bin:$PATH"
if ! command -v uv > /dev/null; then
  python3 -m pip install --user -q uv || curl -LsSf https://astral.sh/uv/install.sh | sh
fi
[[ -x "$VENV/bin/python" ]] || uv venv --python "$PYTHON_VERSION" "$VENV"
uv pip install --python "$VENV/bin/python" -q -e "${code}[tpuvm]"
"$VENV/bin/python" -c "import sys, jax; print('$(hostname):', sys.version.split()[0], 'jax', jax.__version__)"
