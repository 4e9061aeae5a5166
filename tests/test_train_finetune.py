"""Fine-tuning end to end on tiny models and synthetic data: learning, checkpoints, evaluation, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import audioclip
from audioclip import ZeroShotClassifier, load_model
from audioclip.model.checkpoint import sha256_of
from audioclip.training.audio_io import DecodeCache
from audioclip.training.cli import app
from audioclip.training.datasets import load_dataset
from audioclip.training.trainer import Recipe, Runtime, finetune

from helpers import make_esc50, make_folder

pytestmark = pytest.mark.slow  # whole fine-tuning runs
runner = CliRunner()
REQUIRED = {"epoch", "train_loss", "train_acc", "val_acc", "lr", "seconds"}


def cli(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_short_finetune_learns_and_checkpoint_scores_like_evaluate(tiny_checkpoint, esc50, tmp_path):
    run = tmp_path / "run"
    code, out = cli("finetune", "--dataset", "esc50", "--data-root", esc50, "--checkpoint", tiny_checkpoint,
                    "--epochs", 7, "--batch-size", 8, "--lr", 0.02, "--gamma", 0.95, "--clip-seconds", 0.5,
                    "--cache-dir", tmp_path / "cache", "--out", run, "--quiet")
    assert code == 0, out
    records = metrics(run)
    assert [r["epoch"] for r in records] == list(range(1, 8)) and all(REQUIRED <= set(r) for r in records)
    assert records[1]["lr"] == pytest.approx(0.02 * 0.95) and records[6]["lr"] == pytest.approx(0.02 * 0.95 ** 6)
    assert all(r["train_samples"] == 64 and r["val_samples"] == 16 for r in records)
    assert records[-1]["val_acc"] >= 0.6, records  # 4 classes: chance is 0.25
    best = max(r["val_acc"] for r in records)

    model = load_model(run / "best.pt")
    meta = model.metadata
    assert model.label_bank.labels == ["synthetic tone", "synthetic chirp", "synthetic noise", "synthetic clicks"]
    assert not model.has_text and not model.has_image
    assert meta.mode == "cooperative" and meta.fold == 1 and meta.template == "{}" and meta.dataset == "esc50"
    assert meta.sample_rate == 44100 and meta.clip_samples == 22050 and meta.metrics["val_acc"] == best
    assert (meta.source_name, meta.source_sha256) == (str(tiny_checkpoint), sha256_of(tiny_checkpoint))
    assert meta.version == audioclip.__version__ and meta.recipe["lr"] == 0.02

    data = load_dataset("esc50", esc50, clip_seconds=0.5)
    test = [c for c in data.clips if c.fold == 1]
    cache = DecodeCache(tmp_path / "cache")
    x = np.stack([np.pad(cache.load(c.path), (0, 22050))[:22050] if len(cache.load(c.path)) < 22050 else
                  cache.load(c.path)[(len(cache.load(c.path)) - 22050) // 2:][:22050] for c in test])
    probs = ZeroShotClassifier(model).probs(x)
    assert probs.shape == (16, 4) and torch.allclose(probs.sum(-1), torch.ones(16))
    zero_shot_acc = float((probs.argmax(-1) == torch.tensor([c.label for c in test])).float().mean())
    assert zero_shot_acc == pytest.approx(best)

    code, out = cli("evaluate", "--dataset", "esc50", "--data-root", esc50, "--checkpoint", run / "best.pt",
                    "--cache-dir", tmp_path / "cache", "--report", tmp_path / "report.json", "--quiet")
    assert code == 0, out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["folds"] == [1] and report["accuracy"]["1"] == pytest.approx(best)
    assert report["mode"] == "cooperative" and report["mean_accuracy"] == pytest.approx(best)
    confusion = np.array(report["confusion"])
    assert confusion.sum() == 16 and confusion.trace() == round(best * 16)
    assert "confusion matrix" in out and "synthetic chirp" in out and f"{best:.2%}" in out


def test_standalone_mode_trains_a_linear_classifier_that_evaluate_uses(tiny_checkpoint, esc50, tmp_path):
    run = tmp_path / "run"
    data = load_dataset("esc50", esc50, clip_seconds=0.5)
    cache = DecodeCache(tmp_path / "cache")
    result = finetune(source=str(tiny_checkpoint), data=data, fold=2, out=run, cache=cache,
                      recipe=Recipe(mode="standalone", epochs=2, batch_size=32, lr=0.02),
                      runtime=Runtime(progress=False))
    model = load_model(run / "best.pt")
    weight, bias = model.label_bank.linear
    assert model.metadata.mode == "standalone" and model.metadata.fold == 2
    assert weight.shape == (4, model.audio.feature_dim) and bias.shape == (4,)
    saved = torch.load(run / "best.pt", weights_only=True)  # the classifier is in the state dict, not the metadata
    assert torch.equal(saved["state_dict"]["classifier.weight"], weight) and "classifier" not in saved["meta"]
    source = load_model(tiny_checkpoint)
    assert torch.equal(model.audio.fc.weight, source.audio.fc.weight)  # the projection is unused and frozen
    assert not torch.equal(model.audio.layer1[0].conv1.weight, source.audio.layer1[0].conv1.weight)

    code, out = cli("evaluate", "--dataset", "esc50", "--data-root", esc50, "--checkpoint", run / "best.pt",
                    "--cache-dir", tmp_path / "cache", "--report", tmp_path / "r.json", "--quiet")
    assert code == 0, out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mode"] == "standalone" and report["folds"] == [2]
    assert report["accuracy"]["2"] == pytest.approx(result["best_val_acc"])


def test_evaluate_release_style_checkpoint_is_zero_shot_over_all_folds(tiny_checkpoint, esc50, tmp_path):
    code, out = cli("evaluate", "--dataset", "esc50", "--data-root", esc50, "--checkpoint", tiny_checkpoint,
                    "--clip-seconds", 0.5, "--template", "the sound of {}", "--cache-dir", tmp_path / "cache",
                    "--report", tmp_path / "r.json", "--quiet", "--batch-size", 40)
    assert code == 0, out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mode"] == "zero-shot" and report["folds"] == [1, 2, 3, 4, 5]
    assert report["template"] == "the sound of {}" and report["clips"] == {str(k): 16 for k in range(1, 6)}
    assert report["mean_accuracy"] == pytest.approx(np.mean(list(report["accuracy"].values())))
    assert np.array(report["confusion"]).sum() == 80
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        code, out = cli("evaluate", "--dataset", "esc50", "--data-root", esc50, "--checkpoint", tiny_checkpoint,
                        "--report", tmp_path / "p.json", "--plot")
        assert code == 2 and "pip install matplotlib" in out and len(out.strip().splitlines()) == 1
        assert not (tmp_path / "p.json").exists()
    else:
        code, out = cli("evaluate", "--dataset", "esc50", "--data-root", esc50, "--checkpoint", tiny_checkpoint,
                        "--clip-seconds", 0.5, "--fold", 3, "--cache-dir", tmp_path / "cache",
                        "--report", tmp_path / "p.json", "--plot", "--quiet")
        assert code == 0 and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def _train_command(data: Path, checkpoint: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "audioclip.training", "finetune", "--dataset", "esc50", "--data-root", str(data),
            "--checkpoint", str(checkpoint), "--epochs", "4", "--batch-size", "16", "--lr", "0.02",
            "--clip-seconds", "0.5", "--cache-dir", str(cache), "--out", str(out), "--quiet", *extra]


def test_resume_after_kill_is_bit_identical_to_an_uninterrupted_run(tiny_checkpoint, tmp_path):
    data = make_esc50(tmp_path / "esc50", per_class_per_fold=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(_train_command(data, tiny_checkpoint, whole, tmp_path / "cache"), env=env, check=True,
                   capture_output=True, timeout=300)
    process = subprocess.Popen(_train_command(data, tiny_checkpoint, broken, tmp_path / "cache"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not ((broken / "last.pt").exists() and torch.load(broken / "last.pt", weights_only=True)["epoch"] >= 1):
        assert time.monotonic() < deadline and process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = torch.load(broken / "last.pt", weights_only=True)["epoch"]
    assert 1 <= interrupted_at < 4
    # Resumed with data-loader workers: a sample's augmentation depends on (seed, epoch, index) only.
    subprocess.run(_train_command(data, tiny_checkpoint, broken, tmp_path / "cache", "--resume", "--workers", "2"),
                   env=env, check=True, capture_output=True, timeout=300)

    a, b = (torch.load(run / "last.pt", weights_only=True) for run in (whole, broken))
    assert a["epoch"] == b["epoch"] == 4
    assert a["module"].keys() == b["module"].keys()
    assert all(torch.equal(a["module"][k], b["module"][k]) for k in a["module"])
    momentum_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b))
    assert a["scheduler"] == b["scheduler"]
    drop = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}  # noqa: E731
    assert [drop(r) for r in metrics(whole)] == [drop(r) for r in metrics(broken)]
    assert not torch.equal(a["module"]["model.audio.conv1.weight"],
                           load_model(tiny_checkpoint).state_dict()["audio.conv1.weight"])


def test_one_step_from_the_golden_checkpoint_saves_a_checkpoint_that_loads_and_scores(golden_dir, clips_dir, tmp_path):
    make_folder(tmp_path / "data" / "train", per_class=1)
    make_folder(tmp_path / "data" / "test", per_class=1)
    data = load_dataset("folder", tmp_path / "data", clip_seconds=1.0)
    source = golden_dir / "checkpoint.pt"
    result = finetune(source=str(source), data=data, fold=1, out=tmp_path / "run", cache=DecodeCache(tmp_path / "c"),
                      recipe=Recipe(epochs=1, batch_size=4, template="a sound of {}"), runtime=Runtime(progress=False))
    assert result["train_samples"] == 4 and result["epoch"] == 1
    model = load_model(tmp_path / "run" / "best.pt")
    golden = load_model(source)
    assert model.config.audio == golden.config.audio and model.metadata.source_sha256 == sha256_of(source)
    assert not torch.equal(model.audio.fc.weight, golden.audio.fc.weight)  # one SGD step moved the head
    assert (model.audio.fc.weight - golden.audio.fc.weight).abs().max() < 1e-3  # ... by a small step (lr 5e-5)
    expected = torch.nn.functional.normalize(golden.encode_text(data.labels, "a sound of {}"), dim=-1)
    torch.testing.assert_close(model.label_bank.embeddings, expected)
    import soundfile as sf

    clip, rate = sf.read(next(clips_dir.glob("*.wav")), dtype="float32")
    assert rate == 44100
    classifier = ZeroShotClassifier(model)
    probs, sims = classifier.scores(clip[: 5 * 44100])
    assert classifier.labels == ["my chirp", "my clicks", "my noise", "my tone"] and probs.shape == (1, 4)
    assert torch.isfinite(sims).all() and float(probs.sum()) == pytest.approx(1.0, abs=1e-5)


def test_all_folds_cross_validation_reports_each_fold_and_the_mean(tiny_checkpoint, tmp_path):
    data = make_folder(tmp_path / "data", per_class=5, seconds=0.3)
    out = tmp_path / "cv"
    code, text = cli("finetune", "--dataset", "folder", "--data-root", data, "--checkpoint", tiny_checkpoint,
                     "--all-folds", "--epochs", 1, "--batch-size", 16, "--clip-seconds", 0.25, "--mode", "standalone",
                     "--cache-dir", tmp_path / "cache", "--out", out, "--quiet")
    assert code == 0, text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folds"] == 5 and sorted(summary["val_acc"]) == ["1", "2", "3", "4", "5"]
    assert summary["mean_val_acc"] == pytest.approx(np.mean(list(summary["val_acc"].values())))
    for k in range(1, 6):
        assert summary["val_acc"][str(k)] == metrics(out / f"fold{k}")[-1]["val_acc"]
        assert load_model(out / f"fold{k}" / "best.pt").metadata.fold == k
    assert "mean" in text and "cross-validation" in text


def test_shared_fbsp_weights_give_the_logits_of_the_cached_kernel(tiny_model):
    from audioclip.training.heads import AudioClassifier

    net = AudioClassifier.for_labels(tiny_model, ["a dog", "a siren", "rain"])
    x = 0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(net(x), net(x, net.model.audio.fbsp.weights()))
    expected = ZeroShotClassifier(tiny_model, ["a dog", "a siren", "rain"]).logits(x)
    torch.testing.assert_close(net(x).detach(), expected, rtol=1e-5, atol=1e-5)
