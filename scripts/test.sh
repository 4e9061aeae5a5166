#!/usr/bin/env bash
# Lint, then run the test suite. Installs the Debian packages the tests need (scripts/test-deps.sh)
# and starts a PulseAudio null sink so that the microphone tests have a real input device; in CI
# (CI=true) those tests are required, elsewhere they skip without a device.
# Quick loop while editing: scripts/test.sh -m "not slow" (CI runs everything).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
bash scripts/test-deps.sh
if pulse_env=$(bash .ci/pulseaudio.sh start); then
    eval "$pulse_env"
else
    echo "PulseAudio could not be started: device tests will skip (and fail in CI)" >&2
fi
if [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; then
    export AUDIOCLIP_REQUIRE_DEVICE=1
fi
exec .venv/bin/python -m pytest -q "$@"
