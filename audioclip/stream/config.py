"""One stream's settings, validated once: the CLI flags and the monitor's configuration both build it."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields

from ..model.constants import SAMPLE_RATE, STRIDE_SAMPLES
from ..model.labels import ParameterError, window_samples


@dataclass(frozen=True)
class StreamConfig:
    """How a stream cuts, scores and reports its audio.

    ``window`` / ``hop``: seconds per classified window (one FBSP frame to
    :data:`~audioclip.model.labels.MAX_WINDOW_SECONDS`, a bound set by memory) and between window
    starts (a hop longer than the window leaves audio unheard: a ``UserWarning`` says so). ``smooth``: average the
    probabilities over the last N windows. ``events``: report label events; an event starts when
    a label's probability reaches ``threshold`` for ``min_windows`` windows in a row and ends when
    it falls below ``threshold - hysteresis``. ``min_dbfs``: windows whose RMS level is below this
    are not classified (counted as gated); None classifies every window. ``top_k``: labels the live
    display shows. ``duration``: stop after this many seconds of audio (None: until the input
    ends). ``realtime``: pace a file like a live source. ``exact_windows``: compute every window whole
    (by default windows a multiple of 4488 samples apart share their front end to layer2).

    Invalid values raise :class:`~audioclip.model.labels.ParameterError` (a ``ValueError``) that
    names the field (``hop: must be positive, got -1``); ``dataclasses.replace`` validates again.
    """

    window: float = 5.0
    hop: float = 5 * STRIDE_SAMPLES / SAMPLE_RATE  # 0.50884 s: windows share columns exactly (stream/incremental.py)
    smooth: int = 1
    events: bool = False
    threshold: float = 0.5
    hysteresis: float = 0.05
    min_windows: int = 1
    min_dbfs: float | None = None
    top_k: int = 5
    duration: float | None = None
    realtime: bool = False
    exact_windows: bool = False

    def __post_init__(self):
        window_samples(self.window)
        _number("hop", self.hop)
        if not round(self.hop * SAMPLE_RATE) >= 1:
            raise ParameterError("hop", f"{{hop}}: must be positive, got {self.hop:g}")
        _whole("smooth", self.smooth)
        _whole("min_windows", self.min_windows)
        _whole("top_k", self.top_k)
        _number("threshold", self.threshold)
        if not 0.0 < self.threshold < 1.0:
            raise ParameterError("threshold", f"{{threshold}}: must be between 0 and 1, got {self.threshold:g}")
        _number("hysteresis", self.hysteresis)
        if not 0.0 <= self.hysteresis < self.threshold:
            raise ParameterError("hysteresis", f"{{hysteresis}}: must be at least 0 and below {{threshold}} "
                                                 f"{self.threshold:g}, got {self.hysteresis:g}")
        if self.min_dbfs is not None:
            _number("min_dbfs", self.min_dbfs)
            if not self.min_dbfs <= 0:
                raise ParameterError("min_dbfs", f"{{min_dbfs}}: must be at most 0 (full scale), got {self.min_dbfs:g}")
        if self.duration is not None:
            _number("duration", self.duration)
            if not self.duration > 0:
                raise ParameterError("duration", f"{{duration}}: must be positive, got {self.duration:g}")
        for name in ("events", "realtime", "exact_windows"):
            if not isinstance(getattr(self, name), bool):
                raise ParameterError(name, f"{{{name}}}: must be true or false, got {getattr(self, name)!r}")
        if not self.events:
            changed = [f.name for f in fields(self)
                       if f.name in ("threshold", "hysteresis", "min_windows") and getattr(self, f.name) != f.default]
            if changed:
                raise ParameterError(changed[0], f"{{{changed[0]}}} applies to events: add {{events}}")
        if self.hop_samples > self.window_samples:
            warnings.warn(f"hop {self.hop:g} s is longer than window {self.window:g} s: "
                          f"{self.hop - self.window:g} s of every {self.hop:g} s is never classified", stacklevel=3)

    @property
    def window_samples(self) -> int:
        return window_samples(self.window)

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop * SAMPLE_RATE))


def _number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParameterError(name, f"{{{name}}}: must be a finite number, got {value!r}")


def _whole(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(name, f"{{{name}}}: must be a whole number, got {value!r}")
    if value < 1:
        raise ParameterError(name, f"{{{name}}}: must be at least 1, got {value}")

