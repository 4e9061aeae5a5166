#!/usr/bin/env bash
# System packages only the tests need: real servers the tests start on 127.0.0.1 (Mosquitto, a
# GStreamer RTSP server run by the system python3, ffmpeg serving HTTP streams), the sqlite3 program
# that reads the monitor's database, systemd for `systemd-analyze verify` of deploy/'s unit, and Chromium,
# headless, that the web page's tests drive through Playwright.
# Installed when missing; the user's install (scripts/setup.sh) does not need them. In CI a test
# whose program is missing fails rather than skips (tests/helpers.py, require).
set -euo pipefail
packages="mosquitto ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
          sqlite3 systemd chromium"
missing=$(for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
