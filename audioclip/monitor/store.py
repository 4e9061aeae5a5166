"""The detections database: one SQLite file in WAL mode, written by one thread, read by anyone.

One writer (the database sink's thread) records event starts, ends, clip paths and each event's
audio embedding (the ``embeddings`` table, what ``audioclip-search`` reads) in short transactions;
other processes (``sqlite3`` on the command line, the dashboard) read the same file at the same time.
An event's row exists from its start with ``end_utc`` NULL, and its ``last_seen_*`` columns follow
it while it is open (:meth:`EventStore.touch`), so a ``kill -9`` leaves the event visible and the
next start closes it where it was last seen (:meth:`EventStore.close_open`).

WAL with ``synchronous=NORMAL``: a committed transaction survives the process being killed; a
power cut may lose the last few, never the file's integrity.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .events import DetectionEvent, utc_iso

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000

# MIGRATIONS[k] takes a database from user_version k to k + 1. Append only: a released entry never changes.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            source TEXT NOT NULL,
            label TEXT NOT NULL,
            start_utc TEXT NOT NULL,
            end_utc TEXT,
            start_s REAL NOT NULL,
            end_s REAL,
            peak REAL NOT NULL,
            mean REAL NOT NULL,
            clip TEXT,
            last_seen_utc TEXT,
            last_seen_s REAL
        )""",
        "CREATE INDEX events_start_utc ON events (start_utc)",
        "CREATE INDEX events_source_label_start ON events (source, label, start_utc)",
        "CREATE INDEX events_label_start ON events (label, start_utc)",
        "CREATE INDEX events_open ON events (id) WHERE end_utc IS NULL",
        "CREATE INDEX events_clip ON events (start_utc) WHERE clip IS NOT NULL",
    ),
    (
        # One normalised float16 audio embedding per event (its peak window's), for audioclip-search.
        """CREATE TABLE embeddings (
            event_id INTEGER PRIMARY KEY,
            model TEXT NOT NULL,
            window REAL NOT NULL,
            dim INTEGER NOT NULL,
            vector BLOB NOT NULL
        )""",
    ),
    (
        # Why an event's clip is not its whole audio as heard: muted for privacy, cut, capped, or not written.
        "ALTER TABLE events ADD COLUMN clip_note TEXT",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

EMBEDDINGS_VERSION = 2
"""The schema version that added the ``embeddings`` table."""
EMBEDDING_DTYPE = np.dtype("<f2")
"""How a stored vector's bytes read: little-endian float16."""

COLUMNS = ("id", "source", "label", "start_utc", "end_utc", "start_s", "end_s", "peak", "mean", "clip",
           "last_seen_utc", "last_seen_s")


class StoreError(ValueError):
    """The database file cannot be used: not SQLite, from a newer version, or not openable."""


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception (a failed ``COMMIT`` included).

    The one write transaction of the store: ``conn`` is in autocommit mode (``isolation_level=None``), and
    ``IMMEDIATE`` takes the write lock up front, so a busy database waits ``busy_timeout`` at ``BEGIN``
    rather than failing halfway through.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def migrate(conn: sqlite3.Connection, migrations: Sequence[Sequence[str]] = MIGRATIONS, *, name: str = "") -> int:
    """Bring ``conn``'s schema forward to ``len(migrations)``, one transaction per step; return the version.

    ``conn`` must be in autocommit mode (``isolation_level=None``). A database whose
    ``user_version`` is higher than ``len(migrations)`` was written by a newer release: refused.
    """
    target = len(migrations)
    version = first = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > target:
        raise StoreError(f"{name}: database schema version {version} is newer than this release knows "
                         f"({target}); upgrade audioclip or point [store] db at another file")
    while version < target:
        with transaction(conn):
            # Re-read inside the write lock: another process may have migrated meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < target:
                for statement in migrations[version]:
                    conn.execute(statement)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
    if version != first:  # one line: a new file is created, not migrated step by step
        log.info("%s: database schema %s version %d", name, "created at" if first == 0 else
                 f"migrated from version {first} to", version)
    return version


def _iso(t: datetime | str | None) -> str | None:
    return t if t is None or isinstance(t, str) else utc_iso(t)


def _utc(text: str) -> datetime:
    """A stored ``2026-12-01T12:34:05.466Z`` as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class EventStore:
    """The ``events`` table of one SQLite file.

    Meant to be written from one thread (calls are serialised by a lock, so the owner may
    change); any number of other connections and processes may read meanwhile.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot open the database ({e}); check the [store] db path") from e
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: the file system refuses SQLite's WAL mode (got {mode}); "
                                 "put [store] db on a local disk")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self.version = migrate(self._conn, name=str(self.path))
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise StoreError(f"{self.path}: not a usable SQLite database ({e}); "
                             "move it away or point [store] db at another file") from e
        except BaseException:
            self._conn.close()
            raise
        self._conn.row_factory = sqlite3.Row

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The store's lock and one :func:`transaction` on its connection."""
        with self._lock, transaction(self._conn) as conn:
            yield conn

    def _write(self, sql: str, params: Sequence = ()) -> sqlite3.Cursor:
        with self._transaction() as conn:
            return conn.execute(sql, params)

    def _read(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def next_id(self) -> int:
        """The id after the highest ever stored: the service counts from here without asking again."""
        return int(self._read("SELECT COALESCE(MAX(id), 0) + 1 FROM events")[0][0])

    def record(self, event: DetectionEvent) -> None:
        """Store an event's start (a row with NULL end) or end (its end, peak and mean).

        Idempotent: recording a start twice keeps one row; an end whose start never arrived
        inserts the whole row.
        """
        if event.kind not in ("start", "end"):
            raise ValueError(f"event kind must be 'start' or 'end', got {event.kind!r}")
        end_utc = utc_iso(event.end_utc) if event.kind == "end" else None
        end_s = event.end_s if event.kind == "end" else None
        if event.kind == "end" and (end_utc is None or end_s is None):
            raise ValueError(f"event {event.id}: an end needs end_utc and end_s")
        seen_utc = end_utc or utc_iso(event.start_utc)
        seen_s = event.start_s if end_s is None else end_s
        row = (event.id, event.source, event.label, utc_iso(event.start_utc), end_utc, event.start_s, end_s,
               event.peak, event.mean, event.clip, seen_utc, seen_s)
        insert = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        if event.kind == "start":
            self._write(insert + " ON CONFLICT (id) DO NOTHING", row)
        else:
            self._write(insert + " ON CONFLICT (id) DO UPDATE SET end_utc = excluded.end_utc, "
                        "end_s = excluded.end_s, peak = excluded.peak, mean = excluded.mean, "
                        "last_seen_utc = excluded.last_seen_utc, last_seen_s = excluded.last_seen_s", row)

    def set_embedding(self, event_id: int, model: str, window: float, vector: np.ndarray) -> None:
        """Store (or replace) event ``event_id``'s audio embedding: ``vector`` ``[D]`` from ``model``'s audio head
        over a window of ``window`` seconds, kept as float16."""
        vector = np.asarray(vector).reshape(-1).astype(EMBEDDING_DTYPE)
        self._write("INSERT INTO embeddings (event_id, model, window, dim, vector) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (event_id) DO UPDATE SET model = excluded.model, window = excluded.window, "
                    "dim = excluded.dim, vector = excluded.vector",
                    (event_id, model, float(window), len(vector), vector.tobytes()))

    def touch(self, event_id: int, utc: datetime | str, s: float, peak: float, mean: float) -> None:
        """Note that open event ``event_id`` was still on at ``utc`` / stream second ``s``."""
        self._write("UPDATE events SET last_seen_utc = ?, last_seen_s = ?, peak = ?, mean = ? "
                    "WHERE id = ? AND end_utc IS NULL", (_iso(utc), s, peak, mean, event_id))

    def set_clip(self, event_id: int, path: str | Path | None, note: str | None = None) -> None:
        """Store (or with ``None`` clear) the path of an event's clip, and ``note``: why the clip is not the
        event's whole audio as heard (``muted for privacy: 3.00 s of 7.50 s``, why it was not written, ...)."""
        self._write("UPDATE events SET clip = ?, clip_note = ? WHERE id = ?",
                    (None if path is None else str(path), note, event_id))

    def clear_clips(self, event_ids: Sequence[int]) -> None:
        """Set ``clip`` NULL on many rows in one transaction (after retention deleted their files)."""
        with self._transaction() as conn:
            conn.executemany("UPDATE events SET clip = NULL WHERE id = ?", [(i,) for i in event_ids])

    def close_open(self, at_last_seen: bool = True, now: datetime | None = None) -> list[int]:
        """Close every open event; return their ids.

        At start (``at_last_seen=True``) the events a crash left open end where they were last
        seen. At shutdown (``False``) they end at ``now`` (default: the current time), with the
        last stream second seen as ``end_s``.
        """
        with self._transaction() as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM events WHERE end_utc IS NULL ORDER BY id")]
            if at_last_seen:
                conn.execute("UPDATE events SET end_utc = COALESCE(last_seen_utc, start_utc), "
                             "end_s = COALESCE(last_seen_s, start_s) WHERE end_utc IS NULL")
            else:
                stamp = utc_iso(now or datetime.now(timezone.utc))
                conn.execute("UPDATE events SET end_utc = ?, end_s = COALESCE(last_seen_s, start_s) "
                             "WHERE end_utc IS NULL", (stamp,))
        if ids:
            log.info("%s: closed %d open event(s) %s", self.path,
                     len(ids), "at their last seen time" if at_last_seen else "at shutdown")
        return ids

    def ended(self, event_ids: Sequence[int]) -> list[DetectionEvent]:
        """Closed events ``event_ids`` as the end messages the sinks take (what :meth:`close_open` closed), by id."""
        rows = []
        for i in range(0, len(event_ids), 500):  # SQLite's limit on a statement's parameters
            ids = list(event_ids[i:i + 500])
            rows += self._read(f"SELECT {', '.join(COLUMNS)} FROM events WHERE id IN ({', '.join('?' * len(ids))}) "
                               "AND end_utc IS NOT NULL", ids)
        return [DetectionEvent(r["id"], "end", r["source"], r["label"], _utc(r["start_utc"]), r["start_s"], r["peak"],
                               r["mean"], end_utc=_utc(r["end_utc"]), end_s=r["end_s"])
                for r in sorted(rows, key=lambda r: r["id"])]

    def events(self, since: datetime | str | None = None, source: str | None = None, label: str | None = None,
               limit: int = 100, *, until: datetime | str | None = None) -> list[dict]:
        """Events that started in ``[since, until)``, newest first, as dicts of the table's columns."""
        where, params = [], []
        for clause, value in (("start_utc >= ?", _iso(since)), ("start_utc < ?", _iso(until)),
                              ("source = ?", source), ("label = ?", label)):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = f"SELECT {', '.join(COLUMNS)} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_utc DESC, id DESC LIMIT ?"
        return [dict(r) for r in self._read(sql, (*params, int(limit)))]

    def clips_by_age(self) -> list[tuple[int, str]]:
        """``(id, clip path)`` of every row that has a clip, oldest event first."""
        return [(r[0], r[1]) for r in self._read(
            "SELECT id, clip FROM events WHERE clip IS NOT NULL ORDER BY start_utc, id")]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
