"""Streaming benchmark: a long file paced in real time through the stream, per backend and hop.

Reports dropped windows, mean / p95 latency from a window's last sample to its written result,
real-time factor and CPU use, idle and with a competing busy process on the machine. Example:

    python benchmarks/stream.py --checkpoint /work/shared/golden/checkpoint.pt \\
        --onnx /tmp/onnx_fp32 --onnx /tmp/onnx_int8 --hops 1.0 0.5 0.25 --seconds 20 --load idle busy

``--incremental`` instead measures, window after window of the same file and side by side, per
backend the compute of a whole window (PyTorch's ``encode_audio``, ``audio_encoder.onnx``) and of
the incremental path (the previous window's front end to layer2 columns reused: ``IncrementalEncoder``,
``OnnxIncrementalEncoder``), their ratio and the cores the incremental calls keep busy:

    python benchmarks/stream.py --checkpoint /work/shared/golden/checkpoint.pt --onnx /tmp/onnx_fp32 \\
        --incremental --hops 0.2544 0.50884 --seconds 20 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from rich.console import Console
from rich.table import Table

from audioclip.model.constants import SAMPLE_RATE, STRIDE_SAMPLES
from audioclip.stream import FileSource, StreamConfig, run_stream
from audioclip.stream.backends import default_threads, load_classifier
from audioclip.stream.outputs import JsonlWriter

SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
LABELS = ["cat", "thunder", "car horn", "alarm clock", "coughing", "dog"]
BUSY = "import numpy as np\na = np.random.rand(400, 400)\nwhile True:\n    a = np.tanh(a @ a.T / 400)\n"


def long_file(seconds: float, clips: Path, out: Path) -> Path:
    """The ESC-50 clips one after another, repeated to ``seconds``, as a 44.1 kHz mono wav."""
    parts = [sf.read(p, dtype="float32")[0] for p in sorted(clips.glob("*.wav"))]
    x = np.concatenate(parts)
    x = np.tile(x, int(np.ceil(seconds * SAMPLE_RATE / len(x))))[:int(seconds * SAMPLE_RATE)]
    sf.write(out, x, SAMPLE_RATE, subtype="PCM_16")
    return out


def measure(classifier, path: Path, hop: float, window: float) -> dict:
    sink = JsonlWriter(io.StringIO())  # format and write every result, as the CLI does
    cpu0, wall0 = time.process_time(), time.monotonic()
    stats, _ = run_stream(source=FileSource(path, realtime=True), classifier=classifier, on_result=sink,
                          config=StreamConfig(window=window, hop=hop))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return {"windows": stats.windows, "dropped": stats.dropped, "mean_ms": stats.mean_latency_ms,
            "p95_ms": stats.p95_latency_ms, "rtf": stats.rtf, "cpu_cores": cpu / wall}


class _Whole:
    """One backend for the side-by-side timing: its whole-window embedding and its incremental encoder."""

    def __init__(self, kind: str, source: str, threads: int):
        self.kind = kind
        if kind == "torch":
            import torch

            from audioclip.model import load_model

            torch.set_num_threads(threads)
            self.model = load_model(source)
            self.name = "PyTorch"
        else:
            from audioclip.export.incremental import IncrementalGraphs
            from audioclip.export.runtime import session

            self.session = session(Path(source) / "audio_encoder.onnx", threads=threads)
            self.graphs = IncrementalGraphs(source, threads=threads)
            meta = self.session.get_modelmeta().custom_metadata_map
            self.name = f"ONNX Runtime {meta.get('precision', 'fp32')}"

    def embed(self, window: np.ndarray) -> np.ndarray:
        if self.kind == "torch":
            import torch

            with torch.inference_mode():
                return self.model.encode_audio(window).numpy()
        return self.session.run(None, {"waveform": window[None]})[0]

    def encoder(self, window_samples: int):
        if self.kind == "torch":
            from audioclip.model.incremental import IncrementalEncoder

            return IncrementalEncoder(self.model, window_samples)
        from audioclip.export.incremental import OnnxIncrementalEncoder

        return OnnxIncrementalEncoder(self.graphs, window_samples)

    def encode(self, encoder, window: np.ndarray, start: int) -> np.ndarray:
        out = encoder.encode(window, start)
        return out.numpy() if self.kind == "torch" else out.embedding


def incremental(backend: _Whole, path: Path, hops: list[float], window: float, threads: int,
                repeat: int) -> list[dict]:
    """Per window: whole-window and incremental compute, timed one after the other on the same samples,
    each the fastest of ``repeat`` runs (the incremental one from the same state: on a shared machine the
    fastest run is the one least disturbed). ``cores``: CPU time over wall time of the incremental calls."""
    x = sf.read(path, dtype="float32")[0]
    win = int(round(window * SAMPLE_RATE))
    rows = []
    for hop in hops:
        hop_n = int(round(hop * SAMPLE_RATE))
        encoder = backend.encoder(win)
        whole, shared, worst, cpu, wall = [], [], 0.0, 0.0, 0.0
        backend.embed(x[:win])  # warm up
        for start in range(0, len(x) - win + 1, hop_n):
            w = x[start:start + win]
            times = []
            for _ in range(repeat):
                trial = copy.copy(encoder)  # encode() replaces its state, so the copy leaves encoder's
                t0 = time.perf_counter()
                expected = backend.embed(w)
                t1, c1 = time.perf_counter(), time.process_time()
                got = backend.encode(trial, w, start)
                t2 = time.perf_counter()
                cpu, wall = cpu + time.process_time() - c1, wall + t2 - t1
                times.append((t1 - t0, t2 - t1))
            encoder = trial
            whole.append(min(t[0] for t in times))
            shared.append(min(t[1] for t in times))
            if backend.kind == "torch":
                expected = expected / np.linalg.norm(expected, axis=-1, keepdims=True)
                got = got / np.linalg.norm(got, axis=-1, keepdims=True)
            worst = max(worst, float(np.abs(got - expected).max() / np.abs(expected).max()))
        whole, shared = whole[1:], shared[1:]  # the first window is a whole computation on both paths
        rows.append({"backend": backend.name, "hop": hop, "hop_samples": hop_n,
                     "aligned": hop_n % STRIDE_SAMPLES == 0, "threads": threads, "windows": len(whole),
                     "whole_ms": 1e3 * float(np.median(whole)), "incremental_ms": 1e3 * float(np.median(shared)),
                     "ratio": sum(shared) / sum(whole), "cores": cpu / wall,
                     "estimate": encoder.cost(hop_n // STRIDE_SAMPLES) if hop_n % STRIDE_SAMPLES == 0 else 1.0,
                     "max_rel_diff": worst})
    return rows


def incremental_table(rows: list[dict], seconds: float, window: float) -> Table:
    table = Table(title=f"{window:g}-s windows over a {seconds:g}-s file: compute per hop, incremental / whole, "
                        f"side by side ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end)")
    columns = ("backend", "hop s", "samples", "aligned", "threads", "windows", "whole ms", "incremental ms", "ratio",
               "arithmetic", "cores", "max rel diff")
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["backend"], f"{r['hop']:g}", str(r["hop_samples"]), "yes" if r["aligned"] else "no",
                      str(r["threads"]), str(r["windows"]), f"{r['whole_ms']:.0f}", f"{r['incremental_ms']:.0f}",
                      f"{r['ratio']:.2f}", f"{r['estimate']:.2f}", f"{r['cores']:.2f}", f"{r['max_rel_diff']:.1e}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="PyTorch backend: release name or checkpoint path")
    parser.add_argument("--onnx", action="append", default=[], help="ONNX backend: an audioclip-export folder")
    parser.add_argument("--hops", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the streamed file")
    parser.add_argument("--threads", type=int, nargs="+", default=[None],
                        help="inference threads to try (default: the stream's default per backend)")
    parser.add_argument("--load", nargs="+", choices=["idle", "busy"], default=["idle", "busy"],
                        help="busy: a competing process keeps one core busy during the run")
    parser.add_argument("--clips", type=Path, default=SHARED_AUDIO)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--incremental", action="store_true",
                        help="the incremental path's compute per hop against whole windows, per backend")
    parser.add_argument("--repeat", type=int, default=3, help="--incremental: runs per window, the fastest counts")
    args = parser.parse_args()
    if args.incremental:
        if not args.checkpoint and not args.onnx:
            parser.error("--incremental needs --checkpoint and/or --onnx")
        threads = args.threads[0] or default_threads()
        backends = ([("torch", args.checkpoint)] if args.checkpoint else []) + [("onnx", d) for d in args.onnx]
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            path = long_file(args.seconds, args.clips, Path(tmp) / "long.wav")
            for kind, source in backends:
                rows += incremental(_Whole(kind, source, threads), path, args.hops, args.window, threads, args.repeat)
        Console(width=160).print(incremental_table(rows, args.seconds, args.window))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return
    backends = ([("torch", args.checkpoint)] if args.checkpoint else []) + [("onnx", d) for d in args.onnx]
    if not backends:
        parser.error("give --checkpoint and/or --onnx")
    console = Console(stderr=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = long_file(args.seconds, args.clips, Path(tmp) / "long.wav")
        for kind, source in backends:
            for threads in args.threads:
                if kind == "torch":
                    classifier = load_classifier(checkpoint=source, labels=LABELS, threads=threads)
                else:
                    classifier = load_classifier(onnx=source, threads=threads)
                name = f"{kind} {getattr(classifier, 'precision', 'fp32')}"
                threads = threads or default_threads()
                classifier.scores(np.zeros((1, int(args.window * SAMPLE_RATE)), np.float32))  # warm up
                for load in args.load:
                    busy = None
                    if load == "busy":
                        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                               "MKL_NUM_THREADS": "1"}
                        busy = subprocess.Popen([sys.executable, "-c", BUSY], env=env)
                        time.sleep(1.0)
                    try:
                        for hop in args.hops:
                            row = {"backend": name, "threads": threads, "load": load, "hop": hop,
                                   **measure(classifier, path, hop, args.window)}
                            rows.append(row)
                            console.print(json.dumps(row))
                    finally:
                        if busy is not None:
                            busy.kill()
                            busy.wait()
    table = Table(title=f"{args.seconds:g} s file paced in real time, window {args.window:g} s "
                        f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end)")
    columns = ("backend", "threads", "load", "hop s", "windows", "dropped", "mean ms", "p95 ms", "RTF", "CPU cores")
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["backend"], str(r["threads"]), r["load"], f"{r['hop']:g}", str(r["windows"]), str(r["dropped"]),
                      f"{r['mean_ms']:.0f}", f"{r['p95_ms']:.0f}", f"{r['rtf']:.3f}", f"{r['cpu_cores']:.2f}")
    Console(width=140).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
