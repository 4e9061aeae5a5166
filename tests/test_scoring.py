"""Label scores (audioclip/stream/scoring.py): a label's score depends on its prompts and the audio only, on
PyTorch and ONNX Runtime alike; the bank's near-synonyms of a label are left out; the monitor uses them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import soundfile as sf

from audioclip.model import load_model
from audioclip.model.background import EXPORT_FILE, bank_texts, torch_bank
from audioclip.model.constants import SAMPLE_RATE
from audioclip.monitor.config import load_config
from audioclip.monitor.output import JsonlOutput
from audioclip.monitor.service import Monitor
from audioclip.stream.labels import torch_group_classifier
from audioclip.stream.scoring import TorchLabelScores, bank_mask, label_scores, score_classifier

from helpers import make_tiny_model, wait_until

WINDOWS = 5
GROUPS = [("cat", ["cat", "a cat meowing"]), ("dog", ["dog"]), ("siren", ["siren"])]
# the same "dog" beside other labels: added, removed, reworded
OTHER_SETS = [
    [("dog", ["dog"])],
    [("cat", ["cat", "a cat meowing"]), ("dog", ["dog"]), ("siren", ["siren"]), ("glass", ["glass breaking"]),
     ("rain", ["rain", "rain on a roof"])],
    [("siren", ["an ambulance siren"]), ("dog", ["dog"]), ("cat", ["kitten"])],
]


def test_the_score_is_a_setting_checked_with_the_rest():
    from audioclip.monitor.config import ConfigError, MonitorConfig

    table = {"labels": ["a"], "sources": [{"name": "in", "stdin": True}]}
    with pytest.raises(ConfigError, match="defaults.score: must be one of 'label', 'softmax', got 'sigmoid'"):
        MonitorConfig.from_dict({**table, "defaults": {"score": "sigmoid"}})
    assert MonitorConfig.from_dict(table).defaults.score == "label"
    assert MonitorConfig.single(input="-", labels=["a"], score="softmax").defaults.threshold == 0.5


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(0)  # the weights of the tiny_checkpoint fixture


@pytest.fixture(scope="module")
def windows(clips_dir) -> np.ndarray:
    """2-s windows of the real clips and of noise (the tiny export's window)."""
    clips = [sf.read(f, dtype="float32")[0] for f in sorted(clips_dir.glob("*.wav"))]
    rng = np.random.default_rng(0)
    rows = [c[:2 * SAMPLE_RATE] for c in clips[:WINDOWS - 1]]
    rows.append((0.05 * rng.standard_normal(2 * SAMPLE_RATE)).astype(np.float32))
    return np.stack(rows)


@pytest.fixture(scope="module")
def embeddings(model, windows):
    """The windows' normalised audio embeddings (PyTorch): label sets score them without another audio pass."""
    return torch_group_classifier(model, GROUPS).embed(windows)


def by_label(classifier, x=None, *, embeddings=None) -> dict[str, np.ndarray]:
    scores = classifier.scores(x)[0] if embeddings is None else classifier.scores_of(embeddings)[0]
    scores = np.asarray(scores, np.float64)
    return {label: scores[:, i] for i, label in enumerate(classifier.labels)}


def test_a_label_score_does_not_move_when_other_labels_change_pytorch(model, windows, embeddings):
    whole = score_classifier(torch_group_classifier(model, GROUPS), "label")
    base = by_label(whole, embeddings=embeddings)
    np.testing.assert_allclose(by_label(whole, windows[:2])["dog"], base["dog"][:2], atol=1e-6)  # scores = scores_of
    for groups in OTHER_SETS:
        got = by_label(score_classifier(torch_group_classifier(model, groups), "label"), embeddings=embeddings)
        np.testing.assert_allclose(got["dog"], base["dog"], atol=1e-6, rtol=0, err_msg=str(groups))
    for scores in base.values():
        assert np.all((scores >= 0) & (scores <= 1)) and np.ptp(scores) > 0  # a range, and it depends on the audio
    softmax = by_label(torch_group_classifier(model, GROUPS), embeddings=embeddings)  # the softmax moves
    moved = by_label(torch_group_classifier(model, OTHER_SETS[1]), embeddings=embeddings)["dog"] / softmax["dog"]
    assert np.abs(moved - 1).max() > 0.05


def test_label_scores_of_stored_embeddings_equal_the_classifiers(model, embeddings):
    """``label_scores`` (numpy, what calibration runs on the moments) equals the classifier's scores, also from
    float16 embeddings as the database keeps them (within their rounding)."""
    classifier = score_classifier(torch_group_classifier(model, GROUPS), "label")
    expected = np.asarray(classifier.scores_of(embeddings)[0])
    embeddings = embeddings.numpy()
    bank = torch_bank(model, "{}")
    labels = classifier.label_embeddings.numpy()
    np.testing.assert_allclose(label_scores(embeddings, labels, bank, classifier.logit_scale), expected, atol=1e-6)
    stored = label_scores(embeddings.astype(np.float16), labels, bank, classifier.logit_scale)
    np.testing.assert_allclose(stored, expected, atol=0.02)


def test_bank_entries_near_the_label_are_left_out(model):
    texts = bank_texts()
    assert 200 <= len(texts) == len(set(texts))
    bank = torch_bank(model, "{}")
    # a label that is a bank entry word for word leaves that entry out (cosine 1), and keeps most of the bank
    i = texts.index("a dog barking")
    label = score_classifier(torch_group_classifier(model, [("dog", ["a dog barking"])]), "label")
    keep = bank_mask(label.label_embeddings.numpy(), bank)[0]
    assert not keep[i] and keep.mean() > 0.5  # never half the bank (below a share of the median distance)
    # synthetic: a label at a bank entry (plus a little noise) loses it and its neighbours, not far entries
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((300, 16))
    near = rows[7] + 0.05 * rng.standard_normal(16)
    rows[8] = rows[7] + 0.3 * rng.standard_normal(16)
    keep = bank_mask(near[None], rows)[0]
    assert not keep[7] and not keep[8] and keep.sum() >= 290
    # leaving them out raises the label's score on audio that matches the label
    audio = near[None] + 0.1 * rng.standard_normal((4, 16))
    kept = label_scores(audio, near[None], rows, 20.0)
    every = label_scores(audio, near[None], rows, 20.0, keep=np.ones((1, 300), bool))
    assert np.all(kept > every)


def test_label_score_classifier_is_the_stream_interface(model, windows):
    classifier = score_classifier(torch_group_classifier(model, GROUPS), "label")
    assert isinstance(classifier, TorchLabelScores) and classifier.labels == ["cat", "dog", "siren"]
    assert classifier.model is model and classifier.template == "{}"  # the rest is the wrapped classifier's
    assert score_classifier(classifier, "softmax") is classifier.classifier
    assert score_classifier(classifier, "label") is classifier  # already label scores: as it is
    with pytest.raises(ValueError, match="score: must be one of label, softmax, got 'sigmoid'"):
        score_classifier(classifier, "sigmoid")


def onnx_label(folder, groups):
    from audioclip.stream.labels import onnx_group_classifier

    return score_classifier(onnx_group_classifier(folder, groups, threads=1), "label")


def test_onnx_label_scores_equal_pytorch_and_do_not_move_with_other_labels(tiny_export_2s, model, windows,
                                                                           embeddings):
    import torch

    assert (tiny_export_2s / EXPORT_FILE).is_file()
    onnx = onnx_label(tiny_export_2s, GROUPS)
    (onnx_embeddings,) = onnx.session.run(["embedding"], {onnx.input_name: windows})
    got = onnx.logits_probs_of(onnx_embeddings)[1]
    pytorch = score_classifier(torch_group_classifier(model, GROUPS), "label")  # model: the export's weights
    # on the same embeddings, PyTorch's label scores within the export's head bound (1e-4): the export's bank
    # is PyTorch's, its text encoder gives the labels within the text check's bound
    np.testing.assert_allclose(got, pytorch.scores_of(torch.from_numpy(onnx_embeddings))[0].numpy(), atol=1e-4,
                               rtol=0)
    # end to end: the embeddings differ within the export's 1e-4, which a logit scale of up to 100 amplifies
    np.testing.assert_allclose(got, pytorch.scores_of(embeddings)[0].numpy(), atol=5e-3, rtol=0)
    for groups in OTHER_SETS:
        other = onnx_label(tiny_export_2s, groups)
        dog = other.logits_probs_of(onnx_embeddings)[1][:, other.labels.index("dog")]
        np.testing.assert_allclose(dog, got[:, 1], atol=1e-6, rtol=0, err_msg=str(groups))


def test_onnx_exported_labels_and_a_folder_without_the_bank_give_the_same_scores(tiny_export_2s, windows, tmp_path):
    from audioclip.export.runtime import OnnxClassifier

    exported = score_classifier(OnnxClassifier(tiny_export_2s, threads=1), "label")  # classifier.onnx's labels
    expected, _ = exported.scores(windows)
    (onnx_embeddings,) = exported.session.run(["embedding"], {exported.input_name: windows})
    new = onnx_label(tiny_export_2s, [(label, [label]) for label in exported.labels])
    np.testing.assert_allclose(new.logits_probs_of(onnx_embeddings)[1], expected, atol=1e-6)
    old = tmp_path / "old-export"  # an export from before label scores: the bank comes from its text encoder
    old.mkdir()
    for f in tiny_export_2s.iterdir():
        if f.name != EXPORT_FILE:
            (old / f.name).symlink_to(f)
    older = score_classifier(OnnxClassifier(old, labels=exported.labels, threads=1), "label")
    np.testing.assert_allclose(older.logits_probs_of(onnx_embeddings)[1], expected, atol=1e-4)


def test_label_scores_stream_on_onnx_without_torch(tiny_export_2s, clips_dir):
    clip = str(clips_dir / "cat_3-95694-A-5.wav")
    code = (
        "import sys\n"
        "from audioclip.stream.cli import main\n"
        f"sys.argv = ['audioclip-stream', '--onnx', {str(tiny_export_2s)!r}, '--input', {clip!r}, '--format',"
        " 'jsonl', '--window', '2', '--labels', 'rain,thunder', '--events']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('TORCH', 'torch' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if "t_start" in line]
    assert rows and all(abs(sum(r["probs"].values()) - 1) > 1e-3 for r in rows)  # not a softmax over two labels
    assert "TORCH False" in done.stderr and "scores: label" in done.stderr


@pytest.mark.slow
def test_the_monitor_scores_labels_on_their_own_through_a_reload(tmp_path, tiny_checkpoint, caplog):
    """The monitor's default is the label score; a reload that adds a label leaves an existing label's scores on
    the same audio as they were (a looped 1.5-s file: windows 1.5 s apart hold the same samples)."""
    caplog.set_level("INFO", "audioclip.monitor")
    rng = np.random.default_rng(3)
    audio = (0.2 * rng.standard_normal(int(1.5 * SAMPLE_RATE))).astype(np.float32)
    wav = tmp_path / "loop.wav"
    sf.write(wav, audio, SAMPLE_RATE, subtype="FLOAT")
    toml = tmp_path / "monitor.toml"

    def write(labels: str) -> None:
        toml.write_text(f"# the site's labels\nlabels = {labels}\n[model]\ncheckpoint = \"{tiny_checkpoint}\"\n"
                        "[defaults]\nwindow = 1.0\nhop = 0.5\n"
                        f"[[sources]]\nname = \"loop\"\nfile = \"{wav}\"\nloop = true\n")

    write('["cat", "rain"]')
    out = io.StringIO()
    monitor = Monitor(load_config(toml), output=JsonlOutput(out), config_path=str(toml))
    thread = threading.Thread(target=monitor.run, daemon=True)
    thread.start()

    def rows():
        return [json.loads(x) for x in out.getvalue().splitlines() if '"t_end"' in x]

    try:
        wait_until(lambda: len(rows()) >= 4, 20, "windows before the reload")
        write('["cat", "rain", "siren"]')
        monitor.reload()
        wait_until(lambda: len([r for r in rows() if "siren" in r["probs"]]) >= 4, 20, "windows after the reload")
    finally:
        monitor.stop()
        thread.join(30)
    before = {round(r["t_start"] % 1.5, 3): r["probs"]["cat"] for r in rows() if "siren" not in r["probs"]}
    after = {round(r["t_start"] % 1.5, 3): r["probs"]["cat"] for r in rows() if "siren" in r["probs"]}
    common = sorted(set(before) & set(after))
    assert common, (before, after)
    for phase in common:
        assert after[phase] == pytest.approx(before[phase], abs=1e-6)
    # the label score, not a softmax: the value the label-score classifier gives the window's samples
    start = int(round(common[0] * SAMPLE_RATE))
    window = np.roll(np.tile(audio, 2), -start)[:SAMPLE_RATE]
    expected = score_classifier(torch_group_classifier(load_model(tiny_checkpoint), [("cat", ["cat"])]), "label")
    assert before[common[0]] == pytest.approx(float(expected.scores(window[None])[0][0, 0]), abs=1e-5)
