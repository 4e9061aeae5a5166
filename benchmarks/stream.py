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

``--runtime onnxruntime openvino`` and ``--precision fp32 bf16`` run each export on each runtime at each
precision (bf16: OpenVINO, and PyTorch through autocast; ONNX Runtime runs an export at its own precision).

``--paths`` instead times one 5-s window on every path side by side, round by round (the reference's
eager computation, PyTorch fp32 and bf16, ONNX Runtime fp32, OpenVINO f32 and bf16, the latter whole and
with the export's recorded f32 stages), and one hop of the incremental path on each runtime, with the
cosine to ONNX Runtime fp32 and the CPU's flags:

    python benchmarks/stream.py --checkpoint ../shared/golden/checkpoint.pt --onnx /tmp/golden_fp32 --paths
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

    def __init__(self, kind: str, source: str, threads: int, runtime: str = "onnxruntime", precision: str = "fp32"):
        self.kind, self.precision = kind, precision
        if kind == "torch":
            import torch

            from audioclip.model import load_model

            torch.set_num_threads(threads)
            self.model = load_model(source)
            self.name = "PyTorch" + (" bf16 (autocast)" if precision == "bf16" else "")
        else:
            from audioclip.export.runtime import OnnxClassifier

            # whole windows as the classifier runs them (OpenVINO: through the stage graphs, verify.py says why)
            self.classifier = OnnxClassifier(source, threads=threads, runtime=runtime, precision=precision)
            self.graphs = self.classifier.incremental_graphs()
            if runtime == "onnxruntime":
                from audioclip.export.runtime import session

                self.session = session(Path(source) / "audio_encoder.onnx", threads=threads)
            self.runtime = runtime
            self.name = (f"ONNX Runtime {self.classifier.precision}" if runtime == "onnxruntime" else
                         f"OpenVINO {precision}")

    def embed(self, window: np.ndarray) -> np.ndarray:
        if self.kind == "torch":
            import torch

            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                return self.model.encode_audio(window).float().numpy()
        if self.runtime == "onnxruntime":
            return self.session.run(None, {"waveform": window[None]})[0]
        return self.classifier._whole_window(window).embedding

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


class _Path:
    """One way to compute a 5-s window's embedding, for ``--paths``: ``embed(window) -> [1, D]`` and, where the
    path has one, ``incremental(window, start) -> [1, D]`` (one source's stream)."""

    def __init__(self, name: str, embed, incremental=None, verified: str = "-"):
        self.name, self.embed, self.incremental, self.verified = name, embed, incremental, verified


def _openvino_paths(folder: Path, threads: int, window_samples: int) -> list[_Path]:
    """OpenVINO f32, bf16 with the whole trunk in bf16, and bf16 as the export recorded it (when that differs),
    each through the stage graphs as ``OnnxClassifier`` runs whole windows, and with its incremental encoder."""
    from audioclip.export.incremental import IncrementalGraphs, OnnxIncrementalEncoder
    from audioclip.export.openvino import RECORD_FILE, no_native_bf16

    record = json.loads((folder / RECORD_FILE).read_text()) if (folder / RECORD_FILE).is_file() else {}
    plans = [("fp32", ())]
    if no_native_bf16() is None:
        plans.append(("bf16", ()))
        recorded = record.get("precisions", {}).get("bf16")
        if recorded and recorded.get("fp32_stages"):
            plans.append(("bf16", tuple(recorded["fp32_stages"])))
    paths = []
    for precision, stages in plans:
        graphs = IncrementalGraphs(folder, threads=threads, runtime="openvino", precision=precision, fp32_stages=stages)
        whole, stream = OnnxIncrementalEncoder(graphs, window_samples), OnnxIncrementalEncoder(graphs, window_samples)

        def embed(x, whole=whole):
            whole.reset()
            return whole.encode(x, 0).embedding

        recorded = record.get("precisions", {}).get(precision)
        verified = "yes" if recorded is not None and tuple(recorded.get("fp32_stages", ())) == stages else "no"
        name = f"OpenVINO {precision}" + (f" ({', '.join(stages)} f32)" if stages else "")
        paths.append(_Path(name, embed, lambda x, start, e=stream: e.encode(x, start).embedding, verified))
    return paths


def compare_paths(args, threads: int) -> None:
    """``--paths``: ms per window of every path in one run, round by round, and ms per hop of the incremental ones."""
    import statistics

    import torch

    from audioclip.export.incremental import IncrementalGraphs, OnnxIncrementalEncoder
    from audioclip.export.openvino import cpu_description
    from audioclip.export.runtime import session
    from audioclip.export.verify import fit, load_clips
    from audioclip.model import load_model
    from audioclip.model.incremental import IncrementalEncoder

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from encode_audio import reference_style_encode

    torch.set_num_threads(threads)
    win = int(round(args.window * SAMPLE_RATE))
    hop = 5 * STRIDE_SAMPLES
    clips = load_clips([args.clips])
    stream = np.concatenate([fit(a, len(a)) for _, a in clips])
    x = fit(clips[0][1], win)[None]
    model = load_model(args.checkpoint)

    def torch_embed(bf16: bool):
        def run(w):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model.encode_audio(torch.from_numpy(w)).float().numpy()
            return out / np.linalg.norm(out, axis=-1, keepdims=True)
        return run

    torch_stream = IncrementalEncoder(model, win)

    def torch_incremental(w, start):
        with torch.inference_mode():
            out = torch_stream.encode(w[0], start).numpy()
        return out / np.linalg.norm(out, axis=-1, keepdims=True)

    onnx = Path(args.onnx[0])
    ort = session(onnx / "audio_encoder.onnx", threads=threads)
    ort_stream = OnnxIncrementalEncoder(IncrementalGraphs(onnx, threads=threads), win)
    paths = [
        _Path("reference eager", lambda w: reference_style_encode(model.audio, torch.from_numpy(w)[:, None])),
        _Path("PyTorch fp32", torch_embed(False), torch_incremental),
        _Path("PyTorch bf16 (autocast)", torch_embed(True)),
        _Path("ONNX Runtime fp32", lambda w: ort.run(None, {"waveform": w})[0],
              lambda w, start: ort_stream.encode(w[0], start).embedding, "yes"),
        *_openvino_paths(onnx, threads, win),
    ]
    for p in paths:
        if p.incremental is not None and p.name.startswith("OpenVINO"):
            p.incremental = (lambda f: lambda w, start: f(w[0], start))(p.incremental)
        if p.name.startswith("OpenVINO"):
            p.embed = (lambda f: lambda w: f(w[0]))(p.embed)
    outputs = {}
    times: dict[str, list[float]] = {p.name: [] for p in paths}
    with torch.inference_mode():
        for p in paths:  # warm-up (first calls allocate, OpenVINO compiles its shapes)
            outputs[p.name] = np.asarray(p.embed(x)).reshape(-1)
        for _ in range(args.repeat):
            for p in paths:
                t0 = time.perf_counter()
                p.embed(x)
                times[p.name].append((time.perf_counter() - t0) * 1000)
    hops: dict[str, list[float]] = {p.name: [] for p in paths if p.incremental is not None}
    starts = list(range(0, len(stream) - win + 1, hop))
    for start in starts:  # window by window, every path in turn: load from elsewhere hits them alike
        for p in paths:
            if p.incremental is not None:
                t0 = time.perf_counter()
                p.incremental(stream[start:start + win][None], start)
                hops[p.name].append((time.perf_counter() - t0) * 1000)
    unit = {name: out / np.linalg.norm(out) for name, out in outputs.items()}
    ref = statistics.median(times["reference eager"])
    base = statistics.median(times["ONNX Runtime fp32"])
    print(f"CPU: {cpu_description()}")
    print(f"{args.window:g}-s window, batch 1, {threads} threads, {args.repeat} rounds interleaved (median); "
          f"per hop: {hop} samples ({hop / SAMPLE_RATE:.5f} s) over the {len(stream) / SAMPLE_RATE:.0f}-s clips, "
          f"median of {len(starts) - 1} shared windows; load average {os.getloadavg()[0]:.2f} at the end")
    print(f"| path | ms per window | vs the reference ({ref:.0f} ms) | vs ONNX Runtime fp32 | cosine to ONNX Runtime "
          f"fp32 | ms per hop | verified for this export |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for p in paths:
        med = statistics.median(times[p.name])
        cos = float(unit[p.name] @ unit["ONNX Runtime fp32"])
        hop_ms = f"{statistics.median(hops[p.name][1:]):.0f}" if p.name in hops else "-"
        print(f"| {p.name} | {med:.0f} | {ref / med:.2f}x | {base / med:.2f}x | {cos:.5f} | {hop_ms} | {p.verified} |")


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
    parser.add_argument("--repeat", type=int, default=3,
                        help="--incremental: runs per window, the fastest counts; --paths: rounds")
    parser.add_argument("--runtime", nargs="+", choices=["onnxruntime", "openvino"], default=["onnxruntime"],
                        help="what runs each --onnx export (several: each in turn)")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                        help="bf16: OpenVINO, and PyTorch through autocast (each in turn)")
    parser.add_argument("--paths", action="store_true",
                        help="ms per window and per hop of every path side by side (needs --checkpoint and --onnx)")
    args = parser.parse_args()
    if args.paths:
        if not args.checkpoint or not args.onnx:
            parser.error("--paths needs --checkpoint and --onnx (the export of that checkpoint)")
        compare_paths(args, args.threads[0] or default_threads())
        return
    if args.incremental:
        if not args.checkpoint and not args.onnx:
            parser.error("--incremental needs --checkpoint and/or --onnx")
        threads = args.threads[0] or default_threads()
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            path = long_file(args.seconds, args.clips, Path(tmp) / "long.wav")
            for kind, source, runtime, precision in _backends(args):
                if kind == "torch" and precision == "bf16":
                    continue  # a PyTorch bf16 stream computes whole windows (autocast is checked on those)
                rows += incremental(_Whole(kind, source, threads, runtime, precision), path, args.hops, args.window,
                                    threads, args.repeat)
        Console(width=160).print(incremental_table(rows, args.seconds, args.window))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return
    backends = _backends(args)
    if not backends:
        parser.error("give --checkpoint and/or --onnx")
    console = Console(stderr=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = long_file(args.seconds, args.clips, Path(tmp) / "long.wav")
        for kind, source, runtime, precision in backends:
            for threads in args.threads:
                if kind == "torch":
                    classifier = load_classifier(checkpoint=source, labels=LABELS, threads=threads,
                                                 precision=precision)
                else:
                    classifier = load_classifier(onnx=source, threads=threads, runtime=runtime, precision=precision)
                name = f"{kind} {getattr(classifier, 'precision', 'fp32')}" if kind == "torch" or \
                    runtime == "onnxruntime" else f"openvino {precision}"
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


def _backends(args) -> list[tuple[str, str, str, str]]:
    """``(kind, source, runtime, precision)`` of every combination asked for that exists (ONNX Runtime: fp32)."""
    found = [("torch", args.checkpoint, "torch", p) for p in args.precision] if args.checkpoint else []
    for folder in args.onnx:
        found += [("onnx", folder, r, p) for r in args.runtime for p in args.precision
                  if r == "openvino" or p == "fp32"]
    return found


if __name__ == "__main__":
    main()
