"""Streaming: sources, resampling, window scheduling, the inference thread and result outputs."""

from .buffer import BlockRing, Window, WindowScheduler
from .engine import Classifier, InferenceWorker, StreamStats
from .postprocess import Event, EventDetector, Smoother, WindowResult
from .resample import StreamResampler, to_mono
from .runner import run_stream, window_samples
from .sources import (AudioDeviceError, AudioFileError, FileSource, InputDevice, MicrophoneSource, StdinSource,
                      list_input_devices, resolve_device)

__all__ = [
    "AudioDeviceError", "AudioFileError", "BlockRing", "Classifier", "Event", "EventDetector", "FileSource",
    "InferenceWorker", "InputDevice", "MicrophoneSource", "StdinSource", "Smoother", "StreamResampler",
    "StreamStats", "Window", "WindowResult", "WindowScheduler", "list_input_devices", "resolve_device",
    "run_stream", "to_mono", "window_samples",
]
