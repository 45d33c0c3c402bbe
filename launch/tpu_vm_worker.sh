#!/usr/bin/env bash
# The worker side of launch/tpu_pod.sh, run on each TPU VM host over ssh (also usable by hand on a host):
#
#   bash launch/tpu_vm_worker.sh start WORKER PROGRAM_ARGS...   start `$VENV/bin/python PROGRAM_ARGS...` detached
#   bash launch/tpu_vm_worker.sh status WORKER                  running (pid, last step line) / exited (code)
#   bash launch/tpu_vm_worker.sh logs WORKER [LINES]            the log's last LINES lines (default 40)
#   bash launch/tpu_vm_worker.sh follow WORKER                  tail -f the log
#   bash launch/tpu_vm_worker.sh stop [GRACE]                   SIGTERM the run, SIGKILL after GRACE s (default
#                                                                120), then end any process still holding the TPU
#
# The run lives in its own session (setsid + nohup): it survives the ssh connection. Files, in ~/clap_logs:
# RUN.log (stdout + stderr), RUN.pid (its process group), RUN.rc (exit code once it ended).
# Variables: REMOTE_DIR (code, relative to $HOME; default clap_jax), VENV (default clap_venv), RUN (default
# train), ACCEL_DEVICES (the device files whose holders `stop` ends; default /dev/accel* /dev/vfio/[0-9]*),
# LIBTPU_LOCKFILE (removed by `stop` once nothing holds the TPU; default /tmp/libtpu_lockfile).
set -euo pipefail
REMOTE_DIR="${REMOTE_DIR:-clap_jax}"
VENV="${VENV:-clap_venv}"
RUN="${RUN:-train}"
LOGS="$HOME/clap_logs"
LOG="$LOGS/$RUN.log" PIDF="$LOGS/$RUN.pid" RCF="$LOGS/$RUN.rc"
cmd="${1:?usage: tpu_vm_worker.sh start|status|logs|follow|stop ...}"
shift
mkdir -p "$LOGS"

alive() {  # a process of the run's group still there (zombies waiting for a reaper do not count)
  [[ -f "$PIDF" ]] || return 1
  local pg line rest f
  pg=$(cat "$PIDF")
  kill -0 -- "-$pg" 2> /dev/null || return 1
  for f in /proc/[0-9]*/stat; do
    read -r line < "$f" 2> /dev/null || continue
    rest="${line##*) }"
    read -r -a rest <<< "$rest"   # state ppid pgrp ...
    [[ "${rest[2]}" == "$pg" && "${rest[0]}" != "Z" ]] && return 0
  done
  return 1
}

holders() {  # pids of this machine's processes with one of ACCEL_DEVICES open (from /proc: no lsof needed)
  local devs=() d fd pid target
  # shellcheck disable=SC2206
  for d in ${ACCEL_DEVICES:-/dev/accel* /dev/vfio/[0-9]*}; do [[ -e "$d" ]] && devs+=("$(readlink -f "$d")"); done
  [[ ${#devs[@]} -gt 0 ]] || return 0
  for fd in /proc/[0-9]*/fd/*; do
    target=$(readlink "$fd" 2> /dev/null) || continue
    for d in "${devs[@]}"; do
      if [[ "$target" == "$d" ]]; then pid="${fd#/proc/}"; echo "${pid%%/*}"; fi
    done
  done | sort -u | grep -vx "$$" || true
}

case "$cmd" in
  start)
    worker="$1"; shift
    if alive; then
      echo "worker $worker: error: run '$RUN' is still running (process group $(cat "$PIDF")): stop it first" >&2
      exit 1
    fi
    cd "$HOME/$REMOTE_DIR"
    rm -f "$RCF"
    echo "=== $(date -u +%FT%TZ) worker $worker: $VENV/bin/python $*" >> "$LOG"
    # _run: the program as a child that gets SIGTERM forwarded, and its exit code written when it ends
    setsid nohup bash "$0" _run "$@" >> "$LOG" 2>&1 < /dev/null &
    echo $! > "$PIDF"
    echo "worker $worker: started (process group $!), log $LOG"
    ;;
  _run)
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    "$HOME/$VENV/bin/python" "$@" &
    child=$!
    trap 'trapped=1; kill -TERM "$child" 2> /dev/null || true' TERM INT HUP
    while true; do  # a trapped signal cuts `wait` short: wait again for the child's own exit code
      trapped=0; rc=0; wait "$child" || rc=$?
      [[ "$trapped" == "1" ]] || break
    done
    echo "$rc" > "$RCF"
    echo "=== $(date -u +%FT%TZ) exited with code $rc"
    exit "$rc"
    ;;
  status)
    worker="$1"
    last=$(grep -E '(^| )step [0-9]+' "$LOG" 2> /dev/null | tail -1 | cut -c1-160 || true)
    if [[ -f "$RCF" ]]; then  # (its wrapper may still be writing the last line)
      echo "worker $worker: exited with code $(cat "$RCF") ${last}"
    elif alive; then
      echo "worker $worker: running (process group $(cat "$PIDF")) ${last}"
    elif [[ -f "$PIDF" ]]; then
      echo "worker $worker: gone without an exit code (killed?) ${last}"
    else
      echo "worker $worker: not started"
    fi
    ;;
  logs)
    echo "===== worker $1: $LOG"
    tail -n "${2:-40}" "$LOG" 2> /dev/null || echo "(no log)"
    ;;
  follow) exec tail -n 40 -F "$LOG" ;;
  stop)
    grace="${1:-120}"
    if alive; then
      pg=$(cat "$PIDF")
      kill -TERM -- "-$pg" 2> /dev/null || true
      for ((i = 0; i < grace * 5; i++)); do alive || break; sleep 0.2; done
      if alive; then echo "$(hostname): run still there after ${grace}s: SIGKILL"; kill -KILL -- "-$pg" 2> /dev/null || true; fi
      for ((i = 0; i < 50; i++)); do alive || break; sleep 0.1; done
    fi
    stale=$(holders)
    if [[ -n "$stale" ]]; then  # e.g. a crashed run's leftovers: a new run would find the TPU busy
      echo "$(hostname): ending processes holding the TPU: $(echo $stale)"
      kill -TERM $stale 2> /dev/null || true
      sleep 2
      stale=$(holders)
      [[ -n "$stale" ]] && { kill -KILL $stale 2> /dev/null || true; sleep 0.5; }
      stale=$(holders)
      [[ -n "$stale" ]] && { echo "$(hostname): still holding the TPU (another user? try sudo kill): $(echo $stale)" >&2; exit 1; }
    fi
    rm -f "${LIBTPU_LOCKFILE:-/tmp/libtpu_lockfile}" 2> /dev/null || true  # a killed run's: libtpu would not start
    echo "$(hostname): stopped"
    ;;
  *) echo "error: unknown command '$cmd'" >&2; exit 2 ;;
esac
