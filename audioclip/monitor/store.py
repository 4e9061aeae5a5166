"""The detections database: one SQLite file in WAL mode, written by one thread, read by anyone.

One writer (the database sink's thread) records event starts, ends, clip paths, each event's audio
embedding (the ``embeddings`` table) and one audio embedding per source every ``embed_every`` seconds
(the ``moments`` table; both are what ``audioclip-search`` and the web page's search read) in short
transactions; the web page's threads read through :class:`EventStore`'s read-only connections and
write an event's ``review``, and other processes (``sqlite3`` on the command line) read the same file
at the same time.
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
PAGE_SIZE = 16384
"""Bytes per page of a new database file. A moment's row is about 2,100 bytes at 1024 dimensions: with SQLite's
default 4,096-byte pages each took a page of its own (4.2 kB a moment); 16,384-byte pages hold seven (2.4 kB).
An existing file keeps the page size it was made with."""

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
    (
        # A person's verdict on an event (the web page's review), and where its clip starts and ends on the
        # stream's clock (a moment inside the clip plays from there).
        "ALTER TABLE events ADD COLUMN review TEXT CHECK (review IN ('correct', 'wrong'))",
        "ALTER TABLE events ADD COLUMN clip_start_s REAL",
        "ALTER TABLE events ADD COLUMN clip_end_s REAL",
        # One normalised float16 audio embedding per source every [store] embed_every seconds: its window's.
        """CREATE TABLE moments (
            id INTEGER PRIMARY KEY,
            source TEXT NOT NULL,
            utc TEXT NOT NULL,
            t_start REAL NOT NULL,
            t_end REAL NOT NULL,
            model TEXT NOT NULL,
            dim INTEGER NOT NULL,
            vector BLOB NOT NULL
        )""",
        "CREATE INDEX moments_source_utc ON moments (source, utc)",
        "CREATE INDEX moments_utc ON moments (utc)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

EMBEDDINGS_VERSION = 2
"""The schema version that added the ``embeddings`` table."""
MOMENTS_VERSION = 4
"""The schema version that added the ``moments`` table and the ``review`` column."""
EMBEDDING_DTYPE = np.dtype("<f2")
"""How a stored vector's bytes read: little-endian float16."""

COLUMNS = ("id", "source", "label", "start_utc", "end_utc", "start_s", "end_s", "peak", "mean", "clip",
           "last_seen_utc", "last_seen_s")
"""The columns an event's start or end writes."""
EVENT_COLUMNS = (*COLUMNS, "clip_note", "clip_start_s", "clip_end_s", "review")
"""Every column of ``events``: what the readers return."""
REVIEWS = ("correct", "wrong")
"""What a person may say of an event (``review``; NULL: not reviewed)."""
REVIEW_FILTERS = (*REVIEWS, "unreviewed")


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


def stamp(t: datetime | str | None, name: str = "time") -> str | None:
    """``t`` as the stored form (``2026-12-01T12:34:05.466Z``, which sorts as text): a datetime (naive: UTC) or any
    ISO 8601 string (``2026-12-01``, ``2026-12-01T13:34:05+01:00``); ``ValueError`` naming ``name`` otherwise."""
    if t is None:
        return None
    if isinstance(t, str):
        try:
            t = datetime.fromisoformat(t.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f"{name}: not an ISO 8601 time, got {t!r}; e.g. 2026-12-01T12:00:00Z") from None
    if not isinstance(t, datetime):
        raise ValueError(f"{name}: expected a time, got {t!r}")
    return utc_iso(t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc))


def unit_float16(vector: np.ndarray) -> np.ndarray:
    """``vector`` ``[D]`` as stored: normalised, little-endian float16 (``ValueError`` for a zero or non-finite one)."""
    v = np.asarray(vector, np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0 or len(v) == 0:
        raise ValueError(f"an embedding must be a finite, non-zero vector, got norm {norm}")
    return (v / norm).astype(EMBEDDING_DTYPE)


def stack_vectors(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Stored vectors (``EMBEDDING_DTYPE`` bytes, ``dim`` values each) as one float16 ``[N, dim]`` array."""
    if not blobs:
        return np.zeros((0, dim), np.float16)
    if {len(b) for b in blobs} != {dim * EMBEDDING_DTYPE.itemsize}:
        raise ValueError(f"stored vectors of other lengths than {dim} values")
    return np.frombuffer(b"".join(blobs), EMBEDDING_DTYPE).reshape(len(blobs), dim).astype(np.float16, copy=False)


class EventStore:
    """The ``events`` and ``moments`` tables of one SQLite file.

    Written from one thread (the database sink's; calls are serialised by a lock, so the owner may
    change, and :meth:`set_review` writes from the web server's threads the same way). The readers
    (:meth:`query_events`, :meth:`event`, :meth:`label_stats`, :meth:`moments`,
    :meth:`reviewed_embeddings`) may be called from any thread at the same time as the writes: each
    call takes a read-only connection of its own from a small pool and reads one consistent snapshot
    (WAL lets readers and the writer go on together). Other processes may read the file meanwhile.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []  # read-only connections not in use
        self._closed = False
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot open the database ({e}); check the [store] db path") from e
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # before anything is written; else nothing
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

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection of this thread's own for one snapshot (``BEGIN`` ... ``COMMIT``), from the pool."""
        with self._pool_lock:
            if self._closed:
                raise StoreError(f"{self.path}: the database is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.row_factory = sqlite3.Row
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        with self._pool_lock:
            if self._closed:
                conn.close()
            else:
                self._idle.append(conn)

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

    def set_clip(self, event_id: int, path: str | Path | None, note: str | None = None,
                 start_s: float | None = None, end_s: float | None = None) -> None:
        """Store (or with ``None`` clear) the path of an event's clip, ``note``: why the clip is not the
        event's whole audio as heard (``muted for privacy: 3.00 s of 7.50 s``, why it was not written, ...),
        and ``[start_s, end_s)``: the stream seconds it holds (None: as stored before)."""
        self._write("UPDATE events SET clip = ?, clip_note = ?, clip_start_s = COALESCE(?, clip_start_s), "
                    "clip_end_s = COALESCE(?, clip_end_s) WHERE id = ?",
                    (None if path is None else str(path), note, start_s, end_s, event_id))

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

    # -- the readers (any thread) -----------------------------------------------------------------
    def query_events(self, *, source: str | None = None, label: str | None = None,
                     since: datetime | str | None = None, until: datetime | str | None = None,
                     review: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
        """A page of the events that started in ``[since, until)``, newest first, as dicts of every column, and
        how many events match in all. ``review``: ``"correct"``, ``"wrong"``, ``"unreviewed"`` or None (any).
        ``ValueError`` (one line, naming the argument) for a bad time, review, limit or offset."""
        if review is not None and review not in REVIEW_FILTERS:
            raise ValueError(f"review: must be one of {', '.join(REVIEW_FILTERS)}, got {review!r}")
        for name, value in (("limit", limit), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "limit" else 0):
                raise ValueError(f"{name}: must be a whole number of at least {1 if name == 'limit' else 0}, "
                                 f"got {value!r}")
        where, params = [], []
        for clause, value in (("start_utc >= ?", stamp(since, "since")), ("start_utc < ?", stamp(until, "until")),
                              ("source = ?", source), ("label = ?", label),
                              ("review = ?", review if review in REVIEWS else None)):
            if value is not None:
                where.append(clause)
                params.append(value)
        if review == "unreviewed":
            where.append("review IS NULL")
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        with self._reading() as conn:
            rows = conn.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events{condition} ORDER BY start_utc DESC, "
                                "id DESC LIMIT ? OFFSET ?", (*params, limit, offset)).fetchall()
            total = conn.execute(f"SELECT COUNT(*) FROM events{condition}", params).fetchone()[0]
        return [dict(r) for r in rows], int(total)

    def event(self, event_id: int) -> dict | None:
        """Event ``event_id`` as a dict of every column, or None when there is no such event."""
        with self._reading() as conn:
            row = conn.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE id = ?", (event_id,)).fetchone()
        return None if row is None else dict(row)

    def label_stats(self, since: datetime | str | None = None) -> dict[str, dict[str, int]]:
        """Per label, of the events that started at or after ``since``: ``{"events": n, "reviewed": n, "wrong": n}``."""
        condition, params = ("", ()) if since is None else (" WHERE start_utc >= ?", (stamp(since, "since"),))
        with self._reading() as conn:
            rows = conn.execute("SELECT label, COUNT(*), COUNT(review), COALESCE(SUM(review = 'wrong'), 0) "
                                f"FROM events{condition} GROUP BY label ORDER BY label", params).fetchall()
        return {r[0]: {"events": int(r[1]), "reviewed": int(r[2]), "wrong": int(r[3])} for r in rows}

    def moments(self, *, source: str | None = None, since: datetime | str | None = None,
                until: datetime | str | None = None, model: str | None = None
                ) -> tuple[list[tuple[int, str, str, float, float]], np.ndarray]:
        """The moments whose window started in ``[since, until)``, oldest first: ``(id, source, utc, t_start,
        t_end)`` each, and their normalised embeddings as float32 ``[N, D]``. Moments of several models (the
        configuration changed) need ``model``: ``ValueError`` naming them otherwise."""
        where, params = [], []
        for clause, value in (("utc >= ?", stamp(since, "since")), ("utc < ?", stamp(until, "until")),
                              ("source = ?", source), ("model = ?", model)):
            if value is not None:
                where.append(clause)
                params.append(value)
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        with self._reading() as conn:
            models = [r[0] for r in conn.execute(f"SELECT DISTINCT model FROM moments{condition}", params)]
            if len(models) > 1:
                raise ValueError(f"{self.path}: moments of several models ({', '.join(sorted(models))}): pick one")
            rows = conn.execute(f"SELECT id, source, utc, t_start, t_end, dim, vector FROM moments{condition} "
                                "ORDER BY utc, id", params).fetchall()
        if not rows:
            return [], np.zeros((0, 0), np.float32)
        matrix = stack_vectors([r[6] for r in rows], rows[0][5]).astype(np.float32)
        return [tuple(r[:5]) for r in rows], matrix

    def reviewed_embeddings(self, model: str) -> list[tuple[int, str, str, np.ndarray]]:
        """``(event_id, label, review, vector float32 [D])`` of every reviewed event embedded by ``model``, by id."""
        with self._reading() as conn:
            rows = conn.execute("SELECT e.id, e.label, e.review, m.vector FROM events e JOIN embeddings m "
                                "ON m.event_id = e.id WHERE e.review IS NOT NULL AND m.model = ? ORDER BY e.id",
                                (model,)).fetchall()
        return [(r[0], r[1], r[2], np.frombuffer(r[3], EMBEDDING_DTYPE).astype(np.float32)) for r in rows]

    # -- writes outside the sink ----------------------------------------------------------------------
    def set_review(self, event_id: int, review: str | None) -> bool:
        """Mark event ``event_id`` ``"correct"`` or ``"wrong"``, or with None not reviewed; False when there is no
        such event. ``ValueError`` for any other value. Its own short transaction, from any thread."""
        if review is not None and review not in REVIEWS:
            raise ValueError(f"review: must be 'correct', 'wrong' or null, got {review!r}")
        return self._write("UPDATE events SET review = ? WHERE id = ?", (review, event_id)).rowcount == 1

    def add_moment(self, source: str, utc: datetime | str, t_start: float, t_end: float, model: str,
                   vector: np.ndarray) -> int:
        """Store source ``source``'s window ``[t_start, t_end)`` (stream seconds; it started at ``utc``) with its
        audio embedding ``vector`` ``[D]`` from ``model``, normalised and kept as float16; return its id."""
        v = unit_float16(vector)
        return int(self._write("INSERT INTO moments (source, utc, t_start, t_end, model, dim, vector) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (source, stamp(utc, "utc"), float(t_start), float(t_end), model, len(v),
                                v.tobytes())).lastrowid)

    def delete_moments(self, before: datetime | str) -> int:
        """Delete the moments whose window started before ``before`` (retention); return how many."""
        return self._write("DELETE FROM moments WHERE utc < ?", (stamp(before, "before"),)).rowcount

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        with self._lock:
            self._conn.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
