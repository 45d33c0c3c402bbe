#!/usr/bin/env bash
# Several JAX processes on this machine, talking over localhost (jax.distributed + gloo on CPU): the multi-host
# code path without a cluster. Used by tests/test_train_resume.py.
#
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=4 bash launch/local_multiprocess.sh --config configs/tiny.py --workdir /tmp/mp
#
# Variables (all optional):
#   NUM_PROCESSES        processes to start (default 2)
#   DEVICES_PER_PROCESS  simulated CPU devices per process (default 4)
#   PORT                 coordinator port on localhost (default 12355)
#   ENTRY                the program (default "python3 -m clap_jax.train"); extra arguments go to it
#   LOG_DIR              per-process logs process_<i>.log (default: a new temp dir, printed)
#   DRY_RUN=1            print the commands instead of running them
# Exits non-zero if any process fails; process 0's log is also shown on the terminal.
set -euo pipefail
NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-4}"
PORT="${PORT:-12355}"
ENTRY="${ENTRY:-python3 -m clap_jax.train}"
LOG_DIR="${LOG_DIR:-$(mktemp -d -t clap_mp.XXXX)}"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  cmd=(env JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS}"
       $ENTRY "$@" --coordinator_address="localhost:${PORT}" --num_processes="${NUM_PROCESSES}" --process_id="$i")
  if [[ "${DRY_RUN:-0}" == "1" ]]; then
    printf '%q ' "${cmd[@]}"; echo "> ${LOG_DIR}/process_${i}.log"
    continue
  fi
  "${cmd[@]}" > "${LOG_DIR}/process_${i}.log" 2>&1 &
  pids+=($!)
done
[[ "${DRY_RUN:-0}" == "1" ]] && exit 0
echo "logs: ${LOG_DIR}"
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed (log: ${LOG_DIR}/process_${i}.log)" >&2
    status=1
  fi
done
cat "${LOG_DIR}/process_0.log"
exit $status
