"""audioclip-stream: continuous zero-shot sound labelling with AudioCLIP.

The model names below load on first use (module ``__getattr__``), so that ``import audioclip``
and torch-free parts such as ``audioclip.export.runtime`` do not import torch.
"""

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("audioclip-stream")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_FROM_MODEL = ("AudioCLIP", "AudioCLIPConfig", "CheckpointError", "SAMPLE_RATE", "ZeroShotClassifier", "load_model",
               "tokenize")

__all__ = [*_FROM_MODEL, "load_classifier", "load_audio", "__version__"]


def __getattr__(name: str):
    if name in _FROM_MODEL:
        return getattr(importlib.import_module(".model", __name__), name)
    if name == "load_classifier":  # PyTorch or ONNX Runtime; torch loads only for a checkpoint
        return importlib.import_module(".stream.backends", __name__).load_classifier
    if name == "load_audio":  # torch-free: numpy, soundfile, soxr
        return importlib.import_module(".audio", __name__).load_audio
    if name in ("model", "export", "stream", "training"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_FROM_MODEL, "load_audio", "load_classifier"])
