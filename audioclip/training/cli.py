"""``audioclip-train``: fine-tune the audio head and evaluate checkpoints on the official folds."""

from __future__ import annotations

import logging
import os
import sys
from enum import Enum
from pathlib import Path

import typer
from rich.table import Table

from ..cli_common import (
    Command,
    Group,
    OutputConsole,
    labels_from_options,
    one_line_errors,
    setup_logging,
    version_option,
)
from ..model import SAMPLE_RATE, load_model
from ..model.checkpoint import cache_dir
from ..monitor.config import StreamDefaults
from .audio_io import DecodeCache
from .datasets import load_dataset
from .evaluate import EvalReport, evaluate, plot_confusion, require_matplotlib, write_json
from .trainer import Recipe, Runtime, cross_validate, finetune, resolve_device, shutdown_distributed

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=Group,
                  help="Fine-tune AudioCLIP's audio head on UrbanSound8K, ESC-50 or labelled folders, and evaluate.")
console = OutputConsole(soft_wrap=True)


class DatasetKind(str, Enum):
    us8k = "us8k"
    esc50 = "esc50"
    folder = "folder"


class Mode(str, Enum):
    cooperative = "cooperative"
    standalone = "standalone"


class BatchNorm(str, Enum):
    batch = "batch"
    recalibrate = "recalibrate"
    frozen = "frozen"


class Freeze(str, Enum):
    none = "none"
    trunk = "trunk"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class EvalTask(str, Enum):
    classify = "classify"
    query = "query"
    events = "events"


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _cache(cache_path: Path | None, no_cache: bool) -> DecodeCache:
    return DecodeCache(None if no_cache else cache_path or cache_dir() / "decoded")


def _folds(fold: int | None, all_folds: bool) -> None:
    if fold is not None and all_folds:
        raise typer.BadParameter("give --fold or --all-folds, not both")


DATA_ROOT = typer.Option(..., "--data-root", help="Top folder of the data set (its published layout).")
CLIP_SECONDS = typer.Option(None, "--clip-seconds", help="Clip length; default a fine-tuned checkpoint's, else the "
                                                          "data set's (US8K 4 s, ESC-50 5 s, folder 5 s).")
CACHE_DIR = typer.Option(None, "--cache-dir", help="Decoded-audio cache (default ~/.cache/audioclip/decoded).")
NO_CACHE = typer.Option(False, "--no-cache", help="Decode every clip every time.")
EVENTS = "Events (--task events)"
MONITOR = StreamDefaults()  # the monitor's defaults: --task events streams as it does
MAX_BAD = typer.Option(0.05, "--max-bad", help="Share of undecodable clips skipped with a warning before failing.")


@app.callback()
def _main(version: bool = version_option("audioclip-train")) -> None:
    pass


@app.command("finetune", cls=Command)
@one_line_errors(cleanup=shutdown_distributed)
def finetune_command(
    dataset: DatasetKind = typer.Option(..., "--dataset", help="us8k, esc50 or folder (DIR/<label>/*.wav)."),
    data_root: Path = DATA_ROOT,
    fold: int | None = typer.Option(None, "--fold", help="Held-out fold (train on the others); default 1."),
    all_folds: bool = typer.Option(False, "--all-folds", help="Run the whole cross-validation."),
    checkpoint: str = typer.Option("full", "--checkpoint", help="Release name (full, partial) or checkpoint file."),
    mode: Mode = typer.Option(Mode.cooperative, "--mode", help="cooperative: score against label texts; "
                                                                 "standalone: new linear classifier."),
    epochs: int = typer.Option(50, "--epochs"),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(5e-5, "--lr"),
    gamma: float = typer.Option(0.98, "--gamma", help="Learning-rate decay per epoch."),
    seed: int = typer.Option(0, "--seed"),
    template: str = typer.Option("{}", "--template", help="Text template of the class labels."),
    bn: BatchNorm = typer.Option(BatchNorm.batch, "--bn", help="Batch norm: batch (the paper's batch statistics), "
                                 "recalibrate (batch, then running statistics recomputed on the training clips "
                                 "before each evaluation), frozen (the source's statistics throughout: what is trained "
                                 "is what is evaluated; docs/training.md)."),
    freeze: Freeze = typer.Option(Freeze.none, "--freeze", help="trunk: train only the projection and logit "
                                  "scale (or the standalone classifier) on the source's features, a linear probe "
                                  "for small data sets (docs/training.md)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="The recipe's training augmentations "
                                 "(time scaling, inversion, crop, noise); docs/training.md for small data sets."),
    device: Device = typer.Option(Device.auto, "--device"),
    workers: int = typer.Option(0, "--workers", help="Data-loader worker processes."),
    out: Path = typer.Option(None, "--out", help="Run folder (default runs/<dataset>-<mode>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
    clip_seconds: float | None = CLIP_SECONDS,
    cache_path: Path | None = CACHE_DIR,
    no_cache: bool = NO_CACHE,
    max_bad: float = MAX_BAD,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar, warnings only."),
) -> None:
    """Fine-tune the audio head; writes metrics.jsonl, last.pt and best.pt under --out."""
    _folds(fold, all_folds)
    setup_logging(verbose=not quiet and _rank() == 0)
    data = load_dataset(dataset.value, data_root, seed=seed, clip_seconds=clip_seconds)
    out = out or Path("runs") / f"{dataset.value}-{mode.value}"
    recipe = Recipe(mode=mode.value, epochs=epochs, batch_size=batch_size, lr=lr, gamma=gamma, seed=seed,
                    template=template, bn=bn.value, freeze=freeze.value, augment=augment).check()
    runtime = Runtime(device=device.value, workers=workers, max_bad_share=max_bad, progress=not quiet)
    cache = _cache(cache_path, no_cache)
    if all_folds:
        summary = cross_validate(source=checkpoint, data=data, out=out, cache=cache, recipe=recipe,
                                 runtime=runtime, resume=resume)
        if _rank() == 0:
            table = Table("fold", "final val acc", "best val acc", title=f"{data.name} cross-validation ({mode.value})")
            for k in summary["val_acc"]:
                table.add_row(k, f"{summary['val_acc'][k]:.2%}", f"{summary['best_val_acc'][k]:.2%}")
            table.add_row("mean", f"{summary['mean_val_acc']:.2%}", f"{summary['mean_best_val_acc']:.2%}")
            console.print(table)
            console.print(f"summary: {out / 'summary.json'}")
        return
    result = finetune(source=checkpoint, data=data, fold=data.check_fold(fold or 1), out=out, cache=cache,
                      recipe=recipe, runtime=runtime, resume=resume)
    if _rank() == 0:
        console.print(f"fold {fold or 1}: final val acc {result['val_acc']:.2%}, best {result['best_val_acc']:.2%} "
                      f"(epoch {result['best_epoch']}); checkpoint {out / 'best.pt'}")


def _render(report: EvalReport) -> None:
    folds = Table("fold", "clips", "accuracy", title=f"{report.dataset}: {report.mode} accuracy of {report.checkpoint}")
    for k in report.folds:
        folds.add_row(str(k), str(report.clips[k]), f"{report.accuracy[k]:.2%}")
    folds.add_row("mean", str(sum(report.clips.values())), f"{report.mean_accuracy:.2%}", style="bold")
    console.print(folds)
    confusion = Table("true \\ predicted", *[str(i) for i in range(len(report.labels))], title="confusion matrix",
                      padding=(0, 1))
    for i, (label, row) in enumerate(zip(report.labels, report.confusion)):
        cells = [f"[bold]{v}[/bold]" if j == i else (str(v) if v else "[dim]0[/dim]") for j, v in enumerate(row)]
        confusion.add_row(f"{i} {label}", *cells)
    console.print(confusion)
    if report.query is not None:
        table = Table("fold", "direction", "P@1", "R@1", "mAP", title="querying (the paper's Table 4 metrics)")
        rows = [(str(k), report.query[k]) for k in report.folds] + [("mean", report.mean_query)]
        for name, q in rows:
            for direction, m in q.items():
                table.add_row(name, direction.replace("_", " "), f"{m['P@1']:.2%}", f"{m['R@1']:.2%}",
                              f"{m['mAP']:.2%}", style="bold" if name == "mean" else None)
        console.print(table)


@app.command("evaluate", cls=Command)
@one_line_errors(cleanup=shutdown_distributed)
def evaluate_command(
    ctx: typer.Context,
    dataset: DatasetKind | None = typer.Option(None, "--dataset", help="us8k, esc50 or folder (--task classify, "
                                                                         "query)."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Top folder of the data set (--task classify, "
                                                                     "query)."),
    checkpoint: str = typer.Option("full", "--checkpoint", help="Release name (zero-shot) or checkpoint file."),
    fold: int | None = typer.Option(None, "--fold", help="Fold to test; default a fine-tuned checkpoint's own "
                                                         "held-out fold, else all folds."),
    all_folds: bool = typer.Option(False, "--all-folds"),
    template: str | None = typer.Option(None, "--template", help="Label template (default: the checkpoint's, or {})."),
    batch_size: int = typer.Option(16, "--batch-size"),
    device: Device = typer.Option(Device.auto, "--device"),
    workers: int = typer.Option(0, "--workers"),
    report_path: Path = typer.Option(None, "--report", "--output", help="JSON report (default: beside a checkpoint "
                                     "file, <name>-eval-<dataset>.json, -eval-events.json; runs/ for a release)."),
    plot: bool = typer.Option(False, "--plot", help="Also write the confusion matrix (events: the threshold sweep) "
                                                    "as a PNG beside the report."),
    task: EvalTask = typer.Option(EvalTask.classify, "--task", help="classify: accuracy and confusion matrix; "
                                  "query: also text-to-audio and audio-to-text P@1, R@1 and mAP (the paper's); "
                                  "events: the monitor's events on annotated recordings (docs/training.md)."),
    annotations: Path | None = typer.Option(None, "--annotations", rich_help_panel=EVENTS,
                                            help="CSV file,onset,offset,label or Raven selection tables: a file or "
                                                 "a folder of them."),
    recordings: list[Path] | None = typer.Option(None, "--recordings", rich_help_panel=EVENTS, metavar="PATH",
                                                 help="Recordings (files or folders, repeatable); default: the files "
                                                      "the annotations name, relative to their table."),
    labels: str | None = typer.Option(None, "--labels", rich_help_panel=EVENTS,
                                      help="Comma-separated labels (default: the annotations' labels)."),
    labels_file: Path | None = typer.Option(None, "--labels-file", rich_help_panel=EVENTS),
    config_file: Path | None = typer.Option(None, "--config", rich_help_panel=EVENTS,
                                            help="Evaluate a monitor.toml as the monitor runs it: its model, labels "
                                                 "(prompts, per-label thresholds, hysteresis, min_windows, events) "
                                                 "and stream settings, those of --source."),
    source: str | None = typer.Option(None, "--source", rich_help_panel=EVENTS,
                                      help="With --config: the source whose settings apply (default: its only one)."),
    onnx: Path | None = typer.Option(None, "--onnx", rich_help_panel=EVENTS, help="An audioclip-export folder "
                                                                                   "instead of --checkpoint."),
    score: str = typer.Option("label", "--score", rich_help_panel=EVENTS, metavar="label|softmax",
                              help="label: each label's own score; softmax: over the label set."),
    window: float = typer.Option(MONITOR.window, "--window", rich_help_panel=EVENTS),
    hop: float = typer.Option(MONITOR.hop, "--hop", rich_help_panel=EVENTS, show_default=False,
                              help="Seconds between window starts (default 0.50884, the monitor's)."),
    smooth: int = typer.Option(MONITOR.smooth, "--smooth", rich_help_panel=EVENTS),
    threshold: float | None = typer.Option(None, "--threshold", rich_help_panel=EVENTS,
                                           help="Event threshold (default: the score's starting one)."),
    hysteresis: float = typer.Option(MONITOR.hysteresis, "--hysteresis", rich_help_panel=EVENTS),
    min_windows: int = typer.Option(MONITOR.min_windows, "--min-windows", rich_help_panel=EVENTS),
    min_dbfs: float = typer.Option(MONITOR.min_dbfs, "--min-dbfs", rich_help_panel=EVENTS,
                                   help="Windows quieter than this are not classified (the monitor's default)."),
    exact_windows: bool = typer.Option(False, "--exact-windows", rich_help_panel=EVENTS),
    collar: float | None = typer.Option(None, "--collar", rich_help_panel=EVENTS,
                                        help="Seconds an event's onset (and offset) may be off and still match "
                                             "(default: the window's length, the events' resolution)."),
    offset_share: float = typer.Option(0.2, "--offset-share", rich_help_panel=EVENTS,
                                       help="An offset also matches within this share of the annotated length."),
    onsets_only: bool = typer.Option(False, "--onsets-only", rich_help_panel=EVENTS,
                                     help="Match events on their onsets alone."),
    alarms_per_hour: float | None = typer.Option(None, "--alarms-per-hour", rich_help_panel=EVENTS,
                                                 help="Choose the threshold with the best recall within this many "
                                                      "false alarms per hour (default: the best F1)."),
    threads: int | None = typer.Option(None, "--threads", rich_help_panel=EVENTS),
    clip_seconds: float | None = CLIP_SECONDS,
    cache_path: Path | None = CACHE_DIR,
    no_cache: bool = NO_CACHE,
    max_bad: float = MAX_BAD,
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Accuracy per fold and mean, confusion matrix; zero-shot for releases, fine-tuned otherwise. --task events:
    the monitor's events on annotated recordings."""
    setup_logging(verbose=not quiet and _rank() == 0)
    if plot:
        require_matplotlib()
    if task is EvalTask.events:
        events_options = {k: v for k, v in locals().items() if k in EVENT_OPTIONS}
        _evaluate_events(ctx, **events_options)
        return
    if annotations is not None:
        raise ValueError("--annotations applies to --task events")
    for value, flag in ((dataset, "--dataset"), (data_root, "--data-root")):
        if value is None:
            raise ValueError(f"{flag} is needed for --task {task.value}")
    _folds(fold, all_folds)
    if batch_size < 1:
        raise typer.BadParameter(f"--batch-size must be at least 1, got {batch_size}")
    model = load_model(checkpoint)
    meta = model.metadata
    if clip_seconds is None and meta.clip_samples:
        clip_seconds = meta.clip_samples / SAMPLE_RATE  # the length it was fine-tuned on
    split_seed = meta.recipe.get("seed", 0)  # a folder's split is the one it was trained on
    data = load_dataset(dataset.value, data_root, seed=split_seed, clip_seconds=clip_seconds)
    if fold is not None:
        folds = [fold]
    elif all_folds or model.label_bank is None:
        folds = list(range(1, data.folds + 1))
    else:
        folds = [meta.fold] if meta.fold is not None and meta.dataset == data.name else [1]
    trained_on = meta.fold if meta.dataset == data.name else None
    if trained_on is not None and any(k != trained_on for k in folds):
        logging.getLogger(__name__).warning("the checkpoint was trained on every fold but %d: other folds' accuracy "
                                            "is not held-out accuracy", trained_on)
    report = evaluate(model=model, data=data, folds=folds, cache=_cache(cache_path, no_cache), template=template,
                      batch_size=batch_size, workers=workers, device=resolve_device(device.value),
                      max_bad_share=max_bad, progress=not quiet, name=checkpoint, query=task is EvalTask.query)
    _render(report)
    report_path = report_path or _default_report(checkpoint, data.name)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(report.to_json(), report_path)
    console.print(f"report: {report_path}")
    if plot:
        png = report_path.with_suffix(".png")
        plot_confusion(report, png)
        console.print(f"confusion matrix: {png}")


EVENT_OPTIONS = ("annotations", "recordings", "labels", "labels_file", "config_file", "source", "checkpoint", "onnx",
                 "template", "score", "window", "hop", "smooth", "threshold", "hysteresis", "min_windows", "min_dbfs",
                 "exact_windows", "collar", "offset_share", "onsets_only", "alarms_per_hour", "threads", "report_path",
                 "plot", "quiet")


def _evaluate_events(ctx: typer.Context, *, annotations: Path | None, recordings: list[Path] | None, labels,
                     labels_file, config_file: Path | None, source: str | None, checkpoint: str, onnx: Path | None,
                     template: str | None, score: str, threshold: float | None,
                     collar: float | None, offset_share: float, onsets_only: bool, alarms_per_hour: float | None,
                     threads: int | None, report_path: Path | None, plot: bool, quiet: bool, **stream) -> None:
    """``--task events``: read the annotations, stream the recordings, write the report (:mod:`.events`)."""
    from ..archive.decode import find_recordings
    from ..stream.backends import fit_window, load_classifier
    from ..stream.config import StreamConfig
    from ..stream.runner import check_window
    from ..stream.scoring import check_score, default_threshold, score_classifier
    from .annotations import RecordingIndex, events_by_recording, read_annotations
    from .events import Matching, eval_libraries, evaluate_events, monitor_setup, plot_event_curves

    if annotations is None:
        raise ValueError("--task events needs --annotations (CSV file,onset,offset,label or Raven tables)")
    eval_libraries()
    check_score(score)
    if collar is not None and not collar > 0:
        raise ValueError(f"--collar must be positive, got {collar:g}")
    if not 0 <= offset_share <= 1:
        raise ValueError(f"--offset-share must be between 0 and 1, got {offset_share:g}")
    if alarms_per_hour is not None and not alarms_per_hour >= 0:
        raise ValueError(f"--alarms-per-hour must be at least 0, got {alarms_per_hour:g}")
    table = read_annotations(annotations)
    folders = [p for p in recordings or [] if p.is_dir()]
    index = RecordingIndex(find_recordings(recordings) if recordings else None, folders)
    if config_file is not None:
        given = [f"--{name.replace('_', '-')}" for name in (*CONFIGURED, "checkpoint", "threads")
                 if ctx.get_parameter_source(name).name != "DEFAULT"]
        if given:
            raise ValueError(f"--config supplies the model, labels and stream settings: leave out {', '.join(given)}")
        classifier, config, params, name, score = monitor_setup(config_file, source)
        label_list = [label for label, on in zip(classifier.labels, params.event) if on]
        references, counts = events_by_recording(table, index, label_list)
    else:
        if source is not None:
            raise ValueError("--source picks a source of --config")
        config = StreamConfig(events=True, threshold=default_threshold(score) if threshold is None else threshold,
                              **stream)
        label_list = labels_from_options(labels, labels_file) or sorted({a.label for a in table.events})
        if not label_list:
            raise ValueError(f"{annotations}: no annotated events and no --labels: nothing to evaluate")
        references, counts = events_by_recording(table, index, label_list)
        classifier = load_classifier(checkpoint=None if onnx else checkpoint, onnx=onnx, labels=label_list,
                                     template=template, threads=threads)
        classifier = score_classifier(classifier, score)
        config = fit_window(config, classifier, window_given=ctx.get_parameter_source("window").name != "DEFAULT")
        params, name = None, str(onnx) if onnx else checkpoint
    check_window(classifier, config)
    counts["unannotated_recordings"] = sum(1 for events in references.values() if not events)
    root = folders[0] if folders else (annotations if annotations.is_dir() else annotations.parent)
    report = evaluate_events(references=references, classifier=classifier, config=config, params=params,
                             matching=Matching(config.window if collar is None else collar, offset_share,
                                               offsets=not onsets_only),
                             alarms_per_hour=alarms_per_hour, progress=not quiet, name=name, score=score,
                             annotations=counts, root=root)
    _render_events(report)
    report_path = report_path or _default_report(name, "events")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(report.to_json(), report_path)
    console.print(f"report: {report_path}")
    if plot:
        png = report_path.with_suffix(".png")
        plot_event_curves(report, png)
        console.print(f"threshold sweep: {png}")


CONFIGURED = ("labels", "labels_file", "onnx", "template", "score", "window", "hop", "smooth", "threshold",
              "hysteresis", "min_windows", "min_dbfs", "exact_windows")
"""The options a monitor.toml given with --config supplies."""


def _render_events(report) -> None:
    def share(value) -> str:
        return "-" if value is None else f"{value:.0%}"

    psds = report.psds
    table = Table("label", "events", "TP", "FP", "FN", "P", "R", "F1", "FA/h", "PSDS1", "PSDS2", padding=(0, 1),
                  title=f"events in {len(report.recordings)} recordings ({report.hours:.2f} h), {report.score} scores")
    rows = [*report.at_threshold["per_label"].items(), ("overall", report.at_threshold["overall"])]
    for label, m in rows:
        scores = [(psds.get(k) or {}).get("value") if label == "overall" else
                  (psds.get(k) or {}).get("per_label", {}).get(label) for k in ("psds1", "psds2")]
        table.add_row(label, str(m["reference"]), str(m["tp"]), str(m["fp"]), str(m["fn"]), share(m["precision"]),
                      share(m["recall"]), share(m["f1"]), f"{m['alarms_per_hour']:.1f}",
                      *("-" if v is None else f"{v:.3f}" for v in scores),
                      style="bold" if label == "overall" else None)
    console.print(table)
    s, m = report.stream, report.matching
    offsets = f"offsets within max({m['collar_s']:g} s, {m['offset_share']:.0%})" if m["offsets"] else "onsets only"
    settings = {label: (s["threshold"][label], s["hysteresis"][label], s["min_windows"][label])
                for label in s["threshold"]}
    if len(set(settings.values())) == 1:
        events = "at threshold {:g}, hysteresis {:g}, min_windows {}".format(*next(iter(settings.values())))
    else:
        events = "at threshold / hysteresis / min_windows " + ", ".join(
            f"{label} {t:g} / {h:g} / {w}" for label, (t, h, w) in settings.items())
    console.print(f"{events}; window {s['window']:g} s, hop {s['hop']:g} s; onsets within {m['collar_s']:g} s, "
                  f"{offsets}")
    picks = {**report.chosen["per_label"], "overall (one threshold)": report.chosen["overall"]}
    console.print(f"chosen thresholds ({report.chosen['rule']}): " + "; ".join(
        f"{label} none within the budget" if p is None else
        f"{label} {p['threshold']:g} (F1 {share(p['f1'])}, {p['alarms_per_hour']:.1f} false alarms/h)"
        for label, p in picks.items()))


def _default_report(checkpoint: str, dataset: str) -> Path:
    """Beside a checkpoint file (``runs/x/best-eval-esc50.json``), under ``runs/`` for a release name."""
    path = Path(checkpoint)
    if path.is_file():
        return path.with_name(f"{path.stem}-eval-{dataset}.json")
    return Path("runs") / f"{checkpoint}-eval-{dataset}.json"


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
