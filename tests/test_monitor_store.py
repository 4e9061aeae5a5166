"""The detections database on real SQLite files: schema, migrations, events, readers and kill -9."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from audioclip.monitor.events import DetectionEvent, utc_iso
from audioclip.monitor.store import COLUMNS, SCHEMA_VERSION, EventStore, StoreError, migrate, transaction

from helpers import require

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)


def start(i, source="porch", label="dog", at=0.0, peak=0.7):
    return DetectionEvent(id=i, kind="start", source=source, label=label, start_utc=T0 + timedelta(seconds=at),
                          start_s=at, peak=peak, mean=peak)


def end(i, source="porch", label="dog", at=0.0, length=2.0, peak=0.9, mean=0.8):
    return DetectionEvent(id=i, kind="end", source=source, label=label, start_utc=T0 + timedelta(seconds=at),
                          start_s=at, peak=peak, mean=mean, end_utc=T0 + timedelta(seconds=at + length),
                          end_s=at + length)


def test_new_file_has_the_versioned_schema_in_wal_mode(tmp_path, caplog):
    caplog.set_level("INFO", "audioclip.monitor.store")
    path = tmp_path / "events.sqlite"
    EventStore(path).close()
    assert [r.getMessage() for r in caplog.records] == [f"{path}: database schema created at version 4"]  # one
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 16384  # seven moments a page, not one
    columns = {r[1]: (r[2], r[3]) for r in conn.execute("PRAGMA table_info(events)")}
    assert list(columns)[:10] == ["id", "source", "label", "start_utc", "end_utc", "start_s", "end_s",
                                  "peak", "mean", "clip"]
    assert columns["end_utc"] == ("TEXT", 0) and columns["end_s"] == ("REAL", 0) and columns["clip"] == ("TEXT", 0)
    indexed = {r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    assert any("(start_utc)" in s for s in indexed)
    assert any("(source, label, start_utc)" in s for s in indexed)
    plan = " ".join(r[3] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM events WHERE source = 'a' AND label = 'b' AND start_utc >= 'x'"))
    assert "USING INDEX" in plan


def test_an_empty_database_is_migrated_and_a_current_one_is_left_alone(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (x TEXT)")  # a user's own table, version 0
    conn.commit()
    conn.close()
    with EventStore(path) as store:
        store.record(start(1))
    with EventStore(path) as store:  # reopening must not run version 1 again (it would fail: table exists)
        assert store.version == SCHEMA_VERSION
        assert [e["id"] for e in store.events()] == [1]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM notes").fetchone()[0] == 0


def test_forward_migration_runs_only_the_missing_steps_and_keeps_rows(tmp_path):
    path = tmp_path / "v1.sqlite"
    with EventStore(path) as store:
        store.record(end(1))
    from audioclip.monitor.store import MIGRATIONS

    later = (*MIGRATIONS, ("ALTER TABLE events ADD COLUMN note TEXT DEFAULT 'none'",))
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, later, name=str(path)) == SCHEMA_VERSION + 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert conn.execute("SELECT id, end_s, note FROM events").fetchall() == [(1, 2.0, "none")]
    assert migrate(conn, later, name=str(path)) == SCHEMA_VERSION + 1  # nothing left to do
    conn.close()
    with pytest.raises(StoreError) as err:  # this release knows up to SCHEMA_VERSION only
        EventStore(path)
    assert str(path) in str(err.value) and "newer" in str(err.value) and "\n" not in str(err.value)


def test_a_failed_step_or_write_rolls_back_whole_and_leaves_the_connection_usable(tmp_path):
    path = tmp_path / "a.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    broken = (("CREATE TABLE a (x)",), ("CREATE TABLE b (y)", "INSERT INTO b VALUES (1)", "NOT SQL"))
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, broken, name=str(path))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1  # the first step committed, the second not at all
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'b'").fetchall() == []
    assert not conn.in_transaction
    with transaction(conn):
        conn.execute("INSERT INTO a VALUES (7)")
    assert conn.execute("SELECT x FROM a").fetchall() == [(7,)]
    conn.close()
    with EventStore(tmp_path / "events.sqlite") as store:
        store.record(start(1))
        with pytest.raises(ValueError, match="an end needs"):  # refused before any SQL
            store.record(DetectionEvent(2, "end", "porch", "dog", T0, 0.0, 0.5, 0.5))
        with pytest.raises(sqlite3.Error):  # a write that fails inside the transaction: no such type
            store.set_clip(object(), "clips/x.flac")
        store.set_clip(1, "clips/1.flac")  # the store is not left inside the failed transaction
        assert [e["clip"] for e in store.events()] == ["clips/1.flac"]


def test_a_version_2_file_gets_the_clip_note_column_and_keeps_its_rows(tmp_path, caplog):
    from audioclip.monitor.store import MIGRATIONS

    path = tmp_path / "v2.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, MIGRATIONS[:2])
    conn.execute("INSERT INTO events (id, source, label, start_utc, start_s, peak, mean, clip) "
                 "VALUES (1, 'porch', 'dog', '2026-12-01T12:00:00.000Z', 0.0, 0.9, 0.8, '/clips/a.flac')")
    conn.close()
    caplog.set_level("INFO", "audioclip.monitor.store")
    with EventStore(path) as store:
        assert store.version == SCHEMA_VERSION
        store.set_clip(1, "/clips/a.flac", "muted for privacy: 3.00 s of 7.50 s")
    assert [r.getMessage() for r in caplog.records] == [f"{path}: database schema migrated from version 2 to "
                                                        f"version {SCHEMA_VERSION}"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT id, clip, clip_note FROM events").fetchall() == [
            (1, "/clips/a.flac", "muted for privacy: 3.00 s of 7.50 s")]


def test_a_file_that_is_not_a_database_is_one_clear_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 200)
    with pytest.raises(StoreError) as err:
        EventStore(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "not a usable SQLite database" in message and "\n" not in message
    assert path.read_text().startswith("these are my notes")  # untouched
    missing = tmp_path / "no" / "such" / "folder" / "db.sqlite"
    with pytest.raises(StoreError, match="cannot open"):
        EventStore(missing)


def test_start_then_end_is_one_row_and_idempotent(tmp_path):
    with EventStore(tmp_path / "e.sqlite") as store:
        assert store.next_id() == 1
        store.record(start(7, at=10.0, peak=0.6))
        store.record(start(7, at=10.0, peak=0.6))  # a retried start must not duplicate
        (row,) = store.events()
        assert row["end_utc"] is None and row["end_s"] is None and row["start_utc"] == "2026-12-01T12:00:10.000Z"
        store.record(end(7, at=10.0, length=3.5, peak=0.95, mean=0.81))
        store.record(end(7, at=10.0, length=3.5, peak=0.95, mean=0.81))
        (row,) = store.events()
        ended = (row["end_utc"], row["end_s"], row["peak"], row["mean"])
        assert ended == ("2026-12-01T12:00:13.500Z", 13.5, 0.95, 0.81)
        assert store.next_id() == 8
        store.record(end(9, at=20.0))  # an end whose start was lost inserts the whole row
        assert [(e["id"], e["start_s"], e["end_s"]) for e in store.events()] == [(9, 20.0, 22.0), (7, 10.0, 13.5)]
        with pytest.raises(ValueError, match="kind"):
            store.record(DetectionEvent(1, "middle", "a", "b", T0, 0.0, 0.5, 0.5))


def test_queries_filter_by_time_source_and_label(tmp_path):
    with EventStore(tmp_path / "e.sqlite") as store:
        for i, (source, label, at) in enumerate([("porch", "dog", 0), ("porch", "siren", 60), ("yard", "dog", 120),
                                                 ("yard", "dog", 180), ("porch", "dog", 240)], start=1):
            store.record(end(i, source=source, label=label, at=at))
        assert [e["id"] for e in store.events()] == [5, 4, 3, 2, 1]
        assert [e["id"] for e in store.events(label="dog", source="yard")] == [4, 3]
        assert [e["id"] for e in store.events(since=T0 + timedelta(seconds=60))] == [5, 4, 3, 2]
        assert [e["id"] for e in store.events(since=utc_iso(T0 + timedelta(seconds=61)), label="dog")] == [5, 4, 3]
        assert [e["id"] for e in store.events(until=T0 + timedelta(seconds=120))] == [2, 1]
        assert [e["id"] for e in store.events(limit=2)] == [5, 4]


def test_clip_paths_touch_and_closing_open_events(tmp_path):
    with EventStore(tmp_path / "e.sqlite") as store:
        store.record(start(1, at=0.0))
        store.record(start(2, at=5.0))
        store.record(end(3, at=9.0))
        store.touch(1, T0 + timedelta(seconds=4), 4.0, 0.9, 0.75)
        store.touch(3, T0 + timedelta(seconds=99), 99.0, 0.1, 0.1)  # closed: a late touch changes nothing
        store.set_clip(3, "/clips/porch/2026-12-01/120009_dog_3.flac")
        store.set_clip(1, "/clips/a.flac")
        assert store.clips_by_age() == [(1, "/clips/a.flac"), (3, "/clips/porch/2026-12-01/120009_dog_3.flac")]
        store.clear_clips([1])
        store.set_clip(3, None)
        assert store.clips_by_age() == []
        closed_at = T0 + timedelta(hours=1)
        assert store.close_open(at_last_seen=False, now=closed_at) == [1, 2]
        rows = {e["id"]: e for e in store.events()}
        assert (rows[1]["end_utc"], rows[1]["end_s"], rows[1]["peak"]) == (utc_iso(closed_at), 4.0, 0.9)
        assert (rows[2]["end_utc"], rows[2]["end_s"]) == (utc_iso(closed_at), 5.0)
        assert (rows[3]["end_s"], rows[3]["last_seen_s"]) == (11.0, 11.0)
        assert store.close_open() == []


READER = textwrap.dedent("""
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], timeout=5)
    target = int(sys.argv[2])
    print("ready", flush=True)
    seen, deadline = [], time.monotonic() + 30
    while time.monotonic() < deadline:
        n, ended = conn.execute("SELECT COUNT(*), COUNT(end_utc) FROM events").fetchone()
        seen.append(n)
        if ended == target:
            break
    print(" ".join(map(str, seen)))
""")


def test_a_reader_process_reads_while_the_writer_writes(tmp_path):
    path = tmp_path / "e.sqlite"
    n = 300
    with EventStore(path) as store:
        reader = subprocess.Popen([sys.executable, "-c", READER, str(path), str(n)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert reader.stdout.readline().strip() == "ready"
        for i in range(1, n + 1):
            store.record(start(i, at=float(i)))
            store.record(end(i, at=float(i)))
            time.sleep(0.001)
        out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    counts = [int(x) for x in out.split()]
    assert counts[-1] == n
    assert counts == sorted(counts)  # every read saw a consistent, growing table
    assert len(set(counts)) >= 3  # and it read while the rows were being written


def test_the_sqlite3_command_reads_a_database_the_store_holds_open(tmp_path):
    require(shutil.which("sqlite3"), "the sqlite3 command-line program is not installed (Debian package sqlite3)")
    path = tmp_path / "e.sqlite"
    with EventStore(path) as store:
        store.record(start(1))
        out = subprocess.run(["sqlite3", str(path), "SELECT id, source, label, end_utc IS NULL FROM events"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        assert out.strip() == "1|porch|dog|1"
        store.record(end(1))  # and the store still writes after the command read


WRITER = textwrap.dedent("""
    import sys
    from datetime import datetime, timedelta, timezone
    from audioclip.monitor.events import DetectionEvent
    from audioclip.monitor.store import EventStore
    store = EventStore(sys.argv[1])
    t0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)
    store.record(DetectionEvent(id=store.next_id(), kind="start", source="porch", label="dog",
                                start_utc=t0, start_s=10.0, peak=0.7, mean=0.7))
    store.touch(1, t0 + timedelta(seconds=3), 13.0, 0.9, 0.8)
    print("ready", flush=True)
    i = 0
    while True:  # keep writing, so the kill lands in the middle of transactions
        i += 1
        store.touch(1, t0 + timedelta(seconds=3 + i / 1000), 13.0 + i / 1000, 0.9, 0.8)
""")


def test_kill_9_during_an_open_event_leaves_it_visible_and_the_next_start_closes_it(tmp_path):
    path = tmp_path / "e.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        time.sleep(0.5)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.wait(timeout=30)
        writer.stdout.close()
        writer.stderr.close()
    assert writer.returncode == -signal.SIGKILL

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ((end_utc, end_s, seen_utc, seen_s),) = conn.execute(
        "SELECT end_utc, end_s, last_seen_utc, last_seen_s FROM events").fetchall()
    conn.close()
    assert end_utc is None and end_s is None
    assert seen_s > 13.0 and seen_utc > "2026-12-01T12:00:03.000Z"  # touches kept committing until the kill

    with EventStore(path) as store:
        assert store.close_open() == [1]
        (row,) = store.events()
        assert (row["end_utc"], row["end_s"]) == (seen_utc, seen_s)
        assert store.next_id() == 2


def test_the_store_can_change_threads_and_serialises_calls(tmp_path):
    with EventStore(tmp_path / "e.sqlite") as store:
        def write(offset):
            for i in range(50):
                store.record(end(offset + i, at=float(offset + i)))

        threads = [threading.Thread(target=write, args=(k * 100,)) for k in range(1, 4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(store.events(limit=1000)) == 150


# -- schema 4: reviews, moments, the readers the web page uses -----------------------------------------------------


def test_a_version_3_file_migrates_to_4_keeping_every_row(tmp_path):
    from audioclip.monitor.store import MIGRATIONS

    path = tmp_path / "v3.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, MIGRATIONS[:3]) == 3
    conn.execute("INSERT INTO events (id, source, label, start_utc, end_utc, start_s, end_s, peak, mean, clip, "
                 "clip_note) VALUES (1, 'porch', 'dog', '2026-12-01T12:00:00.000Z', '2026-12-01T12:00:02.000Z', "
                 "0.0, 2.0, 0.9, 0.8, '/clips/a.flac', 'cut')")
    conn.execute("INSERT INTO embeddings VALUES (1, 'm', 5.0, 2, ?)", (np.array([0.6, 0.8], "<f2").tobytes(),))
    before = conn.execute("SELECT * FROM events").fetchall()
    conn.close()
    with EventStore(path) as store:
        assert store.version == 4
        assert store.add_moment("porch", "2026-12-01T12:00:00Z", 0.0, 5.0, "m", np.ones(1024)) == 1
        (row,) = store.query_events()[0]
        assert tuple(row[c] for c in COLUMNS + ("clip_note",)) == before[0]
        assert row["review"] is None and row["clip_start_s"] is None and row["clip_end_s"] is None
        assert store.set_review(1, "correct")
        assert [(i, label, review, v.tolist()) for i, label, review, v in store.reviewed_embeddings("m")] == [
            (1, "dog", "correct", [0.60009765625, 0.7998046875])]  # float16 read back
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"events", "embeddings", "moments"} <= tables
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096  # an existing file keeps its pages
        assert conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 1
        plan = " ".join(r[3] for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM moments WHERE source = 'a' AND utc >= 'x'"))
        assert "INDEX moments_source_utc" in plan


@pytest.fixture
def filled(tmp_path):
    """Events 1-6 a minute apart: porch dog, yard dog, porch cat, ...; 2 and 5 reviewed."""
    store = EventStore(tmp_path / "e.sqlite")
    for i in range(1, 7):
        store.record(end(i, source="porch" if i % 2 else "yard", label="dog" if i % 3 else "cat", at=60.0 * i))
    store.set_review(2, "wrong")
    store.set_review(5, "correct")
    yield store
    store.close()


def test_query_events_filters_pages_and_counts(filled):
    def ids(**kw):
        rows, total = filled.query_events(**kw)
        return [r["id"] for r in rows], total

    assert ids() == ([6, 5, 4, 3, 2, 1], 6)
    assert ids(limit=2) == ([6, 5], 6) and ids(limit=2, offset=2) == ([4, 3], 6) and ids(offset=6) == ([], 6)
    assert ids(source="porch") == ([5, 3, 1], 3)
    assert ids(label="cat", source="yard") == ([6], 1)
    assert ids(since=T0 + timedelta(seconds=120), until=utc_iso(T0 + timedelta(seconds=300))) == ([4, 3, 2], 3)
    assert ids(since="2026-12-01T13:02:00+01:00") == ([6, 5, 4, 3, 2], 5)  # any ISO form, read as UTC
    assert ids(since="2026-12-01T12:02:00") == ([6, 5, 4, 3, 2], 5)  # naive: UTC
    assert ids(review="wrong") == ([2], 1) and ids(review="correct") == ([5], 1)
    assert ids(review="unreviewed", limit=3) == ([6, 4, 3], 4)
    rows, _ = filled.query_events(review="wrong")
    assert set(rows[0]) == {*COLUMNS, "clip_note", "clip_start_s", "clip_end_s", "review"}
    assert rows[0]["review"] == "wrong"
    for bad, match in (({"review": "bad"}, "review: must be one of correct, wrong, unreviewed"),
                       ({"limit": 0}, "limit: must be a whole number of at least 1"),
                       ({"offset": -1}, "offset: must be a whole number of at least 0"),
                       ({"since": "yesterday"}, "since: not an ISO 8601 time, got 'yesterday'")):
        with pytest.raises(ValueError, match=match):
            filled.query_events(**bad)


def test_review_round_trip_and_bad_values(filled):
    assert filled.event(3)["review"] is None and filled.event(99) is None
    assert filled.set_review(3, "correct") is True
    assert filled.event(3)["review"] == "correct"
    assert filled.set_review(3, None) is True and filled.event(3)["review"] is None
    assert filled.set_review(99, "wrong") is False
    for bad in ("right", "", "WRONG", 1):
        with pytest.raises(ValueError, match="review: must be 'correct', 'wrong' or null"):
            filled.set_review(3, bad)
    with pytest.raises(sqlite3.IntegrityError):  # the column refuses other words from any writer
        with sqlite3.connect(filled.path) as conn:
            conn.execute("UPDATE events SET review = 'maybe' WHERE id = 3")
    assert filled.event(3)["review"] is None


def test_label_stats_count_events_reviews_and_wrong_ones(filled):
    filled.set_review(4, "wrong")
    assert filled.label_stats() == {"cat": {"events": 2, "reviewed": 0, "wrong": 0},
                                    "dog": {"events": 4, "reviewed": 3, "wrong": 2}}
    assert filled.label_stats(T0 + timedelta(seconds=240)) == {"cat": {"events": 1, "reviewed": 0, "wrong": 0},
                                                               "dog": {"events": 2, "reviewed": 2, "wrong": 1}}
    assert filled.label_stats("2030-01-01") == {}


def test_moments_are_stored_normalised_read_by_filters_and_deleted_by_age(tmp_path):
    rng = np.random.default_rng(0)
    with EventStore(tmp_path / "e.sqlite") as store:
        raw = rng.standard_normal((6, 8)).astype(np.float32)
        for i, v in enumerate(raw):
            assert store.add_moment("porch" if i < 4 else "yard", T0 + timedelta(seconds=5 * i), 5.0 * i,
                                    5.0 * i + 2.0, "m", v) == i + 1
        rows, matrix = store.moments()
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6] and matrix.dtype == np.float32 and matrix.shape == (6, 8)
        assert rows[1] == (2, "porch", "2026-12-01T12:00:05.000Z", 5.0, 7.0)
        np.testing.assert_allclose(matrix, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-3)
        assert [r[0] for r in store.moments(source="yard")[0]] == [5, 6]
        assert [r[0] for r in store.moments(since=T0 + timedelta(seconds=10), until=T0 + timedelta(seconds=20))[0]] \
            == [3, 4]
        store.add_moment("porch", T0, 0.0, 2.0, "other", raw[0])
        with pytest.raises(ValueError, match=r"moments of several models \(m, other\)"):
            store.moments()
        assert len(store.moments(model="m")[0]) == 6
        with pytest.raises(ValueError, match="finite, non-zero"):
            store.add_moment("porch", T0, 0.0, 2.0, "m", np.zeros(8))
        assert store.delete_moments(T0 + timedelta(seconds=10)) == 3  # two of m's, the other model's one
        assert [r[0] for r in store.moments(model="m")[0]] == [3, 4, 5, 6]
        assert store.moments(source="nobody") == ([], pytest.approx(np.zeros((0, 0))))


def test_readers_on_other_threads_see_consistent_pages_while_the_writer_writes(tmp_path):
    store = EventStore(tmp_path / "e.sqlite")
    errors, seen = [], []

    def read():
        try:
            for _ in range(200):
                rows, total = store.query_events(limit=1000)
                assert len(rows) == total  # one snapshot: the page and its count agree
                seen.append(total)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    for i in range(1, 301):
        store.record(end(i, at=float(i)))
    for t in readers:
        t.join()
    store.close()
    assert not errors, errors
    assert len(set(seen)) > 3  # they read while the rows came
    with pytest.raises(StoreError, match="closed"):
        store.query_events()
