"""Why fine-tuning from far-off weights learned nothing (issue 14), and what keeps it learning: batch-norm
statistics, the logit scale's range, the not-learning warning; the golden run that must fit (slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from audioclip import load_model
from audioclip.training.batchnorm import batch_norms, recalibrate, train_mode
from audioclip.training.cli import app
from audioclip.training.heads import AudioClassifier, audio_only
from audioclip.training.trainer import LearningWatch, Recipe

from helpers import KINDS, make_esc50, make_tiny_model, synth

runner = CliRunner()


def tiny_classifier(seed: int = 0, stem_shift: float = 0.0) -> AudioClassifier:
    """A tiny cooperative head; ``stem_shift`` moves its stem's running mean away from what inputs give, as
    fine-tuning golden at lr 1e-3 moves the activations away from the running mean (by 1155 in 12 steps)."""
    model = make_tiny_model(seed)
    with torch.no_grad():
        model.audio.bn1.running_mean.add_(stem_shift)
    return AudioClassifier(audio_only(model), torch.nn.functional.normalize(torch.randn(4, 32), dim=-1))


def clips(n_per_kind: int = 2, seconds: float = 0.25, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    x = [synth(kind, rng, seconds, 44100) for kind in KINDS for _ in range(n_per_kind)]
    y = [i for i in range(len(KINDS)) for _ in range(n_per_kind)]
    return torch.from_numpy(np.stack(x)), torch.tensor(y)


def test_far_off_running_statistics_collapse_evaluation_and_recalibration_restores_training_behaviour():
    net = tiny_classifier(stem_shift=1000.0)
    x, _ = clips()
    with torch.no_grad():
        net.train()
        trained = net(x)  # batch statistics: what a training step sees
        net.eval()
        before = net(x)
    assert len(set(before.argmax(-1).tolist())) == 1  # the running statistics send every clip to one class
    assert len(set(trained.argmax(-1).tolist())) > 1
    assert recalibrate(net, [x], torch.device("cpu")) == len(x)
    assert not net.training
    with torch.no_grad():
        after = net(x)
    # one calibration batch of exactly these clips: evaluation now normalises as the training step did, but
    # for PyTorch's running variance, which is unbiased (n / (n - 1): 8 / 7 on the gates' 1 x 1 maps)
    assert torch.equal(after.argmax(-1), trained.argmax(-1))
    assert (after - trained).abs().max() < 0.05 * trained.abs().max(), (after - trained).abs().max()
    assert (before - trained).abs().max() > 0.5 * trained.abs().max()
    assert all(m.momentum == 0.1 for m in batch_norms(net))  # the layers' own momentum is back


def test_recalibration_averages_over_batches():
    net = tiny_classifier()
    x, _ = clips()
    recalibrate(net, [x[:4], x[4:]], torch.device("cpu"))
    two = net.model.audio.bn1.running_mean.clone()
    means = []
    for part in (x[:4], x[4:]):
        recalibrate(net, [part], torch.device("cpu"))
        means.append(net.model.audio.bn1.running_mean.clone())
    assert torch.allclose(two, (means[0] + means[1]) / 2, atol=1e-3, rtol=1e-5)


def test_frozen_batch_norm_trains_what_evaluation_computes_and_keeps_the_statistics():
    net = tiny_classifier()
    x, y = clips()
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    train_mode(net, "frozen")
    assert net.training and not any(m.training for m in batch_norms(net))
    logits = net(x)
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert net.model.audio.bn1.weight.grad is not None and net.model.audio.bn1.weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), logits.detach())
    assert all(torch.equal(net.state_dict()[k], v) for k, v in stats.items())
    train_mode(net, "batch")
    assert all(m.training for m in batch_norms(net))


def test_a_logit_scale_pushed_below_one_gets_its_gradient_back():
    net = tiny_classifier()
    x, y = clips()
    net.eval()

    def scale_grad() -> float:
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        return float(net.model.logit_scale_at.grad)

    with torch.no_grad():
        net.model.logit_scale_at.fill_(math.log(0.5))
    assert scale_grad() == 0.0  # clamp(exp(s), 1, 100) below 1: no gradient, the scale could never come back
    net.keep_logit_scale_in_range()
    assert float(net.model.logit_scale_at.detach()) == 0.0 and scale_grad() != 0.0
    with torch.no_grad():
        net.model.logit_scale_at.fill_(3.0)
    net.keep_logit_scale_in_range()
    assert float(net.model.logit_scale_at.detach()) == 3.0  # inside the range nothing changes


def test_learning_watch_warns_after_two_epochs_at_the_uniform_loss():
    watch = LearningWatch(4)
    assert [watch.stuck(v) for v in (5.38, 2.14, 1.48, 1.43, 1.44, 1.42)] == [False, False, False, False, True, False]
    advice = watch.advice(Recipe(lr=1e-2))
    assert advice.startswith("not learning") and "--freeze trunk" in advice and "ln 4" in advice
    assert "--freeze trunk" not in LearningWatch(4).advice(Recipe(lr=1e-2, freeze="trunk"))
    assert not LearningWatch(4).stuck(1.386) and LearningWatch(4).stuck(0.1) is False


def finetune_cli(*args) -> tuple[int, str]:
    result = runner.invoke(app, ["finetune", *[str(a) for a in args]])
    return result.exit_code, result.output


@pytest.mark.parametrize("bn", ["frozen", "recalibrate", "trunk"])
def test_trainer_saves_the_statistics_it_evaluated_with(bn, tiny_checkpoint, tmp_path):
    data = make_esc50(tmp_path / "esc50", per_class_per_fold=1, seconds=0.5)
    run = tmp_path / "run"
    setting = ("--freeze", "trunk", "--no-augment") if bn == "trunk" else ("--bn", bn)
    code, out = finetune_cli("--dataset", "esc50", "--data-root", data, "--checkpoint", tiny_checkpoint,
                             "--epochs", 1, "--batch-size", 8, "--lr", 0.01, "--clip-seconds", 0.5, *setting,
                             "--cache-dir", tmp_path / "cache", "--out", run, "--quiet")
    assert code == 0, out
    saved = load_model(run / "best.pt")
    source = load_model(tiny_checkpoint)
    assert saved.metadata.recipe["bn" if bn != "trunk" else "freeze"] == bn
    assert saved.metadata.recipe["augment"] == (bn != "trunk")
    mean, source_mean = saved.audio.bn1.running_mean, source.audio.bn1.running_mean
    assert not torch.equal(saved.audio.fc.weight, source.audio.fc.weight)
    if bn == "trunk":  # a linear probe: only the projection (and the logit scale) learned
        state, before = saved.audio.state_dict(), source.audio.state_dict()
        assert all(torch.equal(state[k], before[k]) for k in state if not k.startswith("fc."))
        return
    assert not torch.equal(saved.audio.bn1.weight, source.audio.bn1.weight)  # the affine weights learned
    if bn == "frozen":
        assert torch.equal(mean, source_mean)
    else:  # the statistics of the trained network over the (unaugmented) training clips: recomputing changes nothing
        from audioclip.training.audio_io import DecodeCache
        from audioclip.training.datasets import load_dataset
        from audioclip.training.loader import ClipDataset

        index = load_dataset("esc50", data, clip_seconds=0.5)
        train, _ = index.split(1)
        ds = ClipDataset(train, DecodeCache(tmp_path / "cache"), index.clip_samples)
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        net = AudioClassifier.for_labels(saved, saved.label_bank.labels)
        recalibrate(net, [x[:8], x[8:]], torch.device("cpu"))
        assert not torch.allclose(mean, source_mean, atol=1.0)
        assert torch.allclose(net.model.audio.bn1.running_mean, mean, atol=1e-3, rtol=1e-4)


def test_not_learning_is_logged(tiny_checkpoint, tmp_path, monkeypatch):
    import audioclip.training.trainer as trainer

    def uniform(net, audio, optimizer, x, y, *, amp):  # a step whose predictions stay uniform
        logits = torch.zeros(len(y), 4, requires_grad=True)
        return logits, torch.nn.functional.cross_entropy(logits, y)

    monkeypatch.setattr(trainer, "training_step", uniform)
    data = make_esc50(tmp_path / "esc50", per_class_per_fold=1, seconds=0.25)
    code, out = finetune_cli("--dataset", "esc50", "--data-root", data, "--checkpoint", tiny_checkpoint,
                             "--epochs", 2, "--batch-size", 16, "--clip-seconds", 0.25,
                             "--cache-dir", tmp_path / "cache", "--out", tmp_path / "run", "--quiet")
    assert code == 0, out
    warnings = [line for line in out.splitlines() if "not learning" in line]  # --quiet keeps warnings
    assert len(warnings) == 1 and "1.386 = ln 4" in warnings[0] and "for 2 epochs" in warnings[0], out


@pytest.mark.slow
def test_golden_head_fits_a_separable_four_class_set(golden_dir, tmp_path):
    """The documented small-data setting fits issue 14's set from the golden checkpoint (a few minutes on a CPU)."""
    data = make_esc50(tmp_path / "esc50", per_class_per_fold=3, seconds=2.0)
    run = tmp_path / "run"
    code, out = finetune_cli("--dataset", "esc50", "--data-root", data, "--checkpoint", golden_dir / "checkpoint.pt",
                             *SMALL_DATA, "--clip-seconds", 2, "--cache-dir", tmp_path / "cache", "--out", run,
                             "--quiet")
    assert code == 0, out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train_acc"] >= 0.9, records
    assert max(r["val_acc"] for r in records) >= 0.75, records


SMALL_DATA = ("--epochs", 15, "--batch-size", 8, "--lr", "3e-3", "--freeze", "trunk", "--no-augment")
"""docs/training.md's small-data setting (kept equal to it)."""


def test_docs_state_the_small_data_setting():
    docs = (Path(__file__).parent.parent / "docs" / "training.md").read_text()
    assert " ".join(str(a) for a in SMALL_DATA) in docs
