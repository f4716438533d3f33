#!/usr/bin/env bash
# The HHMR panel in Debian's Blender 3.4.1 under Xvfb (tools/blender_window.sh): press
# Reconstruct on a real photo, save a screenshot (and OUT_bent.png: a finger bent by the rig).
# Needs ../shared/data.
#   bash tools/panel_screenshot.sh [OUT.png] [PHOTO] [--timings T.json]
#   (default docs/images/blender_panel.png; --timings writes each press's click-to-shape-keys
#   times and the backend's stages, as weights/eval/click_to_shape_keys.json)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-docs/images/blender_panel.png}")
photo=$(realpath "${2:-../shared/data/real_photos/freihand_style/119.jpg}")
exec bash tools/blender_window.sh tools/blender_screenshot.py --photo "$photo" --out "$out" \
    --n 8 "${@:3}"
