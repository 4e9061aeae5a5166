"""Label a set of recordings into an output folder: one process, or a local pool of worker processes.

Each worker holds its own classifier, labels whole recordings and writes their parts; the parent
records finished recordings in the manifest, reports progress, and merges the outputs at the end.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Sequence

from ..audio import AudioFileError
from ..model.labels import ParameterError
from ..stream.config import StreamConfig
from ..stream.labels import check_groups
from .job import ModelSpec, label_recording
from .store import RESERVED_COLUMNS, ArchiveStore

log = logging.getLogger(__name__)

FORMATS = ("parquet", "csv", "raven")


@dataclass(frozen=True)
class LabelSettings:
    """What a labelling run writes. ``formats``: ``parquet`` (always written), ``csv`` (events as
    CSV), ``raven`` (selection tables). ``threshold``: events' and Raven selections' probability."""

    window: float = 5.0
    hop: float = 5.0
    events: bool = False
    threshold: float = 0.5
    embeddings: bool = False
    formats: tuple[str, ...] = ("parquet", "csv")

    def __post_init__(self):
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ParameterError("formats", f"{{formats}}: unknown format {unknown[0]!r}; choose from "
                                            f"{', '.join(FORMATS)}")
        StreamConfig(window=self.window, hop=self.hop, events=True, threshold=self.threshold)  # validates

    @property
    def stream(self) -> StreamConfig:
        if self.events:
            return StreamConfig(window=self.window, hop=self.hop, events=True, threshold=self.threshold)
        return StreamConfig(window=self.window, hop=self.hop)


@dataclass
class Progress:
    """What ``on_progress`` sees after each recording: counts, seconds of audio, wall time."""

    files_total: int
    files_done: int = 0
    skipped: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    windows: int = 0
    busy_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)
    last_file: str = ""

    @property
    def hours_per_hour(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.audio_seconds / elapsed if elapsed > 0 else 0.0


@dataclass
class LabelReport:
    files: int
    labelled: int
    skipped: int
    errors: list[tuple[str, str]]
    audio_seconds: float
    windows: int
    wall_seconds: float
    busy_seconds: float = 0.0
    """Classifier time summed over the workers: ``busy_seconds / (labelling_seconds * workers)``
    near 1 means decoding and writing kept the encoder busy."""
    labelling_seconds: float = 0.0
    """Wall time after this process loaded its classifier (a pool's start-up is inside it)."""


# worker side: one classifier per process -----------------------------------------------------
_worker: dict = {}


def _init_worker(spec: ModelSpec, settings: LabelSettings, out: str) -> None:
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True).start()
    _worker.update(classifier=spec.load(), settings=settings, store=ArchiveStore(out))


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent was killed (``kill -9``) exits instead of waiting for work for ever."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _label_one(path: str) -> tuple[str, dict | None, str | None, float]:
    """``(path, manifest entry, None, busy seconds)`` once its parts are written, or ``(path, None, reason, 0)``."""
    settings, store = _worker["settings"], _worker["store"]
    try:
        result = label_recording(path, classifier=_worker["classifier"], config=settings.stream,
                                 embeddings=settings.embeddings)
        return path, store.write_parts(Path(path), result, events=settings.events), None, result.busy_seconds
    except (AudioFileError, OSError, FloatingPointError) as e:  # the last: NaN or infinite samples
        log.warning("%s", e if not isinstance(e, FloatingPointError) else f"{path}: {e}")
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]
        return path, None, reason.removeprefix(f"{path}: "), 0.0


def label_archive(recordings: Sequence[Path], *, out: str | os.PathLike, spec: ModelSpec,
                  settings: LabelSettings = LabelSettings(), workers: int = 1, resume: bool = False,
                  ray: bool = False, ray_address: str | None = None,
                  on_progress: Callable[[Progress], None] | None = None) -> LabelReport:
    """Label ``recordings`` into the folder ``out`` and merge its outputs; see :mod:`audioclip.archive.store`.

    ``workers``: processes, each with its own classifier (1: this process); with ``ray``, Ray actors
    on the local Ray or the cluster at ``ray_address`` (:mod:`audioclip.archive.distributed`).
    ``resume``: skip the recordings the manifest lists as finished (unchanged on disk, parts readable). Undecodable
    recordings are logged, counted and listed in ``errors.csv``; the run goes on.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ParameterError("workers", f"{{workers}}: must be a whole number at least 1, got {workers!r}")
    started = time.monotonic()
    if ray:
        from .distributed import require_ray

        require_ray()
    store = ArchiveStore(out)
    store.check_target(resume=resume)
    local = workers == 1 and not ray
    classifier = spec.load() if local or not spec.groups else None  # the pool's workers load their own
    labels = list(classifier.labels) if classifier is not None else check_groups(spec.groups)[0]
    clash = [label for label in labels if label in RESERVED_COLUMNS + ("embedding",)]
    if clash:
        raise ParameterError("labels", f"{{labels}}: {clash[0]!r} is a column name of the outputs; rename the label")
    store.open({"labels": labels, "model": spec.source, "template": spec.template,
                "groups": [[name, list(p)] for name, p in spec.groups], "window": settings.window, "hop": settings.hop,
                "events": settings.events, "threshold": settings.threshold, "embeddings": settings.embeddings,
                "score": spec.score},
               resume=resume)
    done = store.finished() if resume else {}
    todo = [str(p) for p in recordings if str(p) not in done]
    progress = Progress(files_total=len(recordings), files_done=len(recordings) - len(todo),
                        skipped=len(recordings) - len(todo))
    if progress.skipped:
        log.info("resuming: %d of %d recordings already labelled", progress.skipped, len(recordings))
    entries, errors = [done[str(p)] for p in recordings if str(p) in done], []

    def finished(path: str, entry: dict | None, error: str | None, busy: float) -> None:
        progress.files_done += 1
        progress.busy_seconds += busy
        progress.last_file = path
        if entry is None:
            progress.failed += 1
            errors.append((path, error))
        else:
            store.record(entry)
            entries.append(entry)
            progress.audio_seconds += entry["seconds"]
            progress.windows += entry["windows"]
        if on_progress is not None:
            on_progress(progress)

    if on_progress is not None:
        on_progress(progress)
    if ray:
        from .distributed import label_on_ray

        label_on_ray(todo, spec=spec, settings=settings, out=str(store.root), actors=workers, address=ray_address,
                     finished=finished)
    elif workers == 1 or len(todo) <= 1:
        _worker.update(classifier=classifier or spec.load(), settings=settings, store=store)
        for path in todo:
            finished(*_label_one(path))
    else:
        _pool(todo, workers, spec, settings, str(store.root), finished)
    windows = store.merge(entries, labels=labels, events=settings.events, embeddings=settings.embeddings,
                          raven="raven" in settings.formats, csv_out="csv" in settings.formats,
                          threshold=settings.threshold)
    store.write_errors(errors)
    if errors:
        log.warning("%d of %d recordings could not be labelled: see %s", len(errors), len(recordings),
                    store.root / "errors.csv")
    return LabelReport(len(recordings), len(todo) - len(errors), progress.skipped, errors,
                       sum(e["seconds"] for e in entries), windows, time.monotonic() - started, progress.busy_seconds,
                       time.monotonic() - progress.started)


def _pool(todo: list[str], workers: int, spec: ModelSpec, settings: LabelSettings, out: str, finished) -> None:
    """Label ``todo`` on ``workers`` spawned processes, at most two recordings queued per worker."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(spec, settings, out)) as pool:
        queue, running = list(reversed(todo)), set()
        while queue or running:
            while queue and len(running) < 2 * workers:
                running.add(pool.submit(_label_one, queue.pop()))
            ready, running = wait(running, return_when=FIRST_COMPLETED)
            for future in ready:
                finished(*future.result())
