"""Builders the tests share: a tiny random AudioCLIP and tiny synthetic data sets in the published layouts.

Plain functions, imported as ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path``);
the fixtures built on them live in ``conftest.py``.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import sqlite3
import time
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import numpy as np
import pytest
import soundfile as sf
import torch

from audioclip.model import AudioCLIP, AudioCLIPConfig, AudioConfig, TextConfig, VisionConfig
from audioclip.model.constants import SAMPLE_RATE
from audioclip.monitor.config import MonitorConfig
from audioclip.monitor.output import JsonlOutput
from audioclip.monitor.service import Monitor


def require(condition: object, why: str) -> None:
    """What a test needs from the machine (a program, a package, a file): without it the test skips on a
    developer's machine and fails in CI (``CI=true``), where scripts/setup.sh and scripts/test-deps.sh install
    everything the suite needs, so that a green CI run never hides a test that did not run."""
    if condition:
        return
    from conftest import IN_CI  # conftest imports this module: import it back only when called

    if IN_CI:
        pytest.fail(f"{why}: CI must have it (scripts/setup.sh and scripts/test-deps.sh install it)")
    pytest.skip(why, allow_module_level=True)


def require_module(name: str, why: str) -> ModuleType:
    """The module ``name``, imported; missing, ``require`` says why (skips outside CI, fails in CI)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        require(False, f"{why}: module {name} is not installed")


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


KINDS = ("tone", "chirp", "noise", "clicks")
# (rate, subtype, channels): US8K mixes 8-32 bit, 8-48 kHz, mono and stereo.
FORMATS = [(8000, "PCM_U8", 1), (22050, "PCM_16", 2), (44100, "PCM_24", 1), (48000, "FLOAT", 2), (16000, "PCM_32", 1)]


def synth(kind: str, rng: np.random.Generator, seconds: float, rate: int) -> np.ndarray:
    """A clip of one of four sound types with random parameters, peak 0.3-0.8."""
    t = np.arange(int(seconds * rate)) / rate
    if kind == "tone":
        x = np.sin(2 * np.pi * rng.uniform(300, 1500) * t + rng.uniform(0, 2 * np.pi))
    elif kind == "chirp":
        f0, f1 = rng.uniform(200, 500), rng.uniform(2500, 3500)
        x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))
    elif kind == "noise":
        x = rng.normal(0, 0.3, len(t))
    else:
        x = np.zeros(len(t))
        period = int(rate * rng.uniform(0.04, 0.1))
        x[rng.integers(0, period)::period] = 1.0
    return (x / max(np.abs(x).max(), 1e-9) * rng.uniform(0.3, 0.8)).astype(np.float32)


def write_clip(path: Path, x: np.ndarray, rate: int, subtype: str, channels: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(path, data, rate, subtype=subtype)


def write_csv(path: Path, rows: list[dict]) -> None:
    """A metadata table in the data set's published column order (the rows' key order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def make_esc50(root: Path, per_class_per_fold: int = 2, seconds: float = 1.0, seed: int = 0) -> Path:
    """ESC-50 layout: ``meta/esc50.csv``, ``audio/<fold>-<id>-A-<target>.wav``; 4 classes, 5 folds."""
    rng = np.random.default_rng(seed)
    rows, n = [], 0
    for fold in range(1, 6):
        for target, kind in enumerate(KINDS):
            for _ in range(per_class_per_fold):
                rate, subtype, channels = FORMATS[n % len(FORMATS)]
                name = f"{fold}-{1000 + n}-A-{target}.wav"
                write_clip(root / "audio" / name, synth(kind, rng, seconds, rate), rate, subtype, channels)
                rows.append({"filename": name, "fold": fold, "target": target, "category": f"synthetic_{kind}",
                             "esc10": "False", "src_file": 1000 + n, "take": "A"})
                n += 1
    write_csv(root / "meta" / "esc50.csv", rows)
    return root


US8K_CLASSES = {3: "dog_bark", 1: "car_horn", 9: "street_music", 0: "air_conditioner"}


def make_us8k(root: Path, per_class_per_fold: int = 1, seconds: float = 1.0, seed: int = 1) -> Path:
    """UrbanSound8K layout: ``metadata/UrbanSound8K.csv``, ``audio/fold1..10``; 4 classes with sparse ids."""
    rng = np.random.default_rng(seed)
    rows, n = [], 0
    for fold in range(1, 11):
        for kind, (class_id, name) in zip(KINDS, US8K_CLASSES.items()):
            for _ in range(per_class_per_fold):
                rate, subtype, channels = FORMATS[n % len(FORMATS)]
                fname = f"{100 + n}-{class_id}-0-{n}.wav"
                path = root / "audio" / f"fold{fold}" / fname
                write_clip(path, synth(kind, rng, seconds, rate), rate, subtype, channels)
                rows.append({"slice_file_name": fname, "fsID": 100 + n, "start": 0.0, "end": seconds, "salience": 1,
                             "fold": fold, "classID": class_id, "class": name})
                n += 1
    write_csv(root / "metadata" / "UrbanSound8K.csv", rows)
    return root


def make_folder(root: Path, per_class: int = 5, seconds: float = 0.5, seed: int = 2) -> Path:
    """One folder per class (``my_tone/0.flac``, ...), 16 kHz FLAC."""
    rng = np.random.default_rng(seed)
    for kind in KINDS:
        for i in range(per_class):
            write_clip(root / f"my_{kind}" / f"{i}.flac", synth(kind, rng, seconds, 16000), 16000, "PCM_16", 1)
    return root


# -- the monitor ---------------------------------------------------------------------------------

def burst_wav(path: Path, pattern=((2.0, 0.0), (3.0, 0.3), (5.0, 0.0)), seed: int = 0) -> Path:
    """Silence and white-noise bursts: ``pattern`` is (seconds, amplitude) pieces."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([amp * rng.standard_normal(int(s * SAMPLE_RATE)).astype(np.float32) for s, amp in pattern])
    sf.write(path, np.clip(x, -1, 1), SAMPLE_RATE, subtype="FLOAT")
    return path


def monitor_config(tmp_path: Path, checkpoint: Path, sources: list[dict], **sections) -> MonitorConfig:
    """A monitor over ``sources`` with ``checkpoint``: 1-s windows, two labels; ``sections`` add or replace."""
    d = {
        "model": {"checkpoint": str(checkpoint)},
        "defaults": {"window": 1.0, "hop": 0.5, "threshold": 0.3, "min_dbfs": -60.0, "score": "softmax"},
        "labels": [{"name": "cat", "prompts": ["cat", "meowing cat"]}, {"name": "rain"}],
        "sources": sources,
        **sections,
    }
    return MonitorConfig.from_dict(d, origin="test.toml")


def run_monitor(cfg: MonitorConfig, **kwargs) -> tuple[Monitor, list[dict]]:
    """Run ``cfg`` to the end of its sources: the monitor and its JSON lines."""
    out = io.StringIO()
    monitor = Monitor(cfg, output=JsonlOutput(out), **kwargs)
    monitor.run()
    return monitor, [json.loads(line) for line in out.getvalue().splitlines()]


def event_rows(db: Path) -> list[dict]:
    """The ``events`` table of a monitor's database, by id."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY id")]


class GraphsMatch(NamedTuple):
    """What :func:`assert_graphs_match_pytorch` measured: over ``windows`` windows of the real clips, the
    encoder graph's largest absolute and smallest cosine difference from PyTorch's normalised embeddings,
    the classifier graph's largest logit difference, and on how many windows its top-1 label is PyTorch's."""

    windows: int
    max_abs_diff: float
    min_cosine: float
    max_logit_diff: float
    top1_agree: int


def assert_graphs_match_pytorch(export_dir: Path, model: AudioCLIP, clips_dir: Path, *, bound: float,
                                cosine: float) -> GraphsMatch:
    """The graphs an export wrote, run on ONNX Runtime, against PyTorch computed here from ``model``.

    Each clip of ``clips_dir`` (the 5-s ESC-50 clips) is cut into the graphs' fixed window (the first whole
    windows of it; a window longer than the clip repeats it), or taken whole where the export takes any
    length. ``audio_encoder.onnx``'s embeddings must be within ``bound`` of ``normalize(model.encode_audio)``
    in every component and at a cosine of ``cosine`` or more. ``classifier.onnx``'s logits are compared with
    PyTorch's for the labels and template the graph carries: an embedding at cosine ``c`` from another moves
    each cosine similarity by at most ``sqrt(2 - 2 c)`` (and by at most ``bound * sqrt(D)``), so the logits
    must agree within ``logit_scale`` times the smaller, and the top-1 label wherever PyTorch's margin over
    the second is more than twice that. Returns the measured figures for tighter checks by the caller.
    """
    from audioclip.export.runtime import ENCODER_FILE, OnnxClassifier, session
    from audioclip.model import ZeroShotClassifier

    classifier = OnnxClassifier(export_dir, threads=2)
    window = classifier.window_samples
    windows = []
    for path in sorted(Path(clips_dir).glob("*.wav")):
        clip, rate = sf.read(path, dtype="float32")
        assert rate == SAMPLE_RATE and clip.ndim == 1, f"{path}: {rate} Hz, shape {clip.shape}"
        if window is None:
            windows.append(clip)
        elif window > len(clip):
            windows.append(np.resize(clip, window))
        else:
            windows += [clip[i:i + window] for i in range(0, len(clip) - window + 1, window)]
    assert windows and len({len(w) for w in windows}) == 1, f"no clips of one length in {clips_dir}"
    x = np.stack(windows)

    (onnx_emb,) = session(Path(export_dir) / ENCODER_FILE, threads=2).run(["embedding"], {"waveform": x})
    reference = ZeroShotClassifier(model, classifier.labels, classifier.template)
    with torch.inference_mode():
        torch_emb = model.encode_audio(torch.from_numpy(x)).float()
        torch_emb = (torch_emb / torch_emb.norm(dim=-1, keepdim=True)).numpy()
        torch_logits = (reference.logit_scale * reference.scores_of(torch.from_numpy(torch_emb))[1]).numpy()
    assert onnx_emb.shape == torch_emb.shape, (onnx_emb.shape, torch_emb.shape)
    max_abs_diff = float(np.abs(onnx_emb - torch_emb).max())
    cosines = np.sum(onnx_emb * torch_emb, axis=-1) / np.linalg.norm(onnx_emb, axis=-1)
    assert max_abs_diff <= bound, f"encoder graph: max |diff| {max_abs_diff:.3g} > {bound:.3g}"
    assert cosines.min() >= cosine, f"encoder graph: min cosine {cosines.min():.7f} < {cosine}"

    assert classifier.logit_scale == pytest.approx(reference.logit_scale, rel=1e-6)
    onnx_logits = classifier.logits(x)
    allowed = reference.logit_scale * min(np.sqrt(2 - 2 * cosine), bound * np.sqrt(torch_emb.shape[1]))
    max_logit_diff = float(np.abs(onnx_logits - torch_logits).max())
    assert max_logit_diff <= allowed, f"classifier graph: logits differ by {max_logit_diff:.3g} > {allowed:.3g}"
    top2 = np.sort(torch_logits, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * allowed
    agree = onnx_logits.argmax(axis=-1) == torch_logits.argmax(axis=-1)
    assert agree[clear].all(), f"classifier graph: top-1 differs from PyTorch's on windows {np.flatnonzero(~agree)}"
    return GraphsMatch(len(x), max_abs_diff, float(cosines.min()), max_logit_diff, int(agree.sum()))


def wait_until(predicate, timeout: float, what: str, seen=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; seen: {seen()}")
        time.sleep(0.02)
