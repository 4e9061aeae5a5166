"""Event-level evaluation on annotated recordings: each recording streamed as the monitor streams a file,
its events matched against the annotations (:mod:`.annotations`).

A recording goes through the monitor's own pieces, in its order: a
:class:`~audioclip.stream.feed.WindowFeed` (mixdown, resampling, windows), the ``min_dbfs`` gate on a
window's level, the source's incremental scorer (:func:`~audioclip.stream.incremental.window_scorer`) or
the classifier, :func:`~audioclip.stream.engine.window_result` (smoothing) and, for events, the monitor's
detectors (:func:`~audioclip.monitor.pipeline.detectors_for`, per-label thresholds, hysteresis and
``min_windows``) replayed over the smoothed scores with the monitor's conventions
(:class:`~audioclip.monitor.pipeline.SourcePipeline`): an event starts at the start of the
first window of its streak and ends at the end of the window that ended it (below ``threshold -
hysteresis``, or gated), or at the end of the last classified window when the recording ends.

Events are counted as sed_eval's ``EventBasedMetrics`` counts them (optimal matching, an onset within
``collar`` seconds and, unless ``offsets=False``, an offset within ``max(collar, offset_share x the
annotated length)``): every threshold of the sweep replays the detector over the stored scores, without
the model. PSDS comes from sed_scores_eval over each recording's score curve (:func:`score_curve`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..archive.decode import RecordingSource
from ..model.constants import SAMPLE_RATE
from ..model.labels import ParameterError
from ..monitor.config import LabelParams
from ..monitor.pipeline import detectors_for
from ..stream.backends import shortest_window
from ..stream.buffer import Window
from ..stream.config import StreamConfig
from ..stream.engine import level_db, window_result
from ..stream.feed import WindowFeed
from ..stream.incremental import window_scorer
from ..stream.postprocess import Smoother
from .evaluate import progress_bar

log = logging.getLogger(__name__)

EVAL_EXTRA = "pip install 'audioclip-stream[eval]'"
SWEEP = tuple(round(0.02 * i, 2) for i in range(1, 50))
"""The thresholds a sweep tries (those above the hysteresis), with the ones the evaluation was given."""
PSDS_SCENARIOS = {
    "psds1": {"dtc_threshold": 0.7, "gtc_threshold": 0.7, "cttc_threshold": None, "alpha_ct": 0.0, "alpha_st": 1.0},
    "psds2": {"dtc_threshold": 0.1, "gtc_threshold": 0.1, "cttc_threshold": 0.3, "alpha_ct": 0.5, "alpha_st": 1.0},
}
"""DCASE's two PSDS scenarios (task 4, 2021-2024): tight localisation, and coarse localisation that penalises
cross-triggers; both up to 100 false positives per hour."""
MAX_EFPR = 100.0

Events = list[tuple[float, float, str]]
"""``[(onset, offset, label), ...]`` in seconds of one recording."""


def eval_libraries():
    """sed_eval and sed_scores_eval, imported (slow: dcase_util); a one-line error naming the extra when missing."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sed_eval.util
            import sed_scores_eval
    except ImportError as e:
        raise ValueError(f"event evaluation needs sed_eval and sed_scores_eval: {EVAL_EXTRA} ({e})") from e
    return sed_eval, sed_scores_eval


# -- streaming ----------------------------------------------------------------------------------------

@dataclass
class ScoreCurve:
    """One recording's windows in stream order: times in seconds, smoothed scores ``[N, L]`` (NaN rows for gated
    windows, which were not classified), and its length in seconds (44.1 kHz samples taken)."""

    name: str
    t_start: np.ndarray
    t_end: np.ndarray
    scores: np.ndarray
    gated: np.ndarray
    seconds: float


def stream_recording(path: Path, classifier, config: StreamConfig, *, name: str | None = None,
                     announce: bool = False) -> ScoreCurve:
    """Stream the recording ``path`` as a monitor's file source does (read once, every window classified)."""
    labels = list(classifier.labels)
    scorer = window_scorer(classifier, config, announce=announce)  # a new stream: nothing shared with another file
    smoother = Smoother(config.smooth)
    rows: list[tuple[float, float, np.ndarray, bool]] = []
    nan = np.full(len(labels), np.nan)

    def offer(window: Window) -> None:
        t_start, t_end = window.start / SAMPLE_RATE, (window.start + len(window.samples)) / SAMPLE_RATE
        if config.min_dbfs is not None and level_db(window.samples) < config.min_dbfs:
            rows.append((t_start, t_end, nan, True))
            return
        t0 = time.perf_counter()
        probs, sims = scorer(window) if scorer is not None else classifier.scores(window.samples[None])
        probs, sims = np.asarray(probs, np.float64)[0], np.asarray(sims, np.float64)[0]
        if not (np.isfinite(probs).all() and np.isfinite(sims).all()):
            raise FloatingPointError(f"{path}: the classifier returned non-finite scores for window {window.index}")
        result = window_result(window, probs, sims, labels, smoother=smoother, inference_s=time.perf_counter() - t0)
        rows.append((result.t_start, result.t_end, result.probs, False))

    source = RecordingSource(path)
    feed = WindowFeed(source.rate, config, live=False, offer=offer, skip=lambda: None)
    for block, arrival in source.blocks():
        feed.push(block, arrival)
    feed.end(shortest_window(classifier))
    if not rows:
        raise ValueError(f"{path}: holds no audio")
    starts, ends, scores, gated = zip(*rows)
    return ScoreCurve(name or str(path), np.array(starts), np.array(ends), np.stack(scores), np.array(gated),
                      feed.total / SAMPLE_RATE)


# -- events, as the monitor marks them ------------------------------------------------------------------

def uniform_params(n: int, threshold: float, hysteresis: float, min_windows: int) -> LabelParams:
    """The same event settings for ``n`` labels, every one raising events."""
    return LabelParams(thresholds=np.full(n, float(threshold)), hysteresis=np.full(n, float(hysteresis)),
                       min_windows=np.full(n, min_windows, np.int64), event=np.ones(n, bool),
                       privacy=np.zeros(n, bool))


def detect(curve: ScoreCurve, labels: Sequence[str], params: LabelParams) -> Events:
    """The events a monitor source with ``labels`` and their ``params`` (the monitor's detectors,
    :func:`~audioclip.monitor.pipeline.detectors_for`) raises on ``curve``'s windows, sorted."""
    detectors = detectors_for(list(labels), params)
    starts: dict[float, float] = {}  # a classified window's end -> its start (the detectors report ends)
    opened: dict[str, float] = {}
    events: Events = []
    last = None
    for t_start, t_end, scores, gated in zip(curve.t_start, curve.t_end, curve.scores, curve.gated):
        if gated:
            changes = [e for d in detectors for e in d.quiet(t_end)]
        else:
            starts[t_end] = t_start
            changes = [e for d in detectors for e in d.update(t_end, scores)]
            last = t_end
        for e in changes:
            if e.kind == "start":
                opened[e.label] = starts[e.t]
            else:
                events.append((opened.pop(e.label), e.t, e.label))
    for e in [e for d in detectors for e in d.close(last)] if last is not None else []:
        events.append((opened.pop(e.label), e.t, e.label))
    return sorted(events)


def score_curve(curve: ScoreCurve) -> tuple[np.ndarray, np.ndarray]:
    """``(timestamps [S + 1], scores [S, L])``: the score of each moment, the highest of the classified windows
    whose event would cover it at hysteresis 0 and ``min_windows`` 1 (from a window's start to the end of the
    window after it, or its own end for the last), 0 where none does. At any threshold it is at or above the
    threshold exactly where the monitor's events at hysteresis 0 are; two events of one label that overlap (the
    second's first window starts before the first's last one ends) read as one."""
    ends = np.append(curve.t_end[1:], curve.t_end[-1])
    keep = ~curve.gated
    starts, ends, scores = curve.t_start[keep], ends[keep], curve.scores[keep]
    stamps = np.unique(np.concatenate([[0.0, max(curve.seconds, curve.t_end.max())], starts, ends]))
    out = np.zeros((len(stamps) - 1, curve.scores.shape[1]))
    for s, e, p in zip(np.searchsorted(stamps, starts), np.searchsorted(stamps, ends), scores):
        out[s:e] = np.maximum(out[s:e], p)
    return stamps, out


# -- matching -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Matching:
    """How a detection matches an annotated event: ``collar`` seconds on the onset and, when ``offsets``, on
    the offset, widened to ``offset_share`` of the annotated length (sed_eval's ``t_collar``,
    ``percentage_of_length``)."""

    collar: float
    offset_share: float = 0.2
    offsets: bool = True

    def hits(self, reference: Events, detected: Events) -> np.ndarray:
        """``[len(reference), len(detected)]``: which pairs match (labels equal, onset and offset close)."""
        if not reference or not detected:
            return np.zeros((len(reference), len(detected)), bool)
        r, d = np.array([e[:2] for e in reference]), np.array([e[:2] for e in detected])
        same = np.array([e[2] for e in reference])[:, None] == np.array([e[2] for e in detected])[None, :]
        ok = same & (np.abs(r[:, :1] - d[None, :, 0]) <= self.collar)
        if self.offsets:
            tolerance = np.maximum(self.collar, self.offset_share * (r[:, 1] - r[:, 0]))[:, None]
            ok &= np.abs(r[:, 1:] - d[None, :, 1]) <= tolerance
        return ok

    def matched(self, reference: Events, detected: Events) -> tuple[np.ndarray, np.ndarray]:
        """Which annotated and which detected events the largest matching pairs up (sed_eval's
        ``bipartite_match``: the most events matched, each at most once)."""
        sed_eval, _ = eval_libraries()
        hits = self.hits(reference, detected)
        graph: dict[int, list[int]] = {}
        for j, i in zip(*np.nonzero(hits)):
            graph.setdefault(int(i), []).append(int(j))
        pairs = sed_eval.util.bipartite_match(graph) if graph else {}
        ref, det = np.zeros(len(reference), bool), np.zeros(len(detected), bool)
        for j, i in pairs.items():
            ref[j], det[i] = True, True
        return ref, det


@dataclass
class Counts:
    """Per label: annotated events, detected events, and the matched among them."""

    reference: np.ndarray
    detected: np.ndarray
    tp: np.ndarray

    @classmethod
    def of(cls, labels: Sequence[str], reference: dict[str, Events], detected: dict[str, Events],
           matching: Matching) -> Counts:
        """The counts over every recording (``{name: events}`` both)."""
        index = {label: i for i, label in enumerate(labels)}
        out = cls(*(np.zeros(len(labels), int) for _ in range(3)))
        for name, ref in reference.items():
            det = detected.get(name, [])
            _, hit = matching.matched(ref, det)
            for events, counts in ((ref, out.reference), (det, out.detected)):
                for e in events:
                    counts[index[e[2]]] += 1
            for e, h in zip(det, hit):
                out.tp[index[e[2]]] += int(h)
        return out

    def metrics(self, hours: float) -> list[dict]:
        """Per label: the counts, precision, recall, F1 (None where undefined) and false alarms per hour."""
        return [_metrics(int(r), int(d), int(t), hours) for r, d, t in zip(self.reference, self.detected, self.tp)]

    def overall(self, hours: float) -> dict:
        """Summed over labels (sed_eval's overall: micro-averaged)."""
        return _metrics(int(self.reference.sum()), int(self.detected.sum()), int(self.tp.sum()), hours)


def _metrics(reference: int, detected: int, tp: int, hours: float) -> dict:
    precision = tp / detected if detected else None
    recall = tp / reference if reference else None
    f1 = 2 * tp / (reference + detected) if reference + detected else None
    return {"reference": reference, "detected": detected, "tp": tp, "fp": detected - tp, "fn": reference - tp,
            "precision": precision, "recall": recall, "f1": f1, "alarms_per_hour": (detected - tp) / hours}


def choose(points: list[dict], thresholds: Sequence[float], alarms_per_hour: float | None) -> dict | None:
    """The sweep point to recommend: with ``alarms_per_hour``, of those with at most that many false alarms, the
    best recall (then F1, then the higher threshold); else the best F1 (then the higher threshold). Without
    annotated events, the lowest threshold within the budget (with none, without false alarms). None: no point
    within the budget."""
    rows = [dict(p, threshold=t) for p, t in zip(points, thresholds)]
    budget = 0.0 if alarms_per_hour is None and not any(p["reference"] for p in rows) else alarms_per_hour
    if budget is not None:
        rows = [p for p in rows if p["alarms_per_hour"] <= budget + 1e-9]
    if not rows:
        return None
    if not rows[0]["reference"]:
        return min(rows, key=lambda p: p["threshold"])
    if alarms_per_hour is not None:
        return max(rows, key=lambda p: (p["recall"] or 0.0, p["f1"] or 0.0, p["threshold"]))
    return max(rows, key=lambda p: (p["f1"] or 0.0, p["threshold"]))


# -- the evaluation -----------------------------------------------------------------------------------

@dataclass
class EventReport:
    """An event-level evaluation: settings, counts and metrics per label and overall at the given thresholds,
    PSDS, the threshold sweep and the thresholds it recommends, and each recording's events."""

    checkpoint: str
    score: str
    labels: list[str]
    stream: dict
    matching: dict
    recordings: list[dict]
    hours: float
    annotations: dict
    at_threshold: dict
    psds: dict
    sweep: dict
    chosen: dict
    detections: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"task": "events", **{k: getattr(self, k) for k in self.__dataclass_fields__}}


def evaluate_events(*, references: dict[Path, Events], classifier, config: StreamConfig, matching: Matching,
                    params: LabelParams | None = None, alarms_per_hour: float | None = None,
                    progress: bool = True, name: str = "", score: str = "", annotations: dict | None = None,
                    root: Path | None = None) -> EventReport:
    """Stream every recording in ``references`` (its annotated events, of the labels that raise events) and
    evaluate the events ``classifier``'s labels raise with ``params`` (per label, as a monitor's; None:
    ``config``'s threshold, hysteresis and ``min_windows`` for every label). ``root``: recordings are named
    relative to it in the report."""
    scored = list(classifier.labels)
    if params is None:
        params = uniform_params(len(scored), config.threshold, config.hysteresis, config.min_windows)
    labels = [label for label, on in zip(scored, params.event) if on]  # the labels that raise events
    if not labels:
        raise ValueError("none of the labels raises events (event = false for all): nothing to evaluate")
    eval_libraries()  # fail before the model's work, not after
    names = {path: _name(path, root) for path in references}
    reference = {names[p]: events for p, events in references.items()}
    curves: dict[str, ScoreCurve] = {}
    with progress_bar(progress, "audio") as bar:
        task = bar.add_task("streaming recordings", total=len(references), audio="0 s")
        for path in references:
            curves[names[path]] = stream_recording(path, classifier, config, name=names[path], announce=not curves)
            seconds = sum(c.seconds for c in curves.values())
            bar.update(task, advance=1, audio=f"{seconds:.0f} s")
    hours = sum(c.seconds for c in curves.values()) / 3600.0

    def run(thresholds: np.ndarray) -> dict[str, Events]:
        at = dataclasses.replace(params, thresholds=thresholds)
        return {n: detect(c, scored, at) for n, c in curves.items()}

    detected = run(params.thresholds)
    counts = Counts.of(labels, reference, detected, matching)
    given = tuple(float(t) for t, on in zip(params.thresholds, params.event) if on)
    lowest = float(params.hysteresis[params.event].max(initial=0.0))
    grid = sorted({t for t in SWEEP + given if lowest < t < 1.0})
    swept = [Counts.of(labels, reference, run(np.full(len(scored), t)), matching) for t in grid]
    per_label = [[c.metrics(hours)[i] for c in swept] for i in range(len(labels))]
    overall = [c.overall(hours) for c in swept]
    return EventReport(
        checkpoint=name, score=score, labels=labels,
        stream={"window": config.window, "hop": config.hop, "smooth": config.smooth, "min_dbfs": config.min_dbfs,
                **{key: {label: value.item() for label, value, on in zip(scored, column, params.event) if on}
                   for key, column in (("threshold", params.thresholds), ("hysteresis", params.hysteresis),
                                       ("min_windows", params.min_windows))}},
        matching={"collar_s": matching.collar, "offsets": matching.offsets, "offset_share": matching.offset_share,
                  "as": "sed_eval EventBasedMetrics (optimal matching)"},
        recordings=[{"file": n, "seconds": round(c.seconds, 6), "windows": int(len(c.t_end)),
                     "gated": int(c.gated.sum()), "reference": len(reference[n]), "detected": len(detected[n])}
                    for n, c in curves.items()],
        hours=hours, annotations=annotations or {},
        at_threshold={"per_label": dict(zip(labels, counts.metrics(hours))), "overall": counts.overall(hours)},
        psds=psds(curves, reference, scored, labels),
        sweep={"thresholds": grid, "per_label": {label: _columns(rows) for label, rows in zip(labels, per_label)},
               "overall": _columns(overall)},
        chosen={"rule": ("best F1" if alarms_per_hour is None else
                         f"best recall with at most {alarms_per_hour:g} false alarms per hour"),
                "alarms_per_hour": alarms_per_hour,
                "per_label": {label: choose(rows, grid, alarms_per_hour) for label, rows in zip(labels, per_label)},
                "overall": choose(overall, grid, alarms_per_hour)},
        detections=_detections(reference, detected, matching))


def monitor_setup(path: str | os.PathLike, source: str | None = None):
    """``(classifier, stream config, label params, model name, score)`` of the monitor.toml ``path`` for ``source``
    (None: its only enabled source), built by the monitor's own functions."""
    from ..monitor.config import load_config
    from ..monitor.labels import config_classifier
    from ..monitor.service import label_params

    monitor = load_config(path)
    sources = monitor.enabled_sources
    if source is None and len(sources) != 1:
        raise ParameterError("source", f"{path} has {len(sources)} enabled sources: pick the one whose settings apply "
                                       f"with {{source}} ({', '.join(s.name for s in sources)})")
    try:
        chosen = monitor.source(source) if source is not None else sources[0]
    except KeyError as e:
        raise ParameterError("source", f"{{source}}: {e.args[0]}") from None
    classifier = config_classifier(monitor)
    params = label_params(monitor, chosen, len(classifier.labels))
    name = f"onnx:{monitor.model.onnx}" if monitor.model.onnx is not None else str(monitor.model.checkpoint)
    return classifier, monitor.stream_config(chosen), params, name, monitor.defaults.score


def psds(curves: dict[str, ScoreCurve], reference: dict[str, Events], labels: list[str],
         evaluated: list[str] | None = None) -> dict:
    """Both DCASE PSDS scenarios (:data:`PSDS_SCENARIOS`) over the labels (of ``evaluated``, None: all the curves'
    ``labels``) with annotated events, from each recording's :func:`score_curve`, with sed_scores_eval; per label
    too."""
    _, sed_scores_eval = eval_libraries()
    present = [label for label in evaluated or labels
               if any(e[2] == label for events in reference.values() for e in events)]
    out: dict = {"labels": present, "max_efpr_per_hour": MAX_EFPR}
    if not present:
        return {**out, **{k: None for k in PSDS_SCENARIOS}}
    columns = [labels.index(label) for label in present]
    scores = {}
    for n, curve in curves.items():
        stamps, values = score_curve(curve)
        scores[n] = score_frame(values[:, columns], stamps, present)
    truth = {n: [e for e in events if e[2] in present] for n, events in reference.items()}
    durations = {n: max(c.seconds, float(c.t_end.max())) for n, c in curves.items()}
    for key, params in PSDS_SCENARIOS.items():
        given = params
        if len(present) == 1:  # no other label to cross-trigger on; sed_scores_eval 0.0.4 fails on none
            given = {**params, "cttc_threshold": None, "alpha_ct": 0.0}
        value, per_label, _, _ = sed_scores_eval.intersection_based.psds(
            scores=scores, ground_truth=truth, audio_durations=durations, max_efpr=MAX_EFPR, **given)
        out[key] = {"value": float(value), "per_label": {k: float(v) for k, v in per_label.items()}, **given}
    return out


def score_frame(values: np.ndarray, stamps: np.ndarray, labels: list[str]):
    """sed_scores_eval's score DataFrame of ``values [S, L]`` between ``stamps [S + 1]``, whose ``to_numpy`` is a
    writable copy: sed_scores_eval 0.0.4 hands it to Cython functions typed for writable buffers, which pandas 3's
    copy-on-write arrays are not ("buffer source array is read-only")."""
    from sed_scores_eval.base_modules.scores import create_score_dataframe

    return _writable_frame()(create_score_dataframe(values, stamps, labels))


@functools.cache
def _writable_frame():
    import pandas as pd

    class WritableFrame(pd.DataFrame):
        @property
        def _constructor(self):
            return WritableFrame

        def to_numpy(self, *args, **kwargs):
            return np.array(super().to_numpy(*args, **kwargs))

    return WritableFrame


def _columns(rows: list[dict]) -> dict:
    return {key: [r[key] for r in rows] for key in rows[0]} if rows else {}


def _detections(reference: dict[str, Events], detected: dict[str, Events], matching: Matching) -> list[dict]:
    out = []
    for n, events in detected.items():
        _, hit = matching.matched(reference[n], events)
        out += [{"file": n, "label": label, "onset": round(on, 6), "offset": round(off, 6), "matched": bool(h)}
                for (on, off, label), h in zip(events, hit)]
    return out


def _name(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def plot_event_curves(report: EventReport, path) -> None:
    """The sweep as a PNG: F1 and false alarms per hour against the threshold, per label and overall, with the
    chosen thresholds marked and the alarm budget drawn."""
    from .evaluate import require_matplotlib

    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = report.sweep["thresholds"]
    fig, (f1_ax, alarm_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    curves = [*report.sweep["per_label"].items(), ("overall", report.sweep["overall"])]
    chosen = {**report.chosen["per_label"], "overall": report.chosen["overall"]}
    for label, columns in curves:
        style = {"color": "black", "linewidth": 2} if label == "overall" else {}
        f1 = [np.nan if v is None else v for v in columns["f1"]]
        line, = f1_ax.plot(thresholds, f1, label=label, **style)
        alarm_ax.plot(thresholds, columns["alarms_per_hour"], color=line.get_color(), label=label,
                      linewidth=style.get("linewidth", 1.5))
        point = chosen.get(label)
        if point is not None:
            f1_ax.plot([point["threshold"]], [point["f1"] or 0.0], "o", color=line.get_color())
            alarm_ax.plot([point["threshold"]], [point["alarms_per_hour"]], "o", color=line.get_color())
    if report.chosen["alarms_per_hour"] is not None:
        alarm_ax.axhline(report.chosen["alarms_per_hour"], color="grey", linestyle="--", label="budget")
    f1_ax.set(xlabel="threshold", ylabel="event F1", ylim=(0, 1),
              title=f"event F1 (collar {report.matching['collar_s']:g} s)")
    alarm_ax.set(xlabel="threshold", ylabel="false alarms per hour", title="false alarms per hour")
    alarm_ax.set_yscale("symlog", linthresh=1.0)
    alarm_ax.set_ylim(bottom=0.0)
    f1_ax.legend(fontsize=7)
    fig.suptitle(f"{report.checkpoint}: {report.hours:.2f} h of audio, {report.score} scores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
