"""Writing one ONNX graph: torch's exporter at a checked opset, conversion to fp16 or int8 (both flavours),
metadata, and the export's one-line error."""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Sequence

import onnx
import torch

from . import precision as prec
from .layout import widen_grouped_convs
from .logs import dropping
from .runtime import tensorrt_name
from .verify import Check

log = logging.getLogger(__name__)


class ExportError(ValueError):
    """An export that cannot be made or that failed its verification; the message is one line."""

    def __init__(self, message: str, checks: Sequence[Check] = ()):
        super().__init__(message)
        self.checks = list(checks)


def export_graph(module: torch.nn.Module, example: tuple, path: Path, *, input_name: str, output_names: list[str],
            dynamic: dict, opset: int) -> onnx.ModelProto:
    """Export ``module`` to ``path`` and return the graph written there, checked to have ``opset``."""
    # torch's exporter notes, 4 lines per graph, that torchvision is absent: this model has no torchvision ops
    with warnings.catch_warnings(), torch.no_grad(), \
            dropping("torch.onnx._internal.exporter._registration", "torchvision is not installed"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), example, dynamo=True, input_names=[input_name],
                                    output_names=output_names, dynamic_shapes=(dynamic,),
                                    opset_version=opset, optimize=True, verbose=False)
    program.save(str(path))
    graph = onnx.load(str(path))
    written = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    if written != opset:  # the exporter falls back to its own opset when it cannot convert
        raise ExportError(f"torch's ONNX exporter wrote opset {written}, not the {opset} asked for: "
                          f"pass --opset {written}")
    return graph


def set_metadata(path: Path, metadata: dict) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {k: str(v) for k, v in metadata.items()})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


INT8_SCHEMES = {False: "uint8 activations with zero points, per-channel int8 weights (ONNX Runtime CPU)",
                True: "symmetric int8 activations and per-channel weights, zero points 0 (TensorRT)"}


def export_fp32(tmp: Path, name: str, module, example: tuple, precision: str,
                **export_args) -> tuple[Path, onnx.ModelProto]:
    """Export ``module`` as fp32 to ``tmp/name`` (to ``name.fp32`` when it is converted to ``precision`` next)."""
    fp32 = tmp / (name if precision == "fp32" else f"{name}.fp32")
    log.info("exporting %s", name)
    graph = export_graph(module, example, fp32, **export_args)
    if widen_grouped_convs(graph):
        onnx.save(graph, str(fp32))
    return fp32, graph


def write_at_precision(tmp: Path, name: str, fp32: Path, graph: onnx.ModelProto, *, precision: str, metadata: dict,
                       int8_blocks: dict, calibration, cast_outputs: bool = False) -> list[str]:
    """Write graph ``name`` at ``precision`` from its fp32 export (``fp32``, ``graph``); returns the file names.

    fp16 converts the trunk (``cast_outputs``: as :func:`.precision.to_fp16`). int8 writes both
    flavours (``NAME.onnx`` for ONNX Runtime, ``NAME.trt.onnx`` for TensorRT, see
    :func:`.precision.quantize_int8`), quantising the graph's share of ``int8_blocks[tensorrt]``,
    calibrated on ``calibration`` (the graph's inputs); a graph holding none of them is its fp32
    graph in both flavours.
    """
    graph_metadata = {**metadata, "graph": name.removesuffix(".onnx"), "precision": precision}
    if precision == "fp32":
        set_metadata(tmp / name, graph_metadata)
        return [name]
    files = []
    if precision == "fp16":
        onnx.save(prec.to_fp16(graph, cast_outputs=cast_outputs), str(tmp / name))
        set_metadata(tmp / name, graph_metadata)
        files.append(name)
    else:
        for tensorrt in (False, True):
            target = tensorrt_name(name) if tensorrt else name
            blocks = int8_blocks[tensorrt]
            if prec.int8_nodes(graph, blocks):
                prec.quantize_int8(fp32, tmp / target, calibration=calibration, blocks=blocks, tensorrt=tensorrt)
            else:
                shutil.copyfile(fp32, tmp / target)
            set_metadata(tmp / target, {**graph_metadata, "int8_blocks": describe_blocks(blocks),
                                        "int8_scheme": INT8_SCHEMES[tensorrt]})
            files.append(target)
    fp32.unlink()
    return files


def describe_blocks(blocks: Sequence[tuple[int, int]]) -> str:
    (s0, b0), (s1, b1) = blocks[0], blocks[-1]
    return f"pointwise convolutions of layer{s0}.{b0} to layer{s1}.{b1} ({len(blocks)} residual blocks)"
