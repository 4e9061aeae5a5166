"""The one retry schedule of the monitor: jittered exponential backoff, for sinks and sources alike."""

from __future__ import annotations

import random

JITTER = 0.2
"""Each wait is drawn within this fraction of its nominal length, so that sinks or sources failing together do not
retry in lockstep."""


def check_backoff(backoff: tuple[float, float], name: str) -> tuple[float, float]:
    """``backoff`` if it is ``(first, longest)`` seconds with ``0 < first <= longest``, else a one-line ValueError."""
    if len(backoff) != 2 or not 0 < backoff[0] <= backoff[1]:
        raise ValueError(f"{name}: backoff must be (first, longest) waits in seconds, 0 < first <= longest; "
                         f"got {backoff}")
    return backoff


def backoff_delay(backoff: tuple[float, float], attempt: int) -> float:
    """The wait before retry ``attempt`` (0: the first): ``first`` doubling up to ``longest``, within ``JITTER``,
    never longer than ``longest``. At the cap the wait is drawn below it (not clipped to it, which would
    send half of the retries of sources failing together at the same instant)."""
    first, longest = backoff
    nominal = min(longest, first * 2 ** min(attempt, 30))
    return random.uniform(nominal * (1 - JITTER), min(longest, nominal * (1 + JITTER)))
