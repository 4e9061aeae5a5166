"""Annotated sound events of recordings, for the event-level evaluation (:mod:`.events`).

Two formats, told apart by their header:

- CSV (or tab-separated) with the columns ``file,onset,offset,label`` (DCASE's ``filename``,
  ``event_label`` are taken too), seconds from the recording's start. A row with a file and the other
  three fields empty lists a recording that holds none of the labels.
- Raven selection tables (tab-separated, ``Begin Time (s)`` and ``End Time (s)``), the format
  ``audioclip-label --format raven`` writes and Raven Pro saves. The label is the first of
  :data:`RAVEN_LABEL_COLUMNS` the table has; the recording is ``Begin Path``, else ``Begin File``, else
  the table's own name before its first dot (``dog_park.Table.1.selection.txt`` -> ``dog_park``). A
  selection listed once per view (Raven's waveform and spectrogram rows) counts once.

``PATH`` is one such file or a folder of them (``.csv``, ``.tsv``, ``.txt``, searched recursively).
Events of one label that overlap in one recording are merged into one (a detector's table of
overlapping windows reads as the events it marks). Every error names the file and line.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CSV_COLUMNS = {"file": ("file", "filename"), "onset": ("onset",), "offset": ("offset",),
               "label": ("label", "event_label")}
"""Each CSV column and the header names taken for it."""
RAVEN_LABEL_COLUMNS = ("Annotation", "Label", "Common Name", "Species", "Class")
"""Columns of a Raven table that may hold the label, in order of preference."""
ANNOTATION_SUFFIXES = (".csv", ".tsv", ".txt")


@dataclass(frozen=True)
class Annotation:
    """One annotated event: seconds from the start of ``file`` (as the table names it)."""

    file: str
    onset: float
    offset: float
    label: str
    where: str  # "table.csv line 7", for messages


@dataclass
class AnnotationSet:
    """What the tables hold: events and the recordings named without events, each with the folder their names are
    relative to (the table's)."""

    events: list[Annotation] = field(default_factory=list)
    empty: list[tuple[str, str]] = field(default_factory=list)  # (file, where) of recordings listed without events
    base: dict[str, Path] = field(default_factory=dict)  # where -> the table's folder


def read_annotations(path: str | os.PathLike) -> AnnotationSet:
    """The events of the table ``path``, or of every table in the folder ``path``."""
    path = Path(path)
    if path.is_dir():
        tables = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in ANNOTATION_SUFFIXES)
        if not tables:
            raise ValueError(f"{path}: no annotation tables in this folder (looked for "
                             f"{', '.join(ANNOTATION_SUFFIXES)})")
    elif path.is_file():
        tables = [path]
    else:
        raise ValueError(f"{path}: no such annotation file or folder")
    out = AnnotationSet()
    for table in tables:
        _read_table(table, out)
    return out


def _read_table(path: Path, out: AnnotationSet) -> None:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text table (unknown annotation format); expected CSV with "
                         f"file,onset,offset,label or a Raven selection table") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}: empty annotation table (expected a header line)")
    delimiter = "\t" if "\t" in lines[0] else ","
    rows = list(csv.reader(lines, delimiter=delimiter))
    header = [h.strip() for h in rows[0]]
    if "Begin Time (s)" in header and "End Time (s)" in header:
        _read_raven(path, header, rows[1:], out)
    elif all(any(name in header for name in names) for names in CSV_COLUMNS.values()):
        _read_csv(path, header, rows[1:], out)
    else:
        raise ValueError(f"{path}: unknown annotation format (header {', '.join(header)[:80]!r}); expected CSV with "
                         f"file,onset,offset,label or a Raven selection table with Begin Time (s), End Time (s)")


def _read_csv(path: Path, header: list[str], rows: list[list[str]], out: AnnotationSet) -> None:
    column = {key: next(header.index(n) for n in names if n in header) for key, names in CSV_COLUMNS.items()}
    for number, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path} line {number}"
        out.base[where] = path.parent
        cells = {key: (row[i].strip() if i < len(row) else "") for key, i in column.items()}
        if not cells["file"]:
            raise ValueError(f"{where}: no file named")
        if not (cells["onset"] or cells["offset"] or cells["label"]):
            out.empty.append((cells["file"], where))
            continue
        if not cells["label"]:
            raise ValueError(f"{where}: no label (leave onset, offset and label all empty for a recording "
                             f"without events)")
        onset, offset = _seconds(cells["onset"], "onset", where), _seconds(cells["offset"], "offset", where)
        out.events.append(_event(cells["file"], onset, offset, cells["label"], where))


def _read_raven(path: Path, header: list[str], rows: list[list[str]], out: AnnotationSet) -> None:
    label_column = next((c for c in RAVEN_LABEL_COLUMNS if c in header), None)
    if label_column is None:
        raise ValueError(f"{path}: a Raven table without a label column (looked for "
                         f"{', '.join(RAVEN_LABEL_COLUMNS)})")
    index = {name: i for i, name in enumerate(header)}
    file_column = next((c for c in ("Begin Path", "Begin File") if c in index), None)
    own_name = path.name.split(".")[0]
    seen: set[str] = set()
    listed = False
    for number, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path} line {number}"
        out.base[where] = path.parent

        def cell(name: str, row=row) -> str:
            i = index.get(name)
            return row[i].strip() if i is not None and i < len(row) else ""

        selection = cell("Selection")
        if selection and selection in seen:  # the same selection in another view
            continue
        seen.add(selection)
        file = cell(file_column) if file_column else ""
        label = cell(label_column)
        if not label:
            raise ValueError(f"{where}: no label in column {label_column!r}")
        onset, offset = _seconds(cell("Begin Time (s)"), "Begin Time (s)", where), \
            _seconds(cell("End Time (s)"), "End Time (s)", where)
        out.events.append(_event(file or own_name, onset, offset, label, where))
        listed = True
    if not listed and not file_column:  # an empty table of one recording: it holds none of the labels
        out.base[str(path)] = path.parent
        out.empty.append((own_name, str(path)))


def _seconds(text: str, name: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {name} must be a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{where}: {name} must be a finite number of seconds at least 0, got {text}")
    return value


def _event(file: str, onset: float, offset: float, label: str, where: str) -> Annotation:
    if not onset < offset:
        raise ValueError(f"{where}: onset {onset:g} s is not before offset {offset:g} s")
    return Annotation(file, onset, offset, label, where)


class RecordingIndex:
    """Finds the recording an annotation names: among ``recordings`` when given (by path, by path relative to one of
    the ``folders``, by file name, by name without its ending), else the file itself, relative to its table."""

    def __init__(self, recordings: list[Path] | None, folders: list[Path] = ()):
        self.recordings = recordings
        self._keys: dict[str, set[Path]] = {}
        for path in recordings or []:
            keys = {str(path.resolve()), path.name, path.stem}
            keys |= {path.resolve().relative_to(f.resolve()).as_posix() for f in folders
                     if path.resolve().is_relative_to(f.resolve())}
            for key in keys:
                self._keys.setdefault(key, set()).add(path)

    def find(self, name: str, base: Path, where: str) -> Path:
        candidate = Path(name) if Path(name).is_absolute() else base / name
        if self.recordings is None:
            if candidate.is_file():
                return candidate
            raise ValueError(f"{where}: recording {name!r} not found (looked for {candidate}); pass the recordings "
                             f"with --recordings")
        posix = Path(name).as_posix()
        for key in (str(candidate.resolve()), posix, Path(posix).name, Path(posix).stem):
            matches = self._keys.get(key, set())
            if len(matches) == 1:
                return next(iter(matches))
            if len(matches) > 1:
                raise ValueError(f"{where}: {name!r} could be any of {', '.join(sorted(map(str, matches)))}: "
                                 f"name the recording by its path")
        raise ValueError(f"{where}: {name!r} is not among the recordings given")


def events_by_recording(annotations: AnnotationSet, index: RecordingIndex, labels: list[str] | None = None
                        ) -> tuple[dict[Path, list[tuple[float, float, str]]], dict]:
    """``({recording: [(onset, offset, label), ...] sorted}, counts)``: every recording the tables or ``index``
    name, with its events of ``labels`` (None: every label), those of one label that overlap merged. ``counts``:
    ``events`` kept, ``merged`` away, ``ignored`` per label not in ``labels``."""
    by_file: dict[Path, list[tuple[float, float, str]]] = {path: [] for path in index.recordings or []}
    for name, where in annotations.empty:
        by_file.setdefault(index.find(name, annotations.base[where], where), [])
    ignored: dict[str, int] = {}
    for a in annotations.events:
        path = index.find(a.file, annotations.base[a.where], a.where)
        if labels is not None and a.label not in labels:
            ignored[a.label] = ignored.get(a.label, 0) + 1
            continue
        by_file.setdefault(path, []).append((a.onset, a.offset, a.label))
    merged = 0
    for path, events in by_file.items():
        kept: list[tuple[float, float, str]] = []
        for onset, offset, label in sorted(events, key=lambda e: (e[2], e[0], e[1])):
            if kept and kept[-1][2] == label and onset < kept[-1][1]:
                kept[-1] = (kept[-1][0], max(kept[-1][1], offset), label)
                merged += 1
            else:
                kept.append((onset, offset, label))
        by_file[path] = sorted(kept)
    if merged:
        log.info("%d annotated event(s) overlapped another of the same label in the same recording: merged", merged)
    if ignored:
        log.warning("annotations of labels not evaluated, ignored: %s",
                    ", ".join(f"{label} ({n})" for label, n in sorted(ignored.items())))
    counts = {"events": sum(map(len, by_file.values())), "merged": merged, "ignored": ignored}
    return dict(sorted(by_file.items(), key=lambda item: str(item[0]))), counts
