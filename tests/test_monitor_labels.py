"""Label prompt groups: CLIP-style prompt ensembling on both backends."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from audioclip.model import ZeroShotClassifier
from audioclip.monitor.config import MonitorConfig
from audioclip.monitor.labels import config_classifier
from audioclip.stream.labels import ensemble, onnx_group_classifier, torch_group_classifier

from helpers import make_tiny_model

GROUPS = [("dog", ["dog bark", "barking dog", "a dog growls"]), ("siren", ["siren"]), ("rain", ["rain on a roof"])]
TEMPLATE = "the sound of {}"


def waveforms(n: int = 2, seconds: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(3)
    return (rng.standard_normal((n, int(seconds * 44100))) * 0.1).astype(np.float32)


def test_a_label_whose_prompt_is_its_name_scores_exactly_as_today(tiny_model):
    x = waveforms()
    today = ZeroShotClassifier(tiny_model, ["dog", "siren"], TEMPLATE)
    grouped = torch_group_classifier(tiny_model, [("dog", ["dog"]), ("siren", ["siren"])], TEMPLATE)
    assert grouped.labels == today.labels
    assert torch.equal(grouped.label_embeddings, today.label_embeddings)
    for a, b in zip(grouped.scores(x), today.scores(x)):
        assert torch.equal(a, b)


def test_the_ensemble_matches_a_hand_computation(tiny_model):
    x = waveforms()
    classifier = torch_group_classifier(tiny_model, GROUPS, TEMPLATE)
    with torch.no_grad():
        rows = []
        for _, prompts in GROUPS:
            e = torch.stack([tiny_model.encode_text([TEMPLATE.format(p)])[0] for p in prompts])
            e = e / e.norm(dim=-1, keepdim=True)
            mean = e.mean(dim=0)
            rows.append(mean / mean.norm())
        label_embeddings = torch.stack(rows)
        audio = tiny_model.encode_audio(x)
        audio = audio / audio.norm(dim=-1, keepdim=True)
        sims = audio @ label_embeddings.T
        scale = float(tiny_model.logit_scale_at.exp().clamp(1, 100))
        probs = torch.softmax(scale * sims, dim=-1)
    got_probs, got_sims = classifier.scores(x)
    assert classifier.labels == ["dog", "siren", "rain"]
    assert classifier.logit_scale == pytest.approx(scale)
    torch.testing.assert_close(got_sims, sims, atol=2e-6, rtol=0)
    torch.testing.assert_close(got_probs, probs, atol=2e-6, rtol=0)
    # the ensemble is not the first prompt alone: it changes the scores
    alone = torch_group_classifier(tiny_model, [("dog", ["dog bark"]), *GROUPS[1:]], TEMPLATE)
    assert (alone.scores(x)[1][:, 0] - got_sims[:, 0]).abs().max() > 1e-3


def test_ensemble_normalises_rows_then_means():
    rows = np.array([[3.0, 0.0], [0.0, 1.0], [0.0, 2.0]], np.float32)
    out = ensemble(rows, [2, 1])
    np.testing.assert_allclose(out, [[np.sqrt(0.5), np.sqrt(0.5)], [0.0, 1.0]], atol=1e-7)
    with pytest.raises(ValueError, match="add up to 2, but there are 3"):
        ensemble(rows, [1, 1])


def test_an_empty_prompt_group_names_its_label(tiny_model):
    with pytest.raises(ValueError, match="label 'dog': prompts must be a non-empty list"):
        torch_group_classifier(tiny_model, [("dog", [])])


def test_a_configuration_builds_its_classifier_from_its_model_and_groups(tmp_path):
    checkpoint = tmp_path / "tiny.pt"
    torch.save(make_tiny_model().state_dict(), checkpoint)
    config = MonitorConfig.from_dict({
        "model": {"checkpoint": str(checkpoint), "threads": 1},
        "defaults": {"template": TEMPLATE},
        "labels": [{"name": name, "prompts": prompts} for name, prompts in GROUPS],
        "sources": [{"name": "in", "stdin": True}]})
    threads = torch.get_num_threads()
    try:
        classifier = config_classifier(config)
    finally:
        torch.set_num_threads(threads)
    expected = torch_group_classifier(make_tiny_model(), GROUPS, TEMPLATE)
    assert classifier.labels == ["dog", "siren", "rain"] and classifier.template == TEMPLATE
    torch.testing.assert_close(classifier.label_embeddings, expected.label_embeddings, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def export_dir(tiny_export_2s):
    return tiny_export_2s  # the groups' labels are new to the export: its text encoder embeds them


@pytest.mark.slow
def test_onnx_groups_score_like_torch_groups_without_importing_torch(export_dir, tmp_path):
    x = waveforms()
    np.save(tmp_path / "x.npy", x)
    code = (
        "import json, sys\n"
        "sys.modules['torch'] = None  # any import of torch fails\n"
        "import numpy as np\n"
        "from audioclip.stream.labels import onnx_group_classifier\n"
        f"c = onnx_group_classifier({str(export_dir)!r}, {GROUPS!r}, {TEMPLATE!r}, threads=1)\n"
        f"probs, sims = c.scores(np.load({str(tmp_path / 'x.npy')!r}))\n"
        "print(json.dumps({'labels': c.labels, 'probs': probs.tolist(), 'sims': sims.tolist()}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    onnx = json.loads(done.stdout.strip().splitlines()[-1])
    by_torch = torch_group_classifier(make_tiny_model(), GROUPS, TEMPLATE)
    probs, sims = (t.numpy() for t in by_torch.scores(x))
    assert onnx["labels"] == ["dog", "siren", "rain"]
    np.testing.assert_allclose(onnx["sims"], sims, atol=1e-4)
    np.testing.assert_allclose(onnx["probs"], probs, atol=1e-4)
    # in this process too: the group embeddings are the torch ones
    in_process = onnx_group_classifier(export_dir, GROUPS, TEMPLATE, threads=1)
    np.testing.assert_allclose(in_process.label_embeddings, by_torch.label_embeddings.numpy(), atol=1e-5)


@pytest.mark.slow
def test_onnx_monitor_sources_share_work_with_the_rows_and_embeddings_of_whole_windows(export_dir, tmp_path,
                                                                                        monkeypatch):
    """Each source keeps its own incremental state over the export's stage graphs (no torch in the path)."""
    import sqlite3

    import audioclip.monitor.service as service
    from audioclip.model.constants import SAMPLE_RATE, STRIDE_SAMPLES
    from audioclip.stream.incremental import window_scorer

    from helpers import burst_wav, monitor_config, run_monitor

    scorers = []

    def recording_scorer(classifier, stream, **kw):
        scorers.append(window_scorer(classifier, stream, **kw))
        return scorers[-1]

    monkeypatch.setattr(service, "window_scorer", recording_scorer)
    a, b = burst_wav(tmp_path / "a.wav", seed=1), burst_wav(tmp_path / "b.wav", seed=2)
    sources = [{"name": "porch", "file": str(a), "realtime": False},
               {"name": "yard", "file": str(b), "realtime": False}]
    results, vectors = {}, {}
    for exact in (True, False):
        db = tmp_path / f"{exact}.sqlite"
        defaults = {"window": 2.0, "hop": 3 * STRIDE_SAMPLES / SAMPLE_RATE, "threshold": 0.3, "min_dbfs": -60.0,
                    "score": "softmax", "exact_windows": exact}
        cfg = monitor_config(tmp_path, tmp_path / "unused.pt", sources, defaults=defaults,
                             model={"onnx": str(export_dir), "threads": 1}, store={"db": str(db)})
        _, lines = run_monitor(cfg)
        results[exact] = sorted((x for x in lines if "t_start" in x), key=lambda x: (x["source"], x["t_start"]))
        with sqlite3.connect(db) as conn:
            vectors[exact] = [np.frombuffer(v, np.float16) for (v,) in
                              conn.execute("SELECT vector FROM embeddings ORDER BY event_id")]
    assert scorers[:2] == [None, None] and all(s is not None and s.onnx for s in scorers[2:])
    whole, shared = results[True], results[False]
    assert len(whole) == len(shared) > 20
    for w, s in zip(whole, shared):
        assert (w["source"], w["t_start"], w["t_end"], w["top"]) == (s["source"], s["t_start"], s["t_end"], s["top"])
        np.testing.assert_allclose(list(s["probs"].values()), list(w["probs"].values()), atol=1e-4)
    assert len(vectors[True]) == len(vectors[False]) >= 2  # an event per source at least, each with its embedding
    for w, s in zip(vectors[True], vectors[False]):
        np.testing.assert_allclose(s.astype(np.float32), w.astype(np.float32), atol=2e-3)  # float16 storage
    for scorer in scorers[2:]:
        assert scorer.encoder.incremental_windows > 3 * scorer.encoder.full_windows
