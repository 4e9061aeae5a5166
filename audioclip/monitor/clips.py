"""Event clips: each event's audio, with some before and after it, as a 44.1 kHz mono FLAC file.

A :class:`ClipRecorder` keeps, per source, the last ``pre_roll + max_seconds + post_roll +
settle`` seconds of the 44.1 kHz stream in a ring of 16-bit samples (about 5.7 MB per source with
the defaults), and writes a requested clip once the stream has passed its end. One thread owns a
recorder (the clip sink's); nothing here is shared between threads.

- A clip covers ``[start_s - pre_roll, end_s + post_roll)`` of the stream. It is capped at
  ``max_seconds`` by keeping its start and cutting its end; for an event longer than the history,
  request it at its start (``end_s=None``) so its beginning is still there when it is written.
- Privacy: :meth:`ClipRecorder.mute` zeroes a time range. The recorder waits ``settle`` seconds of
  stream past a clip's end before writing it, so that the mutes of its last windows (which arrive
  after they are classified) land first; with ``hold`` (the monitor passes its window length) it
  also waits until :meth:`classified` says every window that overlaps the clip has been classified,
  however far inference lags. A mute that still comes late rewrites the recent clips it overlaps.
  Muted audio never stays in a clip, and a clip that holds some says so: its result's ``reason``
  reads ``muted for privacy: 3.00 s of 7.50 s`` (again, for a late mute, as a new result).
- A source that goes down or ends: :meth:`ClipRecorder.cut` writes its pending clips at once with
  the audio up to there (their post-roll would never come, or would be the silence of a gap).
- Files are written under ``root/<source>/<YYYY-MM-DD>/<HH-MM-SS>_<label>_<id>.flac`` (UTC; names
  reduced to safe characters), to a temporary name in the same folder, flushed and renamed: a
  crash or a full disk leaves either the whole clip or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import re
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf

from ..files import atomic_write
from ..model.constants import SAMPLE_RATE

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
STALE_TEMP_SECONDS = 3600.0
RECENT_CLIPS = 64  # written clips per source that a late mute can still reach
NO_AUDIO = "no audio of the event in the history"
LATE_MUTE_FAILED = "deleted: a late privacy mute could not be applied"
PRIVACY_MUTED = "muted for privacy"


class ClipResult(NamedTuple):
    """A finished request: the clip's path, or ``None`` and why not. ``reason`` is ``"ok"`` for a whole clip."""

    event_id: int
    path: str | None
    reason: str

    @property
    def note(self) -> str | None:
        """What a person should know about the clip (the ``clip_note`` column): None for a whole clip with
        nothing muted, else the reason."""
        return None if self.reason == "ok" else self.reason

    @property
    def cause(self) -> str | None:
        """Why a clip was not written, in a word (None: it was): ``no_audio`` (none of the event's audio was in
        the history), ``late_mute_failed`` (deleted: a late privacy mute could not be applied) or
        ``write_failed`` (the file could not be written)."""
        if self.path is not None:
            return None
        if self.reason == NO_AUDIO:
            return "no_audio"
        return "late_mute_failed" if self.reason.startswith(LATE_MUTE_FAILED) else "write_failed"


class ClipFolderError(ValueError):
    """The clip folder cannot be written."""


def check_writable(root: str | Path) -> Path:
    """Create ``root`` if needed and prove a file can be written in it; return its absolute path."""
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise ClipFolderError(f"{root}: clip folder is a file, not a folder; set [store] clips to a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-check-", suffix=TEMP_SUFFIX):
            pass
    except OSError as e:
        raise ClipFolderError(f"{root}: clip folder is not writable ({e.strerror or e}); "
                              "fix its permissions or set [store] clips to another folder") from e
    return root.resolve()


def safe_name(text: str, limit: int = 60) -> str:
    """``text`` as a file name part: letters, digits, ``-`` and ``_``; a short hash tells altered names apart."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:limit]
    if name == text and name:
        return name
    return f"{name or 'x'}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def write_atomic(path: Path, data: np.ndarray, sample_rate: int) -> None:
    """Encode ``data`` (int16 mono) as FLAC and put it at ``path`` durably (:func:`~audioclip.files.atomic_write`:
    a fsynced temporary ``.NAME.*.tmp`` beside it, then a rename)."""
    encoded = io.BytesIO()
    sf.write(encoded, data, sample_rate, format="FLAC", subtype="PCM_16")
    atomic_write(path, lambda f: f.write(encoded.getbuffer()))


class _History:
    """The last ``capacity`` samples of one source; sample ``k`` of the stream lives at ``k % capacity``."""

    def __init__(self, capacity: int, start: int):
        self.capacity = capacity
        self.data = np.zeros(capacity, np.int16)
        self.origin = self.end = start  # samples [origin, end) were pushed since the last reset
        self.pending_mutes: list[tuple[int, int]] = []  # ranges reaching past ``end``
        self.muted: list[tuple[int, int]] = []  # privacy mutes, disjoint and sorted, as far back as a clip reaches
        # (event_id, lo, hi, path, its notes but the mute's) of the recent clips a late mute can still reach
        self.written: deque[tuple[int, int, int, Path, list[str]]] = deque(maxlen=RECENT_CLIPS)

    @property
    def oldest(self) -> int:
        return max(self.origin, self.end - self.capacity)

    def _span(self, lo: int, hi: int):
        """Slices of ``data`` holding stream samples ``[lo, hi)`` (at most ``capacity`` long)."""
        i, n = lo % self.capacity, hi - lo
        first = min(n, self.capacity - i)
        return slice(i, i + first), slice(0, n - first)

    def append(self, block: np.ndarray) -> None:
        if len(block) > self.capacity:
            self.end += len(block) - self.capacity
            block = block[-self.capacity:]
        a, b = self._span(self.end, self.end + len(block))
        self.data[a] = block[:a.stop - a.start]
        self.data[b] = block[a.stop - a.start:]
        self.end += len(block)
        mutes, self.pending_mutes = self.pending_mutes, []
        for lo, hi in mutes:
            self.mute(lo, hi, record=False)
        reach = min([self.oldest, *(lo for _, lo, _, _, _ in self.written)])
        self.muted = [(lo, hi) for lo, hi in self.muted if hi > reach]

    def mute(self, lo: int, hi: int, *, record: bool = True) -> None:
        """Zero samples ``[lo, hi)``, now and as they come; ``record``: a privacy mute that clips report."""
        if record:
            ranges = sorted([*self.muted, (lo, hi)])
            self.muted = [ranges[0]]
            for a, b in ranges[1:]:
                last_a, last_b = self.muted[-1]
                if a <= last_b:
                    self.muted[-1] = (last_a, max(last_b, b))
                else:
                    self.muted.append((a, b))
        if hi > self.end:
            self.pending_mutes.append((max(lo, self.end), hi))
        lo, hi = max(lo, self.oldest), min(hi, self.end)
        if lo < hi:
            for part in self._span(lo, hi):
                self.data[part] = 0

    def extract(self, lo: int, hi: int) -> np.ndarray:
        a, b = self._span(lo, hi)
        return np.concatenate([self.data[a], self.data[b]])

    def muted_within(self, lo: int, hi: int) -> int:
        """Samples of ``[lo, hi)`` muted for privacy."""
        return sum(max(0, min(b, hi) - max(a, lo)) for a, b in self.muted)


@dataclass
class _Request:
    event_id: int
    source: str
    label: str | None
    start_utc: datetime
    lo: int  # first sample of the clip
    end: int | None  # the event's end + post_roll, None while it is open


class ClipRecorder:
    """Recent audio per source, and the clips requested from it. See the module docstring."""

    def __init__(self, root: str | Path, *, sample_rate: int = SAMPLE_RATE, pre_roll: float = 2.0,
                 post_roll: float = 2.0, max_seconds: float = 60.0, settle: float = 1.0,
                 hold: float | None = None):
        if min(pre_roll, post_roll, settle) < 0 or max_seconds <= 0:
            raise ValueError(f"pre_roll, post_roll and settle must be >= 0 and max_seconds > 0, got "
                             f"{pre_roll}, {post_roll}, {settle}, {max_seconds}")
        self.root = Path(root).expanduser().resolve()
        self.sample_rate = int(sample_rate)
        self.pre_roll, self.post_roll, self.max_seconds, self.settle = pre_roll, post_roll, max_seconds, settle
        self.capacity = math.ceil((pre_roll + max_seconds + post_roll + settle) * self.sample_rate) + 1
        self._max = round(max_seconds * self.sample_rate)
        self._settle = round(settle * self.sample_rate)
        self._hold = None if hold is None else round(hold * self.sample_rate)
        self._classified: dict[str, int] = {}  # per source: the stream sample its classified windows reach
        self._sources: dict[str, _History] = {}
        self._requests: dict[int, _Request] = {}
        self._finished: deque[int] = deque(maxlen=4096)  # ids whose clip is done: a late end is ignored
        self._done: list[ClipResult] = []
        self._spans: dict[int, tuple[float, float]] = {}  # written clips' stream seconds, until taken
        self._early_mutes: dict[str, list[tuple[int, int]]] = {}

    def _index(self, t: float) -> int:
        return round(t * self.sample_rate)

    def push(self, source: str, samples: np.ndarray, t_end_s: float) -> list[ClipResult]:
        """Append a block of float samples in [-1, 1] whose end is stream second ``t_end_s``; return finished clips.

        Stream time is samples since the source's stream began / 44100. A jump forward (a gap)
        is kept as silence; a jump back (the stream began anew) writes the source's pending clips
        with what there is and starts its history afresh.
        """
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise ValueError(f"push takes mono samples (1-D), got shape {samples.shape}")
        block = np.clip(np.rint(samples.astype(np.float32) * 32768.0), -32768, 32767).astype(np.int16)
        start = self._index(t_end_s) - len(block)
        history = self._sources.get(source)
        if history is not None and start + len(block) <= history.end and len(block):
            log.info("%s: stream time went back from %.3f s to %.3f s; history restarted",
                     source, history.end / self.sample_rate, t_end_s)
            self._finish_source(source)
            history = None
        if history is None:
            history = self._sources[source] = _History(self.capacity, start)
            for lo, hi in self._early_mutes.pop(source, ()):
                history.mute(lo, hi)  # recorded: privacy mutes that came before the audio
        elif start > history.end:
            gap = start - history.end
            if gap >= self.capacity:
                history.origin = history.end = start
            else:
                history.append(np.zeros(gap, np.int16))
        elif start < history.end:
            block = block[history.end - start:]
        history.append(block)
        return self.poll()

    def mute(self, source: str, t0: float, t1: float) -> None:
        """Zero stream seconds ``[t0, t1)`` of ``source``: in the history, in samples still to come, and in
        recent clips already written (rewritten in place)."""
        lo, hi = self._index(t0), self._index(t1)
        if hi <= lo:
            return
        history = self._sources.get(source)
        if history is None:  # no audio yet: applied when it comes
            self._early_mutes.setdefault(source, []).append((lo, hi))
            return
        history.mute(lo, hi)
        for event_id, clip_lo, clip_hi, path, notes in history.written:
            if lo < clip_hi and hi > clip_lo:
                self._remute(event_id, path, max(lo, clip_lo) - clip_lo, min(hi, clip_hi) - clip_lo,
                             [*notes, self._muted_note(history, clip_lo, clip_hi)])

    def _muted_note(self, history: _History, lo: int, hi: int) -> str:
        return f"{PRIVACY_MUTED}: {history.muted_within(lo, hi) / self.sample_rate:.2f} s of " \
               f"{(hi - lo) / self.sample_rate:.2f} s"

    def _remute(self, event_id: int, path: Path, a: int, b: int, notes: list[str]) -> None:
        if not path.exists():  # retention got there first
            return
        try:
            data, _ = sf.read(path, dtype="int16")
            data[a:b] = 0
            write_atomic(path, data, self.sample_rate)
            log.info("clip of event %d: muted %.2f s after writing (a privacy window came late)",
                     event_id, (b - a) / self.sample_rate)
            self._done.append(ClipResult(event_id, str(path), "; ".join(notes)))
        except (OSError, RuntimeError) as e:
            with contextlib.suppress(OSError):
                path.unlink()
            reason = f"{LATE_MUTE_FAILED} ({e})"
            log.warning("clip of event %d %s", event_id, reason)
            self._done.append(ClipResult(event_id, None, reason))

    def request(self, event_id: int, source: str, start_s: float, end_s: float | None, start_utc: datetime,
                label: str | None = None) -> None:
        """Ask for event ``event_id``'s clip; it comes out of :meth:`push`, :meth:`poll` or :meth:`flush`.

        ``end_s=None``: the event has just started; request again with its end when it ends.
        """
        if end_s is not None and end_s < start_s:
            raise ValueError(f"event {event_id}: end_s {end_s} is before start_s {start_s}")
        if event_id in self._finished:
            log.debug("clip of event %d already written; request ignored", event_id)
            return
        end = None if end_s is None else self._index(end_s + self.post_roll)
        pending = self._requests.get(event_id)
        if pending is not None:
            pending.end = end
        else:
            self._requests[event_id] = _Request(event_id, source, label, start_utc,
                                                self._index(start_s - self.pre_roll), end)

    def _target(self, r: _Request) -> int:
        cap = r.lo + self._max
        return cap if r.end is None else min(r.end, cap)

    def classified(self, source: str, t_s: float) -> None:
        """The windows of ``source`` ending at or before stream second ``t_s`` are classified (their
        privacy mutes are in). With ``hold``, a clip waits for this, not only for its audio."""
        self._classified[source] = max(self._classified.get(source, 0), self._index(t_s))

    def _ready(self, r: _Request, history: _History) -> bool:
        target = self._target(r)
        if history.end < target + self._settle:
            return False
        return self._hold is None or self._classified.get(r.source, 0) >= target + self._hold

    def poll(self) -> list[ClipResult]:
        """Write the clips whose audio is complete; return those and any other finished results."""
        for r in list(self._requests.values()):
            history = self._sources.get(r.source)
            if history is not None and self._ready(r, history):
                self._write(r)
        done, self._done = self._done, []
        return done

    def flush(self) -> list[ClipResult]:
        """Write every pending clip with the audio there is (at shutdown); return all finished results."""
        for source in {r.source for r in self._requests.values()}:
            self._finish_source(source)
        done, self._done = self._done, []
        return done

    def cut(self, source: str, t_s: float, why: str = "the stream ended") -> list[ClipResult]:
        """``source`` stopped at stream second ``t_s`` (it went down or ended): write its pending clips now,
        with its audio up to there and none after; return every finished result."""
        until = self._index(t_s)
        for r in [r for r in self._requests.values() if r.source == source]:
            self._write(r, until=until, why=why)
        done, self._done = self._done, []
        return done

    def _finish_source(self, source: str) -> None:
        for r in [r for r in self._requests.values() if r.source == source]:
            self._write(r)

    def _write(self, r: _Request, *, until: int | None = None, why: str = "the stream ended") -> None:
        """Write ``r``'s clip with the audio there is (``until``: none from that sample on)."""
        del self._requests[r.event_id]
        self._finished.append(r.event_id)
        history = self._sources.get(r.source)
        target = self._target(r)
        notes = []
        end = None if history is None else history.end if until is None else min(history.end, until)
        if history is None or min(target, end) <= max(r.lo, history.oldest):
            self._done.append(ClipResult(r.event_id, None, NO_AUDIO))
            log.warning("clip of event %d not written: %s", r.event_id, NO_AUDIO)
            return
        lo, hi = max(r.lo, history.oldest), min(target, end)
        if lo > max(r.lo, history.origin):  # heard, and gone: not audio from before the stream began
            notes.append(f"its first {(lo - max(r.lo, history.origin)) / self.sample_rate:.2f} s were no longer "
                         "in the history")
        if r.end is None and hi < target:
            notes.append("the event was still open")
        elif hi < target:
            notes.append(f"cut {(target - hi) / self.sample_rate:.2f} s short ({why})")
        elif r.end is None or r.end > target:
            notes.append(f"capped at {self.max_seconds:g} s")
        muted = [self._muted_note(history, lo, hi)] if history.muted_within(lo, hi) else []
        start = r.start_utc.astimezone(timezone.utc)
        name = f"{start:%H-%M-%S}_{safe_name(r.label) + '_' if r.label else ''}{r.event_id}.flac"
        path = self.root / safe_name(r.source) / f"{start:%Y-%m-%d}" / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, history.extract(lo, hi), self.sample_rate)
        except (OSError, RuntimeError) as e:
            reason = f"cannot write {path}: {getattr(e, 'strerror', None) or e}"
            log.warning("clip of event %d not written: %s", r.event_id, reason)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only if the failed write left it empty
            self._done.append(ClipResult(r.event_id, None, reason))
            return
        history.written.append((r.event_id, lo, hi, path, notes))
        if muted:
            log.info("clip of event %d: %s", r.event_id, muted[0])
        self._done.append(ClipResult(r.event_id, str(path), "; ".join(notes + muted) or "ok"))
        self._spans[r.event_id] = (lo / self.sample_rate, hi / self.sample_rate)

    def take_span(self, event_id: int) -> tuple[float, float] | None:
        """The stream seconds ``(start, end)`` that event ``event_id``'s written clip holds, once (None after)."""
        return self._spans.pop(event_id, None)

    def enforce_retention(self, clips, keep_days: float | None, max_gb: float | None,
                          now: float | None = None) -> list[int]:
        """:func:`enforce_retention` on this recorder's folder."""
        return enforce_retention(self.root, clips, keep_days=keep_days, max_gb=max_gb, now=now)


def enforce_retention(root: str | Path, clips, *, keep_days: float | None, max_gb: float | None,
                      now: float | None = None) -> list[int]:
    """Delete clip files older than ``keep_days``, then the oldest until they total at most ``max_gb`` (10^9 bytes).

    Ages are the files' modification times (when they were written). ``clips`` is an
    :class:`~audioclip.monitor.store.EventStore` (its ``clips_by_age()``) or ``(event_id, path)``
    pairs; returned are the ids whose file was deleted or is gone, so their rows get ``clip``
    NULL (the rows stay). Day folders left empty are removed, and temporary files a crash left
    behind for over an hour. ``None`` disables a limit.
    """
    root = Path(root).expanduser().resolve()
    now = time.time() if now is None else now
    pairs = clips.clips_by_age() if hasattr(clips, "clips_by_age") else list(clips)
    ids_by_path = {os.path.realpath(p): i for i, p in pairs}
    files = []
    for path in root.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            if path.name.endswith(TEMP_SUFFIX) and path.name.startswith("."):
                if now - st.st_mtime > STALE_TEMP_SECONDS:
                    path.unlink()
            elif path.suffix == ".flac" and path.is_file():
                files.append((st.st_mtime, st.st_size, path))
    files.sort(key=lambda f: (f[0], str(f[2])))
    total = sum(size for _, size, _ in files)
    deleted = []
    for mtime, size, path in files:
        too_old = keep_days is not None and now - mtime > keep_days * 86400
        too_big = max_gb is not None and total > max_gb * 1e9
        if not (too_old or too_big):
            break  # the files left are newer, and the total fits
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("retention: cannot delete %s: %s", path, e.strerror or e)
            continue
        total -= size
        deleted.append(path)
    for folder in {p.parent for p in deleted}:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty
    gone = {os.path.realpath(p) for p in deleted}
    ids = sorted({i for p, i in ids_by_path.items() if p in gone or not os.path.exists(p)})
    if deleted:
        log.info("retention: deleted %d clip(s) (%.1f MB left in %s)", len(deleted), total / 1e6, root)
    return ids
