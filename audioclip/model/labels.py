"""What users hand the model, checked without torch (the ONNX backend uses it too): label lists,
templates and window lengths."""

from __future__ import annotations

import math
from typing import Sequence

from .constants import FRAME_LENGTH, SAMPLE_RATE

MAX_WINDOW_SECONDS = 60.0
"""Longest window a stream or an export takes. Memory bounds it: one pass of the full-size audio
encoder holds about 8 MB of activations per second of window on top of the weights (PyTorch, batch
1), so a 60-s window needs about half a gigabyte, within reach of the small machines a monitor runs
on, while a 100000-s window would need hundreds of gigabytes. The released heads were trained on
5-s clips; windows far longer than that only blur what they hear."""


def check_labels(labels: Sequence[str]) -> list[str]:
    """Labels as a list of distinct non-empty strings, else ``ValueError`` saying which are not."""
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise ValueError(f"labels must be a list of strings, got {type(labels).__name__}")
    labels = list(labels)
    if not labels:
        raise ValueError("no labels given: pass at least one, e.g. ['siren', 'dog bark']")
    bad = [label for label in labels if not isinstance(label, str)]
    if bad:
        raise ValueError(f"labels must be strings, got {bad[0]!r} ({type(bad[0]).__name__})")
    empty = [i for i, label in enumerate(labels) if not label.strip()]
    if empty:
        raise ValueError(f"label {empty[0]} is empty; every label needs some text")
    seen, duplicates = set(), []
    for label in labels:
        if label in seen and label not in duplicates:
            duplicates.append(label)
        seen.add(label)
    if duplicates:
        raise ValueError(f"duplicate labels: {', '.join(map(repr, duplicates))}; give each label once")
    return labels


def check_template(template: str | None) -> str:
    """``template`` (``"{}"`` when None), else ``ValueError`` when it has no ``{}`` for the label."""
    template = "{}" if template is None else template
    if "{}" not in template:
        raise ValueError(f"template {template!r} has no '{{}}' where the label goes")
    return template


def window_samples(seconds: float, *, name: str = "window", least: int = FRAME_LENGTH) -> int:
    """``seconds`` of 44.1 kHz audio in whole samples, at least ``least`` (one FBSP frame) and at
    most :data:`MAX_WINDOW_SECONDS`; else ``ValueError`` naming ``name``."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise ValueError(f"{name}: must be a finite number of seconds, got {seconds!r}")
    samples = int(round(seconds * SAMPLE_RATE))
    if samples < least:
        raise ValueError(f"{name}: must be at least {least / SAMPLE_RATE:.4f} s ({least} samples), got {seconds:g}")
    if seconds > MAX_WINDOW_SECONDS:
        raise ValueError(f"{name}: must be at most {MAX_WINDOW_SECONDS:g} s (a window's pass through the model "
                         f"needs about 8 MB per second), got {seconds:g}")
    return samples
