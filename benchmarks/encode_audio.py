"""Milliseconds per 5-s window of the audio encoder, against the reference's way of computing it.

    python benchmarks/encode_audio.py [--checkpoint ../shared/golden/checkpoint.pt] [--threads 2] [--repeats 5]

The baseline re-enacts, with this project's weights, what the reference implementation does on
every call: it rebuilds the 1025 x 2048 complex FBSP weights from their parameters, frames the
signal with an index gather, computes all 1025 bins, loops over channels in Python and uses
``adaptive_max_pool2d``. (The reference code itself is not a dependency; the golden parity
tests prove both paths give the same numbers.) Each row runs in a fresh process so that its
peak resident memory is its own. Figures are ratios to the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

WINDOW = 220500


def reference_style_encode(head, waveform: torch.Tensor) -> torch.Tensor:
    """The reference's computation order for ``[B, C, T]`` audio in [-1, 1]."""
    b, c, t = waveform.shape
    x = waveform.reshape(b * c, t) * 32768.0
    x = ((x + 32768.0) * 2.0) / 65535.0 - 1.0
    n = 1 if t <= 1654 else 1 + math.ceil((t - 1654) / 561)
    pad = (n - 1) * 561 + 1654 - t
    x = torch.cat((torch.zeros(b * c, pad // 2), x, torch.zeros(b * c, pad - pad // 2)), dim=-1)
    idx = torch.arange(1654).repeat(n, 1) + torch.arange(0, n * 561, 561).repeat(1654, 1).t()
    frames = F.pad(x[..., idx] * head.window, [197, 197])
    weights = head.fbsp.weights()
    spec = torch.stack((F.linear(frames, weights[..., 0]), F.linear(frames, weights[..., 1])), dim=-1)
    spec = spec.transpose(-2, -3)[:, :1023].reshape(b, c * 3, 341, n, 2)
    power = spec[..., 0] ** 2 + spec[..., 1] ** 2
    power = torch.where(power > 0.0, power, torch.full_like(power, 1e-18))
    db = torch.log10(power.reshape(b, c, 3, 341, n)).mul(10.0)
    pooled = []
    for ch in range(c):
        h = head.maxpool(head.relu(head.bn1(head.conv1(db[:, ch]))))
        for layer, att in ((head.layer1, head.att1), (head.layer2, head.att2), (head.layer3, head.att3),
                           (head.layer4, head.att4)):
            gate_in = h.clone()
            h = layer(h)
            g = F.adaptive_max_pool2d(gate_in, h.shape[-2:])
            h = h * torch.sigmoid(att.bn(att.conv_point(att.conv_depth(g))))
        g = F.adaptive_max_pool2d(h.clone(), (1, 1))
        avg = F.adaptive_avg_pool2d(h, 1)
        pooled.append(torch.flatten(avg * torch.sigmoid(att_gate(head.att5, g)), 1))
    return head.fc(torch.stack(pooled, dim=-1).sum(dim=-1))


def att_gate(att, g):
    return att.bn(att.conv_point(att.conv_depth(g)))


def measure(checkpoint: str, impl: str, batch: int, threads: int, repeats: int) -> dict:
    from audioclip import load_model

    torch.set_num_threads(threads)
    model = load_model(checkpoint)
    x = torch.rand(batch, 1, WINDOW, generator=torch.Generator().manual_seed(0)) * 0.2 - 0.1
    run = (lambda: reference_style_encode(model.audio, x)) if impl == "reference" else (lambda: model.encode_audio(x))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode():
        out = run()  # warm-up (and, for this project, the one-off FBSP kernel build)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ms_per_window": statistics.median(times) * 1000 / batch, "peak_mb": peak / 1024,
            "extra_mb": (peak - base_rss) / 1024, "checksum": float(out.abs().sum())}


def main() -> None:
    default_ckpt = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "checkpoint.pt"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(default_ckpt))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(measure(args.checkpoint, args._child[0], int(args._child[1]), args.threads, args.repeats)))
        return
    from rich.console import Console
    from rich.table import Table

    rows = {}
    for batch in map(int, args.batches.split(",")):
        for impl in ("reference", "audioclip-stream"):
            cmd = [sys.executable, __file__, "--checkpoint", args.checkpoint, "--threads", str(args.threads),
                   "--repeats", str(args.repeats), "--_child", impl, str(batch)]
            rows[impl, batch] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    table = Table(title=f"audio encoder, 5-s windows, CPU, {args.threads} threads, median of {args.repeats}")
    table.add_column("path", no_wrap=True)
    for col in ("batch", "ms / window", "real-time factor", "speed-up", "peak RSS MB", "peak over model MB"):
        table.add_column(col, justify="right")
    for (impl, batch), r in rows.items():
        base = rows["reference", batch]["ms_per_window"]
        table.add_row(impl, str(batch), f"{r['ms_per_window']:.0f}", f"{r['ms_per_window'] / 5000:.4f}",
                      f"{base / r['ms_per_window']:.2f}x", f"{r['peak_mb']:.0f}", f"{r['extra_mb']:.0f}")
    Console(width=140).print(table)
    for batch in map(int, args.batches.split(",")):
        a, b = rows["reference", batch]["checksum"], rows["audioclip-stream", batch]["checksum"]
        if abs(a - b) > 1e-3 * abs(a):
            raise SystemExit(f"batch {batch}: the two paths disagree ({a} vs {b})")


if __name__ == "__main__":
    main()
