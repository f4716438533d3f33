#!/usr/bin/env bash
# Run a script in a real Blender window: Debian's Blender 3.4.1 under Xvfb with the add-on
# built into an extension zip and installed as a user add-on in a scratch folder, and a
# backend started on a free loopback port (the script gets --backend ADDRESS first).
#   bash tools/blender_window.sh SCRIPT.py [SCRIPT ARGS...]
# Needs: apt install blender xvfb xauth xdotool python3-numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
script=$1
shift
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
    blender --factory-startup -p 0 0 1280 800 --python "$script" -- \
    --backend "tcp://127.0.0.1:$port" "$@" || rc=$?
echo "blender exit status ${rc:-0}"
exit "${rc:-0}"
