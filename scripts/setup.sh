#!/usr/bin/env bash
# Set up audioclip-stream on a fresh Debian/Ubuntu machine: system libraries, a virtual
# environment in .venv, torch, and the package with its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-venv: `python3 -m venv` below; a fresh Debian/Ubuntu has python3 without it
packages="python3-venv libportaudio2 libsndfile1 pulseaudio pulseaudio-utils libasound2-plugins"
missing=$(for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned, so that nothing pulls a multi-GB CUDA build on a CPU machine where the
# CPU wheel is at hand; on a GPU machine pip takes the CUDA build of the same version.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev,archive,web,openvino,eval]"
echo "audioclip-stream is installed in .venv: . .venv/bin/activate"
