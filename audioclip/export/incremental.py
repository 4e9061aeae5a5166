"""Exact incremental encoding of overlapping windows on ONNX Runtime: numpy only, no torch.

``audioclip-export onnx`` writes, beside the whole-window graphs, the stages that overlapping
windows share (:data:`STAGE_FILES`): the front end on frames, the stem, layer1 and layer2 on any
number of columns, and the tail from a whole window's layer2 output to the embedding and the
label scores. :class:`OnnxIncrementalEncoder` runs them with the bookkeeping of
:class:`~audioclip.model.overlap.OverlapEncoder`, as the PyTorch encoder runs the eager stages.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..model.constants import FRAME_LENGTH, HOP_LENGTH, INT16_SCALE
from ..model.overlap import OverlapEncoder, Stage, stage_lengths
from .runtime import session, tensorrt_name

log = logging.getLogger(__name__)

FRONT_FILE = "incremental_front.onnx"
STEM_FILE = "incremental_stem.onnx"
LAYER1_FILE = "incremental_layer1.onnx"
LAYER2_FILES = {0: "incremental_layer2_even.onnx", 1: "incremental_layer2_odd.onnx"}
"""layer2's gate pools in time as a whole window does, which depends on the parity of layer1's length."""
TAIL_FILE = "incremental_tail.onnx"
STAGE_FILES = (FRONT_FILE, STEM_FILE, LAYER1_FILE, *LAYER2_FILES.values(), TAIL_FILE)
STAGE_OF = {"front": FRONT_FILE, "stem": STEM_FILE, "layer1": LAYER1_FILE, "tail": TAIL_FILE}
"""The graph of each stage name (layer2: one of :data:`LAYER2_FILES`)."""


def layer2_file(window_samples: int) -> str:
    """The layer2 graph that windows of ``window_samples`` take."""
    return LAYER2_FILES[stage_lengths(window_samples)["layer1"] % 2]


def to_reference_scale(x: np.ndarray) -> np.ndarray:
    """:func:`audioclip.model.esresnext.to_reference_scale` in numpy float32, operation for operation."""
    x = x.astype(np.float32, copy=False)
    return ((x * np.float32(INT16_SCALE) + np.float32(INT16_SCALE)) * np.float32(2.0)) / np.float32(65535.0) \
        - np.float32(1.0)


@dataclass
class TailOutput:
    """What the tail graph gives for one window: ``embedding`` ``[1, D]`` (L2-normalised), ``logits`` and
    ``probs`` ``[1, L]`` of the labels the export was made with."""

    embedding: np.ndarray
    logits: np.ndarray
    probs: np.ndarray


class IncrementalGraphs:
    """The stage graphs of an export folder on ONNX Runtime, loaded once and shared by every source.

    ``tensorrt``: an int8 export's ``.trt.onnx`` flavour (to check it on ONNX Runtime). Raises a
    one-line ``ValueError`` when the folder has none (an export from before they existed: export again).
    ``runtime``, ``precision``: as :func:`~audioclip.export.runtime.session` takes them; ``fp32_stages``: the
    stages (:data:`~audioclip.export.openvino.STAGE_NAMES`) that OpenVINO compiles in f32 whatever ``precision``.
    """

    def __init__(self, folder: str | os.PathLike, *, threads: int | None = None, providers: Sequence | None = None,
                 tensorrt: bool = False, runtime: str = "onnxruntime", precision: str = "fp32",
                 fp32_stages: Sequence[str] = ()):
        self.folder = Path(folder)
        self.threads, self.providers, self.tensorrt = threads, providers, tensorrt
        self.runtime, self.precision = runtime, precision
        self.fp32_files = {STAGE_OF[name] for name in fp32_stages if name != "layer2"}
        if "layer2" in fp32_stages:
            self.fp32_files.update(LAYER2_FILES.values())
        needed = (FRONT_FILE, STEM_FILE, LAYER1_FILE, TAIL_FILE)
        missing = [f for f in needed if not (self.folder / self._name(f)).is_file()]
        if missing:
            raise ValueError(f"{self.folder} has no incremental graphs ({', '.join(missing)}): it was exported before "
                             "they existed; export it again with `audioclip-export onnx` to share work between windows")
        self._sessions: dict[str, object] = {}
        meta = self.session(TAIL_FILE).get_modelmeta().custom_metadata_map
        try:
            self.blocks = tuple(json.loads(meta["trunk_blocks"]))
            window = meta["window_samples"]
        except (KeyError, ValueError) as e:
            raise ValueError(f"{self.folder / TAIL_FILE}: not a graph written by audioclip-export "
                             f"(metadata {e} missing or bad)") from e
        self.window_samples = None if window == "dynamic" else int(window)

    def _name(self, file: str) -> str:
        """The file of graph ``file`` in this flavour (the front end is fp32 at every precision: one file)."""
        return tensorrt_name(file) if self.tensorrt and file != FRONT_FILE else file

    def session(self, file: str):
        if file not in self._sessions:
            path = self.folder / self._name(file)
            if not path.is_file():
                raise ValueError(f"{path}: no such graph; export the folder again with `audioclip-export onnx`")
            self._sessions[file] = session(path, threads=self.threads, providers=self.providers, runtime=self.runtime,
                                           precision="fp32" if file in self.fp32_files else self.precision)
        return self._sessions[file]

    def run(self, file: str, x: np.ndarray) -> list[np.ndarray]:
        sess = self.session(file)
        return sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x)})


class OnnxIncrementalEncoder(OverlapEncoder):
    """One source's windows through the stage graphs: :meth:`encode` gives a :class:`TailOutput` per
    window, equal (within the export's bounds) to ``audio_encoder.onnx`` and ``classifier.onnx`` on it.

    ``graphs``: :class:`IncrementalGraphs` (shared by the sources of one export); ``window_samples``,
    ``hop_samples``, ``edges``: as :class:`~audioclip.model.overlap.OverlapEncoder` takes them.
    """

    def __init__(self, graphs: IncrementalGraphs, window_samples: int, *, hop_samples: int | None = None,
                 edges: dict[str, tuple[int, int]] | None = None):
        if graphs.window_samples is not None and window_samples != graphs.window_samples:
            raise ValueError(f"these graphs take {graphs.window_samples}-sample windows, not {window_samples}")
        self.graphs = graphs
        self._layer2 = layer2_file(window_samples)
        super().__init__(graphs.blocks, window_samples, hop_samples=hop_samples, edges=edges)

    def _as_array(self, window) -> np.ndarray:
        x = np.asarray(window)
        if x.dtype == np.int16:
            return x.astype(np.float32) / np.float32(INT16_SCALE)
        if np.issubdtype(x.dtype, np.floating):
            return x.astype(np.float32, copy=False)
        return x

    @staticmethod
    def _finite(x: np.ndarray) -> bool:
        return bool(np.isfinite(x).all())

    def _cat(self, parts: list) -> np.ndarray:
        return np.concatenate(parts, axis=-1)

    @staticmethod
    def _equal(a: np.ndarray, b: np.ndarray) -> bool:
        return bool(np.array_equal(a, b))

    def _db_ends(self, x: np.ndarray, left: int, first: int) -> tuple[np.ndarray | None, np.ndarray]:
        """dB frames ``[0, left)`` and ``[first, end)`` of the window, in one run of the front-end graph."""
        end = self.lengths["db"]
        padded = np.pad(to_reference_scale(x), self._pad)
        frames = np.lib.stride_tricks.sliding_window_view(padded, FRAME_LENGTH)[::HOP_LENGTH]
        rows = frames[first:end] if not left else np.concatenate((frames[:left], frames[first:end]))
        (db,) = self.graphs.run(FRONT_FILE, rows[None])
        return (db[..., :left] if left else None), db[..., left:]

    def _run(self, stage: Stage, x: np.ndarray) -> np.ndarray:
        file = {"stem": STEM_FILE, "layer1": LAYER1_FILE, "layer2": self._layer2}[stage.name]
        return self.graphs.run(file, x)[0]

    def _tail(self, layer2: np.ndarray) -> TailOutput:
        return TailOutput(*self.graphs.run(TAIL_FILE, layer2))
