"""A standalone fine-tuned head (``--mode standalone``) deploys like a cooperative one: the PyTorch classifier,
``audioclip-stream --checkpoint`` and ``audioclip-export onnx`` score with its linear classifier."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from audioclip import ZeroShotClassifier, load_model
from audioclip.export import export_onnx
from audioclip.export.runtime import OnnxClassifier
from audioclip.model import atomic_save, finetuned_checkpoint
from audioclip.model.constants import SAMPLE_RATE
from audioclip.model.labels import ParameterError
from audioclip.stream.cli import app as stream_app
from audioclip.training.heads import AudioClassifier

from helpers import KINDS, make_tiny_model, synth

LABELS = ["tone", "chirp", "noise", "clicks"]


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    """A tiny standalone head whose linear classifier is not the projection: (path, model)."""
    model = make_tiny_model(seed=5)
    torch.manual_seed(5)
    linear = (torch.randn(4, model.audio.feature_dim) * 0.5, torch.randn(4))
    path = tmp_path_factory.mktemp("standalone") / "head.pt"
    atomic_save(finetuned_checkpoint(model, LABELS, torch.randn(4, 32), mode="standalone", template="a {}",
                                     classifier=linear, source_name="tiny", source_sha256="0" * 64), path)
    return path, load_model(path)


def signals(seconds: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.stack([synth(kind, rng, seconds, SAMPLE_RATE) for kind in KINDS])


def test_standalone_probabilities_are_the_trained_heads(standalone):
    path, model = standalone
    classifier = ZeroShotClassifier(model)
    x = signals()
    probs, logits = classifier.scores(x)
    assert classifier.labels == LABELS and classifier.logit_scale == 1.0
    with torch.no_grad():
        trained = AudioClassifier.for_labels(model, LABELS)(torch.from_numpy(x))  # what evaluate scores
    assert torch.allclose(logits, trained, atol=1e-4, rtol=1e-5)
    assert torch.allclose(probs, torch.softmax(trained, -1), atol=1e-6)
    assert (logits.std(0) > 1e-3).all()  # the scores depend on the signal
    with pytest.raises(ParameterError, match="scores only the labels it was trained on"):
        ZeroShotClassifier(model, ["rain"])
    with pytest.raises(ValueError, match="standalone head scores pooled audio features"):
        classifier.scores_of(classifier.embed(x))


@pytest.mark.parametrize("hop", ["0.5", "0.50884"])  # whole windows, and a hop the incremental path would take
def test_stream_jsonl_of_a_standalone_head_equals_offline(standalone, tmp_path, hop):
    path, model = standalone
    x = np.concatenate(list(signals(1.0)))
    wav = tmp_path / "four.wav"
    sf.write(wav, x, SAMPLE_RATE, subtype="FLOAT")
    result = CliRunner().invoke(stream_app, ["--checkpoint", str(path), "--input", str(wav), "--format", "jsonl",
                                             "--window", "1", "--hop", hop, "--threads", "1"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if "t_start" in line]
    assert len(rows) >= 4 and list(rows[0]["probs"]) == LABELS
    classifier = ZeroShotClassifier(model)
    for row in rows:
        start = round(row["t_start"] * SAMPLE_RATE)
        probs, logits = classifier.scores(x[start:start + SAMPLE_RATE])
        assert np.abs(np.array(list(row["probs"].values())) - probs[0].numpy()).max() <= 1e-4
        # a standalone head's "similarity" field carries its logits
        assert np.abs(np.array(list(row["similarity"].values())) - logits[0].numpy()).max() <= 1e-3


@pytest.mark.slow
def test_export_bakes_the_linear_head_into_classifier_onnx(standalone, tmp_path):
    path, model = standalone
    result = export_onnx(checkpoint=path, out=tmp_path / "out", window=0.5)
    assert all(c.passed for c in result.checks) and result.checks
    assert not (result.out / "text_encoder.onnx").exists()
    meta = {p.key: p.value for p in onnx.load(str(result.out / "classifier.onnx")).metadata_props}
    assert meta["mode"] == "standalone" and float(meta["logit_scale"]) == 1.0
    x = signals()
    onnx_probs, onnx_logits = OnnxClassifier(result.out, threads=1).scores(x)
    probs, logits = ZeroShotClassifier(model).scores(x)
    assert np.abs(onnx_logits - logits.numpy()).max() <= 1e-3
    assert np.abs(onnx_probs - probs.numpy()).max() <= 1e-4
    assert (onnx_probs.argmax(-1) == probs.numpy().argmax(-1)).all()
