"""Label lists and templates as users give them: checked without torch (the ONNX backend uses them too)."""

from __future__ import annotations

from typing import Sequence


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
