#!/usr/bin/env bash
# The main job, one command on a fresh machine (2 CPU cores are enough; no downloads besides PyPI):
#   installs everything, builds the built-in synthetic dataset, trains configs/demo.py on 8 simulated CPU devices,
#   evaluates zero-shot on the held-out clips, exports to PyTorch (msclap layout) and prints a report with a plot.
#
#   bash scripts/main.sh                 # -> runs/demo/{data,train,eval,export,report.png,report.md}
#   RUN_DIR=/tmp/x bash scripts/main.sh  # elsewhere
#   QUICK=1 bash scripts/main.sh         # smoke run (runs/demo_quick): 400 clips, 60 steps, no accuracy goal
#   SKIP_SETUP=1 bash scripts/main.sh    # do not run scripts/setup.sh
#   STEPS=600 bash scripts/main.sh       # override the number of training steps
#   SKIP_CAPTION=1 bash scripts/main.sh  # skip the captioner stage (CAPTION_STEPS=N: its training steps)
#
# Besides zero-shot, the held-out clips are scored by a linear probe (5-fold logistic regression on the frozen audio
# embeddings, RUN_DIR/probe) printed beside the zero-shot number of each task.
#
# Idempotent and resumable: a finished dataset is reused, the trainer resumes from RUN_DIR/train's newest checkpoint
# (kill it and rerun), a finished training is not rerun; eval, export and report are always redone (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
QUICK=${QUICK:-0}
if [[ "$QUICK" == 1 ]]; then
  RUN_DIR=${RUN_DIR:-runs/demo_quick}; NUM_TRAIN=${NUM_TRAIN:-400}; NUM_EVAL=${NUM_EVAL:-160}; STEPS=${STEPS:-60}
else
  RUN_DIR=${RUN_DIR:-runs/demo}; NUM_TRAIN=${NUM_TRAIN:-3000}; NUM_EVAL=${NUM_EVAL:-400}; STEPS=${STEPS:-}
fi
SAMPLE_RATE=16000   # = configs/demo.py SAMPLE_RATE (the pipeline rejects records at another rate)
SECONDS_PER_CLIP=2.5
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
DATA="$RUN_DIR/data"
WORK="$RUN_DIR/train"
TIMINGS="$RUN_DIR/timings.tsv"
: > "$TIMINGS"
T_ALL=$(date +%s)
T_STAGE=$T_ALL

banner() {  # banner "N/6 title"
  printf '\n\033[1m==== [%s] %s ====\033[0m\n' "$(date +%H:%M:%S)" "$*"
}
stage_done() {  # stage_done name
  local now; now=$(date +%s)
  printf '%s\t%s\n' "$1" "$((now - T_STAGE))" >> "$TIMINGS"
  echo "---- $1: $((now - T_STAGE)) s"
  T_STAGE=$now
}

banner "1/6 setup (scripts/setup.sh)"
if [[ "${SKIP_SETUP:-0}" == 1 ]]; then
  echo "SKIP_SETUP=1: not installing"
else
  bash scripts/setup.sh
fi
stage_done setup

banner "2/6 built-in dataset -> $DATA ($NUM_TRAIN train / $NUM_EVAL held-out clips, ${SECONDS_PER_CLIP} s at $SAMPLE_RATE Hz)"
STAMP="num_train=$NUM_TRAIN num_eval=$NUM_EVAL seed=0 seconds=$SECONDS_PER_CLIP sr=$SAMPLE_RATE"
if [[ -f "$DATA/.complete" && "$(cat "$DATA/.complete")" == "$STAMP" && -f "$DATA/eval_tasks.json" \
      && -f "$DATA/tfrecords/dataset.json" ]]; then
  echo "already built ($STAMP)"
else
  if [[ -e "$WORK/checkpoints" ]]; then
    echo "note: rebuilding the data under an existing training run; its checkpoints ($WORK) are kept and resumed"
  fi
  rm -rf "$DATA"
  $PY -m clap_jax.data.synthetic --out "$DATA" --num-train "$NUM_TRAIN" --num-eval "$NUM_EVAL" --seed 0 \
    --seconds "$SECONDS_PER_CLIP" --sample-rate "$SAMPLE_RATE" -j "$(nproc)" --quiet
  echo "$STAMP" > "$DATA/.complete"
fi
stage_done data

CONFIG="configs/demo.py:dirs=$DATA/tfrecords${STEPS:+,steps=$STEPS}"
$PY - "${CONFIG#configs/demo.py:}" "$RUN_DIR/run.json" <<'PYEOF'
import json, sys
sys.path.insert(0, "configs")
import demo
c = demo.get_config(sys.argv[1])
a, t = c.model.audio, c.model.text
json.dump({"total_steps": c.total_steps, "batch_size": c.batch_size, "lr": c.optim.lr,
           "clip_seconds": a.duration, "sample_rate": a.sample_rate,
           "audio": f"HTSAT embed_dim {a.embed_dim} depths {tuple(a.depths)} spec {a.spec_size} mel {a.mel_bins}",
           "text": f"GPT-2 {t.n_layer} layers x {t.n_embd}", "d_proj": c.model.d_proj}, open(sys.argv[2], "w"))
PYEOF
TOTAL_STEPS=$($PY -c "import json, sys; print(json.load(open(sys.argv[1]))['total_steps'])" "$RUN_DIR/run.json")
banner "3/6 train $CONFIG ($TOTAL_STEPS steps, 8 simulated CPU devices) -> $WORK"
if [[ -d "$WORK/checkpoints/$TOTAL_STEPS" ]]; then
  echo "already trained to step $TOTAL_STEPS (delete $WORK to retrain)"
else
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=8" JAX_PLATFORMS=cpu \
    $PY -m clap_jax.train --config "$CONFIG" --workdir "$WORK" 2>&1 | tee -a "$RUN_DIR/train.log"
  [[ -d "$WORK/checkpoints/$TOTAL_STEPS" ]] || { echo "training did not reach step $TOTAL_STEPS" >&2; exit 1; }
fi
stage_done train

DURATION=$($PY -c "import json, sys; print(json.load(open(sys.argv[1]))['audio']['duration'])" "$WORK/model_config.json")
banner "4/6 zero-shot eval on the $NUM_EVAL held-out clips (at the model's ${DURATION} s) -> $RUN_DIR/eval"
rm -rf "$RUN_DIR/eval"
JAX_PLATFORMS=cpu $PY -m clap_jax.eval --weights "$WORK" --name demo --data-root "$DATA" --tasks builtin \
  --out "$RUN_DIR/eval" --duration "$DURATION" --no-cache --no-progress
stage_done eval

banner "linear probe: logistic regression on the frozen embeddings of the same held-out clips -> $RUN_DIR/probe"
rm -rf "$RUN_DIR/probe"
JAX_PLATFORMS=cpu $PY -m clap_jax.eval --protocol linear --weights "$WORK" --name demo --data-root "$DATA" \
  --tasks builtin --out "$RUN_DIR/probe" --duration "$DURATION" --no-cache --no-progress 2>&1 | grep "linear acc" || true
stage_done probe

banner "5/6 export to PyTorch (msclap state dict) -> $RUN_DIR/export"
mkdir -p "$RUN_DIR/export"
JAX_PLATFORMS=cpu $PY -m clap_jax.convert jax-to-msclap --overwrite "$WORK" "$RUN_DIR/export/clap_demo.pth"
stage_done export

banner "captioner: configs/clapcap.py:demo on the same data, audio encoder + GPT-2 from $WORK -> $RUN_DIR/caption"
if [[ "${SKIP_CAPTION:-0}" == 1 ]]; then
  echo "SKIP_CAPTION=1: no captioner"
else
  CAP_STEPS=${CAPTION_STEPS:-$([[ "$QUICK" == 1 ]] && echo 40 || echo 300)}
  CAP_CONFIG="configs/clapcap.py:demo,dirs=$DATA/tfrecords,clap=$WORK,text_from=$WORK,train_gpt,steps=$CAP_STEPS"
  if [[ -d "$RUN_DIR/caption/checkpoints/$CAP_STEPS" ]]; then
    echo "already trained to step $CAP_STEPS (delete $RUN_DIR/caption to retrain)"
  else
    XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=8" JAX_PLATFORMS=cpu \
      $PY -m clap_jax.train --config "$CAP_CONFIG" --workdir "$RUN_DIR/caption" 2>&1 | tee -a "$RUN_DIR/caption.log"
    [[ -d "$RUN_DIR/caption/checkpoints/$CAP_STEPS" ]] || { echo "captioner did not reach step $CAP_STEPS" >&2; exit 1; }
  fi
  JAX_PLATFORMS=cpu $PY -m clap_jax.eval.caption_demo --weights "$RUN_DIR/caption" --data-root "$DATA" \
    --out "$RUN_DIR/caption_eval"
fi
stage_done caption

banner "6/6 report"
printf 'total\t%s\n' "$(($(date +%s) - T_ALL))" >> "$TIMINGS"
$PY -m clap_jax.eval.demo_report "$RUN_DIR"
echo
echo "plot:   $RUN_DIR/report.png"
echo "report: $RUN_DIR/report.md   (full eval: $RUN_DIR/eval/report.md)"
echo "total wall time: $(( ($(date +%s) - T_ALL) / 60 )) min $(( ($(date +%s) - T_ALL) % 60 )) s"
