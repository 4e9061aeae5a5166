"""Thresholds from the site's own audio: each label's threshold for a target number of false alarms per hour.

The monitor keeps one audio embedding per source every ``embed_every`` seconds (the ``moments`` table), so any
label's label score (:mod:`audioclip.stream.scoring`) over the stored history can be computed again, for labels
added since too. Assuming most of that history is background, a label's alarms on it are false alarms: the
proposal is the lowest threshold (on a 0.001 grid, never below :data:`FLOOR`) whose alarms per hour on the history
are at most the target.
Reviewed events refine it: moments inside an event marked correct are that label's sound, not background, and
are left out of its count; an event marked wrong that would still fire at the proposal raises it above that
event's score, but never above the lowest score of an event marked correct (those the user wants kept).

Alarms are counted as the stream's events would be on the moments' sequence of each source: one starts where
the score reaches the threshold and ends where it falls below ``threshold - hysteresis``; a gap of more than 2.5
moments (an outage, a restart) ends it. Moments are ``embed_every`` seconds apart, so ``min_windows`` and events
shorter than that are not seen: the count is of the history's alarms at that resolution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from ..stream.scoring import label_scores

log = logging.getLogger(__name__)

MIN_HOURS = 6.0
"""Less history than this (source-hours) and the proposals come with a warning: at a target of one alarm per hour
a few hours show whether a threshold meets it at all."""

def short_history(hours: float, alarms_per_hour: float) -> str | None:
    """What to say of proposals made on ``hours`` source-hours of moments: None from :data:`MIN_HOURS` on."""
    if hours >= MIN_HOURS:
        return None
    return (f"only {hours:.2f} source-hours of stored moments (under {MIN_HOURS:g}): {alarms_per_hour:g} false "
            "alarm(s) per hour cannot be told apart on so little, so these proposals mean little yet; let the monitor "
            "run longer")


GRID = 0.001
"""Thresholds are proposed on this grid (what a person types into monitor.toml)."""
FLOOR = 0.5
"""The lowest threshold proposed: below 0.5 a label scores under what a typical background description of the
window does, so a history too quiet to reach the target says nothing about lower thresholds."""


@dataclass(frozen=True)
class Proposal:
    """One label's proposal: ``threshold`` and the alarms per hour it gives on the history, beside the current
    threshold's; the reviewed events used (``correct``, ``wrong``) and how many correct ones it keeps
    (``kept``); ``note``: what the reviews changed, if anything."""

    label: str
    threshold: float
    alarms_per_hour: float
    current: float
    current_alarms_per_hour: float
    correct: int = 0
    wrong: int = 0
    kept: int = 0
    note: str = ""


@dataclass(frozen=True)
class History:
    """Moments to calibrate on: normalised embeddings ``[N, D]`` in time order per source, the source of each,
    their UTC times (datetimes), and the seconds each stands for (``embed_every``)."""

    embeddings: np.ndarray
    sources: list[str]
    utc: list[datetime]
    seconds_each: float

    @property
    def hours(self) -> float:
        return len(self.sources) * self.seconds_each / 3600.0


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def count_alarms(scores: np.ndarray, breaks: np.ndarray, threshold: float, hysteresis: float) -> int:
    """Events in one column of scores ``[N]`` (in time order; ``breaks[i]``: moment ``i`` starts a new run)."""
    count, open_ = 0, False
    for score, fresh in zip(scores.tolist(), breaks.tolist()):
        if fresh:
            open_ = False
        if not open_ and score >= threshold:
            open_, count = True, count + 1
        elif open_ and score < threshold - hysteresis:
            open_ = False
    return count


def _breaks(history: History) -> np.ndarray:
    """Where a new run starts: another source, or more than 2.5 moments' time since the previous one."""
    out = np.ones(len(history.sources), bool)
    for i in range(1, len(history.sources)):
        gap = (history.utc[i] - history.utc[i - 1]).total_seconds()
        out[i] = history.sources[i] != history.sources[i - 1] or not 0 <= gap <= 2.5 * history.seconds_each
    return out


def lowest_threshold(scores: np.ndarray, breaks: np.ndarray, *, hours: float, alarms_per_hour: float,
                     hysteresis: float) -> float:
    """The lowest threshold on the :data:`GRID`, at least :data:`FLOOR` and above ``hysteresis``, whose alarms per
    hour on ``scores`` are at most ``alarms_per_hour`` (alarms fall as the threshold rises: a bisection)."""
    lo = max(int(round(FLOOR / GRID)), int(np.floor(hysteresis / GRID)) + 1)  # above its hysteresis (the stream's rule)
    hi = int(round(1 / GRID)) - 1  # below 1: the largest threshold a configuration takes
    if count_alarms(scores, breaks, hi * GRID, hysteresis) / hours > alarms_per_hour:
        return hi * GRID
    while lo < hi:
        mid = (lo + hi) // 2
        if count_alarms(scores, breaks, mid * GRID, hysteresis) / hours <= alarms_per_hour:
            hi = mid
        else:
            lo = mid + 1
    return round(hi * GRID, 6)


def propose(history: History, *, labels: list[str], label_embeddings: np.ndarray, bank: np.ndarray,
            logit_scale: float, thresholds: np.ndarray, hysteresis: np.ndarray, alarms_per_hour: float,
            correct_spans: dict[str, list[tuple[str, datetime, datetime]]] | None = None,
            reviewed: list[tuple[str, str, np.ndarray]] = ()) -> list[Proposal]:
    """Each label's :class:`Proposal` for ``alarms_per_hour`` false alarms per hour on ``history``.

    ``label_embeddings`` ``[L, D]``, ``bank`` ``[M, D]``, ``logit_scale``: the label score's inputs;
    ``thresholds`` / ``hysteresis``: the current settings per label; ``correct_spans``: per label, the ``(source,
    start, end)`` of events marked correct (their moments are not background); ``reviewed``: ``(label, review,
    embedding)`` of reviewed events' peak windows."""
    if not alarms_per_hour > 0:
        raise ValueError(f"alarms per hour: must be above 0, got {alarms_per_hour:g}")
    if len(history.sources) == 0:
        raise ValueError("no moments to calibrate on")
    scores = label_scores(history.embeddings, label_embeddings, bank, logit_scale)
    breaks = _breaks(history)
    proposals = []
    for j, label in enumerate(labels):
        background = np.ones(len(history.sources), bool)
        for source, start, end in (correct_spans or {}).get(label, []):
            background &= ~np.array([s == source and start <= t <= end
                                     for s, t in zip(history.sources, history.utc)])
        column, run_breaks = scores[background, j], breaks.copy()
        run_breaks[1:] |= ~background[:-1]  # a removed stretch ends a run
        run_breaks = run_breaks[background]
        hours = max(background.sum() * history.seconds_each / 3600.0, 1e-9)
        h = float(hysteresis[j])
        threshold = lowest_threshold(column, run_breaks, hours=hours, alarms_per_hour=alarms_per_hour, hysteresis=h)
        mine = [(review, emb) for name, review, emb in reviewed if name == label]
        correct = [e for review, e in mine if review == "correct"]
        wrong = [e for review, e in mine if review == "wrong"]
        correct_scores = label_scores(np.stack(correct), label_embeddings[j:j + 1], bank, logit_scale)[:, 0] \
            if correct else np.zeros(0)
        wrong_scores = label_scores(np.stack(wrong), label_embeddings[j:j + 1], bank, logit_scale)[:, 0] \
            if wrong else np.zeros(0)
        note = ""
        firing = wrong_scores[wrong_scores >= threshold]
        if len(firing):
            above_wrong = np.ceil((firing.max() + 1e-9) / GRID) * GRID
            ceiling = np.floor(correct_scores.min() / GRID) * GRID if len(correct_scores) else 1 - GRID
            raised = min(above_wrong, ceiling, 1 - GRID)
            if raised > threshold:
                note = f"raised above {int((wrong_scores < raised).sum())} of {len(wrong)} events marked wrong"
                threshold = round(float(raised), 6)
            if raised < above_wrong:
                note += ("; " if note else "") + "an event marked wrong scores above one marked correct"
        current = float(thresholds[j])
        proposals.append(Proposal(
            label, threshold, count_alarms(column, run_breaks, threshold, h) / hours, current,
            count_alarms(column, run_breaks, current, h) / hours, len(correct), len(wrong),
            int((correct_scores >= threshold).sum()), note))
    return proposals


def embedding_model(config) -> str:
    """The name the monitor stores its embeddings under (its ``[model]``), as the service records it."""
    return f"onnx:{config.model.onnx}" if config.model.onnx is not None else str(config.model.checkpoint)


def calibrate(config, *, alarms_per_hour: float, since: datetime | str | None = None, classifier=None,
              store=None) -> tuple[list[Proposal], History]:
    """Proposals for every label of ``config`` (a :class:`~audioclip.monitor.config.MonitorConfig`) from its
    database's moments since ``since`` (all when None). ``classifier``: a label-score classifier over the
    configuration's labels (the running monitor's, where there is one; else built from ``config``); ``store``:
    an open :class:`~audioclip.monitor.store.EventStore` (else ``[store] db`` is opened read side)."""
    from ..stream.scoring import TorchLabelScores, score_classifier
    from .store import EventStore

    if config.store is None:
        raise ValueError(f"{config.origin}: no [store] section: calibration reads the monitor's database")
    if config.store.embed_every <= 0 or not config.store.embeddings:
        raise ValueError(f"{config.origin}: [store] keeps no moments (embed_every = 0 or embeddings = false): "
                         "set embed_every = 5 and let the monitor run for a few hours first")
    if not config.labels:
        raise ValueError(f"{config.origin}: no labels to calibrate")
    if config.defaults.score != "label":
        raise ValueError(f"{config.origin}: [defaults] score = {config.defaults.score!r}: calibration proposes "
                         "thresholds of label scores; set score = \"label\" (docs/scores.md)")
    if store is None:
        if not Path(config.store.db).is_file():
            raise ValueError(f"{config.store.db}: no such database; run the monitor with this configuration first")
        store = EventStore(config.store.db)
    model = embedding_model(config)
    rows, vectors = store.moments(since=since, model=model)
    if not rows:
        raise ValueError(f"{config.store.db}: no moments of {model}" + (f" since {since}" if since else "") +
                         "; let the monitor run with [store] embed_every set first")
    order = sorted(range(len(rows)), key=lambda i: (rows[i][1], rows[i][2]))  # per source, in time
    history = History(vectors[order], [rows[i][1] for i in order], [_time(rows[i][2]) for i in order],
                      config.store.embed_every)
    if classifier is None:
        from .labels import config_classifier

        classifier = config_classifier(config)
    classifier = score_classifier(classifier, "label")
    if not hasattr(classifier, "bank"):
        raise ValueError("this model's labels cannot change (no text tower): its scores need no calibration of "
                         "this kind")
    spans: dict[str, list] = {}
    for label in config.label_names:
        events, _ = store.query_events(label=label, review="correct", limit=100_000)
        spans[label] = [(e["source"], _time(e["start_utc"]), _time(e["end_utc"] or e["last_seen_utc"]
                                                                   or e["start_utc"])) for e in events]
    reviewed = [(label, review, vector) for _, label, review, vector in store.reviewed_embeddings(model)]
    params = config.label_params(config.enabled_sources[0] if config.enabled_sources else config.sources[0])
    log.info("calibrating %d labels on %d moments (%.2f source-hours)%s", len(config.labels), len(rows),
             history.hours, "" if isinstance(classifier, TorchLabelScores) else " (ONNX)")
    warning = short_history(history.hours, alarms_per_hour)
    if warning is not None:
        log.warning("%s", warning)
    return propose(history, labels=list(classifier.labels), label_embeddings=classifier.label_rows,
                   bank=classifier.bank, logit_scale=classifier.logit_scale, thresholds=params.thresholds,
                   hysteresis=params.hysteresis, alarms_per_hour=alarms_per_hour, correct_spans=spans,
                   reviewed=reviewed), history


def snippet(proposals: list[Proposal], *, alarms_per_hour: float, hours: float) -> str:
    """The proposals as ``[[labels]]`` tables to paste into monitor.toml (names and thresholds)."""
    lines = [f"# audioclip-stream --calibrate: at most {alarms_per_hour:g} false alarm(s) per hour on "
             f"{hours:.2f} source-hours of moments.",
             "# Set each label's threshold in monitor.toml (keep its other keys), or run again with --apply."]
    for p in proposals:
        lines += ["[[labels]]", f"name = {_toml_string(p.label)}",
                  f"threshold = {p.threshold:g}  # {p.alarms_per_hour:.2f} alarms per hour on the history"]
    return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    import json

    return json.dumps(text, ensure_ascii=False)


def apply(path: str | Path, proposals: list[Proposal]) -> None:
    """Write each proposal's threshold into the ``labels`` of the monitor.toml at ``path``, keeping everything else
    (comments, order, layout: tomlkit). A label given as a plain string becomes an inline table with its name and
    threshold. The file is replaced atomically."""
    import tomlkit

    from ..files import atomic_write_text

    path = Path(path)
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    labels = document.get("labels")
    if labels is None:
        raise ValueError(f"{path}: no labels to set thresholds on")
    wanted = {p.label: p.threshold for p in proposals}
    for i, item in enumerate(labels):
        name = item if isinstance(item, str) else item.get("name")
        if name not in wanted:
            continue
        if isinstance(item, str):
            table = tomlkit.inline_table()
            table.update({"name": str(name), "threshold": wanted[name]})
            labels[i] = table
        else:
            item["threshold"] = wanted[name]
    atomic_write_text(path, tomlkit.dumps(document))
