"""``audioclip-export``: command-line front end of :func:`audioclip.export.exporter.export_onnx`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from ..cli_common import Command, Group, labels_from_options, one_line_errors, setup_logging, version_option

app = typer.Typer(add_completion=False, no_args_is_help=True, cls=Group,
                  help="Export AudioCLIP to ONNX graphs that run without PyTorch (ONNX Runtime, TensorRT).")
console = Console(stderr=True, soft_wrap=True)


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


def _print_checks(checks) -> None:
    from .report import format_checks

    typer.echo("verification against PyTorch (ONNX Runtime; CPU unless a provider or OpenVINO is named):", err=True)
    for line in format_checks(checks):
        typer.echo("  " + line, err=True)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", hidden=True, help="log progress (the default)"),
          version: bool = version_option("audioclip-export")) -> None:
    pass


@app.command(cls=Command)
@one_line_errors()
def onnx(
    checkpoint: str = typer.Option(..., "--checkpoint", "-c", help="release name (full, partial) or checkpoint file"),
    out: Path = typer.Option(..., "--out", "-o", help="folder to write (built aside, renamed when verified)"),
    labels: str | None = typer.Option(None, help='comma-separated labels, e.g. "siren,dog bark"'),
    labels_file: Path | None = typer.Option(None, help="file with one label per line"),
    template: str | None = typer.Option(None, help='prompt template with "{}" for the label (default "{}")'),
    window: float = typer.Option(5.0, help="seconds of audio the graphs take (fixed unless --dynamic-length)"),
    dynamic_length: bool = typer.Option(False, "--dynamic-length", help="any number of samples >= one frame"),
    precision: Precision = typer.Option(Precision.fp32, help="fp32, fp16 (trunk) or int8 (static, calibrated)"),
    opset: int = typer.Option(18, help="ONNX opset (18 to 23)"),
    clips: list[Path] | None = typer.Option(None, help="audio files or folders to verify with (and calibrate int8)"),
    int8_blocks: int | None = typer.Option(None, "--int8-blocks",
                                           help="int8: quantise the last N residual blocks instead of searching "
                                                "for the most that keep the bound (still verified)"),
    openvino: bool = typer.Option(True, "--openvino/--no-openvino",
                                  help="verify on OpenVINO too (f32; bf16 where the CPU has it) and record what "
                                       "passed, which --runtime openvino requires"),
    threads: int = typer.Option(2, min=1, help="ONNX Runtime threads for the checks"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty --out folder"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress lines, only warnings and errors"),
) -> None:
    """Write audio_encoder.onnx, classifier.onnx, audio_weights.bin (their common weights), text_encoder.onnx,
    labels.json, trtexec.txt, README.txt."""
    setup_logging(verbose=not quiet)
    label_list = labels_from_options(labels, labels_file)
    from .exporter import ExportError, export_onnx  # torch loads here, not for --help

    try:
        with console.status("exporting and verifying (a minute or two for the full model)"):
            result = export_onnx(checkpoint=checkpoint, out=out, labels=label_list, template=template, window=window,
                                 dynamic_length=dynamic_length, precision=precision.value, opset=opset,
                                 force=force, clips=clips, threads=threads, int8_blocks=int8_blocks,
                                 openvino=openvino)
    except ExportError as e:  # a failed check: show the table, then the one-line error
        if e.checks:
            _print_checks(e.checks)
        raise
    _print_checks(result.checks + result.openvino_checks)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    typer.echo(f"wrote {result.out}: {', '.join(result.files)}")


def main() -> None:
    app(prog_name="audioclip-export")
