#!/usr/bin/env bash
# Train on Cloud TPU VMs: one slice (a pod slice or a single host) or several slices over DCN (queued resources).
# Runs on your workstation and drives every worker with `gcloud compute tpus tpu-vm ssh/scp`.
#
#   export TPU_NAME=clap-v5p-64 ZONE=us-east5-a ACCELERATOR=v5p-64 RUNTIME=v2-alpha-tpuv5
#   export WORKDIR=gs://my-bucket/runs/clap1 CONFIG=configs/clap_2023.py:fsdp
#   bash launch/tpu_pod.sh create     # the slice (NUM_SLICES>1 or QUEUED=1: a queued resource)
#   bash launch/tpu_pod.sh setup      # ship this checkout (an archive, no .git / runs/), build the venv
#   bash launch/tpu_pod.sh launch     # start the trainer on every worker, detached; a log per worker
#   bash launch/tpu_pod.sh status     # per worker: running (pid, last step line) or exited (exit code)
#   bash launch/tpu_pod.sh logs       # the last LINES lines of every worker's log (FOLLOW=1: follow worker 0)
#   bash launch/tpu_pod.sh stop       # SIGTERM (the trainer saves), SIGKILL after GRACE s, free the TPU
#   bash launch/tpu_pod.sh delete     # delete the slice / queued resource
#
# Resume: `launch` again with the same WORKDIR (after a preemption: `create` again if the slice is gone, then
# `setup` and `launch`). The trainer saves on SIGTERM and a relaunch resumes from the latest checkpoint.
#
# Variables:
#   TPU_NAME     (required) slice name; with NUM_SLICES>1 the queued resource's name and its nodes' prefix
#                (nodes TPU_NAME-0 ... TPU_NAME-<NUM_SLICES-1>)
#   ZONE         (required) zone
#   PROJECT      GCP project (default: gcloud's configured one)
#   ACCELERATOR  accelerator type for `create`, e.g. v5p-64, v4-32, v6e-16
#   RUNTIME      TPU VM software version for `create`, e.g. v2-alpha-tpuv5 (v5p), tpu-ubuntu2204-base (v4),
#                v2-alpha-tpuv6e (v6e), v2-alpha-tpuv5-lite (v5e)
#   NUM_SLICES   slices (default 1); >1 uses a queued resource (--node-count) and a hybrid mesh: the trainer gets
#                --config.mesh.dcn_data=NUM_SLICES (data parallel across slices, FSDP/tensor within a slice)
#   QUEUED=1     create even one slice as a queued resource; SPOT=1: spot capacity
#   WORKDIR      (required for launch) run directory every worker can write (gs://... or a shared mount)
#   CONFIG       config file[:args] (default configs/clap_2023.py:fsdp)
#   EXTRA        extra trainer flags, e.g. "--config.optim.lr=3e-4"
#   ENTRY        the program after the venv's python (default "-m clap_jax.train")
#   REMOTE_DIR   code directory on the workers, relative to the remote home (default clap_jax)
#   VENV         venv on the workers, relative to the remote home (default clap_venv)
#   PYTHON_VERSION  the venv's Python (default 3.11; jax 0.10 needs >= 3.11, the TPU VM images ship 3.10, so
#                uv installs its own build)
#   RUN          run name: the log is ~/clap_logs/RUN.log on each worker (default train)
#   LINES        lines per worker for `logs` (default 40); FOLLOW=1 follows worker 0's log
#   GRACE        seconds `stop` waits after SIGTERM before SIGKILL (default 120: the trainer's save)
#   DRY_RUN=1    print the gcloud commands instead of running them
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
cmd="${1:-}"
[[ "$cmd" == "-h" || "$cmd" == "--help" ]] && { usage; exit 0; }
[[ -z "$cmd" ]] && { usage >&2; exit 2; }
shift
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
NUM_SLICES="${NUM_SLICES:-1}"
CONFIG="${CONFIG:-configs/clap_2023.py:fsdp}"
EXTRA="${EXTRA:-}"
ENTRY="${ENTRY:--m clap_jax.train}"
REMOTE_DIR="${REMOTE_DIR:-clap_jax}"
VENV="${VENV:-clap_venv}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
RUN="${RUN:-train}"
LINES="${LINES:-40}"
GRACE="${GRACE:-120}"
G=(gcloud compute tpus)
LOC=(--zone "$ZONE")
[[ -n "${PROJECT:-}" ]] && LOC+=(--project "$PROJECT")
cd "$(dirname "$0")/.."

run() {
  if [[ "${DRY_RUN:-0}" == "1" ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

nodes() {  # the TPU VMs (one per slice)
  if [[ "$NUM_SLICES" -gt 1 ]]; then
    for ((s = 0; s < NUM_SLICES; s++)); do echo "${TPU_NAME}-${s}"; done
  else
    echo "$TPU_NAME"
  fi
}

num_workers() {  # hosts of a node: its network endpoints
  if [[ "${DRY_RUN:-0}" == "1" ]]; then echo "${DRY_RUN_WORKERS:-1}"; return; fi
  local ips
  ips=$("${G[@]}" tpu-vm describe "$1" "${LOC[@]}" --format='value(networkEndpoints[].ipAddress)')
  ips="${ips//;/ }"; ips="${ips//,/ }"
  local n=0; for _ in $ips; do n=$((n + 1)); done
  [[ "$n" -gt 0 ]] || { echo "error: $1: no workers (is it READY? gcloud compute tpus tpu-vm describe $1)" >&2; exit 1; }
  echo "$n"
}

on_all() {  # on_all COMMAND: run a shell command on every worker of every node, in parallel; fail if any fails
  local pids=() node status=0
  for node in $(nodes); do
    run "${G[@]}" tpu-vm ssh "$node" "${LOC[@]}" --worker=all --command "$1" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  return $status
}

on_each() {  # on_each FUNCTION: FUNCTION NODE SLICE WORKER prints the command for that worker; all run in
  # parallel (a big pod's workers must all start within jax.distributed's timeout), outputs shown in worker order
  local node s=0 n w i=0 pids=() status=0 out
  out=$(mktemp -d)
  for node in $(nodes); do
    n=$(num_workers "$node")
    for ((w = 0; w < n; w++)); do
      run "${G[@]}" tpu-vm ssh "$node" "${LOC[@]}" --worker="$w" --command "$("$1" "$node" "$s" "$w")" \
        > "$out/$i" 2>&1 &
      pids+=($!); i=$((i + 1))
    done
    s=$((s + 1))
  done
  for ((w = 0; w < i; w++)); do
    wait "${pids[$w]}" || status=1
    cat "$out/$w"
  done
  rm -rf "$out"
  return $status
}

label() {  # a worker's name in outputs: its index, "slice/index" with several slices
  if [[ "$NUM_SLICES" -gt 1 ]]; then echo "$1/$2"; else echo "$2"; fi
}

worker_cmd() {  # worker_cmd ARGS...: the remote worker script with its settings
  local q
  q=$(printf '%q ' "$@")
  local env="REMOTE_DIR=$(printf %q "$REMOTE_DIR") VENV=$(printf %q "$VENV") RUN=$(printf %q "$RUN")"
  [[ -n "${ACCEL_DEVICES:-}" ]] && env+=" ACCEL_DEVICES=$(printf %q "$ACCEL_DEVICES")"
  [[ -n "${LIBTPU_LOCKFILE:-}" ]] && env+=" LIBTPU_LOCKFILE=$(printf %q "$LIBTPU_LOCKFILE")"
  echo "$env bash \"\$HOME/$REMOTE_DIR/launch/tpu_vm_worker.sh\" $q"
}

case "$cmd" in
  create)
    : "${ACCELERATOR:?set ACCELERATOR (e.g. v5p-64)}" "${RUNTIME:?set RUNTIME (e.g. v2-alpha-tpuv5)}"
    spot=(); [[ "${SPOT:-0}" == "1" ]] && spot=(--spot)
    if [[ "$NUM_SLICES" -gt 1 || "${QUEUED:-0}" == "1" ]]; then
      # one node per slice, named TPU_NAME-<i>; the TPU runtime sets MEGASCALE_* (slice ids, DCN coordinator)
      run "${G[@]}" queued-resources create "$TPU_NAME" "${LOC[@]}" --accelerator-type "$ACCELERATOR" \
        --runtime-version "$RUNTIME" --node-count "$NUM_SLICES" --node-prefix "$TPU_NAME" "${spot[@]}"
      echo "queued; wait for ACTIVE: gcloud compute tpus queued-resources describe $TPU_NAME --zone $ZONE"
    else
      run "${G[@]}" tpu-vm create "$TPU_NAME" "${LOC[@]}" --accelerator-type "$ACCELERATOR" \
        --version "$RUNTIME" "${spot[@]}"
    fi
    ;;
  setup)
    # The code as an archive: tracked and untracked-but-not-ignored files (the working tree you see), never .git
    # or runs/; every worker gets the same bytes.
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    archive="$tmp/clap_jax_code.tgz"
    if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
      git ls-files -z --cached --others --exclude-standard | grep -zv '^runs/' \
        | xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' _ \
        | tar -czf "$archive" --null -T -
    else
      tar -czf "$archive" --exclude=.git --exclude=./runs --exclude=__pycache__ .
    fi
    echo "code archive: $(du -h "$archive" | cut -f1) $archive"
    for node in $(nodes); do
      run "${G[@]}" tpu-vm scp "$archive" "${node}:clap_jax_code.tgz" "${LOC[@]}" --worker=all &
    done
    wait
    q_dir=$(printf %q "$REMOTE_DIR")
    on_all "set -e; cd \$HOME && rm -rf $q_dir && mkdir -p $q_dir && tar -xzf clap_jax_code.tgz -C $q_dir \
&& rm -f clap_jax_code.tgz && VENV=$(printf %q "$VENV") PYTHON_VERSION=$PYTHON_VERSION bash $q_dir/launch/tpu_vm_setup.sh"
    ;;
  launch)
    : "${WORKDIR:?set WORKDIR}"
    dcn=(); [[ "$NUM_SLICES" -gt 1 ]] && dcn=(--config.mesh.dcn_data="$NUM_SLICES")
    read -r -a extra <<< "$EXTRA"
    read -r -a entry <<< "$ENTRY"
    launch_one() {
      worker_cmd start "$(label "$2" "$3")" "${entry[@]}" --config "$CONFIG" --workdir "$WORKDIR" --distributed=force \
        "${dcn[@]}" "${extra[@]}"
    }
    on_each launch_one
    echo "started; watch: bash $0 status | bash $0 logs"
    ;;
  status) status_one() { worker_cmd status "$(label "$2" "$3")"; }; on_each status_one ;;
  logs)
    if [[ "${FOLLOW:-0}" == "1" ]]; then
      run "${G[@]}" tpu-vm ssh "$(nodes | head -1)" "${LOC[@]}" --worker=0 --command "$(worker_cmd follow 0)"
    else
      logs_one() { worker_cmd logs "$(label "$2" "$3")" "$LINES"; }; on_each logs_one
    fi
    ;;
  stop) on_all "$(worker_cmd stop "$GRACE")" ;;
  delete)
    if [[ "$NUM_SLICES" -gt 1 || "${QUEUED:-0}" == "1" ]]; then
      run "${G[@]}" queued-resources delete "$TPU_NAME" "${LOC[@]}" --force --quiet
    else
      run "${G[@]}" tpu-vm delete "$TPU_NAME" "${LOC[@]}" --quiet
    fi
    ;;
  *) echo "error: unknown command '$cmd' (create, setup, launch, status, logs, stop, delete)" >&2; exit 2 ;;
esac
