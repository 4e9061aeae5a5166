"""Search a labelled archive's window embeddings, or the monitor's events, by text, by a sound, or by a picture.

The index is an ``audioclip-label --embeddings`` output folder, or the monitor's detections database
(:class:`MonitorIndex`: one embedding per event, searched exactly). An archive folder holds ``embeddings.npy`` (float16,
normalised, one row per window) beside ``windows.parquet`` (file, t_start, t_end). Up to
:data:`EXACT_MAX_ROWS` rows search is exact: the cosine similarity of the query to every row, in
blocks, and the best ``k``. Beyond, a FAISS vector index (:mod:`.vindex`), built on the first search
and saved in the folder, proposes candidates that are scored exactly, so the scores stay exact.
Queries are embedded by the model the archive was labelled with: its text tower, its audio
head (the clip cut into the archive's windows, embeddings averaged), or its image tower with
CLIP's preprocessing (:func:`clip_preprocess`).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BLOCK_ROWS = 1 << 16
EXACT_MAX_ROWS = 150_000
"""Archives up to this many rows are searched exactly: on the 2-core development machine exact search over
150,000 x 1024 took 64 ms, over 200,000 100 ms, and grows linearly beyond (docs/archive.md, "Measured")."""


@dataclass
class Hit:
    file: str
    t_start: float
    t_end: float
    score: float

    def to_json(self) -> dict:
        return {"file": self.file, "t_start": round(self.t_start, 6), "t_end": round(self.t_end, 6),
                "score": round(self.score, 6)}


def top_k(embeddings: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, scores)`` of the ``k`` rows of ``embeddings`` ``[N, D]`` with the highest dot product
    with ``query`` ``[D]``, best first (ties: lower row first).

    Exact search in blocks: a float16 matrix-vector product in PyTorch picks ``4 k + 32`` candidates
    per block (numpy has no fast float16 product), and the candidates are scored again in float32,
    so the scores returned are float32 dot products of the stored rows.
    """
    import torch

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a whole number at least 1, got {k!r}")
    query = np.asarray(query, np.float32).reshape(-1)
    if embeddings.ndim != 2 or embeddings.shape[1] != len(query):
        raise ValueError(f"the query has {len(query)} dimensions, the index {embeddings.shape[1:]}")
    q16 = torch.from_numpy(query.astype(embeddings.dtype))
    best_rows, best_scores = np.zeros(0, np.int64), np.zeros(0, np.float32)
    for start in range(0, len(embeddings), BLOCK_ROWS):
        block = np.asarray(embeddings[start:start + BLOCK_ROWS])
        with warnings.catch_warnings():  # a read-only memory map: torch only reads it
            warnings.simplefilter("ignore", UserWarning)
            rough = torch.from_numpy(block) @ q16
        take = min(4 * k + 32, len(block))
        idx = torch.topk(rough.float(), take, sorted=False).indices.numpy() if take < len(block) \
            else np.arange(len(block))
        best_rows = np.concatenate([best_rows, idx + start])
        best_scores = np.concatenate([best_scores, block[idx].astype(np.float32) @ query])
        order = np.lexsort((best_rows, -best_scores))[:k]
        best_rows, best_scores = best_rows[order], best_scores[order]
    return best_rows, best_scores


def query_checkpoint(root, model: str, checkpoint: str | None) -> str:
    """The checkpoint that embeds queries for embeddings ``model`` made (as recorded: a checkpoint, or
    ``onnx:FOLDER``): that one; for an ONNX export the ``checkpoint`` it was exported from, which must be
    given; another checkpoint is refused, naming both."""
    if model.startswith("onnx:"):
        if checkpoint is None:
            raise ValueError(f"{root} was embedded with the ONNX export {model[5:]}: pass --checkpoint, "
                             "the checkpoint it was exported from, to embed queries")
        return checkpoint
    if checkpoint is not None and checkpoint != model:
        raise ValueError(f"{root} was embedded with {model}, not {checkpoint}: its embeddings cannot be "
                         f"compared with another model's; search with --checkpoint {model}")
    return model


class ArchiveIndex:
    """An ``audioclip-label --embeddings`` folder opened for search (embeddings memory-mapped)."""

    def __init__(self, root: Path, settings: dict, embeddings: np.ndarray, files, t_start, t_end):
        self.root, self.settings = root, settings
        self.embeddings, self.files, self.t_start, self.t_end = embeddings, files, t_start, t_end
        self.window = float(settings["window"])
        self._vectors, self._vectors_opened = None, False

    @classmethod
    def open(cls, root: str | os.PathLike) -> ArchiveIndex:
        import pyarrow.parquet as pq

        root = Path(root)
        if not root.exists():
            raise ValueError(f"{root}: no such file or folder; give an audioclip-label output folder or a monitor's "
                             "database")
        if not (root / "archive.json").is_file():
            raise ValueError(f"{root}: not an audioclip-label output folder (no archive.json) nor a monitor's "
                             "database")
        settings = json.loads((root / "archive.json").read_text(encoding="utf-8"))
        if not settings.get("embeddings") or not (root / "embeddings.npy").is_file():
            raise ValueError(f"{root} holds no embeddings: label it with --embeddings to search it")
        embeddings = np.load(root / "embeddings.npy", mmap_mode="r")
        table = pq.read_table(root / "windows.parquet", columns=["file", "t_start", "t_end"])
        if table.num_rows != len(embeddings):
            raise ValueError(f"{root}: windows.parquet has {table.num_rows} rows but embeddings.npy "
                             f"{len(embeddings)}; label it again with --resume")
        files = table.column("file").combine_chunks().dictionary_encode()
        return cls(root, settings, embeddings, files, table.column("t_start").to_numpy(),
                   table.column("t_end").to_numpy())

    def model_for(self, checkpoint: str | None) -> str:
        """The checkpoint that embeds queries: the index's own; another one is refused, naming both."""
        return query_checkpoint(self.root, self.settings["model"], checkpoint)

    def vector_index(self):
        """The archive's :class:`~.vindex.VectorIndex`, opened or built on first use; ``None`` without FAISS."""
        if not self._vectors_opened:
            from .vindex import open_or_build

            self._vectors, self._vectors_opened = open_or_build(self.root, self.embeddings), True
        return self._vectors

    def search(self, query: np.ndarray, *, k: int = 10, exact: bool = False) -> list[Hit]:
        """The ``k`` windows closest to ``query``: exactly for ``exact`` or up to :data:`EXACT_MAX_ROWS` rows,
        else through the archive's vector index (built and saved on the first search)."""
        query = np.asarray(query, np.float32)
        query = query / np.linalg.norm(query)
        vectors = None if exact or len(self.embeddings) <= EXACT_MAX_ROWS else self.vector_index()
        found = None if vectors is None else vectors.search(query, k)
        if found is None or len(found[0]) < min(k, len(self.embeddings)):  # fewer candidates than k: exactly
            found = top_k(self.embeddings, query, k)
        rows, scores = found
        names = self.files.dictionary
        indices = self.files.indices
        return [Hit(names[indices[r].as_py()].as_py(), float(self.t_start[r]), float(self.t_end[r]), float(s))
                for r, s in zip(rows, scores)]


SQLITE_HEADER = b"SQLite format 3\x00"


def is_sqlite(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file that starts like an SQLite database."""
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except (IsADirectoryError, FileNotFoundError, NotADirectoryError):
        return False


@dataclass
class EventHit:
    """An event of the monitor's database and its score (``end_s`` None: still open)."""

    id: int
    source: str
    label: str
    start_utc: str
    start_s: float
    end_s: float | None
    clip: str | None
    score: float

    def to_json(self) -> dict:
        return {"id": self.id, "source": self.source, "label": self.label, "start_utc": self.start_utc,
                "start_s": round(self.start_s, 6), "end_s": None if self.end_s is None else round(self.end_s, 6),
                "clip": self.clip, "score": round(self.score, 6)}


class MonitorIndex:
    """The events of a monitor's detections database (``[store] db``), opened read-only for search.

    Each event has one normalised float16 embedding, its peak window's (``[store] embeddings``), so
    the rows are few and always searched exactly. Rows are grouped by the model that embedded them:
    queries must be embedded by the same one (:meth:`model_for`).
    """

    def __init__(self, path: Path, events: dict[str, list[tuple]], embeddings: dict[str, np.ndarray],
                 windows: dict[str, float]):
        """Per model: its events' ``(id, source, label, start_utc, start_s, end_s, clip)``, their embeddings
        ``[N, D]`` float16 in the same order, and the window seconds most of them were embedded over."""
        self.root = path
        self._events, self._by_model, self._windows = events, embeddings, windows
        self.model: str | None = None

    @classmethod
    def open(cls, path: str | os.PathLike) -> MonitorIndex:
        import sqlite3

        from ..monitor.store import EMBEDDING_DTYPE, EMBEDDINGS_VERSION, SCHEMA_VERSION

        path = Path(path)
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error as e:
            raise ValueError(f"{path}: cannot open the database read-only ({e})") from e
        try:
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
            found = conn.execute(
                "SELECT e.id, e.source, e.label, e.start_utc, e.start_s, e.end_s, e.clip, m.model, m.window, "
                "m.dim, m.vector FROM embeddings m JOIN events e ON e.id = m.event_id ORDER BY e.id").fetchall()
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{path}: cannot read the database ({e})") from e
        finally:
            conn.close()
        if not found:
            raise ValueError(f"{path} holds no event embeddings yet: the monitor stores one per event with "
                             "[store] embeddings = true (the default)")
        events, vectors, windows = {}, {}, {}
        for *event, model, window, dim, blob in found:
            vector = np.frombuffer(blob, EMBEDDING_DTYPE)
            if len(vector) != dim or dim != len(vectors.get(model, [vector])[0]):
                raise ValueError(f"{path}: event {event[0]}'s embedding has {len(vector)} values, not those of "
                                 f"{model}'s other events")
            events.setdefault(model, []).append(tuple(event))
            vectors.setdefault(model, []).append(vector)
            windows.setdefault(model, []).append(float(window))
        common = {}
        for model, seconds in windows.items():
            values, counts = np.unique(seconds, return_counts=True)
            common[model] = float(values[np.argmax(counts)])
        return cls(path, events, {model: np.stack(v).astype(np.float16) for model, v in vectors.items()}, common)

    @property
    def models(self) -> list[str]:
        return sorted(self._by_model)

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
        if len(models) > 1:
            raise ValueError(f"{self.root}: events were embedded by several models ({', '.join(models)}): pick one "
                             "with --checkpoint")
        (model,) = models
        checkpoint = query_checkpoint(self.root, model, checkpoint)
        self.model = model
        return checkpoint

    @property
    def window(self) -> float:
        """Seconds of the windows the chosen model's events were embedded over (an audio query is cut so)."""
        return self._windows[self._chosen()]

    def _chosen(self) -> str:
        if self.model is None:
            self.model_for(None)
        return self.model

    def search(self, query: np.ndarray, *, k: int = 10, exact: bool = True) -> list[EventHit]:
        """The ``k`` events whose embeddings are closest to ``query``, best first (always exact)."""
        model = self._chosen()
        query = np.asarray(query, np.float32)
        rows, scores = top_k(self._by_model[model], query / np.linalg.norm(query), k)
        events = self._events[model]
        return [EventHit(*events[r], score=float(s)) for r, s in zip(rows, scores)]


def clip_preprocess(path: str | os.PathLike, resolution: int = 224) -> np.ndarray:
    """CLIP's image transform in Pillow and numpy: bicubic resize of the short side to ``resolution``,
    centre crop, RGB in [0, 1], CLIP's mean and standard deviation. ``[3, resolution, resolution]``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not an image Pillow can read ({e})") from e
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_long = int(resolution * long / short)  # torchvision's Resize(int): the long side truncated
    size = (resolution, new_long) if w <= h else (new_long, resolution)
    image = image.resize(size, Image.BICUBIC)
    left, top = int(round((size[0] - resolution) / 2.0)), int(round((size[1] - resolution) / 2.0))
    image = image.crop((left, top, left + resolution, top + resolution))
    x = np.asarray(image, np.float32) / 255.0
    x = (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class QueryEncoder:
    """Embeds queries with a checkpoint's towers (normalised, float32 ``[D]``)."""

    def __init__(self, checkpoint, model=None):
        if model is None:
            from ..model import load_model

            model = load_model(checkpoint)
        self.model = model.eval()

    def text(self, text: str) -> np.ndarray:
        import torch

        if not text.strip():
            raise ValueError("--text is empty: describe the sound, e.g. \"dog barking\"")
        with torch.inference_mode():
            return _unit(self.model.encode_text([text]).float().cpu().numpy()[0])

    def audio(self, path: str | os.PathLike, *, window: float) -> np.ndarray:
        """The mean embedding of the clip's consecutive windows (a clip shorter than one is one window
        as it is, zero-padded only to one FBSP frame if shorter still)."""
        import torch

        from ..audio import load_audio
        from ..model.constants import FRAME_LENGTH
        from ..model.labels import window_samples

        samples = load_audio(path)
        n = window_samples(window)
        if len(samples) < n:
            n = max(len(samples), FRAME_LENGTH)
        count = max(1, len(samples) // n)
        windows = np.zeros((count, n), np.float32)
        for i in range(count):
            chunk = samples[i * n:(i + 1) * n]
            windows[i, :len(chunk)] = chunk
        with torch.inference_mode():
            rows = self.model.encode_audio(windows).float().cpu().numpy()
        return _unit(np.mean([_unit(r) for r in rows], axis=0))

    def image(self, path: str | os.PathLike) -> np.ndarray:
        import torch

        if not self.model.has_image:
            raise ValueError("this checkpoint has no image tower: search by image needs a release checkpoint")
        x = clip_preprocess(path, self.model.config.vision.image_resolution)
        with torch.inference_mode():
            return _unit(self.model.encode_image(torch.from_numpy(x)[None]).float().cpu().numpy()[0])


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x)
