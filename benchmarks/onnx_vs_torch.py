"""ms per 5-s window, batch 1: PyTorch eager vs ONNX Runtime fp32 / fp16 / int8, measured in one run.

    python benchmarks/onnx_vs_torch.py --checkpoint ../shared/golden/checkpoint.pt --clips ../shared/audio

Exports with ``audioclip.export.export_onnx`` into a temporary folder (verification included),
then times each backend on the same clip with the same thread count, interleaving the backends
round by round so that load from other processes hits them alike. Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from audioclip.export.exporter import export_onnx
from audioclip.export.runtime import session
from audioclip.export.verify import fit, load_clips
from audioclip.model import SAMPLE_RATE, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--clips", required=True, help="folder of real clips (int8 calibration and input)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--precisions", default="fp32,int8", help="fp16 only pays on a GPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    window = 5 * SAMPLE_RATE
    clip = fit(load_clips([args.clips])[0][1], window)[None]
    model = load_model(args.checkpoint)
    runners = {"pytorch eager": lambda: model.encode_audio(clip)}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions.split(","):
            out = Path(tmp) / precision
            export_onnx(checkpoint=args.checkpoint, out=out, labels=["a", "b"], precision=precision,
                        clips=[args.clips], threads=args.threads)
            sess = session(out / "audio_encoder.onnx", threads=args.threads)
            runners[f"ort {precision}"] = lambda sess=sess: sess.run(None, {"waveform": clip})
        times: dict[str, list[float]] = {name: [] for name in runners}
        with torch.inference_mode():
            for name, run in runners.items():  # warm-up
                run()
            for _ in range(args.rounds):
                for name, run in runners.items():
                    start = time.perf_counter()
                    run()
                    times[name].append((time.perf_counter() - start) * 1000)
    base = statistics.median(times["pytorch eager"])
    print(f"5-s window, batch 1, {args.threads} threads, {args.rounds} rounds (median, min)")
    print(f"{'backend':<14} {'ms':>8} {'min ms':>8} {'speed-up':>9}")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"{name:<14} {med:8.1f} {min(t):8.1f} {base / med:8.2f}x")


if __name__ == "__main__":
    main()
