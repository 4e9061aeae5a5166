"""``audioclip-label``: label folders of recordings; ``audioclip-search``: find moments in the result."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import replace
from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..cli_common import Command, errors, labels_from_options, one_line_errors, setup_logging
from ..model.labels import ParameterError

label_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                        help="Label folders of recordings with AudioCLIP: any words, Parquet/CSV/Raven outputs.")
search_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                         help="Find the windows of a labelled archive, or the events of the monitor's database, "
                              "that best match a text, a sound or an image.")


LOCAL_RAY = ""  # --ray without an address: RAY_ADDRESS, else a local Ray


class OptionalRayAddress(Command):
    """``--ray [ADDRESS]``: click has no option whose value may be left out, so a bare ``--ray`` (the
    last argument, or one followed by another option) is given the empty address before parsing.
    ``--ray ADDRESS`` and ``--ray=ADDRESS`` name the cluster."""

    def parse_args(self, ctx, args):
        args = list(args)
        for i in reversed(range(len(args))):
            if args[i] == "--ray" and (i + 1 == len(args) or args[i + 1].startswith("-")):
                args.insert(i + 1, LOCAL_RAY)
        return super().parse_args(ctx, args)


def default_workers() -> int:
    """Worker processes of the local pool: one per two cores (each runs two intra-op threads).

    On the 2-core development machine 1 worker x 2 threads labelled faster than 2 workers x 1
    thread, on both backends (figures in docs/archive.md).
    """
    return max(1, (os.cpu_count() or 1) // 2)


@label_app.command(cls=OptionalRayAddress)
@one_line_errors(user_errors=(ValueError, OSError), flags={"formats": "--format"})
def label(
    paths: list[Path] = typer.Argument(..., help="Audio or video files and folders (walked recursively)."),
    labels: str | None = typer.Option(None, "--labels", help='Comma-separated labels, e.g. "siren,dog bark".'),
    labels_file: Path | None = typer.Option(None, "--labels-file", help="A file with one label per line."),
    config: Path | None = typer.Option(None, "--config", help="Labels (prompt groups) and model of a monitor.toml."),
    template: str | None = typer.Option(None, "--template", help='Text around each label, e.g. "the sound of {}".'),
    checkpoint: str | None = typer.Option(None, "--checkpoint", help="Release name or checkpoint path (default full)."),
    onnx: Path | None = typer.Option(None, "--onnx", help="Run an audioclip-export directory on ONNX Runtime."),
    runtime: str | None = typer.Option(None, "--runtime", help="What runs --onnx: onnxruntime (default) or openvino."),
    precision: str | None = typer.Option(None, "--precision",
                                         help="fp32 (default) or bf16: OpenVINO at a precision the export verified, "
                                              "or PyTorch through autocast (checked at load)."),
    window: float = typer.Option(5.0, "--window", help="Window length in seconds."),
    hop: float = typer.Option(5.0, "--hop", help="Seconds between window starts."),
    out: Path = typer.Option(Path("labels"), "--out", "-o", help="Output folder."),
    events: bool = typer.Option(False, "--events", help="Write label events (the stream's hysteresis)."),
    score: str | None = typer.Option(None, "--score",
                                     help="label: each label scored on its own (docs/scores.md); softmax: over the "
                                          "labels given (default: label with --events, else softmax)."),
    threshold: float | None = typer.Option(None, "--threshold",
                                           help="Score of an event and of a Raven selection (default: the score's, "
                                                "docs/scores.md)."),
    embeddings: bool = typer.Option(False, "--embeddings", help="Keep window embeddings (float16) for search."),
    format: str = typer.Option("parquet,csv", "--format", help="Comma-separated: parquet, csv, raven."),
    workers: int | None = typer.Option(None, "--workers", help="Worker processes (default: one per two cores)."),
    threads: int | None = typer.Option(None, "--threads",
                                       help="Intra-op threads per worker (default: the cores / --workers, at most 2)."),
    resume: bool = typer.Option(False, "--resume", help="Skip recordings an earlier run in --out finished."),
    ray: str | None = typer.Option(None, "--ray", metavar="[ADDRESS]",
                                   help="Run on Ray Data, --workers actors: on the cluster at ADDRESS, else "
                                        "RAY_ADDRESS, else a local Ray (after the paths, or --ray=ADDRESS)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar; only warnings and errors."),
) -> None:
    """Label every window of every recording under PATHS into --out."""
    setup_logging(verbose=False)
    from ..stream.scoring import check_score, default_threshold
    from .decode import find_recordings
    from .runner import LabelSettings, label_archive

    score = check_score(score if score is not None else "label" if events else "softmax")
    threshold = default_threshold(score) if threshold is None else threshold
    spec = replace(_spec(labels, labels_file, config, template, checkpoint, onnx, threads), score=score)
    spec = replace(spec, **{k: v for k, v in (("runtime", runtime), ("precision", precision)) if v is not None})
    from ..stream.backends import check_backend

    check_backend(onnx=spec.onnx, runtime=spec.runtime, precision=spec.precision)  # before any worker starts
    settings = LabelSettings(window=window, hop=hop, events=events, threshold=threshold, embeddings=embeddings,
                             formats=tuple(f.strip() for f in format.split(",") if f.strip()))
    recordings = find_recordings(paths)
    workers = default_workers() if workers is None else workers
    if spec.threads is None:  # the cores shared among the workers, at most 2 threads each
        spec = replace(spec, threads=max(1, min(2, (os.cpu_count() or 1) // max(workers, 1))))
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[hours]}"), TimeElapsedColumn(), console=errors, disable=quiet)
    with bar:
        task = bar.add_task("recordings", total=len(recordings), hours="")

        def on_progress(p) -> None:
            bar.update(task, completed=p.files_done,
                       hours=f"{p.audio_seconds / 3600:.2f} h audio, {p.hours_per_hour:.0f} h/h, {p.failed} failed")

        report = label_archive(recordings, out=out, spec=spec, settings=settings, workers=workers, resume=resume,
                               ray=ray is not None, ray_address=ray or None, on_progress=on_progress)
    errors.print(f"{report.labelled} labelled, {report.skipped} already done, {len(report.errors)} failed; "
                 f"{report.windows} windows, {report.audio_seconds / 3600:.3f} h of audio in "
                 f"{report.wall_seconds:.1f} s -> {escape(str(out))}", highlight=False, soft_wrap=True)
    if report.errors:
        errors.print(f"failed recordings and reasons: {escape(str(out / 'errors.csv'))}", highlight=False)


def _spec(labels, labels_file, config, template, checkpoint, onnx, threads):
    from .job import ModelSpec

    if onnx is not None and checkpoint is not None:
        raise ParameterError("onnx", "give --checkpoint or --onnx, not both")
    if config is not None:
        if labels is not None or labels_file is not None or checkpoint is not None or onnx is not None:
            raise ValueError("--config supplies the labels and the model: leave out --labels, --labels-file, "
                             "--checkpoint and --onnx")
        from ..monitor.config import load_config

        c = load_config(config)
        return ModelSpec(groups=tuple((label.name, tuple(label.prompts)) for label in c.labels),
                         template=template if template is not None else c.defaults.template,
                         checkpoint=c.model.checkpoint, onnx=c.model.onnx, runtime=c.model.runtime,
                         precision=c.model.precision,
                         threads=threads if threads is not None else c.model.threads)
    label_list = labels_from_options(labels, labels_file)
    return ModelSpec.from_labels(label_list, template=template, checkpoint=checkpoint or "full",
                                 onnx=None if onnx is None else str(onnx), threads=threads)


class SearchFormat(str, Enum):
    table = "table"
    jsonl = "jsonl"


@search_app.command()
@one_line_errors(user_errors=(ValueError, OSError))
def search(
    index: Path | None = typer.Argument(None, help="An audioclip-label --out folder written with --embeddings, or "
                                                   "the monitor's [store] db (an SQLite file)."),
    db: Path | None = typer.Option(None, "--db", help="The monitor's [store] db (the same as giving it as INDEX)."),
    text: str | None = typer.Option(None, "--text", help='A description, e.g. "dog barking".'),
    audio: Path | None = typer.Option(None, "--audio", help="A sound like the ones to find."),
    image: Path | None = typer.Option(None, "--image", help="A picture of the sound's source (image tower)."),
    k: int = typer.Option(10, "--k", help="How many windows (events and moments) to show."),
    checkpoint: str | None = typer.Option(None, "--checkpoint",
                                          help="The model that embeds the query (default: the index's)."),
    format: SearchFormat = typer.Option(SearchFormat.table, "--format", help="A table, or JSON lines on stdout."),
    exact: bool = typer.Option(False, "--exact", help="Compare with every window, even where a vector index would."),
    source: str | None = typer.Option(None, "--source", help="A monitor's database: only this source's."),
    since: str | None = typer.Option(None, "--since", help="A monitor's database: only from this UTC time on "
                                                             "(ISO 8601, e.g. 2026-12-01T08:00:00Z)."),
) -> None:
    """Print the windows of INDEX (the events and moments of a monitor's database, INDEX or --db) closest to a
    text, audio or image query."""
    setup_logging(verbose=False)
    logging.getLogger("audioclip.search.vindex").setLevel(logging.INFO)  # building an index takes a while: say so
    from ..monitor.index import MonitorIndex
    from ..search.query import QueryEncoder
    from .search import ArchiveIndex, is_sqlite

    if sum(q is not None for q in (text, audio, image)) != 1:
        raise ValueError("give exactly one query: --text, --audio or --image")
    if (index is None) == (db is None):
        raise ValueError("give what to search: an audioclip-label folder or the monitor's database as INDEX, or "
                         "the database as --db")
    if db is not None:
        if not is_sqlite(db):
            raise ValueError(f"--db {db}: {'not an SQLite database' if db.exists() else 'no such file'}; give the "
                             "monitor's [store] db")
        index = db
    monitor = is_sqlite(index)
    if not monitor and (source is not None or since is not None):
        raise ValueError("--source and --since filter a monitor's database; an audioclip-label folder has neither")
    archive = MonitorIndex.open(index, vectors=False) if monitor else ArchiveIndex.open(index)  # one query: exact
    encoder = QueryEncoder(archive.model_for(checkpoint))
    if text is not None:
        query = encoder.text(text)
    elif audio is not None:
        query = encoder.audio(audio, window=archive.window)
    else:
        query = encoder.image(image)
    filters = {"source": source, "since": since} if monitor else {}
    hits = archive.search(query, k=k, exact=exact, **filters)
    if format is SearchFormat.jsonl:
        for hit in hits:
            sys.stdout.write(json.dumps(hit.to_json()) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    if isinstance(archive, MonitorIndex):
        table = Table("score", "kind", "source", "label", "utc", "stream s", "clip (from)")
        for hit in hits:
            clip = "" if hit.clip is None else f"{escape(hit.clip)} ({hit.clip_offset_s:.2f} s)"
            table.add_row(f"{hit.score:.4f}", hit.kind, escape(hit.source), escape(hit.label or ""), hit.utc,
                          f"{hit.t_start:.2f}-{'' if hit.t_end is None else f'{hit.t_end:.2f}'}", clip)
    else:
        table = Table("score", "file", "t_start", "t_end")
        for hit in hits:
            table.add_row(f"{hit.score:.4f}", escape(hit.file), f"{hit.t_start:.2f}", f"{hit.t_end:.2f}")
    Console().print(table)


def label_main() -> None:
    label_app(prog_name="audioclip-label")


def search_main() -> None:
    search_app(prog_name="audioclip-search")
