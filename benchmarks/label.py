"""Archive benchmark: audioclip-label's throughput against the encoder alone, pool shapes, and search latency.

In one run, per backend and pool shape: windows per second of the classifier alone (batch 1, the
windows already in memory, timed just before and just after the labelling run), then of
``label_archive`` over generated recordings (FLAC at 48 kHz stereo and WAV at 44.1 kHz, so decoding
and resampling are in the path), the ratio of the two, and the share of the labelling time the
encoders were busy (measured inside the run, so immune to drifting load). Then the latency of an
exact search over N synthetic float16 embeddings. Example:

    python benchmarks/label.py --checkpoint ../shared/golden/checkpoint.pt --onnx /tmp/golden_export \\
        --files 4 --seconds 60 --pools 1x2 2x1 --search-rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from rich.console import Console
from rich.table import Table

from audioclip.archive import LabelSettings, ModelSpec, find_recordings, label_archive
from audioclip.model.constants import SAMPLE_RATE
from audioclip.search.exact import top_k

SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
LABELS = ["cat", "thunder", "car horn", "alarm clock", "coughing", "dog"]


def make_recordings(folder: Path, files: int, seconds: float) -> Path:
    """``files`` recordings of ``seconds`` each from the ESC-50 clips: odd ones FLAC 48 kHz stereo."""
    import soxr

    clips = np.concatenate([sf.read(p, dtype="float32")[0] for p in sorted(SHARED_AUDIO.glob("*.wav"))])
    n = int(seconds * SAMPLE_RATE)
    x = np.tile(clips, int(np.ceil(n / len(clips))))[:n]
    for i in range(files):
        y = np.roll(x, i * SAMPLE_RATE)
        if i % 2:
            y48 = soxr.resample(y, SAMPLE_RATE, 48000)
            sf.write(folder / f"rec{i}.flac", np.stack([y48, y48 * 0.5], axis=1), 48000)
        else:
            sf.write(folder / f"rec{i}.wav", y, SAMPLE_RATE, subtype="PCM_16")
    return folder


def encoder_alone(spec: ModelSpec, windows: int) -> float:
    """Windows per second of ``spec``'s classifier on batch-1 windows already in memory."""
    classifier = spec.load()
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 5 * SAMPLE_RATE)).astype(np.float32)
    elapsed = []

    def run() -> None:
        classifier.scores(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(windows):
            classifier.scores(x)
        elapsed.append(time.perf_counter() - t0)

    # on a thread of its own, as the stream's inference runs: on this loaded 2-core machine PyTorch
    # ran 3-4x slower on the main thread than on another one (docs/archive.md)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return windows / elapsed[0]


def label_rate(spec: ModelSpec, folder: Path, workers: int, ray: bool = False) -> dict:
    """Windows per second and hours of audio per hour of ``label_archive`` over ``folder`` (model
    loading excluded), and the share of that time the workers' encoders were busy."""
    with tempfile.TemporaryDirectory() as out:
        report = label_archive(find_recordings([folder]), out=Path(out) / "out", spec=spec,
                               settings=LabelSettings(window=5.0, hop=5.0), workers=workers, ray=ray)
    wall = report.labelling_seconds
    return {"label_windows_s": report.windows / wall, "hours_per_hour": report.audio_seconds / wall,
            "busy": report.busy_seconds / (wall * workers), "wall_s": wall}


def search_latency(rows: int, dim: int, repeats: int = 3) -> float:
    rng = np.random.default_rng(0)
    x = np.empty((rows, dim), np.float16)
    for s in range(0, rows, 1 << 16):
        block = rng.standard_normal((min(1 << 16, rows - s), dim), dtype=np.float32)
        x[s:s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    q = rng.standard_normal(dim).astype(np.float32)
    top_k(x, q, 10)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        top_k(x, q, 10)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="full", help="PyTorch: release name or checkpoint path")
    parser.add_argument("--onnx", help="also ONNX Runtime: an audioclip-export folder")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each recording")
    parser.add_argument("--pools", nargs="+", default=["1x2", "2x1"], help="WORKERSxTHREADS shapes")
    parser.add_argument("--ray", action="store_true", help="also each shape on a local Ray (Ray Data actors)")
    parser.add_argument("--encoder-windows", type=int, default=8, help="windows timed for the encoder alone")
    parser.add_argument("--search-rows", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    console = Console()
    console.print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_recordings(Path(tmp), args.files, args.seconds)
        windows = int(args.files * args.seconds // 5)
        backends = [("PyTorch", {"checkpoint": args.checkpoint})]
        if args.onnx:
            backends.append(("ONNX Runtime fp32", {"onnx": args.onnx}))
        for backend, where in backends:
            for pool in args.pools:
                workers, threads = map(int, pool.split("x"))
                spec = ModelSpec.from_labels(LABELS, threads=threads, **where)
                # the encoder alone just before and just after: the machine's load drifts
                before = encoder_alone(spec, args.encoder_windows)
                run = label_rate(spec, folder, workers)
                alone = (before + encoder_alone(spec, args.encoder_windows)) / 2 * workers  # one per worker
                results.append({"backend": backend, "pool": pool, "encoder_windows_s": alone, **run,
                                "ratio": run["label_windows_s"] / alone, "windows": windows})
                console.print(results[-1])
                if args.ray:
                    import ray

                    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
                    run = label_rate(spec, folder, workers, ray=True)
                    ray.shutdown()
                    results.append({"backend": backend + " on Ray", "pool": pool, "encoder_windows_s": alone, **run,
                                    "ratio": run["label_windows_s"] / alone, "windows": windows})
                    console.print(results[-1])
    search = {"rows": args.search_rows, "dim": 1024, "seconds": search_latency(args.search_rows, 1024)}
    table = Table("backend", "workers x threads", "encoder alone (win/s)", "audioclip-label (win/s)", "ratio",
                  "encoder busy", "hours of audio per hour")
    for r in results:
        table.add_row(r["backend"], r["pool"], f"{r['encoder_windows_s']:.2f}", f"{r['label_windows_s']:.2f}",
                      f"{r['ratio']:.0%}", f"{r['busy']:.0%}", f"{r['hours_per_hour']:.1f}")
    console.print(table)
    console.print(f"exact search, {search['rows']:,} x {search['dim']} float16, k=10: {search['seconds'] * 1e3:.0f} ms")
    console.print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"label": results, "search": search}, indent=1) + "\n")


if __name__ == "__main__":
    main()
