"""Zero-shot classification of audio against a fixed set of text labels."""

from __future__ import annotations

from typing import Sequence

import torch

from .audioclip import AudioCLIP, clamp_logit_scale, normalize
from .labels import ParameterError, check_labels, check_template


class ZeroShotClassifier:
    """Embeds and normalises the labels once; scores audio by scaled cosine similarity.

    ``probs = softmax(clamp(exp(logit_scale_at), 1, 100) * cosine)``. With ``labels=None`` a
    fine-tuned model's own labels and embeddings are used.
    """

    def __init__(self, model: AudioCLIP, labels: Sequence[str] | None = None, template: str | None = None):
        self.model = model.eval()
        mode = model.metadata.mode
        if mode != "cooperative":
            raise ValueError(f"this fine-tuned head was trained in mode {mode!r}: its scores come from a linear "
                             "classifier, not from cosine similarity to label embeddings; only 'cooperative' heads "
                             "can be streamed or exported (evaluate it with audioclip-train evaluate)")
        if labels is None:
            if model.label_bank is None:
                raise ParameterError("labels", "no labels given and the checkpoint carries none: pass {labels}")
            bank = model.label_bank
            self.labels, self.template = list(bank.labels), bank.template
            embeddings = bank.embeddings
        else:
            self.labels = check_labels(labels)
            self.template = check_template(template)
            with torch.inference_mode():
                embeddings = model.encode_text(self.labels, self.template)
        self.label_embeddings = normalize(embeddings.float().to(model.device))
        with torch.no_grad():
            self.logit_scale = float(clamp_logit_scale(model.logit_scale_at.detach()))

    def embed(self, waveform) -> torch.Tensor:
        """Normalised audio embeddings ``[B, D]``."""
        with torch.inference_mode():
            return normalize(self.model.encode_audio(waveform))

    def similarities(self, waveform) -> torch.Tensor:
        """Cosine similarities ``[B, L]`` between the audio and each label."""
        return self.embed(waveform) @ self.label_embeddings.T

    def logits(self, waveform) -> torch.Tensor:
        return self.logit_scale * self.similarities(waveform)

    def scores(self, waveform) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs, similarities)``, both ``[B, L]``, from one pass of the audio encoder."""
        return self.scores_of(self.embed(waveform))

    def scores_of(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs, similarities)`` for normalised audio ``embeddings`` ``[B, D]`` computed elsewhere."""
        sims = embeddings @ self.label_embeddings.T
        return torch.softmax(self.logit_scale * sims, dim=-1), sims

    def probs(self, waveform) -> torch.Tensor:
        """Label probabilities ``[B, L]``."""
        return self.scores(waveform)[0]
