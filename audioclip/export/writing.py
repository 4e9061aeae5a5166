"""Writing one ONNX graph: torch's exporter at a checked opset, metadata, and the export's one-line error."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import onnx
import torch

from .logs import dropping
from .verify import Check


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
