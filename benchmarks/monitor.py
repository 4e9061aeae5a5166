"""Monitor benchmark: N paced file sources through one Monitor, per backend and hop; and a soak.

Each source plays the clips in ``--clips`` joined, looped and paced in real time, starting at its
own offset, into one :class:`~audioclip.monitor.service.Monitor` (one model, one inference thread,
a SQLite database and clips in a temporary folder, every window classified: no level gate). For
each backend and hop the number of sources grows until windows are dropped; the table shows each
trial's p95 latency (a window's last sample to its result), CPU cores used (process CPU time /
wall time) and drops, after a warm-up that is not counted. Examples:

    python benchmarks/monitor.py --checkpoint ../shared/golden/checkpoint.pt --onnx /tmp/golden_export \\
        --hops 1.0 0.5 --seconds 40
    python benchmarks/monitor.py --onnx /tmp/golden_export --minutes 10 --sources 4   # soak
    python benchmarks/monitor.py --onnx /tmp/golden_export --batch   # one call for several windows?
    python benchmarks/monitor.py --onnx /tmp/golden_export --runtime openvino --precision bf16 --hops 1.01769

``--runtime`` and ``--precision`` are the ``[model]`` keys (bf16: OpenVINO at a precision the export
verified, or PyTorch through autocast); the CPU's flags are printed first.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from audioclip.model.constants import SAMPLE_RATE
from audioclip.monitor.config import MonitorConfig
from audioclip.monitor.labels import config_classifier
from audioclip.monitor.service import Monitor

SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
LABELS = ["alarm clock", "car horn", "cat", "coughing", "thunder"]
STEPS = [1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24]


def source_files(n: int, clips: Path, folder: Path) -> list[Path]:
    """``n`` copies of the clips joined (one wav each), source ``i`` rotated ``i`` golden-ratio turns in."""
    parts = [sf.read(p, dtype="float32", always_2d=True) for p in sorted(clips.glob("*.wav"))]
    if len({rate for _, rate in parts}) != 1:
        raise SystemExit(f"--clips {clips}: the clips have different sample rates; give clips of one rate")
    x, rate = np.concatenate([data.mean(axis=1) for data, _ in parts]), parts[0][1]
    paths = []
    for i in range(n):
        path = folder / f"s{i}.wav"
        if not path.exists():
            sf.write(path, np.roll(x, -int(len(x) * (i * 0.618034 % 1))), rate, subtype="PCM_16")
        paths.append(path)
    return paths


def config_for(n: int, hop: float, args, kind: str, folder: Path) -> MonitorConfig:
    model = {"checkpoint": args.checkpoint} if kind == "torch" else {"onnx": args.onnx, "runtime": args.runtime}
    model["precision"] = args.precision
    if args.threads is not None:
        model["threads"] = args.threads
    sources = [{"name": p.stem, "file": str(p), "loop": True} for p in source_files(n, args.clips, folder)]
    run = folder / f"run{time.monotonic_ns()}"
    return MonitorConfig.from_dict({
        "model": model, "labels": LABELS, "sources": sources,
        "defaults": {"window": args.window, "hop": hop, "min_dbfs": None},
        "store": {"db": str(run / "events.sqlite"), "clips": str(run / "clips")}}, origin="benchmark")


class Collector:
    """The monitor's output: every window's latency, stamped with when it came."""

    def __init__(self):
        self.latencies: list[tuple[float, float]] = []

    def window(self, source, result) -> None:
        self.latencies.append((time.monotonic(), result.latency_ms))

    def event(self, event) -> None:
        pass

    def refresh(self, pipelines) -> None:
        pass

    def close(self) -> None:
        pass


def dropped(monitor: Monitor) -> int:
    """Windows lost so far: replaced in the scheduler, skipped by the pipelines, blocks the sources dropped."""
    return sum(monitor.scheduler.counters(p.name).dropped + p.source.overflows for p in monitor.pipelines)


def start(config: MonitorConfig, classifier) -> tuple[Monitor, Collector, threading.Thread]:
    out = Collector()
    monitor = Monitor(config, output=out, classifier=classifier)
    thread = threading.Thread(target=monitor.run, name="monitor", daemon=True)
    thread.start()
    while len(monitor.pipelines) < len(config.sources):
        if not thread.is_alive():
            raise SystemExit("the monitor stopped before its sources started (see its log above)")
        time.sleep(0.1)
    return monitor, out, thread


def trial(n: int, hop: float, args, kind: str, classifier, folder: Path) -> dict:
    monitor, out, thread = start(config_for(n, hop, args, kind, folder), classifier)
    time.sleep(args.warmup)
    drops0, cpu0, t0 = dropped(monitor), time.process_time(), time.monotonic()
    time.sleep(args.seconds)
    drops, cpu, wall = dropped(monitor) - drops0, time.process_time() - cpu0, time.monotonic() - t0
    monitor.stop()
    thread.join(30)
    lat = [ms for t, ms in out.latencies if t0 <= t <= t0 + wall]
    return {"sources": n, "windows": len(lat), "dropped": drops, "cpu_cores": cpu / wall,
            "p50_ms": float(np.percentile(lat, 50)) if lat else float("nan"),
            "p95_ms": float(np.percentile(lat, 95)) if lat else float("nan"),
            "load": os.getloadavg()[0]}


def classifier_for(kind: str, args, folder: Path):
    config = config_for(1, 1.0, args, kind, folder)
    classifier = config_classifier(config)
    classifier.scores(np.zeros((1, int(args.window * SAMPLE_RATE)), np.float32))  # first call: allocations
    return classifier


def search(args, kind: str, classifier, folder: Path) -> None:
    for hop in args.hops:
        print(f"\n{kind}, hop {hop:g} s, window {args.window:g} s: {args.seconds:g} s measured after "
              f"{args.warmup:g} s warm-up; load average {_loadavg()} at the start")
        print(f"{'sources':>7} {'windows':>7} {'dropped':>7} {'p50 ms':>7} {'p95 ms':>7} {'p95 x':>6} "
              f"{'CPU cores':>9} {'load 1m':>7}")
        base = best = None
        for n in [n for n in STEPS if n <= args.max_sources] if args.sources is None else [args.sources]:
            row = trial(n, hop, args, kind, classifier, folder)
            base = base or row  # the first trial (one source unless --sources) is the ratio's baseline
            print(f"{n:>7} {row['windows']:>7} {row['dropped']:>7} {row['p50_ms']:>7.0f} {row['p95_ms']:>7.0f} "
                  f"{row['p95_ms'] / base['p95_ms']:>6.2f} {row['cpu_cores']:>9.2f} {row['load']:>7.2f}", flush=True)
            if row["dropped"]:
                break
            best = n
        print(f"{kind}, hop {hop:g} s: most sources with no dropped window: {best if best else 'none'}; "
              f"p95 x: over the baseline measured in this run, {base['sources']} source(s): "
              f"p95 {base['p95_ms']:.0f} ms")


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _handles() -> tuple[int, int, int]:
    """Open descriptors, OS threads, Python threads."""
    return len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task")), threading.active_count()


def soak(args, kind: str, classifier, folder: Path) -> None:
    n, hop = args.sources or 4, args.hops[0]
    monitor, out, thread = start(config_for(n, hop, args, kind, folder), classifier)
    time.sleep(args.warmup)
    fds0, tasks0, py0 = _handles()
    drops0, cpu0, t0 = dropped(monitor), time.process_time(), time.monotonic()
    print(f"soak: {kind}, {n} sources, hop {hop:g} s, {args.minutes:g} min after {args.warmup:g} s warm-up; "
          f"at the start: {fds0} descriptors, {tasks0} OS threads ({py0} Python), RSS {_rss_mb():.1f} MB, "
          f"load average {_loadavg()}")
    print(f"{'minute':>6} {'RSS MB':>8} {'windows':>8} {'dropped':>7} {'p95 ms':>7} {'fds':>4} {'threads':>7} "
          f"{'load 1m':>7}")
    rss = {}
    for minute in range(1, int(args.minutes) + 1):
        time.sleep(max(0.0, t0 + 60 * minute - time.monotonic()))
        rss[minute] = _rss_mb()
        older = sum(1 for t, _ in out.latencies if t < t0 + 60 * (minute - 1))
        del out.latencies[:older]  # the soak must not measure its own list growing
        lat = [ms for _, ms in out.latencies]
        fds, tasks, _ = _handles()
        p95 = np.percentile(lat, 95) if lat else float("nan")
        print(f"{minute:>6} {rss[minute]:>8.1f} {len(lat):>8} {dropped(monitor) - drops0:>7} {p95:>7.0f} {fds:>4} "
              f"{tasks:>7} {os.getloadavg()[0]:>7.2f}", flush=True)
    cpu = (time.process_time() - cpu0) / (time.monotonic() - t0)
    fds1, tasks1, py1 = _handles()
    monitor.stop()
    thread.join(30)
    ref = 5 if args.minutes > 5 else 1
    last = max(rss)
    print(f"at the end: {fds1} descriptors (start {fds0}), {tasks1} OS threads (start {tasks0}), {py1} Python "
          f"threads (start {py0}); CPU cores {cpu:.2f}; dropped {dropped(monitor) - drops0}")
    print(f"RSS growth from minute {ref} ({rss[ref]:.1f} MB) to minute {last} ({rss[last]:.1f} MB): "
          f"{100 * (rss[last] / rss[ref] - 1):+.2f}%; load average {_loadavg()} at the end")


def batching(args, kind: str, classifier) -> None:
    """Milliseconds per window when the classifier takes 1, 2, 3 or 4 windows in one call, interleaved."""
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (4, int(args.window * SAMPLE_RATE))).astype(np.float32)
    times: dict[int, list[float]] = {b: [] for b in (1, 2, 3, 4)}
    for _ in range(args.repeats):
        for b in times:
            t = time.perf_counter()
            classifier.scores(x[:b])
            times[b].append((time.perf_counter() - t) * 1e3 / b)
    print(f"\n{kind}: ms per window by batch size, median of {args.repeats} (load average {_loadavg()})")
    for b, ms in times.items():
        print(f"batch {b}: {np.median(ms):7.1f} ms per window ({np.median(ms) / np.median(times[1]):.2f} x batch 1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="PyTorch backend: release name or checkpoint path")
    parser.add_argument("--onnx", help="ONNX Runtime backend: an audioclip-export folder")
    parser.add_argument("--hops", type=float, nargs="+", default=[1.0, 0.5], help="(the soak uses the first)")
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=40.0, help="measured seconds of each trial")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of each run not measured")
    parser.add_argument("--sources", type=int, help="run this many sources only (the soak's default: 4)")
    parser.add_argument("--max-sources", type=int, default=24, help="stop the search here")
    parser.add_argument("--threads", type=int, help="inference threads (default: the monitor's)")
    parser.add_argument("--minutes", type=float, help="soak: run --sources sources this long, RSS every minute")
    parser.add_argument("--batch", action="store_true", help="time batches of 1-4 windows instead (no monitor)")
    parser.add_argument("--repeats", type=int, default=10, help="--batch: calls per batch size")
    parser.add_argument("--clips", type=Path, default=SHARED_AUDIO)
    parser.add_argument("--runtime", choices=["onnxruntime", "openvino"], default="onnxruntime",
                        help="what runs --onnx ([model] runtime)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="[model] precision: bf16 on OpenVINO (as the export verified it) or PyTorch (autocast)")
    args = parser.parse_args()
    backends = ([("torch", args.checkpoint)] if args.checkpoint else []) + ([("onnx", args.onnx)] if args.onnx else [])
    if not backends:
        parser.error("give --checkpoint and/or --onnx")
    if args.minutes is not None and (len(backends) != 1 or args.minutes < 2):
        parser.error("the soak takes one backend and --minutes of at least 2")
    if not sorted(args.clips.glob("*.wav")):
        parser.error(f"--clips {args.clips}: no .wav files there")
    from audioclip.export.openvino import cpu_description

    print(f"{cpu_description()}; load average {_loadavg()} before loading a model")
    print(f"runtime {args.runtime if args.onnx else '-'}, precision {args.precision}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, _ in backends:
            classifier = classifier_for(kind, args, Path(tmp))
            if args.batch:
                batching(args, kind, classifier)
            else:
                (soak if args.minutes is not None else search)(args, kind, classifier, Path(tmp))


if __name__ == "__main__":
    main()
