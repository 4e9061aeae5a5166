"""Samples per second of a fine-tuning step (full-size audio head) and of the data loader with and without the cache.

    python benchmarks/train_step.py [--batch-size 8] [--steps 5] [--threads N] [--workers 2] [--json out.json]

The step is the recipe's (cooperative mode, SGD Nesterov, FBSP norm term and gradient hooks) on
5-s clips, on CPU and, when present, on CUDA (bf16 autocast). The loader reads a synthetic set of
clips at mixed rates, bit depths and channel counts with the training augmentations; "cold"
decodes and resamples every clip, "cached" reads the decode cache. Data loading must not be the
bottleneck: the cached loader should run at least 5x the CPU step rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from audioclip.model import SAMPLE_RATE, AudioCLIP, AudioCLIPConfig, load_model
from audioclip.training.audio_io import DecodeCache
from audioclip.training.augment import Augmentation
from audioclip.training.datasets import Clip
from audioclip.training.heads import AudioClassifier, audio_only
from audioclip.training.loader import ClipDataset, make_loader, prepare_clips
from audioclip.training.losses import normalize_fbsp_gradients
from audioclip.training.trainer import training_step

FORMATS = [(8000, "PCM_U8", 1), (22050, "PCM_16", 2), (44100, "PCM_24", 1), (48000, "FLOAT", 2), (16000, "PCM_32", 1)]


def step_rate(model: AudioCLIP, device: torch.device, batch_size: int, steps: int, seconds: float) -> float:
    torch.manual_seed(0)
    embeddings = F.normalize(torch.randn(50, model.config.embed_dim), dim=-1)
    net = AudioClassifier(audio_only(model), embeddings).to(device, memory_format=torch.channels_last).train()
    hooks = normalize_fbsp_gradients(net.model.audio)
    optimizer = torch.optim.SGD(net.parameter_groups(5e-4), lr=5e-5, momentum=0.9, nesterov=True)
    x = (0.1 * torch.randn(batch_size, int(seconds * SAMPLE_RATE))).to(device)
    y = torch.randint(0, 50, (batch_size,), device=device)
    amp = device.type == "cuda"

    def step():
        training_step(net, net.model.audio, optimizer, x, y, amp=amp)
        if amp:
            torch.cuda.synchronize()

    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    for hook in hooks:
        hook.remove()
    return batch_size / float(np.median(times))


def synthetic_clips(root: Path, count: int, seconds: float) -> list[Clip]:
    rng = np.random.default_rng(0)
    clips = []
    for i in range(count):
        rate, subtype, channels = FORMATS[i % len(FORMATS)]
        x = 0.3 * rng.standard_normal((int(seconds * rate), channels)).astype(np.float32)
        path = root / f"{i}.wav"
        sf.write(path, x.clip(-1, 1), rate, subtype=subtype)
        clips.append(Clip(path, i % 10, 1))
    return clips


def loader_rate(clips: list[Clip], cache: DecodeCache, batch_size: int, workers: int, seconds: float) -> float:
    dataset = ClipDataset(clips, cache, int(seconds * SAMPLE_RATE), Augmentation(), seed=0)
    loader = make_loader(dataset, batch_size=batch_size, shuffle=True, seed=0, workers=workers)
    t0 = time.perf_counter()
    n = sum(len(y) for _, y in loader)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="checkpoint whose audio head to time (default: random full-size head)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length")
    parser.add_argument("--clips", type=int, default=64, help="clips in the synthetic loader set")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.checkpoint) if args.checkpoint else AudioCLIP(AudioCLIPConfig(vision=None, text=None))
    results = {"batch_size": args.batch_size, "seconds": args.seconds, "threads": args.threads,
               "workers": args.workers, "torch": torch.__version__}
    results["cpu_step_samples_per_s"] = step_rate(model, torch.device("cpu"), args.batch_size, args.steps, args.seconds)
    if torch.cuda.is_available():
        results["cuda_device"] = torch.cuda.get_device_name()
        results["cuda_step_samples_per_s"] = step_rate(model, torch.device("cuda"), args.batch_size, args.steps,
                                                       args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        clips = synthetic_clips(Path(tmp), args.clips, args.seconds)
        results["loader_cold_samples_per_s"] = loader_rate(clips, DecodeCache(None), args.batch_size, args.workers,
                                                           args.seconds)
        cache = DecodeCache(Path(tmp) / "cache")
        prepare_clips(clips, cache)
        results["loader_cached_samples_per_s"] = loader_rate(clips, cache, args.batch_size, args.workers, args.seconds)
    fastest_step = max(v for k, v in results.items() if k.endswith("step_samples_per_s"))
    results["cached_loader_over_fastest_step"] = results["loader_cached_samples_per_s"] / fastest_step
    results["cached_loader_over_cpu_step"] = results["loader_cached_samples_per_s"] / results["cpu_step_samples_per_s"]
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.2f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
