#!/usr/bin/env bash
# Re-run every measurement behind weights/MODEL_CARD.md and rewrite the card.
# Usage: bash research/evaluate_all.sh   (about 20 minutes on a 2-core CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
out=weights/eval
mkdir -p "$out"
hhmr evaluate --task generate --num 64 --seed 0 --json > "$out/generate.json"
hhmr evaluate --task inpaint --num 20 --n 4 --seed 0 --json > "$out/inpaint.json"
hhmr evaluate --task refit3d --num 30 --seed 0 --json > "$out/refit3d.json"
hhmr evaluate --task refit3d_finger --num 50 --n 8 --seed 0 --json > "$out/refit3d_finger.json"
hhmr evaluate --task pose --num 64 --seed 0 --json > "$out/pose.json"
hhmr evaluate --task fit2d --num 30 --seed 0 --json > "$out/fit2d.json"
hhmr evaluate --task sweep --num 8 --seed 0 --json > "$out/sweep_min_of_n.json"
hhmr evaluate --freihand-root ../shared/data/real_interhand_sample --n 4 --json \
  > "$out/real_interhand_sample.json"
hhmr bench --json > "$out/bench.json"
hhmr bench --service --json > "$out/service_bench.json"
python research/model_card.py
