"""Configuration dataclasses, and inference of a configuration from a state dict's shapes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping

import torch


@dataclass(frozen=True)
class AudioConfig:
    """ESResNeXt-FBSP audio head. The defaults are the released checkpoints' head."""

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    groups: int = 32
    width_per_group: int = 4
    embed_dim: int = 1024


@dataclass(frozen=True)
class VisionConfig:
    """CLIP's modified ResNet image tower with attention pooling."""

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    image_resolution: int = 224

    @property
    def heads(self) -> int:
        return self.width * 32 // 64


@dataclass(frozen=True)
class TextConfig:
    """CLIP's causal text transformer."""

    width: int = 512
    layers: int = 12
    context_length: int = 77
    vocab_size: int = 49408

    @property
    def heads(self) -> int:
        return self.width // 64


@dataclass(frozen=True)
class AudioCLIPConfig:
    """The whole model; ``vision`` or ``text`` is None for an audio-only model (a fine-tuned head)."""

    embed_dim: int = 1024
    audio: AudioConfig = field(default_factory=AudioConfig)
    vision: VisionConfig | None = field(default_factory=VisionConfig)
    text: TextConfig | None = field(default_factory=TextConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> AudioCLIPConfig:
        audio = AudioConfig(**{**d["audio"], "layers": tuple(d["audio"]["layers"])})
        vision = None if d.get("vision") is None else VisionConfig(
            **{**d["vision"], "layers": tuple(d["vision"]["layers"])})
        text = None if d.get("text") is None else TextConfig(**d["text"])
        return cls(embed_dim=int(d["embed_dim"]), audio=audio, vision=vision, text=text)


def _count_blocks(keys: list[str], prefix: str) -> tuple[int, int, int, int]:
    counts = []
    for stage in range(1, 5):
        stage_prefix = f"{prefix}layer{stage}."
        blocks = {k[len(stage_prefix):].split(".")[0] for k in keys if k.startswith(stage_prefix)}
        counts.append(len(blocks))
    return tuple(counts)  # type: ignore[return-value]


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> AudioCLIPConfig:
    """Read tower sizes off tensor shapes, as CLIP's ``build_model`` does.

    Raises ``KeyError`` naming a key the inference needs when it is absent.
    """
    keys = list(state_dict)
    fc = state_dict["audio.fc.weight"]
    embed_dim = fc.shape[0]
    conv2 = state_dict["audio.layer1.0.conv2.weight"]  # [width, width / groups, 3, 3]
    groups = conv2.shape[0] // conv2.shape[1]
    audio_width = state_dict["audio.conv1.weight"].shape[0]
    audio = AudioConfig(
        layers=_count_blocks(keys, "audio."),
        width=audio_width,
        groups=groups,
        width_per_group=conv2.shape[0] * 64 // (audio_width * groups),
        embed_dim=embed_dim,
    )
    vision = None
    if "visual.conv1.weight" in state_dict:
        grid = round((state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(
            layers=_count_blocks(keys, "visual."),
            width=state_dict["visual.conv1.weight"].shape[0] * 2,
            image_resolution=grid * 32,
        )
    text = None
    if "token_embedding.weight" in state_dict:
        n_layers = len({k.split(".")[2] for k in keys if k.startswith("transformer.resblocks.")})
        text = TextConfig(
            width=state_dict["ln_final.weight"].shape[0],
            layers=n_layers,
            context_length=state_dict["positional_embedding"].shape[0],
            vocab_size=state_dict["token_embedding.weight"].shape[0],
        )
    return AudioCLIPConfig(embed_dim=embed_dim, audio=audio, vision=vision, text=text)
