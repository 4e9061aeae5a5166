#!/usr/bin/env bash
# System packages only the tests need (real servers the tests start on 127.0.0.1): Mosquitto, a
# GStreamer RTSP server run by the system python3, and ffmpeg serving HTTP streams. Installed when
# missing; the user's install (scripts/setup.sh) does not need them.
set -euo pipefail
packages="mosquitto ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good"
missing=$(for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
