"""Shared fixtures: the golden reference data, real clips, a tiny model and its checkpoint, a synthetic ESC-50."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from audioclip.model import AudioCLIP

from helpers import make_esc50, make_tiny_model

SHARED = Path(os.environ.get("AUDIOCLIP_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
GOLDEN = SHARED / "golden"
AUDIO = SHARED / "audio"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config) -> None:
    """The suite's caches (the background bank's embeddings, OpenVINO's compiled graphs, checkpoints) go to a
    folder of this run's, inherited by the commands the tests start: a user's ~/.cache/audioclip is neither
    read nor written."""
    import tempfile

    os.environ["AUDIOCLIP_CACHE"] = config._audioclip_cache = tempfile.mkdtemp(prefix="audioclip-test-cache-")


def pytest_unconfigure(config) -> None:
    import shutil

    shutil.rmtree(getattr(config, "_audioclip_cache", ""), ignore_errors=True)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        if IN_CI:
            pytest.fail(f"{what} not found at {path}: CI must run with ../shared beside the clone")
        pytest.skip(f"{what} not found at {path} (a clone outside CI); parity tests need ../shared")
    return path


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Every test leaves torch's thread count as it found it (backends set it; the summation order follows it)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def keep_logging():
    """Every test leaves logging as it found it.

    A command run in-process points the root handler at its captured stderr, which closes after the
    test; a later test's background thread then logs into a closed file, and the package logger's
    level would leak into tests that count records.
    """
    def ours(handlers):  # pytest's own capture handlers come and go with each phase: leave them be
        return [h for h in handlers if not type(h).__module__.startswith("_pytest")]

    def package_levels():  # the package's loggers, e.g. one a command turns up to INFO
        return {name: logging.getLogger(name).level for name in list(logging.root.manager.loggerDict)
                if name == "audioclip" or name.startswith("audioclip.")}

    root = logging.getLogger()
    handlers, level, levels = ours(root.handlers), root.level, package_levels()
    formatwarning = warnings.formatwarning
    yield
    for handler in ours(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name in package_levels():
        logging.getLogger(name).setLevel(levels.get(name, logging.NOTSET))
    warnings.formatwarning = formatwarning
    logging.captureWarnings(False)


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
def reference_live(golden_dir, golden_outputs) -> dict[str, np.ndarray]:
    """The published reference code's outputs for the golden inputs, computed on this machine (tests/reference.py)."""
    from reference import load_reference, reference_outputs

    _require(SHARED / "reference" / "code", "the reference implementation's code")
    with torch.inference_mode():
        return reference_outputs(load_reference(SHARED, golden_dir), golden_outputs, golden_dir)


@pytest.fixture(scope="session")
def golden_model(golden_dir) -> AudioCLIP:
    """The golden checkpoint (full audio head, reduced image and text towers), loaded once."""
    from audioclip.model import load_model

    return load_model(golden_dir / "checkpoint.pt")


@pytest.fixture
def tiny_model() -> AudioCLIP:
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_export_2s(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny model exported to ONNX for 2-s windows (labels cat, dog, siren), shared by the streaming and
    monitor tests that run on ONNX Runtime (an export takes most of a minute)."""
    exporter = pytest.importorskip("audioclip.export.exporter", reason="the ONNX exporter is not built")
    out = tmp_path_factory.mktemp("onnx") / "export"
    exporter.export_onnx(checkpoint=tiny_checkpoint, out=out, labels=["cat", "dog", "siren"], window=2.0, threads=1)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny model's official-layout state dict: ``load_model`` infers the tiny sizes from its shapes."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(make_tiny_model(0).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def esc50(tmp_path_factory) -> Path:
    """A synthetic ESC-50 folder: 4 classes x 5 folds x 4 one-second clips in mixed formats."""
    return make_esc50(tmp_path_factory.mktemp("esc50"), per_class_per_fold=4)


# Local servers (tests/servers.py), started once per session on free ports and stopped at its end.

@pytest.fixture(scope="session")
def stream_wav(tmp_path_factory, clips_dir) -> Path:
    """The real clips repeated into a 5-minute 44.1 kHz mono WAV: what the test servers stream."""
    from servers import long_wav

    return long_wav(sorted(clips_dir.glob("*.wav")), tmp_path_factory.mktemp("stream") / "long.wav", 300.0)


@pytest.fixture(scope="session")
def rtsp_server(stream_wav):
    """A GStreamer RTSP server at ``rtsp_server.url``; a test that kills it starts it again."""
    from servers import RtspServer

    with RtspServer(stream_wav) as server:
        yield server


@pytest.fixture(scope="session")
def mosquitto():
    """A mosquitto broker on 127.0.0.1 (``mosquitto.host``, ``mosquitto.port``, ``mosquitto.url``)."""
    from servers import Mosquitto

    with Mosquitto() as broker:
        yield broker
