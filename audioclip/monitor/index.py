"""The monitor's detections database as a search index: its events and its moments, in memory, extended as they
arrive (:class:`MonitorIndex`); what ``audioclip-search --db`` and the web page's search both use.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from ..search.query import query_checkpoint

log = logging.getLogger(__name__)


@dataclass
class MonitorHit:
    """An event or a moment of the monitor's database and its score.

    ``utc``, ``t_start``, ``t_end``: an event's start (``t_end`` None while it is open), a moment's window.
    ``event_id``: the event itself, or for a moment an event whose clip holds the moment's start (None: none
    does), with ``clip`` (that clip's path) and ``clip_offset_s`` (where the moment, or the event, starts in it).
    """

    kind: str
    id: int
    source: str
    utc: str
    t_start: float
    t_end: float | None
    score: float
    label: str | None = None
    event_id: int | None = None
    clip: str | None = None
    clip_offset_s: float | None = None

    def to_json(self) -> dict:
        def r(x):
            return None if x is None else round(x, 6)

        return {"kind": self.kind, "id": self.id, "source": self.source, "utc": self.utc,
                "t_start": r(self.t_start), "t_end": r(self.t_end), "score": r(self.score), "label": self.label,
                "event_id": self.event_id, "clip": self.clip, "clip_offset_s": r(self.clip_offset_s)}


LOAD_ROWS = 1 << 15
"""Rows read from the database per statement while loading (the BLOBs of one chunk are held at once)."""
REEMBED_SECONDS = 300.0
"""An event's embedding may still change until this long after it ended (its peak window's, written after the end)."""
COMPACT_SHARE = 0.1
"""Rows deleted by retention stay in memory, never returned, until they are this share of the rows."""
SAME_RUN_SECONDS = 60.0
"""A moment and an event are of the same run of a source (one stream clock) when their times on the wall clock and
on the stream's clock differ by no more than this."""
COVER_SECONDS = 3600.0
"""Events whose start is this close to a moment's, on the wall clock, are asked whether their clip holds it."""


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _ms(stamps) -> np.ndarray:
    """Stored UTC times (``2026-12-01T12:34:05.466Z``) as int64 milliseconds since the epoch."""
    return np.array([t.rstrip("Z") for t in stamps], "datetime64[ms]").astype(np.int64)


class MonitorIndex:
    """The monitor's detections database (``[store] db``) as a search index: its events (one embedding each, the
    peak window's) and its moments (one window's embedding per source every ``[store] embed_every`` seconds).

    Opened read-only; the rows are loaded into memory once and :meth:`refresh` (which every :meth:`search` calls
    first) reads only what came since: moments after the last id seen, events that were open or just ended. A
    search filters by ``source`` and ``since`` and ranks events and moments together by cosine similarity: exactly
    up to :data:`EXACT_MAX_ROWS` rows in the filtered range, through the FAISS vector index beyond
    (:class:`~audioclip.search.vindex.LiveIndex`: candidates scored again
    exactly). Rows are grouped by the model that embedded
    them; queries must be embedded by the same one (:meth:`model_for`, or ``model`` at :meth:`open`). Safe to
    share between threads (one lock); the monitor's web page keeps one for the process.
    """

    def __init__(self, path: Path, conn, *, model: str | None, moments: bool, vectors: bool = True):
        self.root, self._conn, self.model, self._has_moments = path, conn, model, moments
        self._vectors = vectors
        self._fixed = model is not None
        self._lock = threading.RLock()
        self._sources: dict[str, int] = {}
        self._events: dict = {}  # model -> its events' LiveIndex
        self._moments: dict = {}  # model -> its moments' LiveIndex
        self._event_windows: dict[str, dict[int, float]] = {}
        self._moment_windows: dict[str, float] = {}
        self._last_moment = 0
        self._events_from = 1
        self._oldest: str | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, *, model: str | None = None, vectors: bool = True) -> MonitorIndex:
        """Open and load ``path``. ``model`` (the monitor's ``embedding_model``): only its rows are loaded, and an
        index with none yet answers with no hits; without it, :meth:`model_for` picks one (and refuses an
        index with no embeddings at all). ``vectors=False``: always exact, no vector index built (a one-shot
        search: over a million rows exact search takes well under a second, building the index half a minute);
        a long-lived index (the web page's) keeps the default and calls :meth:`prepare` once loaded."""
        import sqlite3

        from .store import EMBEDDINGS_VERSION, MOMENTS_VERSION, SCHEMA_VERSION

        path = Path(path)
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as e:
            raise ValueError(f"{path}: cannot open the database read-only ({e})") from e
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "events" not in tables:
                raise ValueError(f"{path}: an SQLite file without the monitor's events table: give an "
                                 "audioclip-stream [store] db or an audioclip-label --embeddings folder")
            if version > SCHEMA_VERSION:
                raise ValueError(f"{path}: database schema version {version} is newer than this release knows "
                                 f"({SCHEMA_VERSION}); upgrade audioclip")
            if version < EMBEDDINGS_VERSION or "embeddings" not in tables:
                raise ValueError(f"{path} holds no event embeddings (schema version {version}): run the monitor "
                                 "with this release and [store] embeddings = true (the default); the events "
                                 "it detects from then on are searchable")
            index = cls(path, conn, model=model, moments=version >= MOMENTS_VERSION and "moments" in tables,
                        vectors=vectors)
            index.refresh()
        except sqlite3.DatabaseError as e:
            conn.close()
            raise ValueError(f"{path}: cannot read the database ({e})") from e
        except BaseException:
            conn.close()
            raise
        return index

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> MonitorIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- loading ----------------------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Read what the monitor stored since the last call (the first call reads everything); return how many
        rows came. Moments deleted by retention are no longer returned."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                added = self._load_moments() + self._load_events()
                self._expire()
            finally:
                self._conn.execute("COMMIT")
        return added

    def prepare(self) -> None:
        """Build the vector indexes that searches over every row will use, now rather than at the first search
        (about half a minute per million rows on the 2-core development machine)."""
        with self._lock:
            for live in [*self._events.values(), *self._moments.values()]:
                live.prepare()

    def _code(self, source: str) -> int:
        return self._sources.setdefault(source, len(self._sources))

    def _live(self, table: dict, model: str, dim: int):
        """``table``'s index of ``model``'s rows, made on first need."""
        from ..search.vindex import LiveIndex

        live = table.get(model)
        if live is None:
            live = table[model] = LiveIndex(dim, vectors=self._vectors)
        elif live.dim != dim:
            raise ValueError(f"{self.root}: {model}'s embeddings have {live.dim} values and {dim}: not one model's")
        return live

    def _append(self, table: dict, rows: list) -> None:
        """``rows`` of ``(id, source, utc, model, dim, vector blob)``, ids increasing, into ``table``'s indexes."""
        from .store import stack_vectors

        by_model: dict[str, list] = {}
        for row in rows:
            by_model.setdefault(row[3], []).append(row)
        for model, group in by_model.items():
            dim = group[0][4]
            try:
                vectors = stack_vectors([r[5] for r in group], dim)
            except ValueError:
                raise ValueError(f"{self.root}: {model}'s stored embeddings have different lengths") from None
            self._live(table, model, dim).append(
                np.array([r[0] for r in group], np.int64), np.array([self._code(r[1]) for r in group], np.int32),
                _ms([r[2] for r in group]), vectors)

    def _where_model(self, column: str) -> tuple[str, tuple]:
        return (f" AND {column} = ?", (self.model,)) if self._fixed else ("", ())

    def _load_moments(self) -> int:
        if not self._has_moments:
            return 0
        where, params = self._where_model("model")
        if self._last_moment == 0:  # the first load: room for every row at once, and for the next ones
            from ..search.vindex import GROW_ROWS

            for model, dim, count in self._conn.execute(
                    f"SELECT model, MIN(dim), COUNT(*) FROM moments WHERE 1{where} GROUP BY model", params):
                self._live(self._moments, model, dim).reserve(count + count // 8 + GROW_ROWS)
        added = 0
        while True:
            rows = self._conn.execute(f"SELECT id, source, utc, model, dim, vector, t_end - t_start FROM moments "
                                      f"WHERE id > ?{where} ORDER BY id LIMIT ?",
                                      (self._last_moment, *params, LOAD_ROWS)).fetchall()
            if not rows:
                return added
            self._append(self._moments, rows)
            for row in rows:
                self._moment_windows[row[3]] = float(row[6])
            self._last_moment, added = rows[-1][0], added + len(rows)

    def _load_events(self) -> int:
        """Events' embeddings from ``_events_from`` on, read again: an open event's changes with its peak."""
        from .store import stamp

        where, params = self._where_model("m.model")
        rows = self._conn.execute(
            "SELECT m.event_id, e.source, e.start_utc, m.model, m.dim, m.vector, m.window FROM embeddings m "
            f"JOIN events e ON e.id = m.event_id WHERE m.event_id >= ?{where} ORDER BY m.event_id",
            (self._events_from, *params)).fetchall()
        for model, live in self._events.items():
            live.truncate(int(np.searchsorted(live.ids, self._events_from)))
            windows = self._event_windows[model]
            for event_id in [i for i in windows if i >= self._events_from]:
                del windows[event_id]
        self._append(self._events, rows)
        for row in rows:
            self._event_windows.setdefault(row[3], {})[row[0]] = float(row[6])
        recent = stamp(datetime.now(timezone.utc) - timedelta(seconds=REEMBED_SECONDS))
        self._events_from = self._conn.execute(
            "SELECT COALESCE(MIN(id), (SELECT COALESCE(MAX(id), 0) + 1 FROM events)) FROM events "
            "WHERE id >= ? AND (end_utc IS NULL OR end_utc >= ?)", (self._events_from, recent)).fetchone()[0]
        return len(rows)

    def _expire(self) -> None:
        """Moments that retention deleted: never returned again; dropped from memory once they are many."""
        if not self._has_moments:
            return
        oldest = self._conn.execute("SELECT MIN(utc) FROM moments").fetchone()[0]
        if oldest == self._oldest:
            return
        self._oldest = oldest
        for live in self._moments.values():
            if oldest is None:
                live.keep(np.zeros(live.n, bool))
                continue
            floor = int(_ms([oldest])[0])
            gone = int(np.count_nonzero(live.times < floor))
            if gone >= COMPACT_SHARE * live.n:
                live.keep(live.times >= floor)
                live.floor = None
            elif gone:
                live.floor = floor

    # -- the model ---------------------------------------------------------------------------------------------
    @property
    def models(self) -> list[str]:
        with self._lock:
            return sorted(model for model in {*self._events, *self._moments}
                          if len(self._events.get(model, ())) or len(self._moments.get(model, ())))

    def model_for(self, checkpoint: str | None) -> str:
        """The checkpoint that embeds queries, and from now on the rows searched: those its model embedded.

        One model in the database: its checkpoint (an ONNX export needs ``--checkpoint``, the one it
        was exported from), another one refused. Several (the configuration changed): ``--checkpoint``
        picks one of them.
        """
        models = self.models
        if checkpoint is not None and checkpoint in models:
            self.model = checkpoint
            return checkpoint
        if not models:
            raise ValueError(f"{self.root} holds no embeddings yet: the monitor stores one per event and one per "
                             "source every [store] embed_every seconds with [store] embeddings = true (the default)")
        if len(models) > 1:
            raise ValueError(f"{self.root}: events were embedded by several models ({', '.join(models)}): pick one "
                             "with --checkpoint")
        (model,) = models
        checkpoint = query_checkpoint(self.root, model, checkpoint)
        self.model = model
        return checkpoint

    def _chosen(self) -> str:
        if self.model is None:
            self.model_for(None)
        return self.model

    @property
    def window(self) -> float:
        """Seconds of the windows the chosen model's rows were embedded over (an audio query is cut so): the most
        common of its events', else its moments'."""
        model = self._chosen()
        seconds = list(self._event_windows.get(model, {}).values())
        if seconds:
            values, counts = np.unique(seconds, return_counts=True)
            return float(values[np.argmax(counts)])
        return self._moment_windows.get(model, 5.0)

    # -- searching -------------------------------------------------------------------------------------------
    def search(self, query: np.ndarray, *, k: int = 10, source: str | None = None,
               since: datetime | str | None = None, exact: bool = False) -> list[MonitorHit]:
        """The ``k`` events and moments of ``source`` (None: any) from ``since`` on (an event's start, a moment's
        window start) whose embeddings are closest to ``query``, best first (ties: events first, then lower ids).
        ``exact``: compare with every row even where the vector index would answer."""
        from .store import stamp

        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a whole number at least 1, got {k!r}")
        query = np.asarray(query, np.float32).reshape(-1)
        query = query / np.linalg.norm(query)
        floor = None if since is None else int(_ms([stamp(since, "since")])[0])
        with self._lock:
            self.refresh()
            model = self._chosen()
            code = None if source is None else self._sources.get(source, -1)
            found = []
            for kind, table in (("event", self._events), ("moment", self._moments)):
                live = table.get(model)
                if live is None or not len(live):
                    continue
                if live.dim != len(query):
                    raise ValueError(f"the query has {len(query)} dimensions, {model}'s embeddings {live.dim}")
                ids, scores = live.search(query, k, source=code, since=floor, exact=exact)
                found += [(float(s), kind, int(i)) for i, s in zip(ids, scores)]
            found.sort(key=lambda f: (-f[0], f[1], f[2]))
            return self._hits(found[:k])

    def _hits(self, found: list[tuple[float, str, int]]) -> list[MonitorHit]:
        """The stored rows of ``(score, kind, id)``, with the clip that holds each."""
        def rows(sql: str, ids: list[int]) -> dict[int, tuple]:
            if not ids:
                return {}
            return {r[0]: r for r in self._conn.execute(sql.format(", ".join("?" * len(ids))), ids)}

        self._conn.execute("BEGIN")
        try:
            events = rows("SELECT id, source, label, start_utc, start_s, end_s, clip, clip_start_s FROM events "
                          "WHERE id IN ({})", [i for _, kind, i in found if kind == "event"])
            moments = rows("SELECT id, source, utc, t_start, t_end FROM moments WHERE id IN ({})",
                           [i for _, kind, i in found if kind == "moment"])
            hits = []
            for score, kind, i in found:
                if kind == "event":
                    _, source, label, start_utc, start_s, end_s, clip, clip_start = events[i]
                    offset = None if clip is None or clip_start is None else start_s - clip_start
                    hits.append(MonitorHit("event", i, source, start_utc, start_s, end_s, score, label, i, clip,
                                           offset))
                elif i in moments:  # not deleted since the last refresh
                    _, source, utc, t_start, t_end = moments[i]
                    event_id, clip, offset = self._cover(source, utc, t_start)
                    hits.append(MonitorHit("moment", i, source, utc, t_start, t_end, score, None, event_id, clip,
                                           offset))
        finally:
            self._conn.execute("COMMIT")
        return hits

    def _cover(self, source: str, utc: str, t_start: float) -> tuple[int | None, str | None, float | None]:
        """``(event id, clip, offset)`` of the event of ``source`` whose clip holds stream second ``t_start`` of the
        run that heard it at ``utc`` (the stream's clock starts again at each run); ``(None, None, None)`` if none."""
        from .store import stamp

        at = _utc(utc)
        lo, hi = (stamp(at + timedelta(seconds=s)) for s in (-COVER_SECONDS, COVER_SECONDS))
        best = None
        for event_id, clip, clip_start, start_utc, start_s in self._conn.execute(
                "SELECT id, clip, clip_start_s, start_utc, start_s FROM events WHERE source = ? AND start_utc >= ? "
                "AND start_utc <= ? AND clip IS NOT NULL AND clip_start_s <= ? AND clip_end_s > ?",
                (source, lo, hi, t_start, t_start)):
            mismatch = abs((at - _utc(start_utc)).total_seconds() - (t_start - start_s))
            if mismatch <= SAME_RUN_SECONDS and (best is None or (mismatch, event_id) < best[0]):
                best = ((mismatch, event_id), event_id, clip, t_start - clip_start)
        return (None, None, None) if best is None else best[1:]
