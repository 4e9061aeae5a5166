"""AudioCLIP networks, tokenizer, checkpoints and the zero-shot classifier."""

from .audioclip import AudioCLIP, AudioCLIPOutput, LabelBank, clamp_logit_scale, normalize
from .checkpoint import RELEASES, CheckpointError, atomic_save, finetuned_checkpoint, load_model
from .classifier import ZeroShotClassifier, check_labels
from .config import AudioCLIPConfig, AudioConfig, TextConfig, VisionConfig, infer_config
from .constants import FRAME_LENGTH, HOP_LENGTH, N_FFT, SAMPLE_RATE, WINDOW_SECONDS
from .tokenizer import tokenize

__all__ = [
    "AudioCLIP", "AudioCLIPOutput", "AudioCLIPConfig", "AudioConfig", "CheckpointError", "FRAME_LENGTH",
    "HOP_LENGTH", "LabelBank", "N_FFT", "RELEASES", "SAMPLE_RATE", "TextConfig", "VisionConfig",
    "WINDOW_SECONDS", "ZeroShotClassifier", "atomic_save", "check_labels", "clamp_logit_scale",
    "finetuned_checkpoint", "infer_config", "load_model", "normalize", "tokenize",
]
