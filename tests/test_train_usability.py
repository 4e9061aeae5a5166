"""What a new user of ``audioclip-train`` meets: an interrupted first epoch, sizes that cannot fit, where
reports go, a closed pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import audioclip.training.trainer as trainer
from audioclip.model.labels import MAX_WINDOW_SECONDS
from audioclip.training.cli import app
from audioclip.training.datasets import load_dataset

from helpers import make_esc50, make_tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("usability")
    checkpoint = root / "tiny.pt"
    torch.save(make_tiny_model(0).state_dict(), checkpoint)
    return {"root": root, "checkpoint": checkpoint, "data": make_esc50(root / "esc50", per_class_per_fold=1)}


def finetune_args(s: dict, out: Path, *extra) -> list[str]:
    return [str(a) for a in ["finetune", "--dataset", "esc50", "--data-root", s["data"], "--checkpoint",
                             s["checkpoint"], "--epochs", 1, "--batch-size", 16, "--clip-seconds", 0.25,
                             "--cache-dir", s["root"] / "cache", "--out", out, "--quiet", *extra]]


def test_ctrl_c_in_the_first_epoch_exits_130_and_leaves_nothing_that_blocks_a_restart(setup, tmp_path,
                                                                                     monkeypatch):
    out = tmp_path / "run"
    step = trainer.training_step

    def interrupted(*args, **kwargs):  # Ctrl-C lands in the first training step
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "training_step", interrupted)
    result = runner.invoke(app, finetune_args(setup, out))
    assert result.exit_code == 130 and "interrupted" in result.output
    assert not (out / "metrics.jsonl").exists() and not (out / "last.pt").exists()

    resume = runner.invoke(app, finetune_args(setup, out, "--resume"))
    assert resume.exit_code == 2 and "nothing to resume" in resume.output and "without --resume" in resume.output
    monkeypatch.setattr(trainer, "training_step", step)
    again = runner.invoke(app, finetune_args(setup, out))  # the same command starts afresh
    assert again.exit_code == 0, again.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1] and (out / "last.pt").is_file()


def test_a_folder_an_older_version_left_with_an_empty_metrics_file_starts_afresh(setup, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("")
    result = runner.invoke(app, finetune_args(setup, out))
    assert result.exit_code == 0, result.output
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_clip_seconds_has_the_window_bound(setup):
    with pytest.raises(ValueError, match=f"clip_seconds: must be at most {MAX_WINDOW_SECONDS:g} s"):
        load_dataset("esc50", setup["data"], clip_seconds=100000)
    result = runner.invoke(app, finetune_args(setup, setup["root"] / "huge", "--clip-seconds", "100000"))
    assert result.exit_code == 2 and result.output.startswith("error: --clip-seconds: must be at most 60 s")
    assert len(result.output.strip().splitlines()) == 1
    assert not (setup["root"] / "huge").exists()
    assert load_dataset("esc50", setup["data"], clip_seconds=MAX_WINDOW_SECONDS).clip_samples == 60 * 44100


def evaluate_args(s: dict, *extra) -> list[str]:
    return [str(a) for a in ["evaluate", "--dataset", "esc50", "--data-root", s["data"], "--checkpoint",
                             s["checkpoint"], "--clip-seconds", 0.25, "--cache-dir", s["root"] / "cache", "--fold", 1,
                             "--quiet", *extra]]


def test_evaluate_writes_its_report_beside_the_checkpoint_not_in_the_current_folder(setup, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, evaluate_args(setup))
    assert result.exit_code == 0, result.output
    report = setup["checkpoint"].with_name("tiny-eval-esc50.json")
    assert f"report: {report}" in result.output
    assert json.loads(report.read_text())["dataset"] == "esc50"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_evaluate_into_a_closed_pipe_exits_0_quietly(setup, tmp_path):
    """``audioclip-train evaluate | head -2``: rich alone would exit 1 without a word."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "audioclip.training",
                             *evaluate_args(setup, "--report", tmp_path / "r.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the table is printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err
    assert err == ""
