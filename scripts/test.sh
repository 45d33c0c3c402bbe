#!/usr/bin/env bash
# README's test command: installs everything (scripts/setup.sh, idempotent; SKIP_SETUP=1 skips it), then runs the
# whole suite on CPU with 8 simulated devices. Extra arguments go to pytest (e.g. -k parity, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${SKIP_SETUP:-0}" != "1" ]]; then
  bash scripts/setup.sh
fi
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
export JAX_PLATFORMS=cpu
python3 -m pytest -q tests "$@"
