"""ms per 5-s window, batch 1: PyTorch eager vs ONNX Runtime fp32 / fp16 / int8, measured in one run.

    python benchmarks/onnx_vs_torch.py --checkpoint ../shared/golden/checkpoint.pt --clips ../shared/audio

Exports with ``audioclip.export.export_onnx`` into a temporary folder (verification included),
then times each backend on the same clip with the same thread count, interleaving the backends
round by round so that load from other processes hits them alike. Prints medians and two ratios:
to this project's PyTorch eager path, and to the reference implementation's eager computation
(re-enacted with the same weights, as in ``benchmarks/encode_audio.py``), which is about half as
fast as ours on CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_audio import reference_style_encode  # noqa: E402

from audioclip.export.exporter import export_onnx  # noqa: E402
from audioclip.export.runtime import session  # noqa: E402
from audioclip.export.verify import fit, load_clips  # noqa: E402
from audioclip.model import SAMPLE_RATE, load_model  # noqa: E402


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
    torch_clip = torch.from_numpy(clip)
    runners = {"reference eager": lambda: reference_style_encode(model.audio, torch_clip[:, None]),
               "pytorch eager": lambda: model.encode_audio(torch_clip)}
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions.split(","):
            out = Path(tmp) / precision
            export_onnx(checkpoint=args.checkpoint, out=out, labels=["a", "b"], precision=precision,
                        clips=[args.clips], threads=args.threads)
            sess = session(out / "audio_encoder.onnx", threads=args.threads)
            runners[f"ort {precision}"] = lambda sess=sess: sess.run(None, {"waveform": clip})[0]
        times: dict[str, list[float]] = {name: [] for name in runners}
        with torch.inference_mode():
            for name, run in runners.items():  # warm-up
                outputs[name] = np.asarray(run()).reshape(-1)
            for _ in range(args.rounds):
                for name, run in runners.items():
                    start = time.perf_counter()
                    run()
                    times[name].append((time.perf_counter() - start) * 1000)
    unit = {name: out / np.linalg.norm(out) for name, out in outputs.items()}
    ours, ref = statistics.median(times["pytorch eager"]), statistics.median(times["reference eager"])
    print(f"5-s window, batch 1, {args.threads} threads, {args.rounds} rounds (median, min); "
          "cosine to PyTorch eager on the timed clip")
    print(f"{'backend':<16} {'ms':>7} {'min ms':>7} {'vs pytorch':>10} {'vs reference':>12} {'cosine':>9}")
    for name, t in times.items():
        med = statistics.median(t)
        cos = float(unit[name] @ unit["pytorch eager"])
        print(f"{name:<16} {med:7.1f} {min(t):7.1f} {ours / med:9.2f}x {ref / med:11.2f}x {cos:9.6f}")


if __name__ == "__main__":
    main()
