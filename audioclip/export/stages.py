"""The incremental graphs: PyTorch modules for the stages that overlapping windows share and the tail, and
writing them at the export's precision (:func:`write_stage_graphs`) with their ``trtexec`` shapes.

:class:`audioclip.export.incremental.OnnxIncrementalEncoder` runs them as
:class:`audioclip.model.incremental.IncrementalEncoder` runs the eager stages: the front end on
frames, the stem, layer1 and layer2 on a window's columns or on a slice of them (any width), and
the tail on a whole window's layer2 output. Each module computes what the eager stage computes,
with the trained submodules of the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from ..model.audioclip import AudioCLIP
from ..model.overlap import OverlapEncoder, pool_params, stage_lengths, trunk_blocks
from .graphs import ClassifierGraph, FrontEnd, Trunk, l2_normalize
from .incremental import FRONT_FILE, LAYER1_FILE, LAYER2_FILES, STEM_FILE, TAIL_FILE, layer2_file
from .runtime import tensorrt_name
from .writing import export_fp32, write_at_precision


class FramesToDb(nn.Module):
    """``frames`` ``[1, n, FRAME_LENGTH]`` of the padded signal at the reference's scale -> dB ``[1, 3, 341, n]``."""

    def __init__(self, model: AudioCLIP):
        super().__init__()
        self.front = FrontEnd(model.audio)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.front.db_of_frames(frames)


class StemStage(nn.Module):
    """dB columns -> stem columns (conv 7 / 2 / 3, batch norm, ReLU, max pool 3 / 2 / 1)."""

    def __init__(self, model: AudioCLIP):
        super().__init__()
        self.audio = model.audio

    def forward(self, db: torch.Tensor) -> torch.Tensor:
        a = self.audio
        return a.maxpool(a.relu(a.bn1(a.conv1(db))))


class LayerStage(nn.Module):
    """stem (or layer1) columns -> layer1 (or layer2) columns, gated; the gate pools in time as a whole
    window of ``time_pool`` ``(kernel, stride, padding)`` pools (``(1, 1, 0)``: layer1's, no pooling)."""

    def __init__(self, model: AudioCLIP, stage: int, time_pool: tuple[int, int, int] = (1, 1, 0)):
        super().__init__()
        self.audio = model.audio  # the weights keep their names (audio.layer2.0...), which int8 picks blocks by
        self.stage = stage
        self.time_pool = time_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.audio
        layer, att = (a.layer1, a.att1) if self.stage == 1 else (a.layer2, a.att2)
        out = layer(x)
        kf, sf, pf = pool_params(x.shape[-2], out.shape[-2])  # heights are fixed: 86 rows to 43
        kt, st, pt = self.time_pool
        gate_input = x
        if (kf, kt) != (1, 1):
            # ceil_mode keeps an odd slice's last column (an edge column, never kept) for kernel 2
            gate_input = F.max_pool2d(x, (kf, kt), (sf, st), (pf, pt), ceil_mode=kt == 2)
        return out * torch.sigmoid(att.bn(att.conv_point(att.conv_depth(gate_input))))


class TailStage(nn.Module):
    """A whole window's layer2 output -> ``(embedding, logits, probs)``: layer3, layer4, the reduction, the
    projection and the label scores of :class:`~audioclip.export.graphs.ClassifierGraph` (the same constants)."""

    def __init__(self, classifier_graph: ClassifierGraph):
        super().__init__()
        self.classifier = classifier_graph

    def forward(self, layer2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        trunk: Trunk = self.classifier.encoder.trunk
        pooled = trunk.pooled_from_layer2(layer2)
        logits, probs = self.classifier.head(pooled)
        return l2_normalize(trunk.audio.fc(pooled)), logits, probs


def stage_graph_specs(model: AudioCLIP, classifier, window_samples: int, dynamic_length: bool) -> list[tuple]:
    """``(file, module, example input, input name, output names, dynamic axes)`` of each incremental graph.

    Widths are dynamic (a window's columns or any slice of them); the tail takes a whole window's
    layer2 output, fixed unless the export is ``dynamic_length``. A fixed window needs one of the
    two layer2 graphs (the one its parity takes), a dynamic length both.
    """
    from torch.export import Dim

    from ..model.constants import FRAME_LENGTH

    a = model.audio
    columns = {3: Dim("columns", min=2, max=1 << 20)}
    stem_channels, layer1_channels = a.conv1.out_channels, a.layer1[-1].conv3.out_channels
    layer2_channels = a.layer2[-1].conv3.out_channels
    # heights of a window's stages: 341 dB rows, 86 after the stem and layer1, 43 after layer2
    heights = {"db": 341, "stem": 86, "layer2": 43}
    graph = ClassifierGraph(model, classifier.label_embeddings, classifier.logit_scale, linear=classifier.linear)
    layer2_width = stage_lengths(window_samples)["layer2"]
    specs = [
        (FRONT_FILE, FramesToDb(model), torch.zeros(1, 37, FRAME_LENGTH), "frames", ["db"],
         {1: Dim("frames", min=2, max=1 << 20)}),
        (STEM_FILE, StemStage(model), torch.zeros(1, 3, heights["db"], 37), "db", ["stem"], columns),
        (LAYER1_FILE, LayerStage(model, 1), torch.zeros(1, stem_channels, heights["stem"], 23), "stem", ["layer1"],
         columns),
    ]
    for parity, file in LAYER2_FILES.items():
        if dynamic_length or file == layer2_file(window_samples):
            specs.append((file, LayerStage(model, 2, (2, 2, 0) if parity == 0 else (3, 2, 1)),
                          torch.zeros(1, layer1_channels, heights["stem"], 23), "layer1", ["layer2"], columns))
    specs.append((TAIL_FILE, TailStage(graph), torch.zeros(1, layer2_channels, heights["layer2"], layer2_width),
                  "layer2", ["embedding", "logits", "probs"], columns if dynamic_length else {}))
    return specs


def write_stage_graphs(tmp: Path, *, model, classifier, window_samples: int, dynamic_length: bool, precision: str,
                       opset: int, calibration: np.ndarray | None, int8_blocks: dict, metadata: dict) -> list[str]:
    """Export the incremental graphs (:func:`stage_graph_specs`) at ``precision``; returns the file names.

    The front end stays fp32 at every precision (one file, like the text encoder). int8 quantises
    the blocks chosen for the whole-window graphs (``int8_blocks`` per flavour) in each stage graph
    that holds some, calibrated on the stage's input for whole calibration windows, and writes
    both flavours of each stage graph (a graph with none of the blocks is the fp32 graph in both).
    """
    from ..model.incremental import IncrementalEncoder

    specs = stage_graph_specs(model, classifier, window_samples, dynamic_length)
    stage_inputs: dict[str, list[np.ndarray]] = {}
    if calibration is not None:
        encoder = IncrementalEncoder(model, window_samples)
        for window in calibration:
            outputs = encoder.stages_of(window)
            for name in ("db", "stem", "layer1", "layer2"):
                stage_inputs.setdefault(name, []).append(outputs[name][0].contiguous().numpy())
    files = []
    for name, module, example, input_name, outputs, dynamic in specs:
        at = "fp32" if name == FRONT_FILE else precision
        fp32, graph = export_fp32(tmp, name, module, (example,), at, input_name=input_name, output_names=outputs,
                                  dynamic=dynamic, opset=opset)
        files += write_at_precision(tmp, name, fp32, graph, precision=at, metadata=metadata,
                                    int8_blocks=int8_blocks, calibration=stage_inputs.get(input_name),
                                    cast_outputs=True)
    return files


def stage_shapes(folder: Path, files: Sequence[str], model, lengths: Sequence[int]) -> dict:
    """Each incremental graph's input for ``trtexec``: name, shape without its width and ``(min, opt, max)``
    widths over whole windows and every shift that shares columns (:meth:`OverlapEncoder.widths`), for the
    export's window or, for a dynamic length, from the shortest input to a 60-s window."""
    plans = [OverlapEncoder(trunk_blocks(model.audio), n) for n in lengths]
    widths = [plan.widths() for plan in plans]
    tails = [plan.lengths["layer2"] for plan in plans]
    stages = {FRONT_FILE: "front", STEM_FILE: "stem", LAYER1_FILE: "layer1",
              **{f: "layer2" for f in LAYER2_FILES.values()}}
    shapes = {}
    for name in (*stages, TAIL_FILE):
        file = name if name in files else tensorrt_name(name)
        if file not in files:
            continue
        graph_input = onnx.load(str(folder / file), load_external_data=False).graph.input[0]
        dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
        dims = [dims[0], *dims[2:]] if name == FRONT_FILE else dims[:-1]
        if name == TAIL_FILE:
            span = (min(tails), tails[0], max(tails))
        else:
            span = (min(w[stages[name]][0] for w in widths), widths[0][stages[name]][1],
                    max(w[stages[name]][1] for w in widths))
        shapes[name] = (graph_input.name, dims, span)
    return shapes
