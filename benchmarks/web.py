"""Web benchmark: what open live pages cost the monitor, and how soon a window's result reaches them.

One :class:`~audioclip.monitor.service.Monitor` plays the shared clips joined, looped and paced in real time
as one source, with its web server on 127.0.0.1. In one run, phases of ``--seconds`` alternate between no
live page and ``--pages`` live pages (each a separate process reading ``/api/live``, as a browser would: its
CPU is not the monitor's): with pages, the monitor publishes every window to them and makes the live
spectrogram once a second. Per phase: the monitor process's CPU time per classified window. Each page
writes, per window message, its arrival time minus the message's ``sent`` stamp (taken when the monitor
handed the window's result over): the latency of the live update. The pages' own work is also timed alone,
before the monitor starts, with the same model: a second of live spectrogram (new frames and the PNG) and
publishing one window to the pages' queues, as process CPU time (PyTorch's idle threads spinning between
calls included, so an upper bound).
Example:

    python benchmarks/web.py --checkpoint ../shared/golden/checkpoint.pt --seconds 30 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from audioclip.monitor.config import MonitorConfig
from audioclip.monitor.service import Monitor

SHARED = Path(__file__).resolve().parents[2] / "shared"
LABELS = ["alarm clock", "car horn", "cat", "coughing", "thunder"]

PAGE = r"""
import http.client, json, sys, time
host, port = sys.argv[1], int(sys.argv[2])
conn = http.client.HTTPConnection(host, port)
conn.request("GET", "/api/live")
response = conn.getresponse()
assert response.status == 200, response.status
for line in response:
    if line.startswith(b"data: "):
        arrived = time.time()
        message = json.loads(line[6:])
        if message["type"] == "window":
            print(f"{arrived - message['sent']:.6f}", flush=True)
"""


def joined_clips(folder: Path) -> Path:
    parts = [sf.read(p, dtype="float32", always_2d=True) for p in sorted((SHARED / "audio").glob("*.wav"))]
    path = folder / "clips.wav"
    sf.write(path, np.concatenate([data.mean(axis=1) for data, _ in parts]), parts[0][1], subtype="PCM_16")
    return path


class Page:
    """A live page in a process of its own: the latencies it measured, read from its stdout."""

    def __init__(self, port: int):
        self.latencies: list[float] = []
        self.proc = subprocess.Popen([sys.executable, "-c", PAGE, "127.0.0.1", str(port)], stdout=subprocess.PIPE,
                                     text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.latencies.append(float(line))

    def close(self):
        self.proc.terminate()
        self.proc.wait(5)


def phase(monitor: Monitor, seconds: float, pages: int) -> dict:
    """Run ``seconds`` with ``pages`` live pages open: CPU seconds per window and the pages' latencies."""
    opened = [Page(monitor.web.port) for _ in range(pages)]
    deadline = time.monotonic() + 30
    while monitor.web.hub.listening < pages and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the first windows after a page opens are not counted
    counters = monitor.scheduler.counters(monitor.pipelines[0].name)
    windows, cpu, wall = counters.processed, time.process_time(), time.monotonic()
    time.sleep(seconds)
    counters = monitor.scheduler.counters(monitor.pipelines[0].name)
    windows, cpu, wall = counters.processed - windows, time.process_time() - cpu, time.monotonic() - wall
    for page in opened:
        page.close()
    latencies = [x for page in opened for x in page.latencies[1:]]
    return {"pages": pages, "windows": windows, "cpu_per_window": cpu / max(windows, 1), "cores": cpu / wall,
            "latencies": latencies}


def components(classifier, pages: int, repeats: int = 20) -> dict:
    """CPU milliseconds of the live page's own work, timed alone (before the monitor starts): one second of live
    spectrogram (its frames and its PNG) and one window published to ``pages`` queues (serialised once, queued
    on the event loop)."""
    import asyncio

    from audioclip.monitor.web.live import LiveHub
    from audioclip.monitor.web.spectrogram import FrontEnd, LiveSpectrogram
    from audioclip.monitor.web.view import window_json
    from audioclip.stream.postprocess import WindowResult

    spectrogram = LiveSpectrogram(FrontEnd(classifier))
    rng = np.random.default_rng(0)
    second = (0.1 * rng.standard_normal(44100)).astype(np.float32)
    for i in range(10):
        spectrogram.tap(second, i + 1.0)
    spectrogram.update()
    start = time.process_time()
    for i in range(repeats):
        spectrogram.tap(second, 11.0 + i)
        spectrogram.update()
        spectrogram.png()
    per_second = (time.process_time() - start) / repeats

    hub, loop = LiveHub(), asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    subscribers = [hub.subscribe(loop, size=100_000) for _ in range(pages)]
    result = WindowResult(0, 0.0, 5.0, LABELS, np.full(len(LABELS), 0.2), np.full(len(LABELS), 0.1), level_db=-30.0)
    message = {"type": "window", **window_json("clips", result), "utc": "2026-12-08T00:00:00Z"}
    start = time.process_time()
    for _ in range(2000):
        hub.publish(message)
    while sum(s.queue.qsize() for s in subscribers) < 2000 * pages:
        time.sleep(0.01)
    per_window = (time.process_time() - start) / 2000
    loop.call_soon_threadsafe(loop.stop)
    return {"spectrogram_ms_per_second": round(1000 * per_second, 2),
            "publish_ms_per_window": round(1000 * per_window, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(SHARED / "golden" / "checkpoint.pt"))
    parser.add_argument("--onnx", help="an audioclip-export folder instead of the checkpoint")
    parser.add_argument("--hop", type=float, default=1.01769, help="seconds between windows (8 x 4488 samples)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=2, help="phases without and with pages, alternating")
    parser.add_argument("--pages", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = {"onnx": args.onnx} if args.onnx else {"checkpoint": args.checkpoint}
        if args.threads is not None:
            model["threads"] = args.threads
        config = MonitorConfig.from_dict({
            "model": model, "labels": LABELS, "defaults": {"hop": args.hop, "min_dbfs": -200.0},
            "sources": [{"name": "clips", "file": str(joined_clips(folder)), "loop": True}],
            "store": {"db": str(folder / "d.sqlite"), "clips": str(folder / "clips")},
            "http": {"listen": "127.0.0.1:0"}}, origin="benchmark")
        from audioclip.monitor.labels import config_classifier

        classifier = config_classifier(config)
        parts = components(classifier, args.pages)
        monitor = Monitor(config, classifier=classifier)
        thread = threading.Thread(target=monitor.run, daemon=True)
        thread.start()
        while monitor.web is None or not monitor.pipelines or monitor.pipelines[0].last is None:
            time.sleep(0.1)
        time.sleep(3.0)  # warm-up
        results = []
        try:
            for _ in range(args.rounds):
                for pages in (0, args.pages):
                    results.append(phase(monitor, args.seconds, pages))
                    r = results[-1]
                    print(f"{r['pages']} pages: {r['windows']} windows, {1000 * r['cpu_per_window']:.1f} ms CPU per "
                          f"window, {r['cores']:.2f} cores", flush=True)
        finally:
            monitor.stop()
            thread.join(30)
    base = [r for r in results if r["pages"] == 0]
    watched = [r for r in results if r["pages"] == args.pages]
    cpu0 = sum(r["cpu_per_window"] * r["windows"] for r in base) / sum(r["windows"] for r in base)
    cpu2 = sum(r["cpu_per_window"] * r["windows"] for r in watched) / sum(r["windows"] for r in watched)
    latencies = np.array([x for r in watched for x in r["latencies"]]) * 1000
    summary = {"cpu_ms_per_window_no_page": round(1000 * cpu0, 2),
               f"cpu_ms_per_window_{args.pages}_pages": round(1000 * cpu2, 2),
               "cpu_increase_percent": round(100 * (cpu2 / cpu0 - 1), 2),
               "alone": parts,
               "latency_ms": {"n": len(latencies), "p50": round(float(np.percentile(latencies, 50)), 2),
                              "p95": round(float(np.percentile(latencies, 95)), 2),
                              "max": round(float(latencies.max()), 2)}}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
