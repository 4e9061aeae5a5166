"""Training objectives of AudioCLIP (kept out of the model, which only computes)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..model import AudioCLIPOutput
from ..model.esresnext import ESResNeXtFBSP


def contrastive_loss(output: AudioCLIPOutput) -> torch.Tensor:
    """Symmetric cross-entropy of each pair of modalities present, divided by (number of pairs)!.

    The reference divides the sum by 1, 2 or 6 for one, two or three pairs.
    """
    logits = (output.logits_audio_image, output.logits_audio_text, output.logits_image_text)
    pairs = [x for x in logits if x is not None]
    if not pairs:
        raise ValueError("contrastive loss needs at least two modalities")
    target = torch.arange(pairs[0].shape[0], device=pairs[0].device)
    total = sum(F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target) for logits in pairs)
    return total / math.factorial(len(pairs))


def fbsp_norm_loss(audio: ESResNeXtFBSP) -> torch.Tensor:
    """Keeps each bin of the learned transform at unit norm (the reference's ``loss_ttf``, normalised case)."""
    return fbsp_weight_norm_loss(audio.fbsp.weights())


def fbsp_weight_norm_loss(weights: torch.Tensor) -> torch.Tensor:
    """:func:`fbsp_norm_loss` of complex weights ``[bins, n_fft, 2]`` already built (once per training step)."""
    norms = torch.norm(weights, p=2, dim=[-1, -2])
    return F.mse_loss(norms, torch.ones_like(norms))


def normalize_fbsp_gradients(audio: ESResNeXtFBSP, eps: float = 1e-8) -> list[torch.utils.hooks.RemovableHandle]:
    """Scale the gradients of ``m``, ``fb`` and ``fc`` by their infinity norm, as the reference's hooks do."""
    return [p.register_hook(lambda g: g / (torch.norm(g, p=float("inf")) + eps))
            for p in (audio.fbsp.m, audio.fbsp.fb, audio.fbsp.fc)]
