"""Streaming benchmark: a long file paced in real time through the stream, per backend and hop.

Reports dropped windows, mean / p95 latency from a window's last sample to its written result,
real-time factor and CPU use, idle and with a competing busy process on the machine. Example:

    python benchmarks/stream.py --checkpoint /work/shared/golden/checkpoint.pt \\
        --onnx /tmp/onnx_fp32 --onnx /tmp/onnx_int8 --hops 1.0 0.5 0.25 --seconds 20 --load idle busy
"""

from __future__ import annotations

import argparse
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

from audioclip.model.constants import SAMPLE_RATE
from audioclip.stream import FileSource, run_stream
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
                          window=window, hop=hop)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return {"windows": stats.windows, "dropped": stats.dropped, "mean_ms": stats.mean_latency_ms,
            "p95_ms": stats.p95_latency_ms, "rtf": stats.rtf, "cpu_cores": cpu / wall}


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
    args = parser.parse_args()
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
