#!/usr/bin/env bash
# Train on a Cloud TPU pod slice (one process per TPU-VM host; jax.distributed finds its peers by itself).
#
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a WORKDIR=gs://my-bucket/clap_run1 \
#     CONFIG=configs/clap_2023.py:fsdp,dirs=gs://my-bucket/tfr_audiocaps,dirs=gs://my-bucket/tfr_clotho \
#     bash launch/tpu_pod.sh
#
# Variables:
#   TPU_NAME   (required) the TPU VM / pod slice name
#   ZONE       (required) its zone
#   PROJECT    GCP project (default: gcloud's configured project)
#   CONFIG     config file[:args] (default configs/clap_2023.py:fsdp)
#   WORKDIR    (required) run directory, a gs:// path every host can write (resumes automatically)
#   REPO_DIR   checkout of this repository on every worker (default ~/clap_jax)
#   SETUP=1    first copy the repository to every worker (gcloud scp) and run scripts/setup.sh plus jax[tpu]
#   EXTRA      extra flags for the trainer, e.g. "--config.optim.lr=3e-4"
#   DRY_RUN=1  print the gcloud commands instead of running them
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
CONFIG="${CONFIG:-configs/clap_2023.py:fsdp}"
REPO_DIR="${REPO_DIR:-~/clap_jax}"
EXTRA="${EXTRA:-}"
PROJECT_FLAG=()
[[ -n "${PROJECT:-}" ]] && PROJECT_FLAG=(--project "$PROJECT")
run() {
  if [[ "${DRY_RUN:-0}" == "1" ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
cd "$(dirname "$0")/.."
if [[ "${SETUP:-0}" == "1" ]]; then
  run gcloud compute tpus tpu-vm scp --recurse . "${TPU_NAME}:${REPO_DIR}" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all \
    --command "cd ${REPO_DIR} && bash scripts/setup.sh && pip install -q 'jax[tpu]>=0.10,<0.11'"
fi
# No coordinator flags: on TPU VMs jax.distributed.initialize() reads the pod topology from the metadata server.
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all \
  --command "cd ${REPO_DIR} && python3 -m clap_jax.train --config ${CONFIG} --workdir ${WORKDIR} --distributed=force ${EXTRA}"
