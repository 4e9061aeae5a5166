"""Input devices through PortAudio: listing them, finding one by index or name, and finding it again.

PortAudio reads the system's device list once, when it starts. A microphone plugged in (or back in)
later is not in that list, and one that came back may have another index and, on Linux, another
card number in its name (``USB PnP Sound Device: Audio (hw:1,0)`` back as ``... (hw:2,0)``; Windows
prefixes ``2-``). :class:`DeviceFinder` finds a device at each reopen:

- PortAudio is restarted (``Pa_Terminate``, ``Pa_Initialize``) so that its list is current. That
  closes every stream of the process, so while other microphones are open it restarts only when a
  fresh process (a short ``python -c``) sees the wanted device where this one does not; the other
  microphones then reopen once (a gap of about a second each, logged). Streams are opened and
  PortAudio restarted under one lock, and a restart closes each stream under that stream's own lock,
  which its polling and closing hold: no thread touches a stream PortAudio has freed, and a stalled
  device that blocks its own close never holds up the other microphones.
- The device opened last is looked for first: by its exact name, then by its name's words
  (:func:`stable_name`). A device given by index is only found again so: the index may now belong to
  another device. A name or part of one is then matched as at the first open; the default device is
  whichever is the default now.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

PORTAUDIO_HINT = ("PortAudio library not found: install it (Debian/Ubuntu: apt-get install libportaudio2; "
                  "Fedora: dnf install portaudio; macOS: brew install portaudio), or stream a file with --input")

PROBE_TIMEOUT = 20.0
"""Seconds a fresh process may take to list the devices."""

_PROBE = """
import json, sounddevice as sd
apis = [api["name"] for api in sd.query_hostapis()]
print(json.dumps([[d["index"], d["name"], apis[d["hostapi"]], d["max_input_channels"], d["default_samplerate"]]
                  for d in sd.query_devices() if d["max_input_channels"] > 0]))
"""

STREAM_LOCK = threading.RLock()
"""Held while a stream is opened or forgotten, while the device list is read, and while PortAudio restarts
(which closes each open stream under that stream's own lock, which its polling and closing hold)."""

_STREAMS: dict[int, Callable[[], None]] = {}
"""The open streams of this process: ``id(owner)`` -> a function that closes it for a restart."""


class AudioDeviceError(RuntimeError):
    """PortAudio is missing, or an input device cannot be found or opened."""


def import_sounddevice():
    """The ``sounddevice`` module, or :class:`AudioDeviceError` telling how to install PortAudio."""
    try:
        import sounddevice
    except OSError as e:  # sounddevice raises OSError('PortAudio library not found') at import
        raise AudioDeviceError(PORTAUDIO_HINT) from e
    return sounddevice


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    hostapi: str
    channels: int
    samplerate: float
    is_default: bool = False

    def describe(self) -> str:
        mark = " (default)" if self.is_default else ""
        return f"{self.index}: {self.name!r} [{self.hostapi}] {self.channels} ch, {self.samplerate:g} Hz{mark}"


def list_input_devices() -> list[InputDevice]:
    """Every device PortAudio can record from (as PortAudio listed them when it last started)."""
    sd = import_sounddevice()
    try:
        default = sd.default.device[0]
        if default is None or default < 0:
            default = sd.query_devices(kind="input")["index"]
    except (sd.PortAudioError, ValueError):
        default = -1
    apis = [api["name"] for api in sd.query_hostapis()]
    return [InputDevice(d["index"], d["name"], apis[d["hostapi"]], d["max_input_channels"],
                        d["default_samplerate"], d["index"] == default)
            for d in sd.query_devices() if d["max_input_channels"] > 0]


def resolve_device(device: str | int | None) -> InputDevice:
    """An input device by index, exact name or unique name substring; ``None`` is the default."""
    return pick_device(list_input_devices(), device)


def stable_name(name: str) -> str:
    """A device's name as its words alone: card, device and enumeration numbers (and their punctuation) change
    on a replug."""
    return " ".join(re.findall(r"[^\W\d_]+", name.lower()))


def pick_device(devices: list[InputDevice], device: str | int | None,
                previous: InputDevice | None = None) -> InputDevice:
    """The device ``device`` names among ``devices``, preferring ``previous`` (the one opened last)."""
    listing = "; ".join(d.describe() for d in devices) or "none"
    if not devices:
        raise AudioDeviceError("no audio input devices found (PortAudio lists none): stream a file with "
                               "--input FILE, or raw audio or a WAV from stdin with --input -")
    if device is None:
        for d in devices:
            if d.is_default:
                return d
        raise AudioDeviceError(f"no default input device; choose one with --device: {listing}")
    key = str(device).strip()
    by_index = key.lstrip("-").isdigit()
    if previous is not None:
        again = _same_device(previous, devices)
        if again is not None:
            return again
        if by_index:  # the index may belong to another device now
            raise AudioDeviceError(f"input device {previous.name!r} (index {key} when opened) is not connected; "
                                   f"input devices: {listing}")
    if by_index:
        found = [d for d in devices if d.index == int(key)]
    else:
        found = [d for d in devices if d.name == key] or [d for d in devices if key.lower() in d.name.lower()]
    if len(found) != 1:
        what = "unknown" if not found else "ambiguous"
        raise AudioDeviceError(f"{what} input device {key!r}; input devices: {listing}")
    return found[0]


def _same_device(previous: InputDevice, devices: list[InputDevice]) -> InputDevice | None:
    """``previous`` in ``devices``: by exact name (the same index first), else by a unique :func:`stable_name`."""
    named = sorted((d for d in devices if d.name == previous.name), key=lambda d: d.index != previous.index)
    if named:
        return named[0]
    similar = [d for d in devices if stable_name(d.name) == stable_name(previous.name)]
    return similar[0] if len(similar) == 1 else None


def opened(owner: object, close_for_restart: Callable[[], None]) -> None:
    """Record an open stream (call with :data:`STREAM_LOCK` held, as it opens)."""
    _STREAMS[id(owner)] = close_for_restart


def closed(owner: object) -> None:
    """Forget a stream that was closed (call with :data:`STREAM_LOCK` held)."""
    _STREAMS.pop(id(owner), None)


def restart_portaudio(reason: str) -> None:
    """Close every open stream (their owners reopen them) and restart PortAudio: its device list is current."""
    sd = import_sounddevice()
    with STREAM_LOCK:
        others = list(_STREAMS.values())
        for close in others:
            close()
        _STREAMS.clear()
        sd._terminate()
        sd._initialize()
    if others:
        log.info("PortAudio restarted (%s): %d other input stream(s) reopen", reason, len(others))
    else:
        log.debug("PortAudio restarted (%s)", reason)


def probe_devices() -> list[InputDevice]:
    """The input devices a fresh process sees now (empty if it cannot tell)."""
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT)
        rows = json.loads(done.stdout) if done.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, ValueError) as e:
        log.debug("listing input devices in a fresh process failed: %s", e)
        return []
    return [InputDevice(*row) for row in rows]


class DeviceFinder:
    """Finds the input device ``device`` names at each call; from the second on, also one plugged in or back
    since PortAudio started (see the module). ``device``: an index, a name or part of one, ``None`` the default."""

    def __init__(self, device: str | int | None):
        self.device = device
        self.found: InputDevice | None = None
        self._calls = 0

    def __call__(self) -> InputDevice:
        previous = self.found if self.device is not None else None
        with STREAM_LOCK:
            others = bool(_STREAMS)
        probed = probe_devices() if self._calls and others else None  # outside the lock: it takes a moment
        with STREAM_LOCK:  # no restart by another finder between the refresh and the listing
            if self._calls:
                self._refresh(previous, probed)
            self._calls += 1
            found = pick_device(list_input_devices(), self.device, previous)
        if previous is not None and (found.index, found.name) != (previous.index, previous.name):
            log.info("input device %r is back as %r (index %d, was %d)", previous.name, found.name,
                     found.index, previous.index)
        self.found = found
        return found

    def _refresh(self, previous: InputDevice | None, probed: list[InputDevice] | None) -> None:
        if not _STREAMS:
            restart_portaudio("to find an input device again")
            return
        if probed is None:  # other streams opened since: the next attempt probes
            return
        # other microphones are open: restart only if that finds the device where the current list does not
        try:
            fresh = pick_device(probed, self.device, previous)
        except AudioDeviceError:
            return
        try:  # the same name in both lists is the same device (its index may differ: it opens by this list's)
            if pick_device(list_input_devices(), self.device, previous).name == fresh.name:
                return
        except AudioDeviceError:
            pass
        restart_portaudio(f"input device {fresh.name!r} appeared")
