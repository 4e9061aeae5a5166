"""Zero-shot classification of audio against a fixed set of text labels."""

from __future__ import annotations

from typing import Sequence

import torch

from .audioclip import AudioCLIP, clamp_logit_scale, normalize


def check_labels(labels: Sequence[str]) -> list[str]:
    """Labels as a list of distinct non-empty strings, else ``ValueError`` saying which are not."""
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise ValueError(f"labels must be a list of strings, got {type(labels).__name__}")
    labels = list(labels)
    if not labels:
        raise ValueError("no labels given: pass at least one, e.g. ['siren', 'dog bark']")
    bad = [label for label in labels if not isinstance(label, str)]
    if bad:
        raise ValueError(f"labels must be strings, got {bad[0]!r} ({type(bad[0]).__name__})")
    empty = [i for i, label in enumerate(labels) if not label.strip()]
    if empty:
        raise ValueError(f"label {empty[0]} is empty; every label needs some text")
    seen, duplicates = set(), []
    for label in labels:
        if label in seen and label not in duplicates:
            duplicates.append(label)
        seen.add(label)
    if duplicates:
        raise ValueError(f"duplicate labels: {', '.join(map(repr, duplicates))}; give each label once")
    return labels


class ZeroShotClassifier:
    """Embeds and normalises the labels once; scores audio by scaled cosine similarity.

    ``probs = softmax(clamp(exp(logit_scale_at), 1, 100) * cosine)``. With ``labels=None`` a
    fine-tuned model's own labels and embeddings are used.
    """

    def __init__(self, model: AudioCLIP, labels: Sequence[str] | None = None, template: str | None = None):
        self.model = model.eval()
        mode = model.metadata.get("mode", "cooperative")
        if mode != "cooperative":
            raise ValueError(f"this fine-tuned head was trained in mode {mode!r}: its scores come from a linear "
                             "classifier, not from cosine similarity to label embeddings; only 'cooperative' heads "
                             "can be streamed or exported (evaluate it with audioclip-train evaluate)")
        if labels is None:
            if model.label_bank is None:
                raise ValueError("no labels given and the checkpoint carries none: pass labels")
            bank = model.label_bank
            self.labels, self.template = list(bank.labels), bank.template
            embeddings = bank.embeddings
        else:
            self.labels = check_labels(labels)
            self.template = "{}" if template is None else template
            if "{}" not in self.template:
                raise ValueError(f"template {self.template!r} has no '{{}}' where the label goes")
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
        sims = self.similarities(waveform)
        return torch.softmax(self.logit_scale * sims, dim=-1), sims

    def probs(self, waveform) -> torch.Tensor:
        """Label probabilities ``[B, L]``."""
        return self.scores(waveform)[0]
