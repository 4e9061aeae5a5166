"""AudioCLIP networks, tokenizer, checkpoints and the zero-shot classifier.

The audio contract's constants import without torch; the rest loads on first use (module
``__getattr__``), so that torch-free code (the ONNX backend of streaming) can use the constants.
"""

import importlib

from .constants import FRAME_LENGTH, HOP_LENGTH, N_FFT, SAMPLE_RATE, WINDOW_SECONDS

_LAZY = {
    "AudioCLIP": "audioclip", "AudioCLIPOutput": "audioclip", "LabelBank": "audioclip",
    "clamp_logit_scale": "audioclip", "normalize": "audioclip",
    "RELEASES": "checkpoint", "CheckpointError": "checkpoint", "atomic_save": "checkpoint",
    "finetuned_checkpoint": "checkpoint", "load_model": "checkpoint", "audio_head_state": "checkpoint",
    "CheckpointMeta": "metadata", "source_info": "checkpoint",
    "ZeroShotClassifier": "classifier", "check_labels": "labels", "check_template": "labels",
    "AudioCLIPConfig": "config", "AudioConfig": "config", "TextConfig": "config", "VisionConfig": "config",
    "infer_config": "config",
    "tokenize": "tokenizer", "token_ids": "tokenizer",
}

__all__ = ["FRAME_LENGTH", "HOP_LENGTH", "N_FFT", "SAMPLE_RATE", "WINDOW_SECONDS", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
