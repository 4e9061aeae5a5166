"""Distributed fine-tuning: torchrun with 2 processes and the gloo backend on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from audioclip import load_model

from helpers import make_esc50, make_tiny_model

pytestmark = pytest.mark.slow  # a whole torchrun fine-tuning run


def test_torchrun_two_processes_gloo(tmp_path):
    checkpoint = tmp_path / "tiny.pt"
    torch.save(make_tiny_model(0).state_dict(), checkpoint)
    data = make_esc50(tmp_path / "esc50", per_class_per_fold=3)  # 48 training clips, 12 held out
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "audioclip.training", "finetune", "--dataset", "esc50", "--data-root", str(data),
               "--checkpoint", str(checkpoint), "--epochs", "2", "--batch-size", "8", "--lr", "0.02",
               "--clip-seconds", "0.5", "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # rank 0 alone writes
    assert all(r["train_samples"] == 48 and r["val_samples"] == 12 for r in records)  # shards cover every clip once
    assert result.stdout.count("fold 1: final val acc") == 1  # rank 0 alone reports
    assert result.stderr.count("epoch 2/2:") == 1
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["module"].values() if v.is_floating_point())
    assert not any(k.startswith("module.") for k in state["module"])  # saved without the DDP wrapper's prefix
    model = load_model(out / "best.pt")
    assert model.label_bank.labels[0] == "synthetic tone"
    source = load_model(checkpoint)
    assert not torch.equal(model.audio.conv1.weight, source.audio.conv1.weight)
