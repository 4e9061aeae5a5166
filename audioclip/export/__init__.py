"""Export AudioCLIP to ONNX and run the exported classifier without PyTorch.

- ``export_onnx(checkpoint=..., out=...)`` (``audioclip.export.exporter``, needs torch): writes and
  verifies ``audio_encoder.onnx``, ``classifier.onnx`` and ``text_encoder.onnx``.
- ``OnnxClassifier(DIR[, labels=..., template=...])`` (``audioclip.export.runtime``, numpy and ONNX
  Runtime only): the interface of :class:`audioclip.model.ZeroShotClassifier` on the exported
  graphs, for the labels they were exported with or for new ones (embedded by the text encoder).

Importing this package imports neither torch nor the exporter; names load on first use.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "OnnxClassifier": "runtime",
    "export_onnx": "exporter",
    "ExportError": "writing",
    "ExportResult": "exporter",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
