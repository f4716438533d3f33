#!/usr/bin/env bash
# The HHMR panel in Debian's Blender 3.4.1 under Xvfb: build the extension zip, install it as a
# user add-on in a scratch folder, start a backend, press Reconstruct on a real photo, save a
# screenshot (and OUT_bent.png: a finger bent by the rig). Needs: apt install blender xvfb
# xauth xdotool python3-numpy; ../shared/data.
#   bash tools/panel_screenshot.sh [OUT.png] [PHOTO]     (default docs/images/blender_panel.png)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-docs/images/blender_panel.png}")
photo=$(realpath "${2:-../shared/data/real_photos/freihand_style/119.jpg}")
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
    blender --factory-startup -p 0 0 1280 800 --python tools/blender_screenshot.py -- \
    --backend "tcp://127.0.0.1:$port" --photo "$photo" --out "$out" --n 8 || rc=$?
echo "blender exit status ${rc:-0}"
exit "${rc:-0}"
