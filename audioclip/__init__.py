"""audioclip-stream: continuous zero-shot sound labelling with AudioCLIP."""

from importlib.metadata import PackageNotFoundError, version

from .model import (AudioCLIP, AudioCLIPConfig, CheckpointError, SAMPLE_RATE, ZeroShotClassifier, load_model,
                    tokenize)

try:
    __version__ = version("audioclip-stream")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["AudioCLIP", "AudioCLIPConfig", "CheckpointError", "SAMPLE_RATE", "ZeroShotClassifier", "load_model",
           "tokenize", "__version__"]
