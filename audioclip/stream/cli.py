"""``audioclip-stream``: label sounds continuously from a microphone, a file or stdin."""

from __future__ import annotations

import signal
import sys
from enum import Enum
from pathlib import Path

import typer

from ..cli_common import (
    INTERRUPTED_EXIT,
    Command,
    errors,
    labels_from_options,
    one_line_errors,
    setup_logging,
    version_option,
)
from ..model.labels import ParameterError
from .backends import fit_window, load_classifier
from .config import StreamConfig
from .devices import AudioDeviceError, list_input_devices
from .engine import StreamStats
from .outputs import CsvWriter, JsonlWriter, LiveDisplay, summary_lines
from .runner import check_window, event_detector, run_stream
from .scoring import default_threshold, score_classifier, score_line
from .sources import FileSource, MicrophoneSource, StdinSource

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Label sounds continuously with AudioCLIP: zero-shot text labels or a fine-tuned checkpoint's.")


class Format(str, Enum):
    live = "live"
    jsonl = "jsonl"
    csv = "csv"


class Score(str, Enum):
    label = "label"
    softmax = "softmax"


class Runtime(str, Enum):
    onnxruntime = "onnxruntime"
    openvino = "openvino"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


def _value(option: Enum | None) -> str | None:
    return None if option is None else option.value


NO_DEVICES_HINT = "no audio input devices found: stream a file with --input FILE, or raw audio or a WAV with --input -"

_stop_signals: list[int] = []


def _interrupt(signum, frame) -> None:
    _stop_signals.append(signum)
    raise KeyboardInterrupt


@app.command(cls=Command)
@one_line_errors(user_errors=(ValueError, OSError, AudioDeviceError))
def stream(
    ctx: typer.Context,
    labels: str | None = typer.Option(None, "--labels", help='Comma-separated labels, e.g. "siren,dog bark".'),
    labels_file: Path | None = typer.Option(None, "--labels-file", help="A file with one label per line."),
    template: str | None = typer.Option(None, "--template", help='Text around each label, e.g. "the sound of {}".'),
    checkpoint: str | None = typer.Option(None, "--checkpoint",
                                             help="Release name (full, partial) or checkpoint path (default full)."),
    onnx: Path | None = typer.Option(None, "--onnx", help="Run an audioclip-export directory on ONNX Runtime."),
    runtime: Runtime | None = typer.Option(None, "--runtime",
                                           help="What runs --onnx: onnxruntime (default) or openvino."),
    precision: Precision | None = typer.Option(None, "--precision",
                                               help="fp32 (default) or bf16: OpenVINO at a precision the export "
                                                    "verified, or PyTorch through autocast (checked at load)."),
    input: str | None = typer.Option(None, "--input", "-i",
                                     help="Audio file, or - for stdin: a WAV, else raw s16le 44.1 kHz mono."),
    device: str | None = typer.Option(None, "--device", "-d", help="Input device index or name."),
    list_devices: bool = typer.Option(False, "--list-devices", help="List input devices and exit."),
    window: float = typer.Option(StreamConfig.window, "--window",
                                 help="Window length in seconds (default 5, or the clip length a fine-tuned head "
                                      "was trained on)."),
    hop: float = typer.Option(StreamConfig.hop, "--hop", show_default=False,
                              help="Seconds between window starts (default 0.50884: 5 x 4488 samples, so that "
                                   "windows share work exactly)."),
    exact_windows: bool = typer.Option(False, "--exact-windows",
                                       help="Compute every window whole (no work shared between windows)."),
    smooth: int = typer.Option(StreamConfig.smooth, "--smooth",
                               help="Average probabilities over the last N windows (1: off)."),
    score: Score | None = typer.Option(None, "--score",
                                       help="label: each label scored on its own (docs/scores.md); softmax: over the "
                                            "labels given (default: label with --events or a monitor, else "
                                            "softmax)."),
    threshold: float | None = typer.Option(None, "--threshold",
                                              help="Event threshold on a label's score (default: the score's, "
                                                   "docs/scores.md)."),
    hysteresis: float | None = typer.Option(None, "--hysteresis",
                                               help="An event ends below threshold minus this (default 0.05)."),
    min_windows: int | None = typer.Option(None, "--min-windows",
                                              help="Windows in a row at or above the threshold before an event "
                                                   "starts (default 1)."),
    min_dbfs: float | None = typer.Option(None, "--min-dbfs",
                                             help="Skip windows quieter than this RMS level, e.g. -70 (default: "
                                                  "classify all)."),
    top_k: int = typer.Option(StreamConfig.top_k, "--top-k", help="Labels shown in the live display."),
    format: Format = typer.Option(Format.live, "--format", help="live display, or JSON lines / CSV on stdout."),
    events: bool = typer.Option(False, "--events", help="Report label events (start/end) against --threshold."),
    realtime: bool = typer.Option(False, "--realtime", help="Pace a file like a live source."),
    duration: float | None = typer.Option(None, "--duration", help="Stop after this many seconds of audio."),
    threads: int | None = typer.Option(None, "--threads",
                                          help="Inference threads (default 2; 1 is steadier beside other busy work)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors on stderr."),
    config_file: Path | None = typer.Option(None, "--config", help="Run the monitor a monitor.toml describes."),
    db: Path | None = typer.Option(None, "--db", help="Store events in this SQLite file (the monitor)."),
    clips: Path | None = typer.Option(None, "--clips", help="Write each event's audio as FLAC here (needs --db)."),
    mqtt: str | None = typer.Option(None, "--mqtt", help="Publish events to mqtt://[user:pass@]host[:port]."),
    metrics: str | None = typer.Option(None, "--metrics", help="Serve Prometheus metrics on HOST:PORT."),
    http: str | None = typer.Option(None, "--http",
                                    help="Serve the web page and HTTP API on HOST:PORT (the monitor; also with "
                                         "--config, over its [http] listen)."),
    http_token: str | None = typer.Option(None, "--http-token",
                                          help="The token writes and requests from beyond loopback need (or "
                                               "AUDIOCLIP_HTTP_TOKEN); needed to listen beyond loopback."),
    loop: bool = typer.Option(False, "--loop", help="Play --input FILE again at its end (the monitor)."),
    calibrate: bool = typer.Option(False, "--calibrate",
                                   help="Propose each label's threshold of the --config monitor from its database's "
                                        "moments (docs/scores.md), print it and exit."),
    alarms_per_hour: float = typer.Option(1.0, "--alarms-per-hour",
                                          help="--calibrate's target: false alarms per hour per label and source."),
    since: str | None = typer.Option(None, "--since", help="--calibrate on the moments since this UTC time "
                                                           "(ISO 8601, e.g. 2026-12-01; default all)."),
    apply: bool = typer.Option(False, "--apply", help="--calibrate: write the thresholds into the --config file "
                                                      "(comments kept), then reload the monitor (SIGHUP)."),
    version: bool = version_option("audioclip-stream"),
) -> None:
    """Classify overlapping windows of live or recorded audio against text labels.

    Ctrl-C stops with the summary and exits 130; SIGTERM (``kill``, a service manager) stops the
    same way and exits 0, a clean stop.
    """
    setup_logging(verbose=not quiet)
    if list_devices:
        devices = list_input_devices()
        for d in devices:
            typer.echo(d.describe())
        if not devices:
            errors.print(NO_DEVICES_HINT, highlight=False, soft_wrap=True)
        return
    calibrating = {"--alarms-per-hour": ctx.get_parameter_source("alarms_per_hour").name != "DEFAULT",
                   "--since": since is not None, "--apply": apply}
    if calibrate or any(calibrating.values()):
        if not calibrate:
            raise ParameterError("calibrate", f"{next(k for k, v in calibrating.items() if v)} applies to --calibrate")
        _calibrate(config_file, alarms_per_hour=alarms_per_hour, since=since, apply=apply)
        return
    from ..monitor.cli import run_monitor_cli, wants_monitor

    if loop or wants_monitor(config=config_file, input=input, db=db, clips=clips, mqtt=mqtt, metrics=metrics,
                                 http=http):
        _monitor(locals(), run_monitor_cli, given=_given_flags(ctx))
        return
    score = score.value if score is not None else "label" if events else "softmax"
    if events and threshold is None:
        threshold = default_threshold(score)
    given = {"threshold": threshold, "hysteresis": hysteresis, "min_windows": min_windows}
    config = StreamConfig(window=window, hop=hop, smooth=smooth, events=events, min_dbfs=min_dbfs, top_k=top_k,
                          duration=duration, realtime=realtime, exact_windows=exact_windows,
                          **{name: value for name, value in given.items() if value is not None})
    source = _open_source(input, device, realtime)
    label_list = labels_from_options(labels, labels_file)
    classifier = score_classifier(load_classifier(checkpoint=checkpoint, onnx=onnx, labels=label_list,
                                                  template=template, threads=threads,
                                                  runtime=_value(runtime), precision=_value(precision)), score)
    config = fit_window(config, classifier, window_given=ctx.get_parameter_source("window").name != "DEFAULT")
    check_window(classifier, config)
    detector = event_detector(config, classifier.labels)

    stats = StreamStats()
    if format is Format.live:  # on stderr with the log lines, which then print above the display, not through it
        out = errors
        writer = LiveDisplay(out, stats, top_k=config.top_k, source=source.name, window=config.window)
    elif format is Format.jsonl:
        out = errors
        writer = JsonlWriter(sys.stdout)
    else:
        out = errors
        writer = CsvWriter(sys.stdout, list(classifier.labels), event_out=sys.stderr if events else None)

    try:
        stats, closing = run_stream(source=source, classifier=classifier, on_result=writer, config=config,
                                    events=detector, stats=stats)
        writer.events(closing)
    finally:
        writer.close()
    for line in [*summary_lines(stats, detector), score_line(score)]:
        out.print(line, highlight=False, soft_wrap=True)
    if signal.SIGINT in _stop_signals[:1]:  # Ctrl-C; SIGTERM is a clean stop
        raise typer.Exit(INTERRUPTED_EXIT)


# the options a monitor.toml describes as well (the others: what to print, and how long)
_MONITOR_OPTIONS = ("labels", "labels_file", "template", "checkpoint", "onnx", "input", "device", "window", "hop",
                    "smooth", "score", "threshold", "hysteresis", "min_windows", "min_dbfs", "realtime", "threads",
                    "db",
                    "clips", "mqtt", "metrics", "loop", "runtime", "precision")


def _given_flags(ctx: typer.Context) -> list[str]:
    """The monitor options given on the command line (click says which came from their defaults)."""
    return ["--" + name.replace("_", "-") for name in _MONITOR_OPTIONS
            if ctx.get_parameter_source(name).name != "DEFAULT"]


def _monitor(options: dict, run_monitor_cli, *, given: list[str]) -> None:
    """The monitor for ``--config`` or the one-source shortcuts; prints its summary at the end."""
    from ..monitor.output import summary_lines as monitor_summary

    o = options
    flags = {}
    if o["config_file"] is None:
        label_list = labels_from_options(o["labels"], o["labels_file"])
        flags = {k: o[k] for k in ("input", "device", "template", "onnx", "threads", "window", "hop", "smooth",
                                   "threshold", "hysteresis", "min_windows", "min_dbfs", "realtime", "loop", "db",
                                   "clips", "mqtt", "metrics")}  # None: the configuration's default
        flags["score"] = None if o["score"] is None else o["score"].value
        flags.update(labels=label_list, checkpoint=o["checkpoint"] or "full", runtime=_value(o["runtime"]),
                     precision=_value(o["precision"]))
        for name in ("db", "clips", "onnx"):
            flags[name] = None if flags[name] is None else str(flags[name])
    monitor = run_monitor_cli(config_path=o["config_file"], flags=flags, given=given,
                              format=o["format"].value, duration=o["duration"], top_k=o["top_k"],
                              http=o["http"], http_token=o["http_token"])
    for line in [*monitor_summary(monitor), score_line(monitor.config.defaults.score)]:
        errors.print(line, highlight=False, soft_wrap=True)
    if monitor.stop_signal == signal.SIGINT:  # Ctrl-C; SIGTERM is a service's clean stop
        raise typer.Exit(INTERRUPTED_EXIT)


def _calibrate(config_file: Path | None, *, alarms_per_hour: float, since: str | None, apply: bool) -> None:
    """``--calibrate``: the proposal as a table (stdout), then the TOML snippet, or the thresholds applied."""
    from ..monitor import calibrate as calibration
    from ..monitor.config import load_config

    if config_file is None:
        raise ParameterError("calibrate", "--calibrate reads a monitor's database and labels: pass --config "
                                          "monitor.toml")
    proposals, history = calibration.calibrate(load_config(config_file), alarms_per_hour=alarms_per_hour,
                                               since=since)
    typer.echo(f"{len(history.sources)} moments, {history.hours:.2f} source-hours; target {alarms_per_hour:g} "
               "false alarm(s) per hour (alarms on the history, assumed background but for events marked correct)")
    typer.echo(f"{'label':20} {'now':>6} {'alarms/h':>9} {'proposed':>9} {'alarms/h':>9}  reviewed")
    for p in proposals:
        reviewed = f"{p.correct} correct (keeps {p.kept}), {p.wrong} wrong" if p.correct or p.wrong else "none"
        typer.echo(f"{p.label:20} {p.current:6.3f} {p.current_alarms_per_hour:9.2f} {p.threshold:9.3f} "
                   f"{p.alarms_per_hour:9.2f}  {reviewed}{'; ' + p.note if p.note else ''}")
    if apply:
        calibration.apply(config_file, proposals)
        typer.echo(f"wrote {len(proposals)} thresholds into {config_file}; reload the monitor to use them "
                   "(SIGHUP: systemctl reload audioclip-stream)")
    else:
        typer.echo("\n" + calibration.snippet(proposals, alarms_per_hour=alarms_per_hour, hours=history.hours),
                   nl=False)


def _open_source(input: str | None, device: str | None, realtime: bool):
    """The source the options name: stdin (``-``), a file, or a microphone (``device`` or the default)."""
    if input is not None and device is not None:
        raise ParameterError("device", "{device} selects a microphone; it cannot be combined with {input}")
    if realtime and (input is None or input == "-"):
        raise ParameterError("realtime", "{realtime} paces a file given with {input} FILE")
    if input == "-":
        return StdinSource(sys.stdin.buffer)
    if input is not None:
        return FileSource(input, realtime=realtime)
    return MicrophoneSource(device)


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # `kill`, a service manager: stop like Ctrl-C, with a summary
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where a shell ignores it
        signal.signal(signal.SIGINT, _interrupt)
    app(prog_name="audioclip-stream")


if __name__ == "__main__":
    main()
