"""What a fine-tuned checkpoint says about itself, next to its weights: a typed record (torch-free)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from .constants import SAMPLE_RATE


@dataclass(frozen=True)
class CheckpointMeta:
    """How a fine-tuned head was made: the recipe's mode and template, its data, its result and its origin.

    ``mode`` is ``cooperative`` (scored by cosine to the label embeddings) or ``standalone`` (a
    linear classifier, whose weights are in the state dict). ``source_name``/``source_sha256``
    name the checkpoint it was fine-tuned from; ``version`` is the package version that wrote it.
    A release checkpoint's model carries the defaults.
    """

    mode: str = "cooperative"
    template: str = "{}"
    dataset: str | None = None
    fold: int | None = None
    clip_samples: int | None = None
    sample_rate: int = SAMPLE_RATE
    epoch: int | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    source_name: str | None = None
    source_sha256: str | None = None
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckpointMeta:
        """The record in ``d``; unknown keys are ignored (written by a later version).

        Also reads 0.1.0's layout, where these keys sat at the checkpoint's top level with the
        source as ``{"name", "sha256"}`` and the version as ``package_version``.
        """
        d = dict(d)
        source = d.pop("source", None)
        if isinstance(source, Mapping):
            d.setdefault("source_name", source.get("name"))
            d.setdefault("source_sha256", source.get("sha256"))
        if "package_version" in d:
            d.setdefault("version", d.pop("package_version"))
        names = {f.name for f in fields(cls)}
        meta = cls(**{k: v for k, v in d.items() if k in names})
        for name, kind in (("mode", str), ("template", str), ("recipe", dict), ("metrics", dict)):
            if not isinstance(getattr(meta, name), kind):
                raise ValueError(f"checkpoint metadata {name!r} must be a {kind.__name__}, "
                                 f"got {type(getattr(meta, name)).__name__}")
        return meta
