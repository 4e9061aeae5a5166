"""Zero-shot classification of audio against a fixed set of text labels."""

from __future__ import annotations

from typing import Sequence

import torch

from .audio import as_waveform_batch
from .audioclip import AudioCLIP, clamp_logit_scale, normalize
from .labels import ParameterError, check_labels, check_template


class ZeroShotClassifier:
    """Embeds and normalises the labels once; scores audio by scaled cosine similarity.

    ``probs = softmax(clamp(exp(logit_scale_at), 1, 100) * cosine)``. With ``labels=None`` a
    fine-tuned model's own labels and embeddings are used.

    A standalone fine-tuned head (``metadata.mode == "standalone"``) scores its own labels with
    its linear classifier over the pooled audio features: ``probs = softmax(W f + b)``; its
    "similarities" are those logits (``logit_scale`` is 1) and ``linear`` holds ``(W, b)``.

    ``precision="bf16"``: the audio encoder runs under ``torch.autocast("cpu", torch.bfloat16)`` (matrix
    products and convolutions in bf16, on the CPU's bf16 units where it has them); results are float32.
    """

    def __init__(self, model: AudioCLIP, labels: Sequence[str] | None = None, template: str | None = None, *,
                 precision: str = "fp32"):
        if precision not in ("fp32", "bf16"):
            raise ParameterError("precision", f"{{precision}} {precision!r}: use fp32 or bf16")
        self.precision = precision
        self.model = model.eval()
        self.linear: tuple[torch.Tensor, torch.Tensor] | None = None
        mode = model.metadata.mode
        if mode == "standalone":
            self._standalone(labels, template)
            return
        if mode != "cooperative":
            raise ValueError(f"this fine-tuned head was trained in mode {mode!r}, which cannot be scored here")
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

    def _standalone(self, labels, template) -> None:
        bank = self.model.label_bank
        if labels is not None or template is not None:
            raise ParameterError("labels", "this standalone head's linear classifier scores only the labels it was "
                                           f"trained on ({', '.join(bank.labels)}): drop {{labels}} and {{template}}")
        self.labels, self.template = list(bank.labels), bank.template
        self.label_embeddings = normalize(bank.embeddings.float().to(self.model.device))
        self.linear = tuple(t.float().to(self.model.device) for t in bank.linear)
        self.logit_scale = 1.0

    def autocast(self):
        """The context the audio encoder runs in: ``torch.autocast`` to bf16 when ``precision`` is bf16."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def embed(self, waveform) -> torch.Tensor:
        """Normalised audio embeddings ``[B, D]``."""
        with torch.inference_mode():
            with self.autocast():
                embeddings = self.model.encode_audio(waveform)
            return normalize(embeddings.float())

    def similarities(self, waveform) -> torch.Tensor:
        """Cosine similarities ``[B, L]`` between the audio and each label (a standalone head: its logits)."""
        if self.linear is not None:
            return self.scores(waveform)[1]
        return self.embed(waveform) @ self.label_embeddings.T

    def logits(self, waveform) -> torch.Tensor:
        return self.logit_scale * self.similarities(waveform)

    def scores(self, waveform) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs, similarities)``, both ``[B, L]``, from one pass of the audio encoder (a standalone
        head's similarities are its logits)."""
        if self.linear is not None:
            with torch.inference_mode():
                with self.autocast():
                    features = self.model.audio.pooled_features(as_waveform_batch(waveform).to(self.model.device))
                logits = self.linear_logits(features.float())
            return torch.softmax(logits, dim=-1), logits
        return self.scores_of(self.embed(waveform))

    def linear_logits(self, features: torch.Tensor) -> torch.Tensor:
        """A standalone head's logits ``[B, L]`` of pooled audio features ``[B, F]``."""
        weight, bias = self.linear
        return features.float() @ weight.T + bias

    def scores_of(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs, similarities)`` for normalised audio ``embeddings`` ``[B, D]`` computed elsewhere."""
        if self.linear is not None:
            raise ValueError("a standalone head scores pooled audio features, not embeddings: use scores()")
        sims = embeddings @ self.label_embeddings.T
        return torch.softmax(self.logit_scale * sims, dim=-1), sims

    def probs(self, waveform) -> torch.Tensor:
        """Label probabilities ``[B, L]``."""
        return self.scores(waveform)[0]
