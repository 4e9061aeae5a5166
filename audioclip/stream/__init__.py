"""Streaming: sources, resampling, window scheduling, the inference thread and result outputs."""

from .backends import load_classifier
from .config import StreamConfig
from .devices import AudioDeviceError, InputDevice, list_input_devices
from .engine import Classifier, StreamStats
from .postprocess import Event, EventDetector, WindowResult
from .runner import event_detector, run_stream
from .sources import AudioFileError, FileSource, MicrophoneSource, StdinSource

__all__ = [
    "AudioDeviceError", "AudioFileError", "Classifier", "Event", "EventDetector", "FileSource", "InputDevice",
    "MicrophoneSource", "StdinSource", "StreamConfig", "StreamStats", "WindowResult", "event_detector",
    "list_input_devices", "load_classifier", "run_stream",
]
