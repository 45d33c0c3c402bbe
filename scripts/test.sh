#!/usr/bin/env bash
# The test command named in README.md. Runs the whole suite on CPU with 8 simulated devices.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
export JAX_PLATFORMS=cpu
python3 -m pytest -q tests "$@"
