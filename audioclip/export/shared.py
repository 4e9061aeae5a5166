"""One copy of the weights that the audio graphs hold alike.

``classifier.onnx`` is ``audio_encoder.onnx`` plus a few constants: stored inline, an export holds
the whole encoder twice (the golden checkpoint's fp32 export: 311 MB, int8 with its TensorRT
flavours: 486 MB). ONNX stores a tensor either inside the graph or in an external data file at an
offset, and graphs may point at the same bytes; ONNX Runtime, TensorRT's parser and ``onnx.load``
read external data from the graph's folder. So each tensor that two or more graphs hold byte for
byte is written once into :data:`SHARED_WEIGHTS_FILE` and referenced from each graph; the graphs
stay separate files with the same inputs, outputs and results.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)

SHARED_WEIGHTS_FILE = "audio_weights.bin"
MIN_SHARED_BYTES = 1024
"""Tensors smaller than this stay inside their graphs: sharing them saves nothing worth an indirection."""
ALIGNMENT = 4096
"""Each shared tensor starts at a multiple of this offset, so that a reader can map it from the file."""

_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")


def _content(tensor: onnx.TensorProto) -> tuple[tuple, bytes]:
    raw = numpy_helper.to_array(tensor).tobytes()  # the little-endian bytes raw_data and external data hold
    return (tensor.data_type, tuple(tensor.dims), hashlib.sha256(raw).hexdigest()), raw


def share_weights(folder: str | Path, names: Sequence[str], data_name: str = SHARED_WEIGHTS_FILE) -> int:
    """Write the initializers that two or more of the graphs ``names`` in ``folder`` hold alike once,
    into ``folder / data_name``, and point each graph at them; return the bytes saved (0, and no
    file, when nothing is shared)."""
    folder = Path(folder)
    models = {name: onnx.load(str(folder / name)) for name in names}
    holders: Counter = Counter()
    for model in models.values():
        holders.update({_content(t)[0] for t in model.graph.initializer
                        if numpy_helper.to_array(t).nbytes >= MIN_SHARED_BYTES})
    shared = {key for key, count in holders.items() if count > 1}
    if not shared:
        return 0
    placed: dict[tuple, tuple[int, int]] = {}
    saved = 0
    with open(folder / data_name, "wb") as data:
        for model in models.values():
            for tensor in model.graph.initializer:
                key, raw = _content(tensor)
                if key not in shared:
                    continue
                if key not in placed:
                    data.write(b"\0" * (-data.tell() % ALIGNMENT))
                    placed[key] = (data.tell(), len(raw))
                    data.write(raw)
                else:
                    saved += len(raw)
                for field in _DATA_FIELDS:
                    tensor.ClearField(field)
                offset, length = placed[key]
                del tensor.external_data[:]
                for k, v in (("location", data_name), ("offset", offset), ("length", length)):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = k, str(v)
                tensor.data_location = onnx.TensorProto.EXTERNAL
    for name, model in models.items():
        onnx.save(model, str(folder / name))
    log.info("%s: %d tensors stored once for %s (%.1f MB saved)", data_name, len(placed), ", ".join(names),
             saved / 1e6)
    return saved
