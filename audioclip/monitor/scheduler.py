"""One inference path for every source: newest-window-wins per source, round-robin between them.

Each source has a slot for one pending window: a newer window from the same source replaces it
(counted in that source's ``dropped``), so a source the model cannot keep up with loses its older
windows, never its latest, and never another source's. A single thread takes the slots in
round-robin order, starting after the source it served last, so a source that submits ten times as
often as another cannot starve it. With ``batch > 1`` up to that many windows of the same length,
from different sources, go through the classifier in one call.

Batch 1 is the default: on the 2-core development machine, golden checkpoint, 5-s windows, a batch
of 2, 3 or 4 windows was not faster per window than separate calls (2026-12-01, under load from
other processes; the figures are in the monitor's docs). A GPU is another matter: measure there.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..stream.buffer import Window
from ..stream.embeddings import EmbeddingTap
from ..stream.engine import Classifier

log = logging.getLogger(__name__)

OnResult = Callable[[Window, np.ndarray, np.ndarray, float], None]
"""``on_result(window, probs [L], similarities [L], inference_seconds)``, on the inference thread; with
``embeddings=True`` also ``embedding=`` the window's normalised audio embedding ``[D]`` (float16)."""


class ScoringTap(EmbeddingTap):
    """:class:`~audioclip.stream.embeddings.EmbeddingTap` that also keeps what an incremental scorer hands to
    ``scores_of`` or ``scores_of_tail`` (its window's normalised embedding), passing it on unchanged: the
    scores stay the scorer's."""

    def __init__(self, classifier):
        if getattr(classifier, "linear", None) is not None:
            raise ValueError("a standalone head scores pooled features and gives no audio embeddings")
        super().__init__(classifier)

    def scores_of(self, embedding):
        self.embeddings.append(np.atleast_2d(embedding.float().cpu().numpy()).astype(np.float16))
        return self.classifier.scores_of(embedding)

    def scores_of_tail(self, output):
        """The ONNX Runtime incremental path's form: the tail graph's output for one window."""
        self.embeddings.append(np.atleast_2d(output.embedding).astype(np.float16))
        return self.classifier.scores_of_tail(output)


@dataclass
class SourceCounters:
    """``submitted``: windows offered; ``processed``: classified and handed on; ``dropped``:
    replaced by a newer window before their turn; ``errors``: windows whose classification or
    callback raised; ``busy_seconds``: this source's share of inference time."""

    submitted: int = 0
    processed: int = 0
    dropped: int = 0
    errors: int = 0
    busy_seconds: float = 0.0


class _Slot:
    def __init__(self, name: str, on_result: OnResult, score):
        self.name, self.on_result, self.score = name, on_result, score
        self.pending: Window | None = None
        self.counters = SourceCounters()


class InferenceScheduler:
    """Classifies the sources' windows on one thread; each result goes to its source's callback.

    ``add_source(name, on_result)`` before submitting; ``submit(name, window)`` from the source's
    thread; ``close()`` at the end. A callback or classifier that raises is logged (the first time
    for each source, then at every power of ten) and counted in ``errors``; the other sources and
    later windows go on.
    """

    def __init__(self, classifier: Classifier, *, batch: int = 1, embeddings: bool = False):
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a whole number of at least 1, got {batch!r}")
        self.batch = batch
        self.embeddings = embeddings
        self._tap: ScoringTap | None = None
        self._set(classifier)
        self._slots: dict[str, _Slot] = {}
        self._order: list[str] = []
        self._next = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="audioclip-inference", daemon=True)

    # --- sources ---------------------------------------------------------------------------

    def add_source(self, name: str, on_result: OnResult, *, score=None) -> None:
        """``score(window, classifier) -> (probs [1, L], similarities [1, L])``: this source's own way to
        score a window alone (its :class:`~audioclip.stream.incremental.IncrementalScorer`, which keeps
        the source's shared columns); None: ``classifier.scores``."""
        with self._cond:
            if name in self._slots:
                raise ValueError(f"source {name!r} is already scheduled")
            self._slots[name] = _Slot(name, on_result, score)
            self._order.append(name)

    def remove_source(self, name: str) -> SourceCounters:
        """Stop scheduling ``name`` (its pending window is discarded) and return its counters."""
        with self._cond:
            slot = self._slots.pop(name)
            i = self._order.index(name)
            self._order.pop(i)
            if i < self._next:
                self._next -= 1
            self._cond.notify_all()
            return slot.counters

    def counters(self, name: str) -> SourceCounters:
        """The live counters of ``name`` (read them; the scheduler updates them)."""
        return self._slots[name].counters

    def set_classifier(self, classifier: Classifier) -> None:
        """Use ``classifier`` from the next window on (labels reloaded without stopping the sources)."""
        with self._cond:
            self._set(classifier)

    def _set(self, classifier: Classifier) -> None:
        """``classifier``, and with ``embeddings`` its tap (none, with a warning, for a classifier that gives
        no audio embeddings: the windows are scored as before)."""
        self._tap = None
        if self.embeddings:
            try:
                self._tap = ScoringTap(classifier)
            except ValueError as e:
                log.warning("events are stored without embeddings (not searchable by description): %s", e)
        self.classifier = classifier

    @property
    def labels(self) -> list[str]:
        return list(self.classifier.labels)

    # --- the hand-off ----------------------------------------------------------------------

    def submit(self, name: str, window: Window, *, wait: bool = False) -> bool:
        """Offer ``window``; True when it replaced a pending one (counted as dropped).

        ``wait=True`` blocks until the source's previous window was taken (a file read faster
        than real time drops nothing).
        """
        with self._cond:
            slot = self._slots[name]
            if wait:
                while slot.pending is not None and not self._closed and self._slots.get(name) is slot:
                    self._cond.wait()
            if self._closed:
                raise RuntimeError("the inference scheduler is closed")
            slot.counters.submitted += 1
            replaced = slot.pending is not None
            if replaced:
                slot.counters.dropped += 1
            slot.pending = window
            self._cond.notify_all()
            return replaced

    def drop(self, name: str) -> None:
        """Count a window of ``name`` that was never submitted (a newer one was ready at once)."""
        with self._cond:
            slot = self._slots[name]
            slot.counters.submitted += 1
            slot.counters.dropped += 1

    def _take(self) -> list[tuple[_Slot, Window]] | None:
        """Up to ``batch`` pending windows of one length, round-robin; None when closed and empty."""
        with self._cond:
            while True:
                n = len(self._order)
                ready = [self._slots[self._order[(self._next + k) % n]] for k in range(n)]
                ready = [slot for slot in ready if slot.pending is not None]
                if ready:
                    break
                if self._closed:
                    return None
                self._cond.wait()
            length = len(ready[0].pending.samples)
            taken = [slot for slot in ready if len(slot.pending.samples) == length][:self.batch]
            self._next = (self._order.index(taken[-1].name) + 1) % n
            batch = [(slot, slot.pending) for slot in taken]
            for slot in taken:
                slot.pending = None
            self._cond.notify_all()
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            with self._cond:
                classifier, tap = self.classifier, self._tap
            scorer = classifier if tap is None else tap  # the tap passes the same numbers on, keeping each embedding
            t0 = time.perf_counter()
            try:
                slot, window = batch[0]
                if len(batch) == 1 and slot.score is not None:
                    probs, sims = slot.score(window, scorer)
                else:
                    probs, sims = scorer.scores(np.stack([window.samples for _, window in batch]))
                probs, sims = np.asarray(probs, np.float64), np.asarray(sims, np.float64)
                if not (np.isfinite(probs).all() and np.isfinite(sims).all()):
                    raise FloatingPointError("the classifier returned non-finite scores")
                embeddings = None if tap is None else tap.take()
                if embeddings is not None and len(embeddings) != len(batch):
                    raise RuntimeError(f"{len(embeddings)} embeddings for {len(batch)} windows")
            except Exception as e:
                if tap is not None:
                    tap.take()
                for slot, window in batch:
                    self._failed(slot, f"window {window.index} could not be classified", e)
                continue
            busy = (time.perf_counter() - t0) / len(batch)
            for row, (slot, window) in enumerate(batch):
                slot.counters.busy_seconds += busy
                try:
                    if embeddings is None:
                        slot.on_result(window, probs[row], sims[row], busy)
                    else:
                        slot.on_result(window, probs[row], sims[row], busy, embedding=embeddings[row])
                except Exception as e:
                    self._failed(slot, f"handling window {window.index} failed", e)
                    continue
                slot.counters.processed += 1

    def _failed(self, slot: _Slot, what: str, error: Exception) -> None:
        slot.counters.errors += 1
        n = slot.counters.errors
        if str(n).rstrip("0") == "1":  # 1, 10, 100, ...
            log.error("source %s: %s (%d errors so far): %s", slot.name, what, n, error,
                      exc_info=error if n == 1 else None)

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> InferenceScheduler:
        self._thread.start()
        return self

    def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop: after the pending windows (``drain``) or without them. Waits up to ``timeout``."""
        with self._cond:
            if not drain:
                for slot in self._slots.values():
                    slot.pending = None
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> InferenceScheduler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close(drain=exc[0] is None)
