"""AudioCLIP: the audio head composed with CLIP's image and text towers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .audio import as_waveform_batch
from .clip import LayerNorm, ModifiedResNet, Transformer, causal_mask
from .config import AudioCLIPConfig
from .esresnext import ESResNeXtFBSP
from .metadata import CheckpointMeta
from .tokenizer import tokenize

LOGIT_SCALE_MIN = 1.0
LOGIT_SCALE_MAX = 100.0


def clamp_logit_scale(log_scale: torch.Tensor) -> torch.Tensor:
    """``exp(log_scale)`` clamped to [1, 100], as the reference applies every logit scale."""
    return torch.clamp(log_scale.exp(), min=LOGIT_SCALE_MIN, max=LOGIT_SCALE_MAX)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


@dataclass
class AudioCLIPOutput:
    """Normalised features of the modalities given, and the scaled cosine logits between them."""

    audio: torch.Tensor | None
    image: torch.Tensor | None
    text: torch.Tensor | None
    logits_audio_image: torch.Tensor | None
    logits_audio_text: torch.Tensor | None
    logits_image_text: torch.Tensor | None


@dataclass
class LabelBank:
    """Labels a fine-tuned checkpoint carries: texts, their normalised embeddings ``[L, D]``, template.

    A standalone head also carries its linear classifier over the pooled audio features:
    ``linear = (weight [L, F], bias [L])``, one row per label.
    """

    labels: list[str]
    embeddings: torch.Tensor
    template: str = "{}"
    linear: tuple[torch.Tensor, torch.Tensor] | None = None


class AudioCLIP(nn.Module):
    """Audio, image and text towers sharing one embedding space.

    ``vision`` and ``text`` are absent for an audio-only model (a fine-tuned head), which then
    carries a :class:`LabelBank` instead. Parameter names follow the official checkpoints.
    """

    def __init__(self, config: AudioCLIPConfig = AudioCLIPConfig()):
        super().__init__()
        self.config = config
        self.audio = ESResNeXtFBSP(config.audio)
        self.logit_scale_ai = nn.Parameter(torch.log(torch.tensor(100.0)))
        self.logit_scale_at = nn.Parameter(torch.log(torch.tensor(100.0)))
        self.label_bank: LabelBank | None = None
        self.metadata = CheckpointMeta()
        if config.vision is not None:
            v = config.vision
            self.visual = ModifiedResNet(v.layers, config.embed_dim, v.heads, v.image_resolution, v.width)
        if config.text is not None:
            t = config.text
            self.transformer = Transformer(t.width, t.layers, t.heads)
            self.token_embedding = nn.Embedding(t.vocab_size, t.width)
            self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width).normal_(std=0.01))
            self.ln_final = LayerNorm(t.width)
            self.text_projection = nn.Parameter(torch.empty(t.width, config.embed_dim).normal_(std=t.width ** -0.5))
            self.register_buffer("attn_mask", causal_mask(t.context_length), persistent=False)
        if config.vision is not None or config.text is not None:
            self.logit_scale = nn.Parameter(torch.ones([]))

    @property
    def device(self) -> torch.device:
        return self.logit_scale_at.device

    @property
    def has_text(self) -> bool:
        return self.config.text is not None

    @property
    def has_image(self) -> bool:
        return self.config.vision is not None

    def encode_audio(self, waveform) -> torch.Tensor:
        """Audio embeddings ``[B, D]`` (float32, not normalised).

        ``waveform``: tensor or numpy array, float in [-1, 1] (int16 arrays are scaled by
        1/32768) at 44.1 kHz, shaped ``(T,)``, ``(B, T)`` or ``(B, C, T)``.
        """
        x = as_waveform_batch(waveform).to(self.device)
        return self.audio(x)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings ``[N, D]`` of CLIP tokens ``[N, context]`` (not normalised)."""
        self._require_text()
        tokens = tokens.to(self.device)
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2), self.attn_mask.to(x.dtype)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ self.text_projection

    def encode_text(self, texts: Sequence[str], template: str = "{}") -> torch.Tensor:
        """Text embeddings ``[N, D]`` of ``template.format(text)`` for each text (not normalised)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"texts must be a list of strings, got {texts!r}")
        self._require_text()
        return self.encode_tokens(tokenize([template.format(t) for t in texts], self.config.text.context_length))

    def _require_text(self) -> None:
        if not self.has_text:
            raise ValueError("this model has no text tower (a fine-tuned audio head): embed new labels with the "
                             "release checkpoint it was trained from")

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[N, D]`` of preprocessed images ``[N, 3, 224, 224]`` (not normalised)."""
        if not self.has_image:
            raise ValueError("this model has no image tower (a fine-tuned audio head)")
        images = torch.as_tensor(images)
        res = self.config.vision.image_resolution
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (res, res):
            raise ValueError(f"images must be [N, 3, {res}, {res}], got {tuple(images.shape)}")
        return self.visual(images.to(self.device, torch.float32))

    def forward(self, audio=None, image: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None) -> AudioCLIPOutput:
        """The reference's three-modality pass: normalised features and clamped-scale logits."""
        a = normalize(self.encode_audio(audio)) if audio is not None else None
        i = normalize(self.encode_image(image)) if image is not None else None
        t = normalize(self.encode_tokens(tokens)) if tokens is not None else None
        ai = clamp_logit_scale(self.logit_scale_ai) * a @ i.T if a is not None and i is not None else None
        at = clamp_logit_scale(self.logit_scale_at) * a @ t.T if a is not None and t is not None else None
        it = clamp_logit_scale(self.logit_scale) * i @ t.T if i is not None and t is not None else None
        return AudioCLIPOutput(a, i, t, ai, at, it)
