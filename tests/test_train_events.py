"""``audioclip-train evaluate --task events``: the counts by hand and as sed_eval / sed_scores_eval count them, the
monitor's events on the same audio, annotations (CSV and Raven) of a synthetic soundscape end to end, bad input.

The tiny model's random weights say nothing about accuracy: these tests prove the computations."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import soundfile as sf
import soxr
from typer.testing import CliRunner

from audioclip.model.constants import SAMPLE_RATE
from audioclip.monitor.config import load_config
from audioclip.monitor.labels import config_classifier
from audioclip.monitor.service import label_params
from audioclip.training.annotations import RecordingIndex, events_by_recording, read_annotations
from audioclip.training.cli import app
from audioclip.training.events import (
    Counts,
    Matching,
    ScoreCurve,
    detect,
    eval_libraries,
    psds,
    score_curve,
    score_frame,
    stream_recording,
    uniform_params,
)

from helpers import require_module, run_monitor

runner = CliRunner()

with warnings.catch_warnings():  # dcase_util, under sed_eval, warns that pkg_resources is deprecated
    warnings.simplefilter("ignore")
    sed_eval = require_module("sed_eval", "the event metrics are checked against sed_eval (the eval extra)")
    sed_scores_eval = require_module("sed_scores_eval", "PSDS comes from sed_scores_eval (the eval extra)")


def sed_eval_counts(reference: dict, detected: dict, labels: list[str], matching: Matching):
    """sed_eval's EventBasedMetrics over the same events: per label (Ntp, Nfp, Nfn) and overall."""
    metric = sed_eval.sound_event.EventBasedMetrics(labels, t_collar=matching.collar,
                                                    percentage_of_length=matching.offset_share,
                                                    evaluate_offset=matching.offsets)

    def rows(name, events):
        return [{"filename": name, "onset": on, "offset": off, "event_label": label} for on, off, label in events]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in reference:
            metric.evaluate(rows(name, reference[name]), rows(name, detected.get(name, [])))
    per_label = {label: tuple(int(metric.class_wise[label][k]) for k in ("Ntp", "Nfp", "Nfn")) for label in labels}
    # overall, sed_eval's Nfp and Nfn leave out substitutions (a detection at an event of another label) for its
    # error rate; its precision and recall, and the false alarms a user sees, count them: Nsys - Ntp, Nref - Ntp
    o = metric.overall
    overall = (int(o["Ntp"]), int(o["Nsys"] - o["Ntp"]), int(o["Nref"] - o["Ntp"]))
    f = metric.results_overall_metrics()["f_measure"]
    if o["Nsys"] and o["Nref"]:
        assert f["precision"] == pytest.approx(o["Ntp"] / o["Nsys"])
        assert f["recall"] == pytest.approx(o["Ntp"] / o["Nref"])
    return per_label, overall


def ours(counts: Counts, labels: list[str]):
    per_label = {label: (int(t), int(d - t), int(r - t))
                 for label, r, d, t in zip(labels, counts.reference, counts.detected, counts.tp)}
    return per_label, tuple(map(sum, zip(*per_label.values())))


# -- the counts -----------------------------------------------------------------------------------------

def test_counts_by_hand_with_the_collar_offsets_and_alarms_per_hour():
    """Each case counted by hand: onset 0.8 s off (in the 1-s collar), offset 1.5 s off within 20% of a 10-s event;
    an onset 1.5 s off; an offset 1.5 s off a 1-s event (a match on onsets alone); a detection with nothing
    annotated; two detections of one event (one matches); and two events where matching the first detection to the
    first event (greedily) would leave the second unmatched: the optimal matching pairs both."""
    labels = ["cat", "dog"]
    reference = {"a": [(10.0, 20.0, "dog"), (30.0, 32.0, "dog"), (40.0, 41.0, "cat")],
                 "b": [(0.0, 2.0, "cat"), (0.9, 2.9, "cat"), (60.0, 64.0, "dog")]}
    detected = {"a": [(10.8, 21.5, "dog"), (31.5, 32.0, "dog"), (40.2, 42.5, "cat"), (50.0, 55.0, "cat")],
                "b": [(0.5, 2.4, "cat"), (0.0, 1.5, "cat"), (60.2, 64.1, "dog"), (60.5, 64.0, "dog")]}
    matching = Matching(collar=1.0, offset_share=0.2)
    counts = Counts.of(labels, reference, detected, matching)
    # cat: TP the two of b; FP 40.2 (offset), 50.0; FN 40.0.  dog: TP 10.8, one of 60.2 / 60.5; FP 31.5, the other.
    assert ours(counts, labels) == ({"cat": (2, 2, 1), "dog": (2, 2, 1)}, (4, 4, 2))
    half_hour = counts.metrics(hours=0.5)
    assert [m["alarms_per_hour"] for m in half_hour] == [4.0, 4.0]
    assert half_hour[0] == {"reference": 3, "detected": 4, "tp": 2, "fp": 2, "fn": 1, "precision": 0.5,
                            "recall": 2 / 3, "f1": 4 / 7, "alarms_per_hour": 4.0}
    assert counts.overall(hours=2.0)["alarms_per_hour"] == 2.0
    onsets = Counts.of(labels, reference, detected, Matching(collar=1.0, offsets=False))
    assert ours(onsets, labels)[0]["cat"] == (3, 1, 0)  # 40.2 now matches 40.0
    assert sed_eval_counts(reference, detected, labels, matching) == ours(counts, labels)
    assert sed_eval_counts(reference, detected, labels, Matching(1.0, offsets=False)) == ours(onsets, labels)


@pytest.mark.parametrize("offsets", [True, False])
def test_counts_agree_with_sed_eval_and_sed_scores_eval_on_random_events(offsets):
    """Random annotations and detections of three labels over four recordings, collars from 0.2 to 2 s: the same
    counts as sed_eval's EventBasedMetrics and, with offsets, sed_scores_eval's collar-based F-score (fed the
    detections as 0/1 score curves)."""
    rng = np.random.default_rng(3)
    labels = ["a", "b", "c"]

    def events(n: int, jitter: np.ndarray | None = None, base=None) -> list:
        if base is not None:  # detections near the annotations, some far off
            return sorted((on + d1, max(off + d2, on + d1 + 0.1), label)
                          for (on, off, label), d1, d2 in zip(base, *jitter))
        out = []
        for label in labels:  # events of a label do not overlap (a 0/1 curve would merge them)
            t = 0.0
            for _ in range(n):
                t += rng.uniform(0.5, 6.0)
                length = rng.uniform(0.3, 5.0)
                out.append((round(t, 3), round(t + length, 3), label))
                t += length
        return sorted(out)

    reference, detected = {}, {}
    for name in ("r1", "r2", "r3", "r4"):
        reference[name] = events(6)
        jitter = rng.normal(0.0, 0.8, (2, len(reference[name])))
        kept = [e for e in events(0, jitter, reference[name]) if rng.random() < 0.8]
        detected[name] = sorted(_separate(kept + [e for e in events(2) if rng.random() < 0.5]))
    for collar in (0.2, 1.0, 2.0):
        matching = Matching(collar, 0.2, offsets)
        counts = Counts.of(labels, reference, detected, matching)
        assert sed_eval_counts(reference, detected, labels, matching) == ours(counts, labels)
        if not offsets:
            continue
        curves = {}
        for name, found in detected.items():
            stamps = np.unique([0.0, 100.0] + [t for e in found for t in e[:2]])
            values = np.zeros((len(stamps) - 1, len(labels)))
            for on, off, label in found:
                values[np.searchsorted(stamps, on):np.searchsorted(stamps, off), labels.index(label)] = 1.0
            curves[name] = score_frame(values, stamps, labels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, _, _, stats = sed_scores_eval.collar_based.fscore(
                curves, reference, 0.5, onset_collar=collar, offset_collar=collar, offset_collar_rate=0.2)
        theirs = {label: (int(s["tps"]), int(s["fps"]), int(s["n_ref"] - s["tps"])) for label, s in stats.items()}
        assert theirs == ours(counts, labels)[0]


def _separate(events: list) -> list:
    """Drop events that overlap an earlier one of the same label."""
    out, end = [], {}
    for on, off, label in sorted(events):
        if on > end.get(label, -1.0):
            out.append((on, off, label))
            end[label] = off
    return out


# -- events and score curves ----------------------------------------------------------------------------

def _curve(rng, n: int = 60, hop: float = 0.5, window: float = 2.0, gated=()) -> ScoreCurve:
    starts = np.arange(n) * hop
    scores = rng.uniform(0.0, 1.0, (n, 2))
    scores[list(gated)] = np.nan
    mask = np.zeros(n, bool)
    mask[list(gated)] = True
    return ScoreCurve("x", starts, starts + window, scores, mask, float(starts[-1] + window))


def _intervals(stamps: np.ndarray, on: np.ndarray) -> list:
    """The runs of ``on`` segments as (start, end) pairs."""
    out = []
    for i in np.flatnonzero(on):
        if out and out[-1][1] == stamps[i]:
            out[-1][1] = stamps[i + 1]
        else:
            out.append([stamps[i], stamps[i + 1]])
    return [tuple(x) for x in out]


def _union(events: list) -> list:
    out = []
    for on, off in sorted(events):
        if out and on <= out[-1][1]:
            out[-1][1] = max(out[-1][1], off)
        else:
            out.append([on, off])
    return [tuple(x) for x in out]


def test_the_score_curve_thresholded_covers_what_the_monitors_events_cover():
    """At every threshold, the score curve PSDS is computed from is at or above it exactly where the monitor's events
    (hysteresis 0, one window) are, gated windows included (they end events); hysteresis and min_windows only ever
    shorten or drop events."""
    rng = np.random.default_rng(0)
    curve = _curve(rng, gated=(20, 21, 45))
    stamps, values = score_curve(curve)
    for t in (0.2, 0.5, 0.8, 0.95):
        events = detect(curve, ["a", "b"], uniform_params(2, t, 0.0, 1))
        for j, label in enumerate("ab"):
            assert _intervals(stamps, values[:, j] >= t) == _union([(on, off) for on, off, x in events if x == label])
        stricter = detect(curve, ["a", "b"], uniform_params(2, t, 0.1, 2))
        assert len(stricter) <= len(events)


def test_detect_follows_the_monitors_conventions_by_hand():
    """Windows [k/2, k/2 + 2): scores over 0.5 at windows 2-4 and 9; window 11 gated; the recording ends at window 13.
    Events: window 2's start to window 5's end (the first below); window 9's start to gated window 11's end; window
    12's start to the last window's end (open at the end). min_windows 2 gives the same (an event starts at its
    streak's first window); min_windows 3 only the first (the gated window breaks the second streak)."""
    n = 14
    scores = np.full((n, 1), 0.1)
    scores[[2, 3, 4, 9, 10], 0] = 0.9
    scores[12:, 0] = 0.9
    curve = ScoreCurve("x", np.arange(n) / 2, np.arange(n) / 2 + 2, scores, np.arange(n) == 11, 8.5)
    curve.scores[11] = np.nan
    assert detect(curve, ["a"], uniform_params(1, 0.5, 0.05, 1)) == [(1.0, 4.5, "a"), (4.5, 7.5, "a"), (6.0, 8.5, "a")]
    assert detect(curve, ["a"], uniform_params(1, 0.5, 0.05, 2)) == [(1.0, 4.5, "a"), (4.5, 7.5, "a"), (6.0, 8.5, "a")]
    assert detect(curve, ["a"], uniform_params(1, 0.5, 0.05, 3)) == [(1.0, 4.5, "a")]


def test_psds_of_a_perfect_and_of_a_silent_detector():
    """A curve that is 1 exactly over the annotated events and 0 elsewhere scores PSDS 1 in both scenarios; a curve
    that never rises scores 0."""
    reference = {"x": [(2.0, 4.0, "a"), (10.0, 12.0, "b")]}
    starts = np.arange(0.0, 20.0, 1.0)
    scores = np.zeros((20, 2))
    scores[2:3, 0] = scores[10:11, 1] = 1.0  # a window [k, k + 1) runs to the next's end: [2, 4) and [10, 12)
    perfect = ScoreCurve("x", starts, starts + 1.0, scores, np.zeros(20, bool), 20.0)
    result = psds({"x": perfect}, reference, ["a", "b"])
    assert result["psds1"]["value"] == pytest.approx(1.0) and result["psds2"]["value"] == pytest.approx(1.0)
    silent = ScoreCurve("x", starts, starts + 1.0, np.zeros((20, 2)), np.zeros(20, bool), 20.0)
    assert psds({"x": silent}, reference, ["a", "b"])["psds1"]["value"] == 0.0


MONITOR_TOML = """
[model]
checkpoint = "{checkpoint}"

[defaults]
window = 1.0
hop = 0.5
smooth = 2
threshold = {threshold}
hysteresis = {hysteresis}
min_dbfs = -60.0
score = "label"

[[labels]]
name = "cat"
prompts = ["cat", "meowing cat"]
min_windows = 2

[[labels]]
name = "thunder"
threshold = {thunder}
hysteresis = {thunder_hysteresis}

[[labels]]
name = "rain"
event = false

[[sources]]
name = "porch"
file = "{wav}"
realtime = false
"""


@pytest.mark.slow
def test_the_events_equal_the_monitors_on_the_same_audio(tmp_path, tiny_checkpoint, clips_dir):
    """A 48 kHz stereo file with a silent gap (gated) through the real monitor from a monitor.toml (prompt groups,
    smoothing, per-label threshold, hysteresis and min_windows, a label without events), through the evaluation's
    streaming, and through ``evaluate --task events --config``: the same smoothed scores per window and the same
    events, start and end."""
    rate = 48000
    names = ("cat_3-95694-A-5.wav", "thunder_3-144891-B-19.wav")
    clips = [sf.read(clips_dir / name, dtype="float32")[0] for name in names]
    parts = [soxr.resample(clips[0][:3 * SAMPLE_RATE], SAMPLE_RATE, rate), np.zeros(2 * rate, np.float32),
             soxr.resample(clips[1][:4 * SAMPLE_RATE], SAMPLE_RATE, rate)]
    mono = np.concatenate(parts)
    wav = tmp_path / "porch.wav"
    sf.write(wav, np.stack([mono, 0.5 * mono], axis=1), rate, subtype="FLOAT")
    toml = tmp_path / "monitor.toml"
    toml.write_text(MONITOR_TOML.format(checkpoint=tiny_checkpoint, wav=wav, threshold=0.5, thunder=0.5,
                                        hysteresis=0.05, thunder_hysteresis=0.1))
    cfg = load_config(toml)
    classifier = config_classifier(cfg)
    curve = stream_recording(wav, classifier, cfg.stream_config("porch"))
    middle = np.nanmedian(curve.scores, axis=0)  # random weights: thresholds that give events
    settings = {"threshold": float(f"{middle[0]:.3g}"), "thunder": float(f"{middle[1]:.3g}")}
    settings.update(hysteresis=float(f"{min(middle) / 10:.3g}"), thunder_hysteresis=float(f"{middle[1] / 3:.3g}"))
    toml.write_text(MONITOR_TOML.format(checkpoint=tiny_checkpoint, wav=wav, **settings))
    cfg = load_config(toml)
    ours_ = detect(curve, classifier.labels, label_params(cfg, cfg.source("porch"), 3))
    assert {label for _, _, label in ours_} == {"cat", "thunder"} and curve.gated.sum() >= 2

    _, lines = run_monitor(cfg)
    windows = [x for x in lines if "t_end" in x and "probs" in x]
    assert [w["t_end"] for w in windows] == [round(t, 6) for t in curve.t_end[~curve.gated]]
    np.testing.assert_allclose([[w["probs"][k] for k in ("cat", "thunder", "rain")] for w in windows],
                               curve.scores[~curve.gated], atol=1e-6)
    theirs = sorted((x["start_s"], x["end_s"], x["label"]) for x in lines if x.get("event") == "end")
    assert theirs == [(round(on, 6), round(off, 6), label) for on, off, label in ours_]

    (tmp_path / "events.csv").write_text("file,onset,offset,label\nporch.wav,0.5,3.0,cat\nporch.wav,5.0,9.0,thunder\n"
                                         "porch.wav,5.0,9.0,rain\n")
    result = runner.invoke(app, ["evaluate", "--task", "events", "--config", str(toml), "--annotations",
                                 str(tmp_path / "events.csv"), "--output", str(tmp_path / "r.json"), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted((d["onset"], d["offset"], d["label"]) for d in report["detections"]) == theirs
    assert report["labels"] == ["cat", "thunder"] and report["annotations"]["ignored"] == {"rain": 1}
    assert report["stream"]["min_windows"] == {"cat": 2, "thunder": 1}
    assert report["stream"]["hysteresis"] == {"cat": settings["hysteresis"], "thunder": settings["thunder_hysteresis"]}
    result = runner.invoke(app, ["evaluate", "--task", "events", "--config", str(toml), "--annotations",
                                 str(tmp_path / "events.csv"), "--window", "2"])
    one_line_error(result.exit_code, result.output, "--config supplies the model, labels and stream settings: "
                                                    "leave out --window")
    result = runner.invoke(app, ["evaluate", "--task", "events", "--config", str(toml), "--annotations",
                                 str(tmp_path / "events.csv"), "--source", "garden"])
    one_line_error(result.exit_code, result.output, "--source: no source named 'garden'; sources: porch")


# -- annotations and the command ------------------------------------------------------------------------

SCAPE = {"street.wav": [(3.0, 5.0, "cat", "cat_3-95694-A-5.wav"), (12.0, 15.0, "thunder", "thunder_3-144891-B-19.wav"),
                        (22.0, 24.0, "car horn", "car_horn_1-24074-A-43.wav")],
         "yard.wav": [(4.0, 5.5, "cat", "cat_3-95694-A-5.wav"), (15.0, 18.0, "car horn", "car_horn_1-24074-A-43.wav")],
         "quiet.wav": []}
SECONDS = {"street.wav": 28.0, "yard.wav": 24.0, "quiet.wav": 8.0}


@pytest.fixture(scope="module")
def soundscape(tmp_path_factory, clips_dir):
    """Three recordings: the shared clips mixed into noise at known times, one of noise alone; beside them a CSV of
    the events and Raven Pro tables of the same (each selection in two views, the recording named by the table)."""
    root = tmp_path_factory.mktemp("soundscape")
    audio = root / "audio"
    audio.mkdir()
    rng = np.random.default_rng(1)
    rows = ["file,onset,offset,label"]
    raven = root / "raven"
    raven.mkdir()
    for name, events in SCAPE.items():
        x = 0.02 * rng.standard_normal(int(SECONDS[name] * SAMPLE_RATE)).astype(np.float32)
        header = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tAnnotation"
        lines = [header]
        for i, (onset, offset, label, clip) in enumerate(events, start=1):
            y = sf.read(clips_dir / clip, dtype="float32")[0][:int((offset - onset) * SAMPLE_RATE)]
            x[int(onset * SAMPLE_RATE):int(onset * SAMPLE_RATE) + len(y)] += y
            rows.append(f"audio/{name},{onset},{offset},{label}")
            for view in ("Waveform 1", "Spectrogram 1"):
                lines.append(f"{i}\t{view}\t1\t{onset}\t{offset}\t0\t22050\t{label}")
        if not events:
            rows.append(f"audio/{name},,,")
        sf.write(audio / name, x, SAMPLE_RATE, subtype="PCM_16")
        (raven / f"{name[:-4]}.Table.1.selection.txt").write_text("\n".join(lines) + "\n")
    (root / "events.csv").write_text("\n".join(rows) + "\n")
    return root


def test_csv_and_raven_tables_read_as_the_same_events(soundscape):
    from audioclip.archive.decode import find_recordings

    recordings = find_recordings([soundscape / "audio"])
    by_csv, counts = events_by_recording(read_annotations(soundscape / "events.csv"), RecordingIndex(None))
    by_raven, _ = events_by_recording(read_annotations(soundscape / "raven"),
                                      RecordingIndex(recordings, [soundscape / "audio"]))
    expected = {name: [e[:3] for e in events] for name, events in SCAPE.items()}
    assert {p.name: v for p, v in by_csv.items()} == expected
    assert {p.name: v for p, v in by_raven.items()} == expected
    assert counts == {"events": 5, "merged": 0, "ignored": {}}
    only_cat, counts = events_by_recording(read_annotations(soundscape / "events.csv"), RecordingIndex(None), ["cat"])
    assert sum(map(len, only_cat.values())) == 2 and counts["ignored"] == {"car horn": 2, "thunder": 1}


def test_overlapping_events_of_a_label_merge(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "t.csv").write_text("file,onset,offset,label\na.wav,1,3,dog\na.wav,2,4,dog\na.wav,3.5,5,cat\n"
                                    "a.wav,6,7,dog\n")
    events, counts = events_by_recording(read_annotations(tmp_path / "t.csv"), RecordingIndex(None))
    assert list(events.values()) == [[(1.0, 4.0, "dog"), (3.5, 5.0, "cat"), (6.0, 7.0, "dog")]]
    assert counts["merged"] == 1


def test_a_table_audioclip_label_writes_reads_as_its_events(tmp_path):
    """``audioclip-label --format raven``'s columns (the recording in Begin Path, the label in Common Name), one
    selection per window at or above its threshold: overlapping windows of a label read as one event."""
    from audioclip.archive.store import RAVEN_COLUMNS, RAVEN_SUFFIX

    wav = tmp_path / "rec.wav"
    wav.write_bytes(b"")
    rows = [(0.0, 1.0, "dog"), (0.5, 1.5, "dog"), (0.5, 1.5, "cat"), (3.0, 4.0, "dog")]
    lines = ["\t".join(RAVEN_COLUMNS)] + [
        "\t".join([str(i), "Spectrogram 1", "1", f"{t0:.4f}", f"{t1:.4f}", "0", "22050", label, label, "0.9000",
                   str(wav.resolve()), f"{t0:.4f}"]) for i, (t0, t1, label) in enumerate(rows, start=1)]
    (tmp_path / "raven").mkdir()
    (tmp_path / "raven" / f"rec{RAVEN_SUFFIX}").write_text("\n".join(lines) + "\n")
    events, counts = events_by_recording(read_annotations(tmp_path / "raven"), RecordingIndex(None))
    assert events == {wav.resolve(): [(0.0, 1.5, "dog"), (0.5, 1.5, "cat"), (3.0, 4.0, "dog")]}
    assert counts["merged"] == 1


def evaluate(soundscape, tiny_checkpoint, annotations, out, *extra):
    args = ["evaluate", "--task", "events", "--annotations", annotations, "--checkpoint", tiny_checkpoint,
            "--window", "1.5", "--hop", "1.0", "--threads", "1", "--output", out, "--quiet", *extra]
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.mark.slow
def test_a_soundscape_end_to_end_through_the_command(soundscape, tiny_checkpoint, tmp_path):
    """CSV and Raven annotations of the same soundscape give the same report; its counts agree with its own
    detections, its false alarms per hour with its hours, its chosen thresholds with the budget; --plot draws."""
    code, out = evaluate(soundscape, tiny_checkpoint, soundscape / "events.csv", tmp_path / "csv.json",
                         "--alarms-per-hour", "120", "--plot")
    assert code == 0, out
    assert "overall" in out and "report:" in out and "chosen thresholds" in out
    report = json.loads((tmp_path / "csv.json").read_text())
    assert (tmp_path / "csv.png").read_bytes()[:4] == b"\x89PNG"
    assert report["labels"] == ["car horn", "cat", "thunder"] and report["score"] == "label"
    assert {r["file"]: (r["seconds"], r["reference"]) for r in report["recordings"]} == {
        f"audio/{n}": (SECONDS[n], len(SCAPE[n])) for n in SCAPE}
    assert report["hours"] == pytest.approx(sum(SECONDS.values()) / 3600)
    assert report["annotations"]["unannotated_recordings"] == 1
    assert report["matching"] == {"collar_s": 1.5, "offsets": True, "offset_share": 0.2,
                                  "as": "sed_eval EventBasedMetrics (optimal matching)"}  # the window's length
    overall = report["at_threshold"]["overall"]
    assert overall["reference"] == 5
    assert overall["detected"] == len(report["detections"])
    assert overall["tp"] == sum(d["matched"] for d in report["detections"])
    assert overall["alarms_per_hour"] == pytest.approx(overall["fp"] / report["hours"])
    sweep = report["sweep"]
    (given,) = set(report["stream"]["threshold"].values())  # the label score's starting threshold
    assert sweep["thresholds"] == sorted(sweep["thresholds"]) and given in sweep["thresholds"]
    i = sweep["thresholds"].index(given)
    assert {k: sweep["overall"][k][i] for k in overall} == overall  # the sweep's point there is the report's
    assert sweep["overall"]["detected"][0] >= sweep["overall"]["detected"][-1]
    for chosen in report["chosen"]["per_label"].values():
        assert chosen is None or chosen["alarms_per_hour"] <= 120
    assert set(report["psds"]) >= {"psds1", "psds2"} and 0.0 <= report["psds"]["psds1"]["value"] <= 1.0
    code, out = evaluate(soundscape, tiny_checkpoint, soundscape / "raven", tmp_path / "raven.json",
                         "--alarms-per-hour", "120", "--recordings", soundscape)
    assert code == 0, out
    raven = json.loads((tmp_path / "raven.json").read_text())
    for key in ("at_threshold", "sweep", "chosen", "psds", "recordings", "detections"):
        assert raven[key] == report[key], key


def one_line_error(code: int, out: str, *fragments: str) -> None:
    assert code == 2, out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    for fragment in fragments:
        assert fragment in out, out


def test_bad_input_fails_with_one_line(soundscape, tiny_checkpoint, tmp_path):
    def run(annotations, *extra):
        return evaluate(soundscape, tiny_checkpoint, annotations, tmp_path / "r.json", *extra)

    one_line_error(*run(tmp_path / "nowhere.csv"), "nowhere.csv: no such annotation file or folder")
    table = tmp_path / "t.csv"
    table.write_text("file,onset,offset,label\naudio/street.wav,5,4,cat\n")
    one_line_error(*run(table), "t.csv line 2: onset 5 s is not before offset 4 s")
    table.write_text("file,onset,offset,label\nmissing.wav,1,2,cat\n")
    one_line_error(*run(table), "t.csv line 2: recording 'missing.wav' not found")
    one_line_error(*run(table, "--recordings", soundscape / "audio"), "'missing.wav' is not among the recordings")
    table.write_text("file,onset,offset,label\naudio/street.wav,soon,2,cat\n")
    one_line_error(*run(table), "onset must be a number of seconds, got 'soon'")
    table.write_text("name;start;end\nstreet.wav;1;2\n")
    one_line_error(*run(table), "t.csv: unknown annotation format")
    (tmp_path / "t.json").write_text("{}")
    one_line_error(*run(tmp_path / "t.json"), "t.json: unknown annotation format")
    one_line_error(*run(soundscape / "events.csv", "--score", "bogus"), "--score: must be one of label, softmax")
    one_line_error(*run(soundscape / "events.csv", "--collar", "0"), "--collar must be positive, got 0")
    one_line_error(*run(soundscape / "events.csv", "--offset-share", "2"), "--offset-share must be between 0 and 1")
    result = runner.invoke(app, ["evaluate", "--task", "events"])
    one_line_error(result.exit_code, result.output, "--task events needs --annotations")
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(tiny_checkpoint)])
    one_line_error(result.exit_code, result.output, "--dataset is needed for --task classify")


def test_without_the_eval_extra_the_command_names_it(soundscape, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sed_scores_eval", None)  # what an installation without it imports
    with pytest.raises(ValueError, match=r"pip install 'audioclip-stream\[eval\]'"):
        eval_libraries()
    one_line_error(*evaluate(soundscape, tiny_checkpoint, soundscape / "events.csv", tmp_path / "r.json"),
                   "event evaluation needs sed_eval and sed_scores_eval: pip install 'audioclip-stream[eval]'")
    assert not (tmp_path / "r.json").exists()
