"""Batch-norm statistics during fine-tuning: the paper's batch statistics, frozen statistics, or a recalibration.

In training mode each layer normalises by its batch; evaluation uses running statistics that
follow at momentum 0.1. When fine-tuning moves the activations fast (at lr 1e-3 the stem of the
golden head moved ``bn1``'s inputs by over 1000 in 12 steps) and batches are small, they lag, and
the evaluation-mode network predicts one class for everything (docs/training.md). ``BN_MODES``:

- ``batch``: the paper's: training normalises by each batch, the running statistics follow at
  momentum 0.1.
- ``recalibrate``: as ``batch``, then before each evaluation the running statistics are
  recomputed as the exact average over the training clips (without augmentation), so that the
  saved head normalises as it was trained.
- ``frozen``: the source checkpoint's running statistics are used in training as in evaluation
  and never change (the affine weights still learn), as detection trainers do with small batches:
  what is trained is what is evaluated.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BN_MODES = ("batch", "recalibrate", "frozen")


def batch_norms(module: nn.Module) -> list[_BatchNorm]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def train_mode(module: nn.Module, bn: str) -> None:
    """``module.train()``, with its batch norms in evaluation mode when ``bn`` is ``frozen``."""
    module.train()
    if bn == "frozen":
        for m in batch_norms(module):
            m.eval()


@torch.no_grad()
def recalibrate(module: nn.Module, batches: Iterable[torch.Tensor], device: torch.device) -> int:
    """Replace every batch norm's running statistics by their average over ``batches`` of waveforms.

    Each layer's mean and variance become the average of the per-batch statistics (PyTorch's
    cumulative average, ``momentum=None``), computed in training mode without gradients. Leaves
    ``module`` in evaluation mode; returns the number of waveforms seen.
    """
    norms = batch_norms(module)
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    seen = 0
    try:
        for x in batches:
            module(x.to(device, non_blocking=True))
            seen += len(x)
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        module.eval()
    return seen
