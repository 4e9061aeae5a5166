"""Rewrites of an exported graph that change how it runs, not what it computes.

ONNX Runtime's CPU convolutions run fastest in its blocked channel layout (NCHWc: blocks of 16
channels with AVX-512, 8 with AVX2). A grouped convolution qualifies only when each group holds
whole blocks; the ResNeXt trunk's 3x3 convolutions have 4 (layer1) and 8 (layer2) input channels
per group, so ONNX Runtime runs them in plain NCHW with a layout reorder before and after each.
:func:`widen_grouped_convs` merges neighbouring groups into groups of 16 channels whose weights
are block-diagonal: the same sums plus exact zeros.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)

GROUP_CHANNELS = 16
"""Input channels per group after widening: ONNX Runtime's NCHWc block with AVX-512 (and two of AVX2's)."""


def widen_grouped_convs(model: onnx.ModelProto, channels: int = GROUP_CHANNELS) -> int:
    """Merge the groups of grouped ``Conv`` nodes with fewer than ``channels`` input channels per group.

    ``g`` groups of ``c`` input channels become ``g c / channels`` groups of ``channels``, each
    weight row zero outside its original group's channels. Depthwise convolutions (one channel per
    group) and groups that do not divide evenly are left alone. Embeddings move only by summation
    order; the zeros are work an accelerator with native grouped kernels does not need
    (docs/export.md, docs/benchmarks.md). Changes ``model`` in place; returns the number of nodes
    rewritten.
    """
    initializers = {t.name: t for t in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    rewritten, stale = 0, set()
    for node in model.graph.node:
        group = next((a for a in node.attribute if a.name == "group"), None)
        if node.op_type != "Conv" or group is None or group.i == 1 or len(node.input) < 2:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or users[node.input[1]] != 1:  # computed or shared weights: leave them
            continue
        w = numpy_helper.to_array(weight)
        out_channels, per_group = w.shape[:2]
        merge = channels // per_group
        if per_group == 1 or per_group >= channels or channels % per_group or group.i % merge:
            continue
        out_per_group = out_channels // group.i
        wide = np.zeros((out_channels, channels, *w.shape[2:]), dtype=w.dtype)
        slot = (np.arange(out_channels) // out_per_group) % merge  # place of each row's group in its merged group
        for j in range(merge):
            wide[slot == j, j * per_group:(j + 1) * per_group] = w[slot == j]
        weight.CopyFrom(numpy_helper.from_array(wide, weight.name))
        group.i //= merge
        rewritten += 1
        stale.add(weight.name)
    # shapes recorded for the rewritten weights (the exporter records every tensor's) are now wrong
    kept = [v for v in model.graph.value_info if v.name not in stale]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    log.info("widened %d grouped convolutions to %d input channels per group", rewritten, channels)
    return rewritten
