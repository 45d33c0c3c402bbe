#!/usr/bin/env bash
# GPU hosts without a cluster manager: one process per host, started over ssh, host 0 is the coordinator.
# A single host with several GPUs needs no launcher at all: `python3 -m clap_jax.train ...` uses every local GPU.
#
#   HOSTS="gpu-a gpu-b" WORKDIR=/shared/runs/clap1 CONFIG=configs/clap_2023.py:dirs=/shared/tfr bash launch/multi_gpu_host.sh
#
# Variables:
#   HOSTS      (required) space-separated host names; the first is the coordinator
#   PORT       coordinator port (default 12355)
#   REPO_DIR   this repository's path on every host (default: this checkout's path)
#   CONFIG     config file[:args] (default configs/clap_2023.py)
#   WORKDIR    (required) run directory on a filesystem every host sees; resumes automatically
#   EXTRA      extra trainer flags
#   DRY_RUN=1  print the ssh commands instead of running them
set -euo pipefail
: "${HOSTS:?set HOSTS}" "${WORKDIR:?set WORKDIR}"
PORT="${PORT:-12355}"
REPO_DIR="${REPO_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
CONFIG="${CONFIG:-configs/clap_2023.py}"
EXTRA="${EXTRA:-}"
read -r -a hosts <<< "$HOSTS"
coord="${hosts[0]}:${PORT}"
pids=()
for i in "${!hosts[@]}"; do
  remote="cd ${REPO_DIR} && python3 -m clap_jax.train --config ${CONFIG} --workdir ${WORKDIR} \
--coordinator_address=${coord} --num_processes=${#hosts[@]} --process_id=${i} ${EXTRA}"
  if [[ "${DRY_RUN:-0}" == "1" ]]; then echo "ssh ${hosts[$i]} '${remote}'"; continue; fi
  ssh "${hosts[$i]}" "$remote" > "clap_host${i}.log" 2>&1 &
  pids+=($!)
done
[[ "${DRY_RUN:-0}" == "1" ]] && exit 0
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
