"""Shared fixtures: the golden reference data, real clips, and tiny model configurations."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from audioclip.model import AudioCLIP, AudioCLIPConfig, AudioConfig, TextConfig, VisionConfig

SHARED = Path(os.environ.get("AUDIOCLIP_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
GOLDEN = SHARED / "golden"
AUDIO = SHARED / "audio"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        if IN_CI:
            pytest.fail(f"{what} not found at {path}: CI must run with ../shared beside the clone")
        pytest.skip(f"{what} not found at {path} (a clone outside CI); parity tests need ../shared")
    return path


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return _require(GOLDEN, "golden reference data")


@pytest.fixture(scope="session")
def clips_dir() -> Path:
    return _require(AUDIO, "real ESC-50 clips")


@pytest.fixture(scope="session")
def golden_outputs(golden_dir):
    with np.load(golden_dir / "reference_outputs.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def golden_model(golden_dir) -> AudioCLIP:
    """The golden checkpoint (full audio head, reduced image and text towers), loaded once."""
    from audioclip.model import load_model

    return load_model(golden_dir / "checkpoint.pt")


TINY_CONFIG = AudioCLIPConfig(
    embed_dim=32,
    audio=AudioConfig(layers=(1, 1, 1, 1), width=8, groups=1, width_per_group=64, embed_dim=32),
    vision=VisionConfig(layers=(1, 1, 1, 1), width=8, image_resolution=64),
    text=TextConfig(width=64, layers=1),
)


def make_tiny_model(seed: int = 0) -> AudioCLIP:
    """A small random AudioCLIP (full-size front end, tiny trunk and towers) with non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = AudioCLIP(TINY_CONFIG)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        model.audio.fbsp.m.normal_(0.0, 0.05)
    return model.eval()


@pytest.fixture
def tiny_model() -> AudioCLIP:
    return make_tiny_model()
