"""The trained module: the audio head scored against label embeddings (cooperative) or by a new linear classifier."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from ..model import AudioCLIP, CheckpointMeta, audio_head_state, clamp_logit_scale, finetuned_checkpoint, normalize
from ..model.audioclip import LOGIT_SCALE_MAX, LOGIT_SCALE_MIN
from ..model.labels import check_template

MODES = ("cooperative", "standalone")


def audio_only(model: AudioCLIP) -> AudioCLIP:
    """A copy of ``model``'s audio head and logit scales without the image and text towers."""
    config, state = audio_head_state(model)
    head = AudioCLIP(config)
    head.load_state_dict(state, strict=True)
    head.label_bank, head.metadata = model.label_bank, model.metadata
    return head.to(model.device)


def _positions(wanted: list[str], available: list[str], what: str) -> list[int]:
    missing = [label for label in wanted if label not in available]
    if missing:
        raise ValueError(f"{what} lacks label(s) {', '.join(map(repr, missing[:3]))}"
                         f"{' and more' if len(missing) > 3 else ''}; "
                         f"it knows {', '.join(map(repr, available[:5]))}...")
    return [available.index(label) for label in wanted]


def label_embeddings(model: AudioCLIP, labels: list[str], template: str = "{}") -> torch.Tensor:
    """Normalised text embeddings ``[L, D]`` of ``labels``: from the text tower, else from the model's label bank."""
    check_template(template)
    if model.has_text:
        with torch.no_grad():
            return normalize(model.encode_text(labels, template).float())
    if model.label_bank is None:
        raise ValueError("the checkpoint has neither a text tower nor labels: start from a release checkpoint")
    bank = model.label_bank
    rows = _positions(labels, bank.labels, "the checkpoint (no text tower to embed new labels)")
    return normalize(bank.embeddings[rows].float()).to(model.device)


class AudioClassifier(nn.Module):
    """Waveforms ``[B, T]`` (float, 44.1 kHz, already validated) -> class logits ``[B, L]``.

    Cooperative: ``clamp(exp(logit_scale_at)) * cos(audio embedding, label embedding)``, with the
    label embeddings fixed. Standalone: a linear classifier on the head's pooled features (the
    projection ``fc`` and the logit scales are then unused and frozen). The front end runs in
    float32 even under autocast: its dB floor (1e-18) is below half precision's range.
    """

    def __init__(self, model: AudioCLIP, embeddings: torch.Tensor, mode: str = "cooperative",
                 classifier: nn.Linear | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        self.model = model
        self.mode = mode
        self.register_buffer("label_embeddings", embeddings.detach().float().to(model.device).clone())
        model.logit_scale_ai.requires_grad_(False)
        if mode == "standalone":
            self.classifier = classifier or nn.Linear(model.audio.feature_dim, embeddings.shape[0])
            self.classifier.to(model.device)
            model.logit_scale_at.requires_grad_(False)
            model.audio.fc.requires_grad_(False)
        else:
            self.classifier = None

    @classmethod
    def for_labels(cls, model: AudioCLIP, labels: list[str], template: str = "{}") -> AudioClassifier:
        """Score ``labels`` with any checkpoint: zero-shot (release), its label bank, or its standalone classifier."""
        head = audio_only(model)
        if model.metadata.mode == "standalone":
            weight, bias = model.label_bank.linear  # load_model refuses a standalone head without them
            rows = _positions(labels, model.label_bank.labels, "the standalone checkpoint")
            linear = nn.Linear(head.audio.feature_dim, len(labels))
            with torch.no_grad():
                linear.weight.copy_(weight[rows])
                linear.bias.copy_(bias[rows])
            return cls(head, model.label_bank.embeddings[rows], "standalone", linear).eval()
        return cls(head, label_embeddings(model, labels, template), "cooperative").eval()

    def forward(self, waveform: torch.Tensor, fbsp_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, L]``; ``fbsp_weights`` (``audio.fbsp.weights()``) lets a training step build them once
        for both the spectrogram and the FBSP norm loss (the weights' backward is the costliest part of a step)."""
        audio = self.model.audio
        with torch.autocast(waveform.device.type, enabled=False):
            db = audio.spectrogram_db(waveform.float(), fbsp_weights)
        pooled = audio.pool(audio.features(db))
        if self.classifier is not None:
            return self.classifier(pooled).float()
        embeddings = normalize(audio.fc(pooled).float())
        return clamp_logit_scale(self.model.logit_scale_at) * embeddings @ self.label_embeddings.T

    def freeze_trunk(self) -> None:
        """Train only what follows the pooled features: the projection ``fc`` and the logit scale (cooperative)
        or the linear classifier (standalone). The FBSP front end, the trunk and its batch-norm statistics stay."""
        self.model.audio.requires_grad_(False)
        if self.classifier is None:
            self.model.audio.fc.requires_grad_(True)

    @torch.no_grad()
    def keep_logit_scale_in_range(self) -> None:
        """Clamp the trained log logit scale to [ln 1, ln 100], where the forward's clamp passes its gradient.

        Outside that range ``clamp(exp(s), 1, 100)`` has zero gradient: a scale pushed below 1 by a
        few wrong, confident first steps would stay there for good (CLIP's trainers clamp the
        parameter after each step for the same reason). Inside it nothing changes.
        """
        scale = self.model.logit_scale_at
        scale.clamp_(math.log(LOGIT_SCALE_MIN), math.log(LOGIT_SCALE_MAX))

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """The FBSP transform's parameters and the logit scale without weight decay, the rest with it."""
        fbsp = self.model.audio.fbsp
        exempt = {id(p) for p in (fbsp.m, fbsp.fb, fbsp.fc, self.model.logit_scale_at)}
        trainable = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) not in exempt], "weight_decay": weight_decay},
                  {"params": [p for p in trainable if id(p) in exempt], "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def checkpoint(self, labels: list[str], meta: CheckpointMeta) -> dict:
        """The self-describing fine-tuned checkpoint (``audioclip.load_model`` reads it back)."""
        linear = None if self.classifier is None else (self.classifier.weight, self.classifier.bias)
        return finetuned_checkpoint(self.model, labels, self.label_embeddings, replace(meta, mode=self.mode),
                                    classifier=linear)
