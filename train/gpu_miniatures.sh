#!/usr/bin/env bash
# Train the shipped miniature models and the ablation runs on ONE CUDA GPU, all at once, within a time budget.
#
#   bash train/gpu_miniatures.sh OUT_DIR [MINUTES] [STEPS]
#
# OUT_DIR/data/synth{64,128}   the procedural datasets (train/make_synthetic.py, seed 0: the same as the CPU recipe)
# OUT_DIR/runs/<name>/         one train/train_deepfashion.py run folder each (via train/ablation.py train):
#   b1, b2, full, full_aligned, b2_aligned   64x44, preset tiny, the ablation at equal steps (STEPS, default 4000);
#                                    *_aligned: + the RPA-aligned source as UNet input (our addition)
#   full_aligned128                  128x88, preset tiny128, trains until MINUTES (the larger shipped model)
# MINUTES (default 5.5) is the wall-clock budget of the whole script, data generation included: every run stops at
# its step count or when the budget is spent (less a margin for loading and saving), whichever comes first, and
# saves its EMA (ema.safetensors) and a resumable training state (checkpoints/). Logs: OUT_DIR/logs/<name>.log.
# Each run is its own process (the models are small; one process would leave the GPU idle most of the time).
# Set PYTHON to choose the interpreter (default python3) and DEVICE=cpu to smoke-test the script on a CPU.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:?usage: bash train/gpu_miniatures.sh OUT_DIR [MINUTES] [STEPS]}
MINUTES=${2:-5.5}
STEPS=${3:-4000}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
IDS=${TRAIN_IDS:-1500}
mkdir -p "$OUT/data" "$OUT/runs" "$OUT/logs"
DEADLINE=$(awk -v now="$(date +%s)" -v m="$MINUTES" 'BEGIN { printf "%d", now + m * 60 }')
minutes_left() {  # training minutes a run launched now may use: to the deadline, less 45 s to load and save
  awk -v now="$(date +%s)" -v d="$DEADLINE" 'BEGIN { m = (d - now - 45) / 60; printf "%.2f", (m > 0.1 ? m : 0.1) }'
}

gen() {  # gen SIZE NAME
  [ -f "$OUT/data/$2/dataset.json" ] || "$PY" train/make_synthetic.py --out "$OUT/data/$2" --size "$1" \
      --train-ids "$IDS" --test-ids 60 --poses-per-id 4 --seed 0 --quiet > "$OUT/logs/data_$2.log" 2>&1
}
gen 64x44 synth64 &
gen64=$!
gen 128x88 synth128 &
gen128=$!

# one recipe for every 64x44 run (the ablation compares variants, not recipes)
COMMON=(--recipe device="$DEVICE" --recipe preload=true --recipe num-workers=2 --recipe batch-size=32
        --recipe lr=1e-3 --recipe warmup-steps=200 --recipe ema-decay=0.999 --recipe ema-warmup-steps=500
        --recipe log-every=100 --recipe save-every=1000)

run() {  # run NAME DATA STEPS ablation-train-args...
  local name=$1 data=$2 steps=$3
  shift 3
  "$PY" train/ablation.py train --out "$OUT/runs/$name" --data-root "$OUT/data/$data" --steps "$steps" \
      "${COMMON[@]}" --recipe max-minutes="$(minutes_left)" "$@" > "$OUT/logs/$name.log" 2>&1
  echo "[gpu_miniatures] $name finished with status $?" | tee -a "$OUT/logs/$name.log"
}

wait $gen64 || { echo "[gpu_miniatures] 64x44 data generation failed"; cat "$OUT/logs/data_synth64.log"; exit 1; }
pids=()
run b1 synth64 "$STEPS" --variant b1 & pids+=($!)
run b2 synth64 "$STEPS" --variant b2 & pids+=($!)
run full synth64 "$STEPS" --variant full & pids+=($!)
run full_aligned synth64 "$STEPS" --variant full --recipe aligned-source-input=true & pids+=($!)
run b2_aligned synth64 "$STEPS" --variant b2 --recipe aligned-source-input=true & pids+=($!)
wait $gen128 || { echo "[gpu_miniatures] 128x88 data generation failed"; cat "$OUT/logs/data_synth128.log"; }
# the 64x44 estimator judges x̂0 resized to 64 px (its training size) in the guided loss
run full_aligned128 synth128 100000 --variant full --recipe aligned-source-input=true --recipe preset=tiny128 \
    --recipe "size=128 88" --recipe estimator-size=64 & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
for f in "$OUT"/logs/*.log; do echo "== $f"; tail -n 4 "$f"; done
