"""The monitor's database as a search index: each event's peak-window embedding and one window's embedding per
source every ``embed_every`` seconds (moments), stored through the database sink; ``MonitorIndex`` (what
``audioclip-search DB`` and the web page search) over them: filters, refresh, retention, the clip that holds a
moment; schema migration of older files."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from audioclip.archive.cli import search_app
from audioclip.model.constants import SAMPLE_RATE, STRIDE_SAMPLES
from audioclip.monitor.config import ConfigError, LabelParams, MonitorConfig
from audioclip.monitor.events import DetectionEvent, utc_iso
from audioclip.monitor.index import MonitorIndex
from audioclip.monitor.messages import EventEmbedding
from audioclip.monitor.pipeline import IdCounter, SourcePipeline
from audioclip.monitor.store import EMBEDDING_DTYPE, MIGRATIONS, SCHEMA_VERSION, EventStore, migrate
from audioclip.search import exact as search_module
from audioclip.search.query import QueryEncoder
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
                          defaults={"window": WINDOW, "hop": HOP, "threshold": 0.3, "min_dbfs": -60.0,
                                    "score": "softmax"},
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


def stored_vectors(db) -> dict[tuple[str, int], np.ndarray]:
    """Every stored embedding by ``(kind, id)``: events' and moments'."""
    with sqlite3.connect(db) as conn:
        rows = [("event", *r) for r in conn.execute("SELECT event_id, vector FROM embeddings")]
        rows += [("moment", *r) for r in conn.execute("SELECT id, vector FROM moments")]
    return {(kind, i): np.frombuffer(blob, EMBEDDING_DTYPE).astype(np.float32) for kind, i, blob in rows}


def test_an_events_own_audio_finds_it_first(monitored, tmp_path):
    db, files, windows, events, _ = monitored
    vectors = stored_vectors(db)
    for event in events:
        clip = window_wav(tmp_path / f"{event['id']}.wav", files[event["source"]],
                          peak_window(event, windows[event["source"]]))
        code, stdout, stderr = search(db, "--audio", clip, "--k", "10", "--format", "jsonl")
        assert code == 0, stderr
        hits = [json.loads(line) for line in stdout.splitlines()]
        assert len(hits) == len(vectors)
        # the event itself scores 1 within float16 storage, and so first among rows that differ from it by more
        # (the tiny model's embeddings of different sounds can be that close)
        own = next(h for h in hits if (h["kind"], h["id"]) == ("event", event["id"]))
        assert own["score"] == pytest.approx(1.0, abs=2e-3) and hits[0]["score"] - own["score"] < 2e-3
        assert all(h["score"] < own["score"] for h in hits if h["score"] < 1 - 4e-3)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def moment_starts(windows: list[dict], every: float) -> list[float]:
    """The starts of the classified ``windows`` (JSON lines, in order) that first reach each multiple of ``every``."""
    starts, due = [], 0.0
    for w in windows:
        if w["t_start"] >= due - 1e-5:
            starts.append(round(w["t_start"], 5))
            due = (np.floor(w["t_start"] / every + 1e-9) + 1) * every
    return starts


def moment_rows(db) -> list[dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM moments ORDER BY id")]


def test_a_text_query_returns_every_event_and_moment_with_its_fields_and_exact_scores(monitored, tiny_checkpoint):
    db, _, _, events, _ = monitored
    code, stdout, stderr = search(db, "--text", "a cat", "--k", "100", "--format", "jsonl")
    assert code == 0, stderr
    hits = [json.loads(line) for line in stdout.splitlines()]
    by_id = {e["id"]: e for e in events}
    moments = {m["id"]: m for m in moment_rows(db)}
    windows = monitored[2]
    assert sorted((m["source"], round(m["t_start"], 5)) for m in moments.values()) == sorted(
        (name, t) for name in windows for t in moment_starts(windows[name], 5.0))  # silence is gated: none there
    assert sorted((h["kind"], h["id"]) for h in hits) == sorted(
        [("event", i) for i in by_id] + [("moment", i) for i in moments])
    query = QueryEncoder(tiny_checkpoint).text("a cat")
    vectors = stored_vectors(db)
    for hit in hits:
        assert hit["score"] == pytest.approx(float(vectors[(hit["kind"], hit["id"])] @ query), abs=1e-5)
        if hit["kind"] == "event":
            event = by_id[hit["id"]]
            assert (hit["source"], hit["label"], hit["utc"], hit["clip"], hit["event_id"], hit["clip_offset_s"]) == \
                (event["source"], event["label"], event["start_utc"], None, event["id"], None)  # no clips here
            assert (hit["t_start"], hit["t_end"]) == pytest.approx((event["start_s"], event["end_s"]), abs=1e-6)
        else:
            moment = moments[hit["id"]]
            assert (hit["source"], hit["utc"], hit["label"], hit["event_id"]) == (moment["source"], moment["utc"],
                                                                                 None, None)
            assert (hit["t_start"], hit["t_end"]) == pytest.approx((moment["t_start"], moment["t_end"]), abs=1e-6)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    code, stdout, stderr = search(db, "--text", "a cat", "--k", "1")
    assert code == 0, stderr
    assert hits[0]["source"] in stdout and hits[0]["kind"] in stdout and "utc" in stdout


def test_the_command_filters_by_source_and_since(monitored):
    db, _, _, events, _ = monitored
    code, stdout, stderr = search("--db", db, "--text", "a cat", "--k", "100", "--format", "jsonl", "--source", "yard")
    assert code == 0, stderr
    hits = [json.loads(line) for line in stdout.splitlines()]
    assert hits and {h["source"] for h in hits} == {"yard"}
    assert len(hits) == sum(e["source"] == "yard" for e in events) + sum(
        m["source"] == "yard" for m in moment_rows(db))
    code, stdout, stderr = search(db, "--text", "a cat", "--format", "jsonl", "--since", "2999-01-01T00:00:00Z")
    assert code == 0 and stdout == "", stderr
    code, _, stderr = search(db, "--text", "a cat", "--since", "last tuesday")
    assert code == 2 and "since: not an ISO 8601 time" in stderr and len(stderr.strip().splitlines()) == 1
    for args, message in ((("--db", db.parent / "nothing.sqlite"), "no such file"),
                          (("--db", db.parent), "not an SQLite database"), ((db, "--db", db), "give what to search"),
                          ((), "give what to search")):
        code, _, stderr = search(*args, "--text", "a cat")
        assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr


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
    assert stored(off) == [] and moment_rows(off) == []  # neither events' nor moments' embeddings
    code, _, stderr = search(off, "--text", "a cat")
    assert code == 2 and "no embeddings yet" in stderr and len(stderr.strip().splitlines()) == 1


def test_the_store_setting_is_validated_like_the_others(tmp_path):
    base = {"labels": ["cat"], "sources": [{"name": "mic", "device": "default"}]}
    assert MonitorConfig.from_dict({**base, "store": {}}).store.embeddings is True
    assert MonitorConfig.from_dict({**base, "store": {"embeddings": False}}).store.embeddings is False
    with pytest.raises(ConfigError, match=r"store\.embeddings: must be true or false, got"):
        MonitorConfig.from_dict({**base, "store": {"embeddings": "yes"}})
    with pytest.raises(ConfigError, match=r"store\.embedding: unknown key; did you mean 'embeddings'"):
        MonitorConfig.from_dict({**base, "store": {"embedding": True}})
    assert MonitorConfig.from_dict({**base, "store": {}}).store.embed_every == 5.0
    assert MonitorConfig.from_dict({**base, "store": {"embed_every": 0}}).store.embed_every == 0.0  # off
    for bad, message in ((-1, "must be at least 0, got -1"), ("5", "must be a number, got '5'"),
                         (True, "must be a number, got true")):
        with pytest.raises(ConfigError) as error:
            MonitorConfig.from_dict({**base, "store": {"embed_every": bad}})
        assert str(error.value) == f"monitor.toml: store.embed_every: {message}"


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
    hits = [json.loads(line) for line in stdout.splitlines()]
    assert sorted(h["id"] for h in hits if h["kind"] == "event") == [e["id"] for e in events[1:]]
    assert sorted(h["id"] for h in hits if h["kind"] == "moment") == [m["id"] for m in moment_rows(db)]


def test_sqlite_files_that_are_not_searchable_are_one_line_errors(tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
    code, _, stderr = search(other, "--text", "a cat")
    assert code == 2 and "without the monitor's events table" in stderr and len(stderr.strip().splitlines()) == 1
    fresh = tmp_path / "fresh.sqlite"
    EventStore(fresh).close()  # the current schema, no events yet
    code, _, stderr = search(fresh, "--text", "a cat")
    assert code == 2 and "no embeddings yet" in stderr


# -- moments: a real monitor, then MonitorIndex on databases written by the store --------------------------------

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def moments_run(tmp_path_factory, tiny_checkpoint, clips_dir):
    """Two shared clips monitored at embed_every = 1 with clips and keep_days = 30, a low threshold (each source's
    event lasts the whole clip), into a database that already held moments 40 and 20 days old:
    ``(db, windows by source)``."""
    tmp = tmp_path_factory.mktemp("moments")
    db = tmp / "m.sqlite"
    old = np.eye(32, dtype=np.float32)[0]
    with EventStore(db) as store:
        now = datetime.now(timezone.utc)
        store.add_moment("cat", now - timedelta(days=40), 0.0, 1.0, str(tiny_checkpoint), old)
        store.add_moment("cat", now - timedelta(days=20), 0.0, 1.0, str(tiny_checkpoint), old)
    sources = [{"name": "cat", "file": str(clips_dir / "cat_3-95694-A-5.wav"), "realtime": False},
               {"name": "horn", "file": str(clips_dir / "car_horn_1-24074-A-43.wav"), "realtime": False,
                "hop": HOP}]  # a hop that does not divide a second: the first window past each second is taken
    config = monitor_config(tmp, tiny_checkpoint, sources,
                            defaults={"window": 1.0, "hop": 0.5, "threshold": 0.05, "hysteresis": 0.01,
                                      "score": "softmax", "min_dbfs": -80.0},
                            store={"db": str(db), "clips": str(tmp / "clips"), "embed_every": 1.0, "keep_days": 30})
    _, lines = run_monitor(config)
    return db, {name: [x for x in lines if "t_start" in x and x["source"] == name] for name in ("cat", "horn")}


def test_the_monitor_keeps_one_moment_per_embed_every_with_its_windows_embedding(moments_run, clips_dir,
                                                                                tiny_checkpoint, tmp_path):
    db, windows = moments_run
    today = utc_iso(datetime.now(timezone.utc) - timedelta(days=1))
    encoder = QueryEncoder(tiny_checkpoint)
    for name, file in (("cat", "cat_3-95694-A-5.wav"), ("horn", "car_horn_1-24074-A-43.wav")):
        mine = [r for r in moment_rows(db) if r["source"] == name and r["utc"] > today]
        starts = moment_starts(windows[name], 1.0)
        assert [round(r["t_start"], 5) for r in mine] == starts
        assert starts == ([0.0, 1.0, 2.0, 3.0, 4.0] if name == "cat" else [0.0, 1.01769, 2.03537, 3.05306])
        assert all(r["t_end"] == pytest.approx(r["t_start"] + 1.0) for r in mine)
        assert [r["utc"] for r in mine] == sorted(r["utc"] for r in mine)
        for r in mine[1:2]:
            v = np.frombuffer(r["vector"], EMBEDDING_DTYPE).astype(np.float32)
            assert r["model"] == str(tiny_checkpoint) and r["dim"] == len(v) == 32
            clip = window_wav(tmp_path / f"{r['id']}.wav", clips_dir / file, {"t_start": r["t_start"],
                                                                              "t_end": r["t_end"]})
            np.testing.assert_allclose(v, encoder.audio(clip, window=1.0), atol=1e-3)  # the window's embedding
    assert set(windows) == {"cat", "horn"}


def test_retention_deletes_the_moments_older_than_keep_days(moments_run):
    db, _ = moments_run
    now = datetime.now(timezone.utc)
    old = [r["utc"] for r in moment_rows(db) if r["utc"] < utc_iso(now - timedelta(days=1))]
    assert len(old) == 1 and utc_iso(now - timedelta(days=21)) < old[0] < utc_iso(now - timedelta(days=19))


def test_a_moment_inside_a_streamed_events_clip_reports_it_and_its_offset(moments_run):
    db, _ = moments_run
    events = {e["source"]: e for e in event_rows(db)}
    assert {s: (e["clip_start_s"], e["clip_end_s"]) for s, e in events.items()} == {"cat": (0.0, 5.0),
                                                                                  "horn": (0.0, 5.0)}
    vectors = stored_vectors(db)
    with MonitorIndex.open(db) as index:
        for r in moment_rows(db):
            if r["utc"] < utc_iso(datetime.now(timezone.utc) - timedelta(days=1)):
                continue  # the old one: no clip of its run
            hits = index.search(vectors[("moment", r["id"])], k=50, source=r["source"],
                                since=datetime.now(timezone.utc) - timedelta(days=1))
            assert {h.source for h in hits} == {r["source"]}
            (hit,) = [h for h in hits if (h.kind, h.id) == ("moment", r["id"])]  # the tiny model's rows are close
            assert (hit.kind, hit.id, hit.event_id) == ("moment", r["id"], events[r["source"]]["id"])
            assert hit.clip == events[r["source"]]["clip"] and Path(hit.clip).is_file()
            assert hit.clip_offset_s == pytest.approx(r["t_start"])


def vectors_of(n: int, seed: int = 0, dim: int = 16) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("exact_max", [150_000, 12])
def test_search_by_a_moments_own_vector_filters_refresh_and_retention(tmp_path, monkeypatch, exact_max):
    """Exactly, and (past 12 rows) through the vector index built by prepare() and extended as moments come."""
    if exact_max < 150_000:
        pytest.importorskip("faiss", reason="the vector index needs faiss (the archive extra)")
    monkeypatch.setattr(search_module, "EXACT_MAX_ROWS", exact_max)
    db = tmp_path / "d.sqlite"
    x = vectors_of(40)
    with EventStore(db) as store:
        for i in range(30):  # porch and yard in turn, 5 s apart
            store.add_moment("porch" if i % 2 == 0 else "yard", T0 + timedelta(seconds=5 * i), 5.0 * i,
                             5.0 * i + 2.0, "m", x[i])
        index = MonitorIndex.open(db, model="m")
        index.prepare()
        assert (index._moments["m"]._vectors is not None) == (exact_max == 12)
        for i in (0, 7, 29):
            (hit, *rest) = index.search(x[i], k=3)
            assert (hit.kind, hit.id, hit.source, hit.t_start) == ("moment", i + 1, "porch" if i % 2 == 0 else "yard",
                                                                   5.0 * i)
            assert hit.utc == utc_iso(T0 + timedelta(seconds=5 * i)) and hit.score == pytest.approx(1.0, abs=2e-3)
            assert hit.event_id is None and hit.clip_offset_s is None and len(rest) == 2
        assert {h.source for h in index.search(x[0], k=30, source="yard")} == {"yard"}
        assert index.search(x[0], k=1, source="yard")[0].id != 1 and index.search(x[0], source="nobody") == []
        since = [h.id for h in index.search(x[0], k=30, since=T0 + timedelta(seconds=100))]
        assert sorted(since) == list(range(21, 31))
        assert sorted(h.id for h in index.search(x[0], k=30, since=utc_iso(T0 + timedelta(seconds=100)),
                                                  source="porch")) == [21, 23, 25, 27, 29]
        assert index.refresh() == 0
        for i in range(30, 40):  # the monitor goes on: the next search reads only these
            store.add_moment("porch", T0 + timedelta(seconds=5 * i), 5.0 * i, 5.0 * i + 2.0, "m", x[i])
            store.add_moment("porch", T0 + timedelta(seconds=5 * i), 5.0 * i, 5.0 * i + 2.0, "other", x[i])
        assert index.search(x[35], k=1)[0].id == 31 + 2 * (35 - 30)  # ids alternate between the two models
        assert index.refresh() == 0 and len(index._moments["m"]) == 40 and "other" not in index._moments
        assert store.delete_moments(T0 + timedelta(seconds=5 * 10)) == 10  # retention
        assert min(h.id for h in index.search(x[0], k=40)) == 11
        assert len(index.search(x[0], k=40)) == 30
        index.close()


def test_an_events_clip_is_found_for_the_moments_it_holds_only_in_the_same_run(tmp_path):
    db = tmp_path / "d.sqlite"
    x = vectors_of(6, seed=1)
    with EventStore(db) as store:
        store.record(DetectionEvent(1, "start", "porch", "dog", T0 + timedelta(seconds=10), 10.0, 0.8, 0.8))
        store.record(DetectionEvent(1, "end", "porch", "dog", T0 + timedelta(seconds=10), 10.0, 0.9, 0.8,
                                    end_utc=T0 + timedelta(seconds=14), end_s=14.0))
        store.set_embedding(1, "m", 2.0, x[5])
        store.set_clip(1, "/clips/porch/1.flac", None, 8.0, 16.0)
        moments = [("porch", 12.0, 12.0),  # inside the clip: event 1, 4 s in
                   ("porch", 20.0, 20.0),  # after it
                   ("yard", 12.0, 12.0),  # another source
                   ("porch", 3612.0, 12.0),  # the same stream second in a later run (the monitor restarted)
                   ("porch", 8.5, 8.5)]  # in the pre-roll
        for (source, at, t), v in zip(moments, x):
            store.add_moment(source, T0 + timedelta(seconds=at), t, t + 2.0, "m", v)
    with MonitorIndex.open(db) as index:
        found = [index.search(v, k=1)[0] for v in x[:5]]
        assert [(h.kind, h.event_id, h.clip, h.clip_offset_s) for h in found] == [
            ("moment", 1, "/clips/porch/1.flac", 4.0), ("moment", None, None, None), ("moment", None, None, None),
            ("moment", None, None, None), ("moment", 1, "/clips/porch/1.flac", 0.5)]
        (event,) = index.search(x[5], k=1)
        assert (event.kind, event.id, event.event_id, event.label, event.clip_offset_s, event.t_end) == (
            "event", 1, 1, "dog", 2.0, 14.0)


def test_an_index_of_the_monitors_model_answers_before_anything_is_stored(tmp_path):
    db = tmp_path / "d.sqlite"
    store = EventStore(db)
    index = MonitorIndex.open(db, model="m")
    assert index.search(vectors_of(1)[0], k=5) == []
    store.add_moment("porch", T0, 0.0, 2.0, "m", vectors_of(1)[0])
    assert [h.id for h in index.search(vectors_of(1)[0], k=5)] == [1]
    with pytest.raises(ValueError, match="the query has 8 dimensions, m's embeddings 16"):
        index.search(np.ones(8), k=1)
    index.close()
    store.close()


def test_searches_from_threads_while_the_store_writes(tmp_path):
    db = tmp_path / "d.sqlite"
    x = vectors_of(300, seed=2)
    store = EventStore(db)
    store.add_moment("porch", T0, 0.0, 2.0, "m", x[0])
    index = MonitorIndex.open(db, model="m")
    errors, seen = [], []

    def read():
        try:
            for i in range(60):
                hits = index.search(x[i], k=2)
                seen.append(hits[0].id)
                for hit in hits:  # each hit's score is its own stored row's
                    assert hit.score == pytest.approx(float(x[hit.id - 1] @ x[i]), abs=2e-3)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    for i in range(1, 300):
        store.add_moment("porch", T0 + timedelta(seconds=i), float(i), i + 2.0, "m", x[i])
    for t in readers:
        t.join()
    assert not errors, errors
    assert [h.id for h in index.search(x[299], k=1)] == [300]
    index.close()
    store.close()
