"""What users hand the model, checked without torch (the ONNX backend uses it too): label lists,
templates and window lengths."""

from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

from .constants import FRAME_LENGTH, SAMPLE_RATE

MAX_WINDOW_SECONDS = 60.0
"""Longest window a stream or an export takes. Memory bounds it: one pass of the full-size audio
encoder holds about 8 MB of activations per second of window on top of the weights (PyTorch, batch
1), so a 60-s window needs about half a gigabyte, within reach of the small machines a monitor runs
on, while a 100000-s window would need hundreds of gigabytes. The released heads were trained on
5-s clips; windows far longer than that only blur what they hear."""


class ParameterError(ValueError):
    """A bad value of a named parameter.

    ``message`` writes parameter names as ``{name}`` (``"{hop}: must be positive, got -1"``):
    ``str()`` shows them as the library's names, :meth:`with_names` as a command line's flags.
    """

    def __init__(self, parameter: str, message: str):
        self.parameter, self.message = parameter, message
        super().__init__(self.with_names({}))

    def with_names(self, names: Mapping[str, str]) -> str:
        """The message with each ``{name}`` replaced by ``names[name]`` (by ``name`` when absent)."""
        return re.sub(r"\{([a-z_]+)\}", lambda m: names.get(m[1], m[1]), self.message)


def check_labels(labels: Sequence[str]) -> list[str]:
    """Labels as a list of distinct non-empty strings, else :class:`ParameterError` saying which are not."""
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise ParameterError("labels", f"{{labels}} must be a list of strings, got {type(labels).__name__}")
    labels = list(labels)
    if not labels:
        raise ParameterError("labels", "no labels given: pass at least one in {labels}, e.g. siren,dog bark")
    bad = [label for label in labels if not isinstance(label, str)]
    if bad:
        raise ParameterError("labels", f"{{labels}} must be strings, got {bad[0]!r} ({type(bad[0]).__name__})")
    empty = [i for i, label in enumerate(labels) if not label.strip()]
    if empty:
        raise ParameterError("labels", f"label {empty[0]} of {{labels}} is empty; every label needs some text")
    seen, duplicates = set(), []
    for label in labels:
        if label in seen and label not in duplicates:
            duplicates.append(label)
        seen.add(label)
    if duplicates:
        raise ParameterError("labels", f"duplicate labels: {', '.join(map(repr, duplicates))}; give each label once")
    return labels


def check_template(template: str | None) -> str:
    """``template`` (``"{}"`` when None), else :class:`ParameterError` when it has no ``{}`` for the label."""
    template = "{}" if template is None else template
    if "{}" not in template:
        raise ParameterError("template", f"{{template}} {template!r} has no '{{}}' where the label goes")
    return template


def window_samples(seconds: float, *, name: str = "window", least: int = FRAME_LENGTH,
                   least_is: str = "one FBSP frame") -> int:
    """``seconds`` of 44.1 kHz audio in whole samples, at least ``least`` (``least_is`` says what
    that is) and at most :data:`MAX_WINDOW_SECONDS`; else :class:`ParameterError` naming ``name``."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise ParameterError(name, f"{{{name}}}: must be a finite number of seconds, got {seconds!r}")
    samples = int(round(seconds * SAMPLE_RATE))
    if samples < least:
        raise ParameterError(name, f"{{{name}}} {seconds:g} s is {samples} samples, shorter than {least_is} "
                                   f"({least} samples = {least / SAMPLE_RATE:.4f} s)")
    if seconds > MAX_WINDOW_SECONDS:
        raise ParameterError(name, f"{{{name}}}: must be at most {MAX_WINDOW_SECONDS:g} s (a window's pass through "
                                   f"the model needs about 8 MB per second), got {seconds:g}")
    return samples
