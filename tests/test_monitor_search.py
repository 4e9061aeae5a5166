"""The monitor's database as a search index: each event's peak-window embedding, stored through the
database sink, and ``audioclip-search DB --text/--audio`` over it; schema migration of older files."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from audioclip.archive.cli import search_app
from audioclip.archive.search import QueryEncoder
from audioclip.model.constants import SAMPLE_RATE, STRIDE_SAMPLES
from audioclip.monitor.config import ConfigError, LabelParams, MonitorConfig
from audioclip.monitor.events import DetectionEvent
from audioclip.monitor.messages import EventEmbedding
from audioclip.monitor.pipeline import IdCounter, SourcePipeline
from audioclip.monitor.store import EMBEDDING_DTYPE, MIGRATIONS, SCHEMA_VERSION, EventStore, migrate
from audioclip.stream.buffer import Window
from audioclip.stream.config import StreamConfig

from helpers import burst_wav, event_rows, monitor_config, run_monitor

HOP = 2 * STRIDE_SAMPLES / SAMPLE_RATE  # aligned: each source's windows go through its incremental scorer
WINDOW = 2.0


def chirp_wav(path, seed: int = 0):
    """Silence, a 3-s rising chirp with a little noise, silence: a sound unlike burst_wav's noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    loud = 0.4 * np.sin(2 * np.pi * (300 * t + 900 * t ** 2)) + 0.01 * rng.standard_normal(len(t))
    x = np.concatenate([np.zeros(2 * SAMPLE_RATE), loud, np.zeros(5 * SAMPLE_RATE)]).astype(np.float32)
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    return path


def stored(db) -> list[dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM embeddings ORDER BY event_id")]


def vector(row: dict) -> np.ndarray:
    return np.frombuffer(row["vector"], EMBEDDING_DTYPE).astype(np.float32)


def search(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(search_app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def search_config(tmp_path, checkpoint, files: dict, db, **store) -> MonitorConfig:
    sources = [{"name": name, "file": str(f), "realtime": False} for name, f in files.items()]
    return monitor_config(tmp_path, checkpoint, sources,
                          defaults={"window": WINDOW, "hop": HOP, "threshold": 0.3, "min_dbfs": -60.0},
                          store={"db": str(db), **store})


@pytest.fixture(scope="module")
def monitored(tmp_path_factory, tiny_checkpoint):
    """The monitor over a noise burst and a chirp: ``(db, files, windows by source, events, monitor)``."""
    tmp = tmp_path_factory.mktemp("monitored")
    files = {"porch": burst_wav(tmp / "porch.wav", seed=1), "yard": chirp_wav(tmp / "yard.wav")}
    db = tmp / "d.sqlite"
    monitor, lines = run_monitor(search_config(tmp, tiny_checkpoint, files, db))
    windows = {name: [x for x in lines if "t_start" in x and x["source"] == name] for name in files}
    return db, files, windows, event_rows(db), monitor


def peak_window(event: dict, windows: list[dict]) -> dict:
    """The first window of the event where its label's probability is highest (the event's windows end in
    ``[start_s, end_s)``: the window that ended it is not part of it; the JSON lines' times are rounded)."""
    inside = [w for w in windows if event["start_s"] - 1e-5 <= w["t_end"] < event["end_s"] - 1e-5]
    best = max(w["probs"][event["label"]] for w in inside)
    return next(w for w in inside if w["probs"][event["label"]] == best)


def window_wav(path, source_file, window: dict):
    samples, rate = sf.read(source_file, dtype="float32")
    start = round(window["t_start"] * rate)
    sf.write(path, samples[start:round(window["t_end"] * rate)], rate, subtype="FLOAT")
    return path


def test_each_event_keeps_its_peak_windows_unit_embedding(monitored, tiny_checkpoint, tmp_path):
    db, files, windows, events, monitor = monitored
    assert all(slot.score is not None for slot in monitor.scheduler._slots.values())  # the incremental path
    assert {e["source"] for e in events} == {"porch", "yard"} and all(e["end_s"] is not None for e in events)
    embeddings = stored(db)
    assert [r["event_id"] for r in embeddings] == [e["id"] for e in events]  # one row per event
    encoder = QueryEncoder(tiny_checkpoint)
    for event, row in zip(events, embeddings):
        v = vector(row)
        assert row["model"] == str(tiny_checkpoint) and row["window"] == WINDOW and row["dim"] == len(v)
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=2e-3)  # float16 storage
        window = peak_window(event, windows[event["source"]])
        assert window["probs"][event["label"]] == pytest.approx(event["peak"], abs=1e-6)
        clip = window_wav(tmp_path / f"{event['id']}.wav", files[event["source"]], window)
        expected = encoder.audio(clip, window=WINDOW)  # the whole window through the model, normalised
        np.testing.assert_allclose(v, expected, atol=1e-3)


def test_an_events_own_audio_finds_it_first(monitored, tmp_path):
    db, files, windows, events, _ = monitored
    vectors = {r["event_id"]: vector(r) for r in stored(db)}
    for event in events:
        clip = window_wav(tmp_path / f"{event['id']}.wav", files[event["source"]],
                          peak_window(event, windows[event["source"]]))
        code, stdout, stderr = search(db, "--audio", clip, "--k", "3", "--format", "jsonl")
        assert code == 0, stderr
        hits = [json.loads(line) for line in stdout.splitlines()]
        assert len(hits) == min(3, len(events))
        # first: the event itself, or an event of the same window (the same stored vector, the same score)
        assert hits[0]["id"] == event["id"] or np.array_equal(vectors[hits[0]["id"]], vectors[event["id"]])
        assert hits[0]["score"] == pytest.approx(1.0, abs=2e-3) and hits[0]["source"] == event["source"]
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_a_text_query_returns_every_event_with_its_fields_and_exact_scores(monitored, tiny_checkpoint):
    db, _, _, events, _ = monitored
    code, stdout, stderr = search(db, "--text", "a cat", "--k", "50", "--format", "jsonl")
    assert code == 0, stderr
    hits = [json.loads(line) for line in stdout.splitlines()]
    by_id = {e["id"]: e for e in events}
    assert sorted(h["id"] for h in hits) == sorted(by_id)
    query = QueryEncoder(tiny_checkpoint).text("a cat")
    scores = {r["event_id"]: float(vector(r) @ query) for r in stored(db)}
    for hit in hits:
        event = by_id[hit["id"]]
        assert {k: hit[k] for k in ("source", "label", "start_utc", "clip")} == \
            {k: event[k] for k in ("source", "label", "start_utc", "clip")}
        assert hit["start_s"] == pytest.approx(event["start_s"], abs=1e-6)
        assert hit["end_s"] == pytest.approx(event["end_s"], abs=1e-6)
        assert hit["score"] == pytest.approx(scores[hit["id"]], abs=1e-5)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    code, stdout, stderr = search(db, "--text", "a cat", "--k", "1")
    assert code == 0, stderr
    assert hits[0]["source"] in stdout and hits[0]["label"] in stdout and "start_utc" in stdout


def test_the_peak_window_is_taken_from_the_windows_that_started_the_event_and_those_after():
    """min_windows = 3: the event starts at the third window over the threshold; its peak may be an earlier one."""
    emitted = []
    params = LabelParams(thresholds=np.array([0.5, 0.5]), hysteresis=np.array([0.1, 0.1]), min_windows=np.array([3, 3]),
                         event=np.array([True, False]), privacy=np.zeros(2, bool))
    pipeline = SourcePipeline("porch", object(), config=StreamConfig(window=1.0, hop=1.0), labels=["dog", "rain"],
                              params=params, scheduler=None, emit=emitted.append, next_id=IdCounter(7))
    dog = [0.9, 0.2, 0.6, 0.8, 0.7, 0.95, 0.95, 0.6, 0.1]
    for i, p in enumerate(dog):  # window i's embedding: the i-th unit vector
        pipeline.on_result(Window(i, i * SAMPLE_RATE, np.full(SAMPLE_RATE, 0.1, np.float32), 0.0), np.array([p, 1 - p]),
                           np.zeros(2), 0.01, embedding=np.eye(len(dog), dtype=np.float16)[i])
    news = [x for x in emitted if isinstance(x, (DetectionEvent, EventEmbedding))]
    assert [(type(x), getattr(x, "kind", None)) for x in news] == [
        (DetectionEvent, "start"), (EventEmbedding, None), (DetectionEvent, "end"), (EventEmbedding, None)]
    start, first, end, last = news
    assert start.id == end.id == first.event_id == last.event_id == 7 and end.peak == 0.95
    assert first.window == last.window == 1.0  # window seconds
    assert np.argmax(first.vector) == 3  # at the start: the best of the three windows that started it (0.6, 0.8, 0.7)
    assert np.argmax(last.vector) == 5  # at the end: the first of the two at 0.95, not the window that ended it


def test_queries_from_another_model_are_refused(monitored):
    db = monitored[0]
    code, _, stderr = search(db, "--text", "a cat", "--checkpoint", "full")
    assert code == 2 and "not full" in stderr and "--checkpoint" in stderr and len(stderr.strip().splitlines()) == 1


def test_storing_embeddings_leaves_the_scores_unchanged_and_can_be_switched_off(monitored, tmp_path,
                                                                                 tiny_checkpoint):
    db, files, windows, events, _ = monitored
    off = tmp_path / "off.sqlite"
    _, lines = run_monitor(search_config(tmp_path, tiny_checkpoint, files, off, embeddings=False))
    for name in files:
        plain = [x for x in lines if "t_start" in x and x["source"] == name]
        assert [(w["t_end"], w["probs"]) for w in plain] == [(w["t_end"], w["probs"]) for w in windows[name]]
    assert sorted((e["source"], e["start_s"], e["end_s"]) for e in event_rows(off)) == \
        sorted((e["source"], e["start_s"], e["end_s"]) for e in events)  # ids follow the sources' threads
    assert stored(off) == []
    code, _, stderr = search(off, "--text", "a cat")
    assert code == 2 and "no event embeddings yet" in stderr and len(stderr.strip().splitlines()) == 1


def test_the_store_setting_is_validated_like_the_others(tmp_path):
    base = {"labels": ["cat"], "sources": [{"name": "mic", "device": "default"}]}
    assert MonitorConfig.from_dict({**base, "store": {}}).store.embeddings is True
    assert MonitorConfig.from_dict({**base, "store": {"embeddings": False}}).store.embeddings is False
    with pytest.raises(ConfigError, match=r"store\.embeddings: must be true or false, got"):
        MonitorConfig.from_dict({**base, "store": {"embeddings": "yes"}})
    with pytest.raises(ConfigError, match=r"store\.embedding: unknown key; did you mean 'embeddings'"):
        MonitorConfig.from_dict({**base, "store": {"embedding": True}})


def test_an_old_database_migrates_and_only_new_events_are_searchable(tmp_path, tiny_checkpoint):
    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    assert migrate(conn, MIGRATIONS[:1]) == 1  # the schema before embeddings
    conn.execute("INSERT INTO events (id, source, label, start_utc, end_utc, start_s, end_s, peak, mean) "
                 "VALUES (1, 'porch', 'cat', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:03.000Z', 0, 3, 0.9, 0.8)")
    conn.close()
    code, _, stderr = search(db, "--text", "a cat")
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "no event embeddings (schema version 1)" in stderr and "embeddings = true" in stderr

    run_monitor(search_config(tmp_path, tiny_checkpoint, {"porch": burst_wav(tmp_path / "a.wav", seed=3)}, db))
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    events = event_rows(db)
    assert events[0]["id"] == 1 and events[0]["end_s"] == 3.0 and len(events) > 1  # the old row kept
    assert [r["event_id"] for r in stored(db)] == [e["id"] for e in events[1:]]
    code, stdout, stderr = search(db, "--text", "a cat", "--k", "50", "--format", "jsonl")
    assert code == 0, stderr
    assert sorted(json.loads(line)["id"] for line in stdout.splitlines()) == [e["id"] for e in events[1:]]


def test_sqlite_files_that_are_not_searchable_are_one_line_errors(tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
    code, _, stderr = search(other, "--text", "a cat")
    assert code == 2 and "without the monitor's events table" in stderr and len(stderr.strip().splitlines()) == 1
    fresh = tmp_path / "fresh.sqlite"
    EventStore(fresh).close()  # the current schema, no events yet
    code, _, stderr = search(fresh, "--text", "a cat")
    assert code == 2 and "no event embeddings yet" in stderr
