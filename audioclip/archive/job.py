"""One recording through the stream's pipeline: its windows, events and (optionally) embeddings.

:func:`label_recording` runs :func:`audioclip.stream.runner.run_stream` over a
:class:`~audioclip.archive.decode.RecordingSource`: the same resampler, window scheduler and
inference thread as ``audioclip-stream --input FILE``, so a recording's rows equal the stream's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..audio import AudioFileError
from ..stream.config import StreamConfig
from ..stream.embeddings import EmbeddingTap
from ..stream.runner import run_stream
from .decode import RecordingSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """How to build the classifier, in a form a worker process can receive.

    ``groups``: ``[(label, [prompt, ...]), ...]``; empty for the labels a fine-tuned checkpoint or
    export carries. ``checkpoint`` (a release name or path) or ``onnx`` (an export folder). ``score``:
    ``"softmax"`` or ``"label"`` (:mod:`audioclip.stream.scoring`).
    """

    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    template: str | None = None
    checkpoint: str = "full"
    onnx: str | None = None
    threads: int | None = None
    runtime: str | None = None  # onnxruntime (None) or openvino, for ``onnx``
    precision: str | None = None  # fp32 (None) or bf16
    score: str = "softmax"

    @classmethod
    def from_labels(cls, labels: Sequence[str] | None, **kwargs) -> ModelSpec:
        return cls(groups=tuple((label, (label,)) for label in labels or ()), **kwargs)

    @property
    def source(self) -> str:
        """What names the model in the outputs: the ONNX folder or the checkpoint."""
        return f"onnx:{self.onnx}" if self.onnx is not None else str(self.checkpoint)

    def load(self):
        """The stream's classifier (``ZeroShotClassifier`` or ``OnnxClassifier``) with prompt ensembles."""
        from ..stream.labels import load_group_classifier
        from ..stream.scoring import score_classifier

        return score_classifier(load_group_classifier(groups=[(name, list(p)) for name, p in self.groups],
                                                      template=self.template, checkpoint=self.checkpoint,
                                                      onnx=self.onnx, threads=self.threads,
                                                      runtime=self.runtime, precision=self.precision), self.score)


@dataclass
class RecordingResult:
    """A recording's windows (``t_start``, ``t_end`` ``[W]``, ``probs`` ``[W, L]``), its events as
    ``(label, t_start, t_end, peak, mean)`` rows, its embeddings ``[W, D]`` float16 (or None),
    the seconds of audio read and the decoder used."""

    labels: list[str]
    t_start: np.ndarray
    t_end: np.ndarray
    probs: np.ndarray
    events: list[tuple[str, float, float, float, float]] = field(default_factory=list)
    embeddings: np.ndarray | None = None
    seconds: float = 0.0
    decoder: str = ""
    busy_seconds: float = 0.0
    """Time the classifier spent on this recording's windows (the rest of the wall time is decoding
    and waiting)."""

    @property
    def top(self) -> list[str]:
        return [self.labels[i] for i in np.argmax(self.probs, axis=1)] if len(self.probs) else []


def label_recording(path, *, classifier, config: StreamConfig, embeddings: bool = False) -> RecordingResult:
    """Classify every window of the recording at ``path``; :class:`AudioFileError` when it cannot be
    decoded or holds no samples."""
    source = RecordingSource(path)
    model = EmbeddingTap(classifier) if embeddings else classifier
    t_start, t_end, probs, opened, events = [], [], [], {}, []

    def on_result(result) -> None:
        t_start.append(result.t_start)
        t_end.append(result.t_end)
        probs.append(np.asarray(result.probs, np.float64))
        _pair(result.events, opened, events)

    stats, closing = run_stream(source=source, classifier=model, on_result=on_result, config=config)
    _pair(closing, opened, events)
    if stats.audio_seconds == 0:
        raise AudioFileError(f"{path}: holds no samples")
    labels = list(classifier.labels)
    return RecordingResult(labels, np.asarray(t_start), np.asarray(t_end),
                           np.asarray(probs).reshape(len(probs), len(labels)), events,
                           model.take() if embeddings else None, stats.audio_seconds, source.decoder,
                           stats.busy_seconds)


def _pair(stream_events, opened: dict, rows: list) -> None:
    """Stream start/end events -> ``(label, t_start, t_end, peak, mean)`` rows, in the order they end."""
    for event in stream_events:
        if event.kind == "start":
            opened[event.label] = event.t
        else:
            rows.append((event.label, opened.pop(event.label), event.t, event.peak, event.mean))
