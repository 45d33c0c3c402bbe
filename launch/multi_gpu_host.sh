#!/usr/bin/env bash
# One host with several GPUs: a single process drives every local GPU (no jax.distributed, no cluster manager).
#
#   WORKDIR=/data/runs/clap1 CONFIG=configs/clap_2023.py:dirs=/data/tfr/audiocaps,dirs=/data/tfr/clotho \
#     bash launch/multi_gpu_host.sh start      # detached (survives logout); log: logs/RUN.log
#   bash launch/multi_gpu_host.sh status       # running (pid, last step line) or exited (exit code)
#   bash launch/multi_gpu_host.sh logs         # follow the log
#   bash launch/multi_gpu_host.sh stop         # SIGTERM: the trainer saves a checkpoint and exits (SIGKILL after GRACE s)
#   bash launch/multi_gpu_host.sh run          # in the foreground instead (the log is written too)
#
# Resume: `start` again with the same WORKDIR. JAX_PLATFORMS=cuda: without a working CUDA jax
# (scripts/setup_gpu.sh) the run fails instead of training on the CPU. CUDA_VISIBLE_DEVICES picks the GPUs.
#
# Variables:
#   WORKDIR    (required) run directory (or gs:// / s3://); resumes automatically
#   CONFIG     config file[:args] (default configs/clap_2023.py)
#   EXTRA      extra trainer flags
#   ENTRY      the program after the interpreter (default "-m clap_jax.train")
#   PYTHON     the interpreter (default python3)
#   PLATFORMS  JAX_PLATFORMS (default cuda)
#   LOG_DIR    log and pid files (default logs/ under this checkout); RUN: their name (default train)
#   GRACE      seconds `stop` waits for the save before SIGKILL (default 300)
#   DRY_RUN=1  print the command instead of running it
set -euo pipefail
cmd="${1:-run}"
cd "$(dirname "$0")/.."
CONFIG="${CONFIG:-configs/clap_2023.py}"
EXTRA="${EXTRA:-}"
ENTRY="${ENTRY:--m clap_jax.train}"
PYTHON="${PYTHON:-python3}"
LOG_DIR="${LOG_DIR:-$PWD/logs}"
RUN="${RUN:-train}"
GRACE="${GRACE:-300}"
LOG="$LOG_DIR/$RUN.log" PIDF="$LOG_DIR/$RUN.pid"
alive() { [[ -f "$PIDF" ]] && kill -0 "$(cat "$PIDF")" 2> /dev/null; }
program() {
  : "${WORKDIR:?set WORKDIR}"
  read -r -a extra <<< "$EXTRA"
  read -r -a entry <<< "$ENTRY"
  export JAX_PLATFORMS="${PLATFORMS:-cuda}" PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
  prog=("$PYTHON" "${entry[@]}" --config "$CONFIG" --workdir "$WORKDIR" --distributed=none "${extra[@]}")
  if [[ "${DRY_RUN:-0}" == "1" ]]; then echo "JAX_PLATFORMS=$JAX_PLATFORMS $(printf '%q ' "${prog[@]}")"; exit 0; fi
  mkdir -p "$LOG_DIR"
  echo "=== $(date -u +%FT%TZ) $(hostname): ${prog[*]}" >> "$LOG"
}
case "$cmd" in
  run)
    program
    "${prog[@]}" 2>&1 | tee -a "$LOG"
    exit "${PIPESTATUS[0]}"
    ;;
  start)
    if alive; then echo "error: run '$RUN' is still running (pid $(cat "$PIDF")): stop it first" >&2; exit 1; fi
    program
    setsid nohup "${prog[@]}" >> "$LOG" 2>&1 < /dev/null &
    echo $! > "$PIDF"
    echo "started (pid $!), log $LOG"
    ;;
  status)
    last=$(grep -E '(^| )step [0-9]+' "$LOG" 2> /dev/null | tail -1 | cut -c1-160 || true)
    if alive; then echo "running (pid $(cat "$PIDF")) $last"; else echo "not running $last"; fi
    ;;
  logs) exec tail -n 40 -F "$LOG" ;;
  stop)
    if alive; then
      pid=$(cat "$PIDF")
      kill -TERM "$pid"
      for ((i = 0; i < GRACE * 5; i++)); do alive || break; sleep 0.2; done
      if alive; then echo "still running after ${GRACE}s: SIGKILL"; kill -KILL -- "-$pid" 2> /dev/null || true; fi
    fi
    echo "stopped"
    ;;
  *) echo "error: unknown command '$cmd' (run, start, status, logs, stop)" >&2; exit 2 ;;
esac
