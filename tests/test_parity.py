"""Parity with the reference implementation (tolerances from ../shared/golden/README.md).

The oracle is the published reference code run live on the machine that runs the test
(``reference_live``, tests/reference.py): embeddings and logits within 1e-4 of its largest absolute
value, dB spectrograms within 1e-2 dB wherever it is above -100 dB. On the AMD EPYC that made
../shared/golden we are bit-exact with it; on an Intel Xeon with AMX we are within 1.4e-5.

The stored golden arrays were made on one CPU, and the reference itself moves away from them on
another (an AMX Xeon: 6e-4 to 1.5e-3 of the largest value on the real clips, 4e-5 on the noise
inputs; the random checkpoint amplifies rounding). So they are checked only at what holds across
machines: tokens exactly; the noise inputs, text, image and dB spectrograms at the parity bounds
(they passed those on both CPU kinds); the real clips and the forward logits built from them
within ``ACROSS_CPUS`` (twice the largest spread measured), which still tells a wrong model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from audioclip.model import AudioCLIP, tokenize
from audioclip.training.losses import contrastive_loss, fbsp_norm_loss

AUDIO_NAMES = ["clip_alarm_clock_3-120526-B-37", "clip_car_horn_1-24074-A-43", "clip_cat_3-95694-A-5",
               "clip_coughing_1-58792-A-24", "clip_thunder_3-144891-B-19", "noise_5s", "noise_1s", "batch2", "stereo"]
PARITY = 1e-4
ACROSS_CPUS = 3e-3


def assert_close_to_reference(ours: np.ndarray, ref: np.ndarray, what: str, bound: float = PARITY) -> None:
    limit = bound * np.abs(ref).max()
    diff = np.abs(ours - ref).max()
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != reference {ref.shape}"
    assert diff <= limit, f"{what}: max |diff| {diff:.3g} > {limit:.3g} ({bound:g} of the largest value)"


def stored_bound(name: str) -> float:
    """How close the stored arrays are on any CPU: the noise inputs hold the parity bound, the real clips do not."""
    return PARITY if name.startswith("noise_") else ACROSS_CPUS


def test_default_layout_matches_official_checkpoints(golden_dir):
    layout = json.loads((golden_dir / "official_state_dict_layout.json").read_text())
    ours = {k: list(v.shape) for k, v in AudioCLIP().state_dict().items()}
    assert sorted(ours) == sorted(layout), (set(ours) ^ set(layout))
    mismatched = {k: (ours[k], layout[k]["shape"]) for k in layout if ours[k] != layout[k]["shape"]}
    assert not mismatched


@pytest.mark.slow
def test_fp16_checkpoint_loads_as_fp32(golden_model):
    dtypes = {p.dtype for p in golden_model.parameters()}
    assert dtypes == {torch.float32}
    assert golden_model.config.text.width == 128 and golden_model.config.vision.layers == (1, 2, 1, 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", AUDIO_NAMES)
def test_audio_embeddings(golden_model, golden_outputs, reference_live, name):
    waveform = golden_outputs[f"audio_in/{name}"] / 32768.0
    with torch.inference_mode():
        ours = golden_model.encode_audio(waveform).numpy()
    assert_close_to_reference(ours, reference_live[f"audio_emb/{name}"], f"{name} against the reference run here")
    assert_close_to_reference(ours, golden_outputs[f"audio_emb/{name}"], f"{name} against the stored array",
                              stored_bound(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in AUDIO_NAMES if n.startswith("clip_")] + ["noise_1s"])
def test_db_spectrogram(golden_model, golden_outputs, reference_live, name):
    waveform = torch.from_numpy(golden_outputs[f"audio_in/{name}"] / 32768.0).float()
    with torch.inference_mode():
        ours = golden_model.audio.spectrogram_db(waveform).numpy()
    for ref in (reference_live[f"audio_db/{name}"], golden_outputs[f"audio_db/{name}"]):
        ref = ref.reshape(-1, *ref.shape[2:])
        assert ours.shape == ref.shape
        audible = ref > -100.0
        assert audible.mean() > 0.5
        assert np.abs(ours - ref)[audible].max() <= 1e-2


@pytest.mark.slow
def test_int16_input_equals_scaled_float(golden_model, golden_outputs):
    x = golden_outputs["audio_in/noise_1s"].astype(np.int16)
    with torch.inference_mode():
        a = golden_model.encode_audio(x)
        b = golden_model.encode_audio(x.astype(np.float32) / 32768.0)
    assert torch.equal(a, b)


@pytest.mark.slow
def test_text_tokens_and_embeddings(golden_model, golden_outputs, reference_live, golden_dir):
    texts = json.loads((golden_dir / "reference_outputs.json").read_text())["texts"]
    assert np.array_equal(tokenize(texts).numpy(), golden_outputs["text_tokens"])
    with torch.inference_mode():
        ours = golden_model.encode_text(texts).numpy()
    assert_close_to_reference(ours, reference_live["text_emb"], "text embeddings against the reference run here")
    assert_close_to_reference(ours, golden_outputs["text_emb"], "text embeddings against the stored array")


def test_tokenizer_cases(golden_dir):
    cases = json.loads((golden_dir / "tokenizer_cases.json").read_text())
    for case in cases:
        tokens = tokenize([case["text"]])[0].tolist()
        n = len(case["ids"])
        assert tokens[0] == 49406 and tokens[n + 1] == 49407, case["text"]
        assert tokens[1:n + 1] == case["ids"], case["text"]
        assert not any(tokens[n + 2:]), case["text"]


@pytest.mark.slow
def test_image_embeddings(golden_model, golden_outputs, reference_live):
    with torch.inference_mode():
        ours = golden_model.encode_image(torch.from_numpy(golden_outputs["image_in"])).numpy()
    assert_close_to_reference(ours, reference_live["image_emb"], "image embeddings against the reference run here")
    assert_close_to_reference(ours, golden_outputs["image_emb"], "image embeddings against the stored array")


@pytest.mark.slow
def test_forward_logits_and_loss(golden_model, golden_outputs, reference_live, golden_dir):
    fwd_text = json.loads((golden_dir / "reference_outputs.json").read_text())["fwd_text"]
    tokens = tokenize([", ".join(entities) for entities in fwd_text])
    with torch.inference_mode():
        out = golden_model(audio=golden_outputs["fwd_audio_in"] / 32768.0,
                           image=torch.from_numpy(golden_outputs["image_in"]), tokens=tokens)
        loss = contrastive_loss(out) + fbsp_norm_loss(golden_model.audio)
    for pair in ("audio_image", "audio_text", "image_text"):
        ours = getattr(out, f"logits_{pair}").numpy()
        assert_close_to_reference(ours, reference_live[f"fwd_logits_{pair}"], f"{pair} against the reference run here")
        assert_close_to_reference(ours, golden_outputs[f"fwd_logits_{pair}"], f"{pair} against the stored array",
                                  ACROSS_CPUS)
    # the loss is compared with the reference run here only: it sums logits that move across CPUs
    ref_loss = float(reference_live["fwd_loss"])
    assert abs(float(loss) - ref_loss) <= 1e-4 * abs(ref_loss)
