"""``audioclip-train`` on bad input: one line on stderr, exit status 2, no traceback, nothing overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from audioclip.training.cli import app

from helpers import make_esc50, make_tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cli")
    checkpoint = root / "tiny.pt"
    torch.save(make_tiny_model(0).state_dict(), checkpoint)
    return {"root": root, "checkpoint": checkpoint, "data": make_esc50(root / "esc50", per_class_per_fold=1)}


def run(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def assert_one_line_error(code: int, out: str, *fragments: str) -> None:
    assert code == 2, out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    for fragment in fragments:
        assert fragment in out, out


def finetune_args(s: dict, out: Path, *extra) -> list:
    return ["finetune", "--dataset", "esc50", "--data-root", s["data"], "--checkpoint", s["checkpoint"],
            "--epochs", 1, "--batch-size", 16, "--clip-seconds", 0.25, "--cache-dir", s["root"] / "cache",
            "--out", out, "--quiet", *extra]


@pytest.mark.parametrize("command", ["finetune", "evaluate"])
def test_missing_data_and_checkpoint_errors(setup, tmp_path, command):
    base = [command, "--dataset", "esc50", "--quiet", "--cache-dir", tmp_path / "c"]
    assert_one_line_error(*run(*base, "--data-root", tmp_path / "none", "--checkpoint", setup["checkpoint"]),
                          "data root not found")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(*run(*base, "--data-root", tmp_path / "empty", "--checkpoint", setup["checkpoint"]),
                          "esc50.csv: metadata file not found")
    assert_one_line_error(*run(*base, "--data-root", setup["data"], "--checkpoint", tmp_path / "missing.pt"),
                          "missing.pt: no such checkpoint file")
    assert_one_line_error(*run(*base, "--data-root", setup["data"], "--checkpoint", "fulll"),
                          "unknown checkpoint 'fulll'")
    assert_one_line_error(*run(*base, "--data-root", setup["data"], "--checkpoint", setup["checkpoint"],
                               "--fold", 7), "fold 7 is out of range: esc50 has folds 1..5")
    code, out = run(*base, "--data-root", setup["data"], "--fold", 1, "--all-folds")
    assert code == 2 and "not both" in out and "Traceback" not in out


def test_corrupt_share_and_absent_files(setup, tmp_path):
    data = make_esc50(tmp_path / "esc", per_class_per_fold=1)
    for name in ("1-1000-A-0.wav", "2-1005-A-1.wav"):
        (data / "audio" / name).write_bytes(b"garbage")
    args = ["evaluate", "--dataset", "esc50", "--data-root", data, "--checkpoint", setup["checkpoint"],
            "--clip-seconds", 0.25, "--cache-dir", tmp_path / "c", "--report", tmp_path / "r.json", "--quiet"]
    assert_one_line_error(*run(*args, "--max-bad", 0.1), "1 of 4 clips (25.0%) cannot be decoded")
    assert not (tmp_path / "r.json").exists()
    (data / "audio" / "3-1008-A-0.wav").unlink()
    assert_one_line_error(*run(*args), "1 of 20 listed files are absent", "3-1008-A-0.wav")


def test_existing_run_is_never_overwritten(setup, tmp_path):
    out = tmp_path / "run"
    code, text = run(*finetune_args(setup, out))
    assert code == 0, text
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"best.pt", "last.pt", "metrics.jsonl"} <= set(before)
    assert_one_line_error(*run(*finetune_args(setup, out)), "already holds a run", "--resume")
    assert_one_line_error(*run(*finetune_args(setup, out, "--resume", "--lr", 0.1)),
                          "run was started with other settings (lr 5e-05 -> 0.1)")
    assert_one_line_error(*run(*finetune_args(setup, tmp_path / "fresh", "--resume")), "nothing to resume")
    assert_one_line_error(*run(*finetune_args(setup, tmp_path / "x", "--epochs", 0)), "epochs must be at least 1")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / "fresh").exists() and not (tmp_path / "x").exists()
    code, text = run(*finetune_args(setup, out, "--resume"))  # already complete: nothing to do, nothing rewritten
    assert code == 0 and {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_empty_class_in_training_folds(setup, tmp_path):
    data = make_esc50(tmp_path / "esc", per_class_per_fold=1)
    rows = (data / "meta" / "esc50.csv").read_text().splitlines()
    kept = [rows[0]] + [r for r in rows[1:] if not (r.split(",")[2] == "3" and r.split(",")[1] != "1")]
    (data / "meta" / "esc50.csv").write_text("\n".join(kept) + "\n")
    assert_one_line_error(*run(*finetune_args({**setup, "data": data}, tmp_path / "run")),
                          "no training clips for class 'synthetic clicks'")
    assert not (tmp_path / "run").exists()
