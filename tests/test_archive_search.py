"""audioclip-search over a labelled archive's embeddings, CLIP's image transform, and the paper's querying metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from typer.testing import CliRunner

from audioclip.archive import ArchiveIndex, LabelSettings, ModelSpec, QueryEncoder, find_recordings, label_archive
from audioclip.archive.cli import search_app
from audioclip.archive.metrics import class_retrieval, retrieval_metrics
from audioclip.model import load_model
from audioclip.model.constants import SAMPLE_RATE
from audioclip.search import exact as search_module
from audioclip.search.exact import top_k
from audioclip.search.query import CLIP_MEAN, CLIP_STD, clip_preprocess

from helpers import require


@pytest.fixture(scope="module")
def archive(tmp_path_factory, tiny_checkpoint):
    """Three 3-s recordings at 44.1 kHz (a rising chirp, noise, clicks) labelled with 1-s windows and
    embeddings: ``(root, signals)``."""
    root = tmp_path_factory.mktemp("search")
    rng = np.random.default_rng(1)
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    signals = {"chirp.wav": 0.5 * np.sin(2 * np.pi * (200 * t + 1300 * t ** 2)),
               "noise.wav": rng.normal(0, 0.2, len(t)), "clicks.wav": (np.arange(len(t)) % 4410 < 40) * 0.8}
    (root / "in").mkdir()
    for name, x in signals.items():
        sf.write(root / "in" / name, x.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    spec = ModelSpec.from_labels(["a", "b"], checkpoint=str(tiny_checkpoint), threads=1)
    label_archive(find_recordings([root / "in"]), out=root / "out", spec=spec,
                  settings=LabelSettings(window=1.0, hop=1.0, embeddings=True))
    return root, {name: x.astype(np.float32) for name, x in signals.items()}


def run_search(*args):
    result = CliRunner().invoke(search_app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_an_audio_query_is_embedded_like_the_window_it_was_cut_from(archive, tiny_checkpoint, tmp_path):
    root, signals = archive
    clip = tmp_path / "clip.wav"
    sf.write(clip, signals["chirp.wav"][SAMPLE_RATE:2 * SAMPLE_RATE], SAMPLE_RATE, subtype="FLOAT")
    index = ArchiveIndex.open(root / "out")
    row = [i for i in range(len(index.t_start)) if index.t_start[i] == 1.0
           and index.files.dictionary[index.files.indices[i].as_py()].as_py() == str(root / "in" / "chirp.wav")]
    query = QueryEncoder(tiny_checkpoint).audio(clip, window=1.0)
    np.testing.assert_allclose(np.asarray(index.embeddings[row[0]], np.float32), query, atol=2e-3)  # float16 storage
    code, stdout, stderr = run_search(root / "out", "--audio", clip, "--k", "3", "--format", "jsonl")
    assert code == 0, stderr
    hits = [json.loads(line) for line in stdout.splitlines()]
    scores = np.asarray(index.embeddings, np.float32) @ query
    assert len(hits) == 3 and hits[0]["score"] == pytest.approx(scores.max(), abs=1e-5)
    assert hits[0]["score"] == pytest.approx(1.0, abs=2e-3) and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_text_and_image_queries_rank_like_brute_force(archive, tiny_checkpoint, tmp_path):
    root, _ = archive
    index = ArchiveIndex.open(root / "out")
    model = load_model(tiny_checkpoint)
    encoder = QueryEncoder(None, model=model)
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (90, 140, 3), dtype=np.uint8)).save(image)
    with torch.inference_mode():
        text_q = model.encode_text(["dog barking"])[0].numpy()
        image_q = model.encode_image(torch.from_numpy(clip_preprocess(image, 64))[None])[0].numpy()
    for query, flag, value in ((text_q, "--text", "dog barking"), (image_q, "--image", image)):
        query = query / np.linalg.norm(query)
        assert np.allclose(query, encoder.text("dog barking") if flag == "--text" else encoder.image(image), atol=1e-5)
        scores = np.asarray(index.embeddings, np.float32) @ query
        order = np.argsort(-scores, kind="stable")[:4]
        code, stdout, stderr = run_search(root / "out", flag, value, "--k", "4", "--format", "jsonl")
        assert code == 0, stderr
        hits = [json.loads(line) for line in stdout.splitlines()]
        assert [h["t_start"] for h in hits] == [float(index.t_start[i]) for i in order]
        np.testing.assert_allclose([h["score"] for h in hits], scores[order], atol=1e-5)


def test_clip_preprocess_resizes_the_short_side_and_crops_the_centre(tmp_path):
    # 128 x 64: the short side is already 64, so the crop alone decides: columns 32..95 are green
    x = np.zeros((64, 128, 3), np.uint8)
    x[:, :32] = (255, 0, 0)
    x[:, 32:96] = (0, 255, 0)
    x[:, 96:] = (0, 0, 255)
    Image.fromarray(x).save(tmp_path / "wide.png")
    out = clip_preprocess(tmp_path / "wide.png", 64)
    green = (np.array([0.0, 1.0, 0.0]) - CLIP_MEAN) / CLIP_STD
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.broadcast_to(green[:, None, None], out.shape), atol=1e-6)
    # a 300 x 600 grey picture: resized to 64 x 128 and cropped, every pixel the same normalised grey
    Image.new("L", (300, 600), 128).save(tmp_path / "tall.jpg")
    grey = clip_preprocess(tmp_path / "tall.jpg", 64)
    np.testing.assert_allclose(grey, np.broadcast_to(((128 / 255 - np.array(CLIP_MEAN)) / CLIP_STD)[:, None, None],
                                                     (3, 64, 64)), atol=1e-5)


def test_bad_queries_are_one_line_errors(archive, tmp_path):
    root, _ = archive
    (tmp_path / "notes.jpg").write_text("not a picture")
    cases = [(["--image", tmp_path / "notes.jpg"], "not an image Pillow can read"),
             (["--text", "a", "--audio", tmp_path / "x.wav"], "give exactly one query"),
             (["--text", "dog", "--checkpoint", "partial"], "was embedded with"),
             (["--text", "dog", "--k", "0"], "k must be a whole number at least 1")]
    for args, message in cases:
        code, _, stderr = run_search(root / "out", *args)
        assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    code, _, stderr = run_search(tmp_path, "--text", "dog")
    assert code == 2 and "not an audioclip-label output folder" in stderr
    code, _, stderr = run_search(tmp_path / "missing.sqlite", "--text", "dog")
    assert code == 2 and f"{tmp_path / 'missing.sqlite'}: no such file or folder" in stderr, stderr
    assert "archive.json" not in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_top_k_over_blocks_equals_a_full_sort(monkeypatch):
    monkeypatch.setattr(search_module, "BLOCK_ROWS", 64)  # 8 blocks; 44 candidates of each for k = 3
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    x[200] = x[3]  # a tie: the lower row comes first
    q = x[3].astype(np.float32)
    full = np.asarray(x, np.float32) @ q
    for k in (1, 3, 600):
        rows, scores = top_k(x, q, k)
        expected = np.lexsort((np.arange(500), -full))[:k]
        assert rows.tolist() == expected.tolist()
        np.testing.assert_array_equal(scores, full[expected])  # float32 scores of the stored rows
    assert top_k(x, q, 3)[0][:2].tolist() == [3, 200]


def test_top_k_with_a_mask_returns_only_those_rows(monkeypatch):
    monkeypatch.setattr(search_module, "BLOCK_ROWS", 64)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    q = x[9].astype(np.float32)
    mask = np.arange(500) % 3 == 1  # row 9 is left out; one block without a row
    mask[64:128] = False
    full = np.asarray(x, np.float32) @ q
    for k in (1, 5, 400):
        rows, scores = top_k(x, q, k, mask=mask)
        allowed = np.flatnonzero(mask)
        expected = allowed[np.lexsort((allowed, -full[allowed]))][:k]
        assert rows.tolist() == expected.tolist() and 9 not in rows
        np.testing.assert_array_equal(scores, full[expected])
    assert top_k(x, q, 3, mask=np.zeros(500, bool))[0].tolist() == []


def live_rows(n: int, dim: int = 32, seed: int = 5):
    """``n`` unit float16 rows (ids 1..n) of sources 0, 1, 2 in turn, one second apart: the arguments of
    ``LiveIndex.append``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    return np.arange(1, n + 1), np.arange(n) % 3, 1_000_000 + 1000 * np.arange(n), x


@pytest.mark.parametrize("path", ["exact", "vector index"])
def test_live_index_filters_by_source_and_time_on_both_paths(monkeypatch, path):
    from audioclip.search.vindex import LiveIndex

    if path == "vector index":
        pytest.importorskip("faiss", reason="the vector index needs faiss (the archive extra)")
        monkeypatch.setattr(search_module, "EXACT_MAX_ROWS", 100)
    ids, sources, times, x = live_rows(3000)
    live = LiveIndex(32)
    live.append(ids[:1000], sources[:1000], times[:1000], x[:1000])
    live.search(x[0].astype(np.float32), 5)  # builds the vector index over 1000 rows on that path
    for start in range(1000, 3000, 700):  # rows come after it was built: the index is extended
        live.append(ids[start:start + 700], sources[start:start + 700], times[start:start + 700], x[start:start + 700])
    assert len(live) == 3000
    full = np.asarray(x, np.float32)
    for row in (7, 1500, 2999):
        q = full[row]
        for source, since in ((None, None), (row % 3, None), ((row + 1) % 3, None), (None, times[row]),
                              (row % 3, times[row] + 1)):
            allowed = np.ones(3000, bool) if source is None else sources == source
            if since is not None:
                allowed &= times >= since
            got, scores = live.search(q, 10, source=source, since=since)
            rows = np.flatnonzero(allowed)
            expected = rows[np.lexsort((rows, -(full[rows] @ q)))][:10]
            assert got.tolist() == ids[expected].tolist(), (row, source, since)
            np.testing.assert_allclose(scores, full[expected] @ q, atol=1e-6)
            assert (len(got) > 0 and got[0] == row + 1) == bool(allowed[row])  # its own vector finds it first
    assert (live._vectors is not None) == (path == "vector index")
    plain = LiveIndex(32, vectors=False)  # never a vector index: the same answers, exactly
    plain.append(ids, sources, times, x)
    plain.prepare()
    for source in (None, 1):
        assert plain.search(full[1500], 10, source=source)[0].tolist() == live.search(full[1500], 10,
                                                                                       source=source)[0].tolist()
    assert plain._vectors is None
    live.floor = int(times[2000])  # retention deleted the first 2000 rows
    assert live.search(full[5], 10)[0].min() > 2000
    live.keep(times >= live.floor)
    live.floor = None
    assert len(live) == 1000 and live.search(full[2500], 1)[0].tolist() == [2501]
    live.truncate(400)
    assert live.search(full[2500], 3)[0].max() <= 2400


def test_retrieval_metrics_on_hand_computed_rankings():
    scores = np.array([[0.9, 0.8, 0.1], [0.2, 0.7, 0.5], [0.3, 0.3, 0.3]])
    relevant = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 0]], bool)
    m = retrieval_metrics(scores, relevant)
    # query 1 ranks 0,1,2: hits 1,0,1 -> P@1 1, R@1 1/2, AP (1 + 2/3) / 2; query 2 ranks 1,2,0 -> 0, 0, 1/3
    assert m.queries == 2  # the third has no relevant item
    assert m.p_at_1 == pytest.approx(0.5)
    assert m.r_at_1 == pytest.approx(0.25)
    assert m.mean_ap == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3) / 2)
    tie = retrieval_metrics(np.array([[0.5, 0.5]]), np.array([[False, True]]))
    assert (tie.p_at_1, tie.mean_ap) == (0.0, 0.5)  # ties rank by item order
    with pytest.raises(ValueError, match="no query has a relevant item"):
        retrieval_metrics(scores[2:], relevant[2:])


def test_class_retrieval_on_embeddings_with_known_answers():
    rng = np.random.default_rng(4)
    centres = np.eye(4, 16)
    items = np.repeat(centres, 3, axis=0) + rng.normal(0, 0.01, (12, 16))
    classes = np.repeat(np.arange(4), 3)
    perfect = class_retrieval(centres, np.arange(4), items, classes)  # text -> audio: 3 relevant items each
    assert (perfect.p_at_1, perfect.r_at_1, perfect.mean_ap) == pytest.approx((1.0, 1 / 3, 1.0))
    swapped = class_retrieval(centres[[1, 0, 2, 3]], np.arange(4), items, classes)  # two queries point elsewhere
    assert swapped.p_at_1 == pytest.approx(0.5) and swapped.mean_ap < 0.75
    back = class_retrieval(items, classes, centres, np.arange(4))  # audio -> text: one relevant label each
    assert (back.p_at_1, back.r_at_1, back.mean_ap) == pytest.approx((1.0, 1.0, 1.0))


def test_real_photographs_preprocess_and_query(archive, tmp_path):
    from conftest import SHARED

    photos = sorted((SHARED / "images").glob("*.jpg"))
    require(photos, f"no photographs in {SHARED / 'images'} (../shared beside the clone)")
    low, high = (0 - np.array(CLIP_MEAN)) / CLIP_STD, (1 - np.array(CLIP_MEAN)) / CLIP_STD
    for photo in photos:
        x = clip_preprocess(photo)
        assert x.shape == (3, 224, 224) and x.dtype == np.float32
        assert (x.min(axis=(1, 2)) >= low - 1e-5).all() and (x.max(axis=(1, 2)) <= high + 1e-5).all()
        assert x.std() > 0.1, f"{photo.name}: a photograph, not a flat picture"
    root, _ = archive
    code, stdout, stderr = run_search(root / "out", "--image", photos[0], "--k", "2", "--format", "jsonl")
    assert code == 0, stderr
    assert [json.loads(line)["score"] <= 1.0 for line in stdout.splitlines()] == [True, True]
