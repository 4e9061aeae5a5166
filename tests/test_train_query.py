"""The paper's querying metrics: hand-computed cases, and `audioclip-train evaluate --task query`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from audioclip.training.cli import app
from audioclip.training.query import query_metrics, retrieval_metrics


def test_retrieval_metrics_by_hand():
    # query 0 ranks c0 (no), c2 (yes), c1: AP 1/2. Query 1 ranks c1 (no), c2 (yes), c0 (yes): AP (1/2 + 2/3) / 2.
    m = retrieval_metrics([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]], [[False, False, True], [True, False, True]])
    assert m == pytest.approx({"p_at_1": 0.0, "r_at_1": 0.0, "map": (0.5 + 7 / 12) / 2})
    # top hit, one of two relevant: P@1 1, R@1 1/2, AP (1/1 + 2/2) / 2
    assert retrieval_metrics([[3, 1, 2]], [[True, False, True]]) == pytest.approx(
        {"p_at_1": 1.0, "r_at_1": 0.5, "map": 1.0})
    # a query with nothing relevant asks nothing; a tie keeps the candidates' order
    assert retrieval_metrics([[1, 1], [5, 0]], [[False, True], [False, False]]) == pytest.approx(
        {"p_at_1": 0.0, "r_at_1": 0.0, "map": 0.5})


def test_query_metrics_both_directions_by_hand():
    # clips 0, 1 are class 0, clip 2 class 1
    m = query_metrics([[2, 1], [0, 1], [1, 3]], [0, 0, 1], 2)
    # audio to text: clip 0 right, clip 1 wrong (class 0 second: AP 1/2), clip 2 right
    assert m["audio_to_text"] == pytest.approx({"p_at_1": 2 / 3, "r_at_1": 2 / 3, "map": 2.5 / 3})
    # text to audio: class 0 ranks clips 0 (yes), 2, 1 (yes): AP (1 + 2/3) / 2; class 1 ranks clip 2 first: AP 1
    assert m["text_to_audio"] == pytest.approx({"p_at_1": 1.0, "r_at_1": 0.75, "map": ((1 + 2 / 3) / 2 + 1) / 2})


def test_bad_shapes_and_nothing_relevant_are_one_line_errors():
    with pytest.raises(ValueError, match="one shape"):
        retrieval_metrics([[1, 2]], [[True]])
    with pytest.raises(ValueError, match="no query has a relevant candidate"):
        retrieval_metrics([[1, 2]], [[False, False]])


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
    assert fold["audio_to_text"]["p_at_1"] == pytest.approx(report["accuracy"]["2"])
    assert fold["audio_to_text"]["r_at_1"] == pytest.approx(report["accuracy"]["2"])
    assert fold["audio_to_text"]["map"] >= fold["audio_to_text"]["p_at_1"]
    assert all(0.0 <= v <= 1.0 for d in fold.values() for v in d.values())
    assert report["mean_query"] == fold
