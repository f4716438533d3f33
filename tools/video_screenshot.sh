#!/usr/bin/env bash
# A clip baked onto a Rigify rig in Debian's Blender 3.4.1 under Xvfb (tools/blender_window.sh):
# press Reconstruct from Video on a real clip, bake it onto a generated Rigify rig and save a
# screenshot. Needs ../shared/data.
#   bash tools/video_screenshot.sh [OUT.png] [CLIP]  (default docs/images/blender_video_rigify.png)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-docs/images/blender_video_rigify.png}")
clip=$(realpath "${2:-../shared/data/real_videos/hand_open_close.mp4}")
exec bash tools/blender_window.sh tools/video_screenshot.py --clip "$clip" --out "$out"
