"""Loading checkpoints: strict layouts, clear errors, the release registry and the fine-tuned format."""

from __future__ import annotations

import hashlib
import urllib.error

import pytest
import torch

from audioclip.model import CheckpointError, ZeroShotClassifier, atomic_save, finetuned_checkpoint, load_model
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


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="notes.pt: not a readable PyTorch checkpoint"):
        load_model(path)


def test_truncated_checkpoint(tmp_path, tiny_file):
    data = tiny_file.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable PyTorch checkpoint"):
        load_model(cut)


def test_wrong_shape_is_named(tmp_path, tiny_model):
    state = tiny_model.state_dict()
    state["audio.att3.conv_point.bias"] = torch.zeros(7)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"bad.pt: .*1 mis-shaped: audio.att3.conv_point.bias \(7,\) \(expected \(128,\)\)"):
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
    with pytest.raises(CheckpointError, match="resnet.pt: not an AudioCLIP checkpoint: .* missing: .*1 unexpected: conv1.weight"):
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
    assert model.metadata["mode"] == "cooperative" and model.metadata["metrics"] == {"val_acc": 0.5}
    x = torch.rand(2, 9000) * 2 - 1
    torch.testing.assert_close(ZeroShotClassifier(model).probs(x), ZeroShotClassifier(tiny_model, labels).probs(x))
    with pytest.raises(ValueError, match="no text tower"):
        model.encode_text(["rain"])


def test_atomic_save_keeps_the_old_file_when_writing_fails(monkeypatch, tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1}, path)

    def broken(obj, f):
        open(f, "wb").write(b"half")
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


def test_standalone_head_is_not_a_zero_shot_classifier(tmp_path, tiny_model):
    with torch.inference_mode():
        embeddings = tiny_model.encode_text(["a", "b"])
    path = tmp_path / "standalone.pt"
    atomic_save(finetuned_checkpoint(tiny_model, ["a", "b"], embeddings, mode="standalone",
                                     classifier={"weight": torch.zeros(2, 256), "bias": torch.zeros(2)}), path)
    with pytest.raises(ValueError, match="mode 'standalone'.*only 'cooperative' heads"):
        ZeroShotClassifier(load_model(path))
