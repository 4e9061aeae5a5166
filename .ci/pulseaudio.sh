#!/usr/bin/env bash
# A private PulseAudio daemon with a null sink whose monitor is the default input device, so that a
# headless machine (CI, containers) has a real PortAudio input for the streaming tests.
#
#   eval "$(.ci/pulseaudio.sh start)"   # starts it and prints `export PULSE_SERVER=...` lines
#   .ci/pulseaudio.sh stop
#
# Needs: apt-get install -y libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins
# PortAudio reaches PulseAudio through ALSA's pulse plugin, and scans devices when sounddevice is
# imported: start the daemon and export PULSE_SERVER before any Python process imports it.
set -euo pipefail

RUNTIME_DIR="${AUDIOCLIP_PULSE_DIR:-/tmp/audioclip-pulse}"
SOCKET="$RUNTIME_DIR/native"
SINK="audioclip_null"
export PULSE_SERVER="unix:$SOCKET"
export PULSE_RUNTIME_PATH="$RUNTIME_DIR"

running() { pactl info >/dev/null 2>&1; }

start() {
    for tool in pulseaudio pactl paplay; do
        if ! command -v "$tool" >/dev/null; then
            echo "pulseaudio.sh: $tool not found; apt-get install -y libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins" >&2
            exit 1
        fi
    done
    mkdir -p "$RUNTIME_DIR"
    if ! running; then
        cat > "$RUNTIME_DIR/default.pa" <<PA
load-module module-native-protocol-unix auth-anonymous=1 socket=$SOCKET
load-module module-null-sink sink_name=$SINK rate=44100 channels=2 sink_properties=device.description=audioclip-null-sink
set-default-sink $SINK
set-default-source $SINK.monitor
PA
        # Root may run a per-user daemon when told so (--system=false); -n skips the default script.
        pulseaudio --system=false --daemonize=yes --exit-idle-time=-1 --disallow-exit=yes -n \
            -F "$RUNTIME_DIR/default.pa" --log-target="file:$RUNTIME_DIR/pulse.log" --use-pid-file=yes
        for _ in $(seq 50); do running && break; sleep 0.1; done
        if ! running; then
            echo "pulseaudio.sh: the daemon did not come up; see $RUNTIME_DIR/pulse.log" >&2
            exit 1
        fi
    fi
    echo "export PULSE_SERVER=$PULSE_SERVER"
    echo "export PULSE_RUNTIME_PATH=$PULSE_RUNTIME_PATH"
    echo "export AUDIOCLIP_PULSE_SINK=$SINK"
}

stop() {
    if running; then
        pulseaudio --kill 2>/dev/null || pactl exit 2>/dev/null || true
    fi
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
