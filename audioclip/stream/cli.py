"""``audioclip-stream``: label sounds continuously from a microphone, a file or stdin."""

from __future__ import annotations

import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..cli_common import errors, labels_from_options, one_line_errors, setup_logging
from ..model.constants import SAMPLE_RATE
from .backends import load_classifier
from .engine import StreamStats
from .outputs import CsvWriter, JsonlWriter, LiveDisplay, summary_lines
from .postprocess import EventDetector
from .runner import run_stream, window_samples
from .sources import AudioDeviceError, FileSource, MicrophoneSource, StdinSource, list_input_devices

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Label sounds continuously with AudioCLIP: zero-shot text labels or a fine-tuned checkpoint's.")


class Format(str, Enum):
    live = "live"
    jsonl = "jsonl"
    csv = "csv"


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@app.command()
@one_line_errors(user_errors=(ValueError, OSError, AudioDeviceError))
def stream(
    labels: Optional[str] = typer.Option(None, "--labels", help='Comma-separated labels, e.g. "siren,dog bark".'),
    labels_file: Optional[Path] = typer.Option(None, "--labels-file", help="A file with one label per line."),
    template: Optional[str] = typer.Option(None, "--template", help='Text around each label, e.g. "the sound of {}".'),
    checkpoint: str = typer.Option("full", "--checkpoint", help="Release name (full, partial) or checkpoint path."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Run an audioclip-export directory on ONNX Runtime."),
    input: Optional[str] = typer.Option(None, "--input", "-i", help="Audio file, or - for raw s16le 44.1 kHz mono."),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Input device index or name."),
    list_devices: bool = typer.Option(False, "--list-devices", help="List input devices and exit."),
    window: float = typer.Option(5.0, "--window", help="Window length in seconds."),
    hop: float = typer.Option(0.5, "--hop", help="Seconds between window starts."),
    smooth: int = typer.Option(1, "--smooth", help="Average probabilities over the last N windows (1: off)."),
    threshold: Optional[float] = typer.Option(None, "--threshold",
                                              help="Event threshold on a label's prob (default 0.5)."),
    hysteresis: float = typer.Option(0.05, "--hysteresis", help="An event ends below threshold minus this."),
    top_k: int = typer.Option(5, "--top-k", help="Labels shown in the live display."),
    format: Format = typer.Option(Format.live, "--format", help="live display, or JSON lines / CSV on stdout."),
    events: bool = typer.Option(False, "--events", help="Report label events (start/end) against --threshold."),
    realtime: bool = typer.Option(False, "--realtime", help="Pace a file like a live source."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Stop after this many seconds of audio."),
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="Inference threads (default 2; 1 is steadier beside other busy work)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors on stderr."),
) -> None:
    """Classify overlapping windows of live or recorded audio against text labels."""
    setup_logging(verbose=not quiet)
    if list_devices:
        for d in list_input_devices():
            typer.echo(d.describe())
        return
    win_samples, _ = window_samples(window, hop)
    if smooth < 1:
        raise ValueError(f"--smooth must be at least 1, got {smooth}")
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    if threshold is not None and not events:
        raise ValueError("--threshold applies to --events; add --events")
    detector_args = (0.5 if threshold is None else threshold, hysteresis)
    if events:
        EventDetector(["check"], *detector_args)  # validate before the slow model load
    if onnx is not None and checkpoint != "full":
        raise ValueError("give --checkpoint or --onnx, not both")
    if input is not None and device is not None:
        raise ValueError("--device selects a microphone; it cannot be combined with --input")
    if realtime and (input is None or input == "-"):
        raise ValueError("--realtime paces a file given with --input FILE")
    label_list = labels_from_options(labels, labels_file)

    if input == "-":
        source = StdinSource(sys.stdin.buffer)
    elif input is not None:
        source = FileSource(input, realtime=realtime)
    else:
        source = MicrophoneSource(device)
    classifier = load_classifier(checkpoint=checkpoint, onnx=onnx, labels=label_list, template=template,
                                 threads=threads)
    fixed = getattr(classifier, "window_samples", None)  # an ONNX export for one window length
    if fixed is not None and fixed != win_samples:
        seconds = f"{fixed / SAMPLE_RATE:g}"
        raise ValueError(f"{onnx} takes windows of exactly {seconds} s: pass --window {seconds}, "
                         "or export with --dynamic-length")
    detector = EventDetector(list(classifier.labels), *detector_args) if events else None

    stats = StreamStats()
    if format is Format.live:
        out = Console()
        writer = LiveDisplay(out, stats, top_k=top_k, source=source.name)
    elif format is Format.jsonl:
        out = errors
        writer = JsonlWriter(sys.stdout)
    else:
        out = errors
        writer = CsvWriter(sys.stdout, list(classifier.labels), event_out=sys.stderr if events else None)

    try:
        stats, closing = run_stream(source=source, classifier=classifier, on_result=writer, window=window, hop=hop,
                                    smooth=smooth, events=detector, duration=duration, stats=stats)
        writer.events(closing)
    finally:
        writer.close()
    for line in summary_lines(stats):
        out.print(line, highlight=False, soft_wrap=True)


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # `kill`, a service manager: stop like Ctrl-C, with a summary
    app(prog_name="audioclip-stream")


if __name__ == "__main__":
    main()
