"""How the reference cuts a signal into FBSP frames: counts and centring zeros (no torch needed)."""

from __future__ import annotations

import math

from .constants import FRAME_LENGTH, HOP_LENGTH


def frame_count(num_samples: int) -> int:
    """Frames the reference cuts from ``num_samples`` samples."""
    if num_samples <= FRAME_LENGTH:
        return 1
    return 1 + math.ceil((num_samples - FRAME_LENGTH) / HOP_LENGTH)


def frame_padding(num_samples: int) -> tuple[int, int]:
    """Zeros the reference adds before and after a signal so that its frames tile it."""
    total = (frame_count(num_samples) - 1) * HOP_LENGTH + FRAME_LENGTH - num_samples
    total = max(total, 0)
    return total // 2, total - total // 2
