"""`audioclip-train evaluate --task query`: the paper's querying metrics (audioclip.archive.metrics) per fold."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from audioclip.training.cli import app
from audioclip.training.evaluate import query_metrics


def test_query_metrics_both_directions_by_hand():
    # clips 0, 1 are class 0, clip 2 class 1
    m = query_metrics([[2, 1], [0, 1], [1, 3]], [0, 0, 1], 2)
    # audio to text: clip 0 right, clip 1 wrong (class 0 second: AP 1/2), clip 2 right
    assert m["audio_to_text"] == pytest.approx({"P@1": 2 / 3, "R@1": 2 / 3, "mAP": 2.5 / 3, "queries": 3})
    # text to audio: class 0 ranks clips 0 (yes), 2, 1 (yes): AP (1 + 2/3) / 2; class 1 ranks clip 2 first: AP 1
    assert m["text_to_audio"] == pytest.approx({"P@1": 1.0, "R@1": 0.75, "mAP": ((1 + 2 / 3) / 2 + 1) / 2,
                                               "queries": 2})


def test_evaluate_task_query_reports_both_directions_beside_accuracy(tiny_checkpoint, esc50, tmp_path):
    result = CliRunner().invoke(app, [str(a) for a in (
        "evaluate", "--dataset", "esc50", "--data-root", esc50, "--checkpoint", tiny_checkpoint, "--clip-seconds",
        0.5, "--fold", 2, "--task", "query", "--cache-dir", tmp_path / "cache", "--report", tmp_path / "r.json",
        "--quiet")])
    assert result.exit_code == 0, result.output
    assert "text to audio" in result.output and "mAP" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    fold = report["query"]["2"]
    assert set(fold) == {"audio_to_text", "text_to_audio"}
    # a clip querying the class texts has one relevant answer: P@1 = R@1 = the fold's accuracy
    assert fold["audio_to_text"]["P@1"] == pytest.approx(report["accuracy"]["2"])
    assert fold["audio_to_text"]["R@1"] == pytest.approx(report["accuracy"]["2"])
    assert fold["audio_to_text"]["mAP"] >= fold["audio_to_text"]["P@1"]
    assert fold["audio_to_text"]["queries"] == report["clips"]["2"]
    assert all(0.0 <= d[m] <= 1.0 for d in fold.values() for m in ("P@1", "R@1", "mAP"))
    assert report["mean_query"] == {d: {m: fold[d][m] for m in ("P@1", "R@1", "mAP")} for d in fold}
