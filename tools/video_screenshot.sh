#!/usr/bin/env bash
# A clip baked onto a Rigify rig in Debian's Blender 3.4.1 under Xvfb: build the extension zip,
# install it as a user add-on in a scratch folder, start a backend, press Reconstruct from
# Video on a real clip, bake it onto a generated Rigify rig and save a screenshot. Needs: apt
# install blender xvfb xauth xdotool python3-numpy; ../shared/data.
#   bash tools/video_screenshot.sh [OUT.png] [CLIP]  (default docs/images/blender_video_rigify.png)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-docs/images/blender_video_rigify.png}")
clip=$(realpath "${2:-../shared/data/real_videos/hand_open_close.mp4}")
work=$(mktemp -d)
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python tools/build_extension.py --platforms current --pythons 3.11 --out "$work/hhmr.zip" \
    --wheel-cache dist/wheels
mkdir -p "$work/scripts/addons"
python -m zipfile -e "$work/hhmr.zip" "$work/scripts/addons"
hhmr serve --bind "tcp://127.0.0.1:$port" > "$work/backend.log" 2>&1 &
backend=$!
trap 'kill $backend 2>/dev/null; wait $backend 2>/dev/null; rm -rf "$work"' EXIT
# Blender with Debian's own Python, not this virtualenv's
clean_path=$(echo "$PATH" | tr ':' '\n' | grep -v "^${VIRTUAL_ENV:-/nonexistent}/bin$" | paste -sd:)
env -u VIRTUAL_ENV -u PYTHONPATH PATH="$clean_path" BLENDER_USER_SCRIPTS="$work/scripts" \
    xvfb-run -a -s "-screen 0 1280x800x24" \
    blender --factory-startup -p 0 0 1280 800 --python tools/video_screenshot.py -- \
    --backend "tcp://127.0.0.1:$port" --clip "$clip" --out "$out" || rc=$?
echo "blender exit status ${rc:-0}"
exit "${rc:-0}"
