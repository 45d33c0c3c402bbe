#!/usr/bin/env bash
# Installs clap_jax and everything its tests need, from PyPI only (no hub downloads).
# Usage: bash scripts/setup.sh            (idempotent; about 2 minutes on a fresh machine)
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip"
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[test]"
# msclap is the parity oracle. It pins numpy<2 and transformers<5, which break jax: never install its deps.
$PIP install -q --no-deps "msclap==1.3.4" "torchlibrosa==0.1.0"
