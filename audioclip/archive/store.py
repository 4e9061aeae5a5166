"""The output folder of a labelling run: per-recording parts, the manifest, and the merged outputs.

Layout under ``--out``::

    archive.json            the run's settings (labels, model, window, hop, ...); --resume checks them
    manifest.jsonl          one line per finished recording (path, size, mtime, part key, seconds)
    parts/KEY.parquet       a recording's windows (and embeddings), written atomically
    parts/KEY.events.parquet
    windows.parquet         merged: file, t_start, t_end, top, one column per label
    embeddings.npy          float16 [windows, D], rows in windows.parquet's order (--embeddings)
    events.parquet, events.csv   file, label, t_start, t_end, peak, mean (--events)
    raven/NAME.AudioCLIP.selection.table.txt   per recording (--format raven)
    errors.csv              file, error: recordings that could not be labelled

A part is on disk (renamed into place) before its manifest line is written, and a manifest line
is one ``write`` + ``fsync``: a run killed at any moment leaves finished parts, at most one torn
last line (ignored), and temporary files (ignored). Merged outputs are rebuilt from the parts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..files import atomic_write, atomic_write_text
from ..model.constants import SAMPLE_RATE
from .job import RecordingResult

log = logging.getLogger(__name__)

RESERVED_COLUMNS = ("file", "t_start", "t_end", "top")
EVENT_COLUMNS = ("file", "label", "t_start", "t_end", "peak", "mean")
RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
                 "Common Name", "Species Code", "Confidence", "Begin Path", "File Offset (s)")
"""BirdNET-Analyzer's Raven selection table columns, in its order."""
RAVEN_SUFFIX = ".AudioCLIP.selection.table.txt"


def part_key(path: str | os.PathLike) -> str:
    return hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:20]


def identity(path: Path) -> dict:
    stat = path.stat()
    return {"file": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class ArchiveStore:
    """The output folder ``root``; see the module's docstring for its layout."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.parts = self.root / "parts"
        self.manifest = self.root / "manifest.jsonl"
        self.settings_file = self.root / "archive.json"

    # settings -------------------------------------------------------------------------------
    def check_target(self, *, resume: bool) -> None:
        """``ValueError`` when ``root`` holds a run and ``resume`` is off, or holds other files (cheap:
        call it before loading a model)."""
        if self.settings_file.exists():
            if not resume:
                raise ValueError(f"{self.root} already holds a labelling run: pass --resume to continue it, "
                                 "or choose another --out")
        elif self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise ValueError(f"{self.root} is not an empty folder and holds no labelling run: choose an empty "
                             "or new --out")

    def open(self, settings: dict, *, resume: bool) -> None:
        """Create the folder for a new run, or check that ``settings`` match the run being resumed."""
        self.check_target(resume=resume)
        if self.settings_file.exists():
            old = self.settings()
            changed = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
            if changed:
                k = changed[0]
                raise ValueError(f"--resume: {self.root} was labelled with {k} = {old.get(k)!r}, not "
                                 f"{settings.get(k)!r}; run again with the same settings or another --out")
        if not self.settings_file.exists():  # first: a folder with anything in it says what run it holds
            atomic_write_text(self.settings_file, json.dumps(settings, indent=1, sort_keys=True) + "\n")
        self.parts.mkdir(exist_ok=True)

    def settings(self) -> dict:
        try:
            return json.loads(self.settings_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.settings_file}: not a labelling run's settings ({e}); pass an --out "
                             "folder written by audioclip-label") from e

    # the manifest ---------------------------------------------------------------------------
    def finished(self) -> dict[str, dict]:
        """Manifest entries whose recording is unchanged and whose parts read back, by file."""
        import pyarrow.parquet as pq

        done = {}
        if not self.manifest.exists():
            return done
        for line in self.manifest.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill
            path = Path(entry["file"])
            try:
                if identity(path) != {k: entry[k] for k in ("file", "size", "mtime_ns")}:
                    continue
                for part in self.part_files(entry["key"], entry.get("events", False)):
                    pq.read_metadata(part)
            except (OSError, ValueError, KeyError) as e:
                log.warning("%s: its finished output is missing or unreadable (%s); labelling it again", path, e)
                continue
            done[entry["file"]] = entry
        return done

    def part_files(self, key: str, events: bool) -> list[Path]:
        files = [self.parts / f"{key}.parquet"]
        return files + [self.parts / f"{key}.events.parquet"] if events else files

    def record(self, entry: dict) -> None:
        """Append one finished recording to the manifest, durably."""
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(self.manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    # per-recording parts --------------------------------------------------------------------
    def write_parts(self, path: Path, result: RecordingResult, *, events: bool) -> dict:
        """Write a recording's parts (atomically each) and return its manifest entry."""
        import pyarrow as pa

        key = part_key(path)
        columns = {"file": pa.array([str(path)] * len(result.t_start), pa.string()),
                   "t_start": pa.array(result.t_start, pa.float64()), "t_end": pa.array(result.t_end, pa.float64()),
                   "top": pa.array(result.top, pa.string())}
        for i, label in enumerate(result.labels):
            columns[label] = pa.array(result.probs[:, i], pa.float64())
        if result.embeddings is not None:
            flat = pa.array(result.embeddings.reshape(-1), pa.float16())
            columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, result.embeddings.shape[1])
        if events:
            rows = list(zip(*result.events)) if result.events else [[]] * 5
            table = pa.table({"file": pa.array([str(path)] * len(result.events), pa.string()),
                              "label": pa.array(rows[0], pa.string()), "t_start": pa.array(rows[1], pa.float64()),
                              "t_end": pa.array(rows[2], pa.float64()), "peak": pa.array(rows[3], pa.float64()),
                              "mean": pa.array(rows[4], pa.float64())})
            _write_parquet(self.parts / f"{key}.events.parquet", table)
        _write_parquet(self.parts / f"{key}.parquet", pa.table(columns))  # last: the part that says "done"
        return {**identity(path), "key": key, "events": events, "windows": len(result.t_start),
                "seconds": round(result.seconds, 6), "decoder": result.decoder}

    # merged outputs -------------------------------------------------------------------------
    def merge(self, entries: Iterable[dict], *, labels: list[str], events: bool, embeddings: bool,
              raven: bool, csv_out: bool, threshold: float) -> int:
        """Rebuild the merged outputs from the parts of ``entries`` (in file order); return the window count."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        entries = sorted(entries, key=lambda e: e["file"])
        schema = pa.schema([("file", pa.string()), ("t_start", pa.float64()), ("t_end", pa.float64()),
                            ("top", pa.string())] + [(label, pa.float64()) for label in labels])
        total = sum(e["windows"] for e in entries)
        tmp = self.root / ".windows.parquet.tmp"
        emb_tmp = self.root / ".embeddings.npy.tmp"
        emb, row, event_tables, raven_names = None, 0, [], set()
        with pq.ParquetWriter(tmp, schema) as writer:
            for entry in entries:
                table = pq.read_table(self.parts / f"{entry['key']}.parquet")
                writer.write_table(table.select(schema.names).cast(schema))
                if embeddings:
                    vectors = _vectors(table)
                    if emb is None:
                        emb = np.lib.format.open_memmap(emb_tmp, mode="w+", dtype=np.float16,
                                                        shape=(total, vectors.shape[1]))
                    emb[row:row + len(vectors)] = vectors
                row += table.num_rows
                if events:
                    event_tables.append(pq.read_table(self.parts / f"{entry['key']}.events.parquet"))
                if raven:
                    self._write_raven(entry["file"], table, labels, threshold, raven_names)
        os.replace(tmp, self.root / "windows.parquet")
        if embeddings and emb is not None:
            emb.flush()
            del emb
            os.replace(emb_tmp, self.root / "embeddings.npy")
        if events:
            merged = pa.concat_tables(event_tables) if event_tables else _empty_events()
            _write_parquet(self.root / "events.parquet", merged)
            if csv_out:
                self._write_events_csv(merged)
        return row

    def _write_events_csv(self, table) -> None:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(EVENT_COLUMNS)
        for r in table.to_pylist():
            writer.writerow([r["file"], r["label"], f"{r['t_start']:.6f}", f"{r['t_end']:.6f}",
                             f"{r['peak']:.6f}", f"{r['mean']:.6f}"])
        atomic_write_text(self.root / "events.csv", out.getvalue())

    def _write_raven(self, file: str, table, labels: list[str], threshold: float, taken: set) -> None:
        """BirdNET-Analyzer's layout: one selection per window and label at or above ``threshold``."""
        name = Path(file).stem
        while name in taken:
            name += "_"
        taken.add(name)
        lines = ["\t".join(RAVEN_COLUMNS)]
        starts, ends = table.column("t_start").to_pylist(), table.column("t_end").to_pylist()
        probs = np.stack([table.column(label).to_numpy() for label in labels], axis=1) if len(starts) else []
        begin_path = str(Path(file).resolve())
        selection = 0
        for i, (t0, t1) in enumerate(zip(starts, ends)):
            for j in np.argsort(-probs[i], kind="stable"):
                if probs[i, j] >= threshold:
                    selection += 1
                    lines.append("\t".join([str(selection), "Spectrogram 1", "1", f"{t0:.4f}", f"{t1:.4f}", "0",
                                            str(SAMPLE_RATE // 2), labels[j], labels[j], f"{probs[i, j]:.4f}",
                                            begin_path, f"{t0:.4f}"]))
        atomic_write_text(self.root / "raven" / f"{name}{RAVEN_SUFFIX}", "\n".join(lines) + "\n")

    def write_errors(self, errors: list[tuple[str, str]]) -> None:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(("file", "error"))
        writer.writerows(sorted(errors))
        atomic_write_text(self.root / "errors.csv", out.getvalue())


def _vectors(table) -> np.ndarray:
    column = table.column("embedding").combine_chunks()
    return column.values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


def _empty_events():
    import pyarrow as pa

    return pa.table({"file": pa.array([], pa.string()), "label": pa.array([], pa.string()),
                     "t_start": pa.array([], pa.float64()), "t_end": pa.array([], pa.float64()),
                     "peak": pa.array([], pa.float64()), "mean": pa.array([], pa.float64())})


def _write_parquet(path: Path, table) -> None:
    import pyarrow.parquet as pq

    atomic_write(path, lambda f: pq.write_table(table, f))
