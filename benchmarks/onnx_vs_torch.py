"""ms per 5-s window, batch 1: PyTorch eager vs ONNX Runtime fp32 / fp16 / int8, measured in one run.

    python benchmarks/onnx_vs_torch.py --checkpoint ../shared/golden/checkpoint.pt --clips ../shared/audio

Exports with ``audioclip.export.export_onnx`` into a temporary folder (verification included),
then times each backend on the same clip with the same thread count, interleaving the backends
round by round so that load from other processes hits them alike. Prints medians and two ratios:
to this project's PyTorch eager path, and to the reference implementation's eager computation
(re-enacted with the same weights, as in ``benchmarks/encode_audio.py``), which is about half as
fast as ours on CPU. Where a GPU is present (an NVIDIA driver, onnxruntime-gpu and CUDA torch), it
also times PyTorch eager on the GPU and each graph on ONNX Runtime's CUDA provider, fp16 included.
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
from audioclip.export.runtime import gpu_providers, session  # noqa: E402
from audioclip.export.verify import fit, load_clips  # noqa: E402
from audioclip.model import SAMPLE_RATE, load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--clips", required=True, help="folder of real clips (int8 calibration and input)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--precisions", default=None,
                        help="comma-separated; default fp32,int8 (and fp16 where a GPU is present: it only pays there)")
    args = parser.parse_args()
    gpu = bool(gpu_providers()) and torch.cuda.is_available()
    precisions = (args.precisions or ("fp32,fp16,int8" if gpu else "fp32,int8")).split(",")
    torch.set_num_threads(args.threads)
    window = 5 * SAMPLE_RATE
    clip = fit(load_clips([args.clips])[0][1], window)[None]
    model = load_model(args.checkpoint)
    torch_clip = torch.from_numpy(clip)
    runners = {"reference eager": lambda: reference_style_encode(model.audio, torch_clip[:, None]),
               "pytorch eager": lambda: model.encode_audio(torch_clip)}
    if gpu:  # the same on the GPU: PyTorch eager and ONNX Runtime's CUDA provider (.cpu() waits for the result)
        cuda_model, cuda_clip = load_model(args.checkpoint).to("cuda"), torch_clip.to("cuda")
        runners["pytorch cuda"] = lambda: cuda_model.encode_audio(cuda_clip).cpu()
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in precisions:
            out = Path(tmp) / precision
            export_onnx(checkpoint=args.checkpoint, out=out, labels=["a", "b"], precision=precision,
                        clips=[args.clips], threads=args.threads)
            sess = session(out / "audio_encoder.onnx", threads=args.threads)
            runners[f"ort {precision}"] = lambda sess=sess: sess.run(None, {"waveform": clip})[0]
            if gpu:
                gpu_sess = session(out / "audio_encoder.onnx", providers=["CUDAExecutionProvider"])
                runners[f"ort {precision} cuda"] = lambda sess=gpu_sess: sess.run(None, {"waveform": clip})[0]
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
    if gpu:
        print("rows ending in 'cuda' run on the GPU; their 'vs pytorch' is to PyTorch eager on the GPU")
    print(f"{'backend':<20} {'ms':>7} {'min ms':>7} {'vs pytorch':>10} {'vs reference':>12} {'cosine':>9}")
    for name, t in times.items():
        med = statistics.median(t)
        cos = float(unit[name] @ unit["pytorch eager"])
        base = statistics.median(times["pytorch cuda"]) if name.endswith("cuda") else ours
        print(f"{name:<20} {med:7.1f} {min(t):7.1f} {base / med:9.2f}x {ref / med:11.2f}x {cos:9.6f}")


if __name__ == "__main__":
    main()
