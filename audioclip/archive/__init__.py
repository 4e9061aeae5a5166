"""Recorded archives: label folders of recordings with the stream's pipeline, and search their windows.

On top of :mod:`audioclip.stream` (windows, resampling, events) and :mod:`audioclip.model`.
Outputs need ``pyarrow`` (``pip install 'audioclip-stream[archive]'``).
"""

from ..search.exact import top_k
from ..search.query import QueryEncoder, clip_preprocess
from .decode import RECORDING_EXTENSIONS, RecordingSource, find_recordings
from .job import ModelSpec, RecordingResult, label_recording
from .metrics import RetrievalMetrics, class_retrieval, retrieval_metrics
from .runner import LabelReport, LabelSettings, label_archive
from .search import ArchiveIndex, Hit

__all__ = ["RECORDING_EXTENSIONS", "ArchiveIndex", "Hit", "LabelReport", "LabelSettings", "ModelSpec",
           "QueryEncoder", "RecordingResult", "RecordingSource", "RetrievalMetrics", "class_retrieval",
           "clip_preprocess", "find_recordings", "label_archive", "label_recording", "retrieval_metrics", "top_k"]
