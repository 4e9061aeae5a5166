"""Behaviour of the model core on tiny configurations and synthetic audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audioclip.model import ZeroShotClassifier, infer_config
from audioclip.model.esresnext import adaptive_max_pool2d_exact
from audioclip.model.fbsp import frame_count, frame_padding


@pytest.mark.parametrize("size_in,size_out", [
    ((86, 98), (86, 98)),     # att1: identity
    ((86, 98), (43, 49)),     # att2: even -> half
    ((43, 49), (22, 25)),     # att3: odd -> ceil(half)
    ((22, 25), (11, 13)),     # att4: even height, odd width
    ((11, 13), (1, 1)),       # att5: global
    ((7, 10), (4, 5)),
    ((9, 9), (3, 3)),         # not a halving: falls back to the adaptive op
])
def test_exact_adaptive_max_pool_equals_torch(size_in, size_out):
    x = torch.randn(2, 3, *size_in)
    assert torch.equal(adaptive_max_pool2d_exact(x, size_out), F.adaptive_max_pool2d(x, size_out))


def test_frame_arithmetic_matches_reference_numbers():
    assert frame_count(220500) == 392 and frame_padding(220500) == (252, 253)
    assert frame_count(1654) == 1 and frame_padding(1654) == (0, 0)
    assert frame_count(44100) == 77


def test_waveform_shapes_are_equivalent(tiny_model):
    x = torch.rand(2, 30000) * 2 - 1
    with torch.inference_mode():
        batch = tiny_model.encode_audio(x)
        single = tiny_model.encode_audio(x[0])
        channels = tiny_model.encode_audio(x[:, None])
    assert batch.shape == (2, 32) and batch.dtype == torch.float32
    torch.testing.assert_close(single[0], batch[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(channels, batch, rtol=1e-5, atol=1e-6)


def test_channels_are_summed_before_the_projection(tiny_model):
    x = torch.rand(1, 2, 20000) * 2 - 1
    audio = tiny_model.audio
    with torch.inference_mode():
        stereo = tiny_model.encode_audio(x)
        pooled = audio.pooled_features(x[:, :1]) + audio.pooled_features(x[:, 1:])
        torch.testing.assert_close(stereo, audio.fc(pooled), rtol=1e-5, atol=1e-6)


def test_numpy_and_int16_inputs(tiny_model):
    x = (np.random.default_rng(0).uniform(-0.5, 0.5, 8000) * 32768).astype(np.int16)
    with torch.inference_mode():
        a = tiny_model.encode_audio(x)
        b = tiny_model.encode_audio(torch.from_numpy(x.astype(np.float32) / 32768.0))
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad,message", [
    (np.full(5000, np.nan, dtype=np.float32), "NaN or infinite"),
    (np.r_[np.zeros(4000), np.inf].astype(np.float32), "NaN or infinite"),
    (np.zeros((1, 1, 1, 5000), dtype=np.float32), r"shaped \(T,\), \(B, T\) or \(B, C, T\)"),
    (np.zeros(1653, dtype=np.float32), "fewer than one FBSP frame"),
    (np.zeros(5000, dtype=np.int32), "float in \\[-1, 1\\] or int16"),
    ([0.0] * 5000, "torch tensor or numpy array"),
])
def test_bad_waveforms_raise_value_error(tiny_model, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.encode_audio(bad)


def test_kernel_cache_follows_parameter_updates(tiny_model):
    x = torch.rand(1, 8000) * 2 - 1
    with torch.inference_mode():
        before = tiny_model.encode_audio(x)
    with torch.no_grad():
        tiny_model.audio.fbsp.fb.mul_(1.5)
    with torch.inference_mode():
        after = tiny_model.encode_audio(x)
        db = tiny_model.audio.spectrogram_db(x)
    assert not torch.allclose(before, after)
    from audioclip.model.esresnext import to_reference_scale
    from audioclip.model.fbsp import fbsp_kernel, power_spectrogram, power_to_db
    with torch.no_grad():
        fresh = power_to_db(power_spectrogram(to_reference_scale(x), fbsp_kernel(tiny_model.audio.fbsp.weights()),
                                              tiny_model.audio.window))
    assert torch.equal(db, fresh)


def test_gradients_reach_the_fbsp_parameters(tiny_model):
    tiny_model.train()
    out = tiny_model.encode_audio(torch.rand(2, 8000) * 2 - 1)
    out.pow(2).sum().backward()
    for name in ("m", "fb", "fc"):
        grad = getattr(tiny_model.audio.fbsp, name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_config_is_inferred_from_shapes(tiny_model):
    assert infer_config(tiny_model.state_dict()) == tiny_model.config


def test_zero_shot_classifier_scores(tiny_model):
    labels = ["dog bark", "siren", "rain"]
    clf = ZeroShotClassifier(tiny_model, labels, template="the sound of {}")
    x = torch.rand(3, 10000) * 2 - 1
    probs, sims = clf.scores(x)
    assert probs.shape == sims.shape == (3, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    with torch.inference_mode():
        a = F.normalize(tiny_model.encode_audio(x), dim=-1)
        t = F.normalize(tiny_model.encode_text(labels, "the sound of {}"), dim=-1)
    scale = float(tiny_model.logit_scale_at.detach().exp().clamp(1, 100))
    torch.testing.assert_close(sims, a @ t.T, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs, torch.softmax(scale * (a @ t.T), -1), rtol=1e-5, atol=1e-6)
    assert clf.labels == labels and clf.template == "the sound of {}"


@pytest.mark.parametrize("labels,message", [
    ([], "no labels"),
    (["dog", ""], "label 1 of labels is empty"),
    (["dog", 3], "must be strings"),
    ("dog", "list of strings"),
    (["dog", "cat", "dog"], "duplicate labels: 'dog'"),
])
def test_bad_labels(tiny_model, labels, message):
    with pytest.raises(ValueError, match=message):
        ZeroShotClassifier(tiny_model, labels)


def test_template_needs_a_placeholder(tiny_model):
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        ZeroShotClassifier(tiny_model, ["dog"], template="a sound")


def test_one_at_a_time_trunk_equals_the_batched_trunk(tiny_model):
    x = torch.rand(3, 1, 12000) * 2 - 1
    with torch.inference_mode():
        split = tiny_model.audio(x)  # CPU without autograd: one signal at a time
    batched = tiny_model.audio(x).detach()  # autograd on: the whole batch at once
    torch.testing.assert_close(split, batched, rtol=1e-5, atol=1e-6)
