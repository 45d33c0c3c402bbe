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
# laion_clap is the LAION-CLAP parity oracle (tests/laion_oracle.py): --no-deps, it pins numpy<2. The packages its
# imports need go to their own directory, which only the oracle puts on sys.path: the torchvision/torchaudio wheels
# served do not match this torch build (torchaudio runs without its compiled extension, removed here).
LAION_DEPS="${CLAP_JAX_LAION_DEPS:-$HOME/.cache/clap_jax/laion_oracle_deps}"
$PIP install -q --no-deps "laion-clap==1.1.7"
if [ ! -d "$LAION_DEPS/torchaudio" ]; then
  $PIP install -q --no-deps --target "$LAION_DEPS" "torchaudio==2.11.1" "torchvision==0.29.1" "webdataset==1.0.2" \
    "wget==3.2" "braceexpand==0.1.7" "h5py==3.16.0" "ftfy==6.3.1" "pandas==3.1.1"
  rm -f "$LAION_DEPS"/torchaudio/lib/*.so
fi
