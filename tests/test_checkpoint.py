"""Loading checkpoints: strict layouts, clear errors, the release registry and the fine-tuned format."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch

from audioclip.model import (
    CheckpointError,
    CheckpointMeta,
    ZeroShotClassifier,
    atomic_save,
    finetuned_checkpoint,
    load_model,
)
from audioclip.model import checkpoint as ckpt


@pytest.fixture
def tiny_file(tmp_path, tiny_model):
    path = tmp_path / "tiny.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in tiny_model.state_dict().items()}, path)
    return path


def test_tiny_state_dict_loads_with_inferred_sizes(tiny_file, tiny_model):
    model = load_model(tiny_file)
    assert model.config == tiny_model.config and not model.training
    x = torch.rand(1, 6000) * 2 - 1
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_audio(x), tiny_model.encode_audio(x), rtol=2e-2, atol=2e-3)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no-such.pt: no such checkpoint file"):
        load_model(tmp_path / "no-such.pt")


class _RunsAShellCommand:
    """Pickles to a call of ``os.system``: what a malicious checkpoint holds. Never unpickled here."""

    def __reduce__(self):
        return os.system, ("touch pwned",)


@pytest.fixture
def bad_checkpoints(tmp_path, tiny_file) -> dict[str, tuple[Path, str]]:
    """A text file, a truncated checkpoint and a pickle with code, each with what its error line must say."""
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    cut = tmp_path / "cut.pt"
    data = tiny_file.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    code = tmp_path / "code.pt"
    with open(code, "wb") as f:
        pickle.dump({"state_dict": _RunsAShellCommand()}, f)
    zipped = tmp_path / "zipped.pt"
    torch.save({"weight": torch.zeros(2), "hook": _RunsAShellCommand()}, zipped)
    not_checkpoint = "not a PyTorch checkpoint, or a truncated one; download or write it again"
    refused = "refused: it holds Python objects or code, not just weights"
    return {"text": (text, not_checkpoint), "truncated": (cut, not_checkpoint), "code": (code, refused),
            "zipped code": (zipped, refused)}


def _assert_short_and_safe(line: str, path: Path, expected: str) -> None:
    assert "\n" not in line.strip() and len(line.strip()) <= 200, line
    assert str(path) in line and expected in line, line
    assert "weights_only" not in line and "arbitrary code" not in line and "Error:" not in line, line


@pytest.mark.parametrize("kind", ["text", "truncated", "code", "zipped code"])
def test_bad_file_gives_one_short_line_without_torch_advice(bad_checkpoints, kind, caplog, tmp_path, monkeypatch):
    path, expected = bad_checkpoints[kind]
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG, logger="audioclip.model.checkpoint")
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    _assert_short_and_safe(str(info.value), path, expected)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no torch traceback below it
    assert f"torch.load({path}, weights_only=True) failed" in caplog.text  # torch's detail: debug log only
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_bad_file_on_the_stream_command_line_exits_2_with_one_line(bad_checkpoints, clips_dir, tmp_path):
    clip = sorted(clips_dir.glob("*.wav"))[0]
    for path, expected in bad_checkpoints.values():
        done = subprocess.run([str(Path(sys.executable).with_name("audioclip-stream")), "--checkpoint", str(path),
                               "--labels", "a,b", "--input", str(clip)], capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        _assert_short_and_safe(lines[0], path, expected)
    assert not (tmp_path / "pwned").exists()


def test_wrong_shape_is_named(tmp_path, tiny_model):
    state = tiny_model.state_dict()
    state["audio.att3.conv_point.bias"] = torch.zeros(7)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    expected = r"bad.pt: .*1 mis-shaped: audio.att3.conv_point.bias \(7,\) \(expected \(128,\)\)"
    with pytest.raises(CheckpointError, match=expected):
        load_model(path)


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_model):
    state = tiny_model.state_dict()
    del state["audio.att2.bn.bias"]
    state["audio.extra.weight"] = torch.zeros(3)
    path = tmp_path / "keys.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="1 missing: audio.att2.bn.bias; 1 unexpected: audio.extra.weight"):
        load_model(path)


def test_foreign_state_dict(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    expected = "resnet.pt: not an AudioCLIP checkpoint: .* missing: .*1 unexpected: conv1.weight"
    with pytest.raises(CheckpointError, match=expected):
        load_model(path)


def test_unknown_release_lists_the_known_ones():
    with pytest.raises(CheckpointError, match="unknown checkpoint 'fulll'.*full, partial"):
        load_model("fulll")


def _fake_release(monkeypatch, tmp_path, payload: bytes, sha: str | None = None):
    source = tmp_path / "served" / "AudioCLIP-Fake.pt"
    source.parent.mkdir()
    source.write_bytes(payload)
    release = ckpt.Release(source.as_uri(), sha or hashlib.sha256(payload).hexdigest(), len(payload))
    monkeypatch.setitem(ckpt.RELEASES, "fake", release)
    monkeypatch.setenv("AUDIOCLIP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "AudioCLIP-Fake.pt"


def test_release_is_downloaded_verified_and_cached(monkeypatch, tmp_path, tiny_file):
    cached = _fake_release(monkeypatch, tmp_path, tiny_file.read_bytes())
    model = load_model("fake")
    assert cached.exists() and model.config.embed_dim == 32
    (tmp_path / "served" / "AudioCLIP-Fake.pt").unlink()  # a second load needs no network
    assert load_model("fake").config.embed_dim == 32


def test_release_with_wrong_hash_is_refused(monkeypatch, tmp_path, tiny_file):
    _fake_release(monkeypatch, tmp_path, tiny_file.read_bytes(), sha="0" * 64)
    with pytest.raises(CheckpointError, match="does not match release 'fake'"):
        load_model("fake")


def test_offline_release_names_the_file_to_fetch(monkeypatch, tmp_path):
    monkeypatch.setenv("AUDIOCLIP_CACHE", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(ckpt.urllib.request, "urlopen", offline)
    with pytest.raises(CheckpointError) as info:
        load_model("full")
    message = str(info.value)
    assert "AudioCLIP-Full-Training.pt" in message and str(tmp_path) in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []  # no partial download left behind


def test_finetuned_checkpoint_round_trip(tmp_path, tiny_model):
    labels = ["dog bark", "siren"]
    with torch.inference_mode():
        embeddings = tiny_model.encode_text(labels)
    path = tmp_path / "run" / "best.pt"
    atomic_save(finetuned_checkpoint(tiny_model, labels, embeddings, template="{}", mode="cooperative",
                                     metrics={"val_acc": 0.5}), path)
    model = load_model(path)
    assert not model.has_text and not model.has_image
    assert model.metadata == CheckpointMeta(mode="cooperative", metrics={"val_acc": 0.5})
    assert torch.load(path, weights_only=True)["meta"] == model.metadata.to_dict()
    x = torch.rand(2, 9000) * 2 - 1
    torch.testing.assert_close(ZeroShotClassifier(model).probs(x), ZeroShotClassifier(tiny_model, labels).probs(x))
    with pytest.raises(ValueError, match="no text tower"):
        model.encode_text(["rain"])


def test_atomic_save_keeps_the_old_file_when_writing_fails(monkeypatch, tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1}, path)

    def broken(obj, f):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken)
    with pytest.raises(OSError):
        atomic_save({"epoch": 2}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_atomic_save_gives_the_file_the_umask_mode(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        atomic_save({"epoch": 1}, tmp_path / "best.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "best.pt").stat().st_mode & 0o777 == 0o644


def test_standalone_head_scores_with_its_linear_classifier(tmp_path, tiny_model):
    with torch.inference_mode():
        embeddings = tiny_model.encode_text(["a", "b"])
    path = tmp_path / "standalone.pt"
    atomic_save(finetuned_checkpoint(tiny_model, ["a", "b"], embeddings, mode="standalone",
                                     classifier=(torch.zeros(2, 256), torch.tensor([0.0, 1.0]))), path)
    probs, logits = ZeroShotClassifier(load_model(path)).scores(torch.zeros(1, 4410))
    assert logits.tolist() == [[0.0, 1.0]]  # tests/test_train_standalone.py: streaming and export


DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("mode,logits", [("cooperative", [-10.817000389099121, -12.118912696838379]),
                                         ("standalone", [-0.06535396724939346, -0.05016409605741501])])
def test_checkpoints_written_by_0_1_0_still_load_and_score_the_same(mode, logits):
    """The fixtures were written by 0.1.0's writer (metadata at the top level, the classifier inside it).

    The proof is CPU-independent: every stored tensor arrives bit for bit where the head reads it, and the
    head's logits equal the 0.1.0 formula computed here from the file's own tensors. ``logits`` are what 0.1.0
    gave on the machine that wrote them; float32 rounding differs between CPUs (an AMX Xeon fails 1e-4), so
    they are only a coarse check (5e-2 relative) that still tells a wrong load, which moves them by far more.
    """
    from audioclip.model.audioclip import clamp_logit_scale, normalize
    from audioclip.training.heads import AudioClassifier

    path = DATA / f"finetuned-0.1.0-{mode}.pt"
    raw = torch.load(path, map_location="cpu", weights_only=False)
    model = load_model(path)
    meta = model.metadata
    assert (meta.mode, meta.template, meta.dataset, meta.fold, meta.clip_samples) == (mode, "a {}", "folder", 2, 22050)
    assert (meta.source_name, meta.source_sha256, meta.version, meta.epoch) == ("tiny.pt", "ab" * 32, "0.1.0", 3)
    assert meta.metrics == {"epoch": 3, "val_acc": 0.75} and meta.recipe["seed"] == 7 and meta.recipe["mode"] == mode
    assert model.label_bank.labels == ["dog bark", "siren"] and model.label_bank.template == "a {}"
    assert (model.label_bank.linear is not None) == (mode == "standalone")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v.float()) for k, v in raw["state_dict"].items())
    head = AudioClassifier.for_labels(model, ["dog bark", "siren"])
    assert head.mode == mode
    x = torch.linspace(-0.5, 0.5, 6000)[None]
    with torch.inference_mode():
        got = head(x)
        audio = model.audio
        pooled = audio.pool(audio.features(audio.spectrogram_db(x)))
        if mode == "standalone":
            expected = pooled @ raw["classifier"]["weight"].float().T + raw["classifier"]["bias"].float()
        else:
            text = normalize(raw["label_embeddings"].float())
            scale = clamp_logit_scale(raw["state_dict"]["logit_scale_at"].float())
            expected = scale * normalize(audio.fc(pooled)) @ text.T
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, torch.tensor([logits]), rtol=5e-2, atol=1e-3)


def test_checkpoint_meta_round_trips_and_reads_the_0_1_0_layout():
    meta = CheckpointMeta(mode="standalone", template="a {}", dataset="esc50", fold=3, clip_samples=220500,
                          epoch=4, recipe={"lr": 5e-5}, metrics={"val_acc": 0.9}, source_name="full",
                          source_sha256="00" * 32, version="0.2.0")
    assert CheckpointMeta.from_dict(meta.to_dict()) == meta
    assert CheckpointMeta.from_dict({**meta.to_dict(), "written_by_a_later_version": 1}) == meta
    legacy = {"mode": "standalone", "template": "a {}", "dataset": "esc50", "fold": 3, "clip_samples": 220500,
              "epoch": 4, "recipe": {"lr": 5e-5}, "metrics": {"val_acc": 0.9}, "sample_rate": 44100,
              "source": {"name": "full", "sha256": "00" * 32}, "package_version": "0.2.0"}
    assert CheckpointMeta.from_dict(legacy) == meta
    with pytest.raises(ValueError, match="'metrics' must be a dict"):
        CheckpointMeta.from_dict({"metrics": 0.9})


def test_standalone_checkpoint_without_its_classifier_is_refused(tmp_path, tiny_model):
    with torch.inference_mode():
        embeddings = tiny_model.encode_text(["a", "b"])
    path = tmp_path / "headless.pt"
    atomic_save(finetuned_checkpoint(tiny_model, ["a", "b"], embeddings, mode="standalone"), path)
    with pytest.raises(CheckpointError, match="headless.pt: standalone checkpoint lacks its classifier weights"):
        load_model(path)


def test_checkpoint_of_a_newer_format_asks_for_an_upgrade(tmp_path, tiny_model):
    with torch.inference_mode():
        embeddings = tiny_model.encode_text(["a"])
    path = tmp_path / "future.pt"
    atomic_save({**finetuned_checkpoint(tiny_model, ["a"], embeddings), "format_version": 99}, path)
    with pytest.raises(CheckpointError, match="future.pt: fine-tuned checkpoint format 99 .*upgrade audioclip-stream"):
        load_model(path)
