#!/usr/bin/env bash
# Re-run every measurement behind weights/MODEL_CARD.md and rewrite the card.
# Usage: bash research/evaluate_all.sh   (about an hour on a 2-core CPU)
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
# real photos: every reconstruct mode beside MediaPipe's world landmarks, n=1 and n=16
# (ranked, mean and oracle rows)
for n in 1 16; do
  suffix=$([ "$n" = 1 ] && echo "" || echo "_n$n")
  hhmr evaluate --freihand-root ../shared/data/real_hgcnn_dev --n "$n" --json \
    > "$out/real_hgcnn_dev$suffix.json"
  hhmr evaluate --freihand-root ../shared/data/real_interhand_sample --n "$n" --json \
    > "$out/real_interhand_sample$suffix.json"
done
# image tokens: the prior fine-tuned with rendered hands (not shipped: no gain on real photos,
# docs/photos.md); made by `hhmr train --config configs/image.toml --out runs/image`
if [ -f runs/image/final.pt ]; then
  for set in real_hgcnn_dev real_interhand_sample; do
    hhmr evaluate --freihand-root "../shared/data/$set" --weights runs/image/final.pt --json \
      > "$out/${set}_image.json"
  done
  hhmr evaluate --renders 128 --n 16 --weights runs/image/final.pt --json > "$out/renders_image.json"
  python research/image_encoders.py --json "$out/image_encoders_probe.json"
fi
# the candidate hand with its MCPs at the knuckles (not shipped, docs/photos.md): each run's
# recipe is in the model card; all run with the candidate asset in runs/knuckles_w
for run in prior_knuckles:knuckles knuckles:knucklesft prior_knuckles2:knuckleslong; do
  if [ -f "runs/${run%%:*}/final.pt" ] && [ -d runs/knuckles_w ]; then
    HHMR_WEIGHTS=runs/knuckles_w hhmr evaluate --freihand-root ../shared/data/real_hgcnn_dev \
      --n 1 --weights "runs/${run%%:*}/final.pt" --json > "$out/real_hgcnn_dev_${run#*:}.json"
    HHMR_WEIGHTS=runs/knuckles_w hhmr evaluate --task fit2d --num 30 --seed 0 \
      --weights "runs/${run%%:*}/final.pt" --json > "$out/fit2d_${run#*:}.json"
  fi
done
python research/photo_depth.py --json "$out/photo_depth.json" > /dev/null
python research/joint_convention.py --json "$out/joint_convention.json" > /dev/null
python research/fold_leakage.py --json "$out/fold_leakage.json" > /dev/null
# video: jitter on the real clips beside MediaPipe's, synthetic accuracy and lag, speed, batch
hhmr evaluate --video ../shared/data/real_videos/hand_open_close.mp4 \
  --video ../shared/data/real_videos/signing_fast.mp4 --json > "$out/video.json"
python research/video_smoothing.py > "$out/video_smoothing.json"
hhmr reconstruct-video ../shared/data/real_videos/hand_open_close.mp4 --out /tmp/rv --no-preview \
  --json > "$out/reconstruct_video.json"
hhmr batch ../shared/data/real_videos/hand_open_close.mp4 --engine local --workers 1 \
  --out /tmp/bout_local_1 --json > "$out/batch_local.json"
for w in 1 2; do
  hhmr batch ../shared/data/real_videos/hand_open_close.mp4 --engine ray --workers "$w" \
    --out "/tmp/bout_ray_$w" --json > "$out/batch_ray_$w.json"
done
hhmr bench --json > "$out/bench.json"
hhmr bench --reconstruct ../shared/data/real_photos/freihand_style/119.jpg \
  ../shared/data/real_photos/wild/test2.jpg --json > "$out/reconstruct_bench.json"
hhmr bench --service --faults --json > "$out/service_bench.json"
python research/model_card.py
