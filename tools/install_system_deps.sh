#!/usr/bin/env bash
# Debian packages the add-on tests use: Blender 3.4.1 (legacy add-on, `blender -b` batch, GUI
# test), Xvfb + xauth (a virtual screen), xdotool (clicks the sidebar tab), python3-numpy
# (Debian's Blender needs it). Run as root or with sudo.
set -euo pipefail
sudo=""
if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends blender xvfb xauth xdotool python3-numpy \
    > /dev/null
blender --version | head -1
