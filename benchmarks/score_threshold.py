"""How often label scores cross a threshold on background audio: the measurement behind the default threshold.

Builds a background recording (the shared clips, coloured noise at several levels, mains hum, a fan, rain-like
clicks, a rumble, the clips buried in noise), embeds its windows once with the model, then scores against it

- the typical labels below, and
- every background-bank entry as a label of its own, scored against the rest of the bank ("an unrelated
  label": leave one out),

and prints, per threshold, the share of windows at or above it and the events per label-hour (upward crossings
with the stream's hysteresis). Every window counts as a false alarm: with random weights (the golden checkpoint)
no label describes anything, so this measures the score's null distribution, a property of the computation;
with the release weights, run it on recordings of the site.

    .venv/bin/python benchmarks/score_threshold.py --checkpoint ../shared/golden/checkpoint.pt \
        --clips ../shared/audio --minutes 6 --hop 1.01769
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

LABELS = ["dog barking", "glass breaking", "smoke alarm", "baby crying", "gunshot", "siren", "coughing", "doorbell",
          "knocking on a door", "person speaking", "car horn", "screaming", "footsteps", "music", "rain",
          "thunder", "cat meowing", "alarm clock", "water running", "bird song"]
RATE = 44100


def coloured(rng, n, exponent):
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    f[0] = f[1]
    x = np.fft.irfft(spectrum / f ** (exponent / 2), n)
    return x / np.sqrt(np.mean(x ** 2))


def at_db(x, db):
    return (x / np.sqrt(np.mean(x ** 2)) * 10 ** (db / 20)).astype(np.float32)


def background(clips: list[np.ndarray], seconds_each: float, rng) -> list[tuple[str, np.ndarray]]:
    n = int(seconds_each * RATE)
    t = np.arange(n) / RATE
    parts = []
    for name, exponent in (("white", 0), ("pink", 1), ("brown", 2)):
        for db in (-20, -40, -60):
            parts.append((f"{name} noise {db} dBFS", at_db(coloured(rng, n, exponent), db)))
    hum = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in (1, 2, 3, 5))
    parts.append(("mains hum -40 dBFS", at_db(hum + 0.05 * coloured(rng, n, 1), -40)))
    fan = coloured(rng, n, 1.5) * (1 + 0.2 * np.sin(2 * np.pi * 30 * t)) + 0.3 * np.sin(2 * np.pi * 120 * t)
    parts.append(("fan -35 dBFS", at_db(fan, -35)))
    rain = np.zeros(n)
    rain[rng.integers(0, n, size=int(400 * seconds_each))] = rng.uniform(-1, 1, size=int(400 * seconds_each))
    rain = np.convolve(rain, np.exp(-np.arange(200) / 20), mode="same") + 0.1 * coloured(rng, n, 0)
    parts.append(("rain-like clicks -30 dBFS", at_db(rain, -30)))
    rumble = coloured(rng, n, 2.5) * (1 + 0.5 * np.sin(2 * np.pi * 0.1 * t))
    parts.append(("traffic-like rumble -30 dBFS", at_db(rumble, -30)))
    parts.append(("near silence -80 dBFS", at_db(coloured(rng, n, 0), -80)))
    stream = np.concatenate(clips)
    for i, clip in enumerate(clips):
        parts.append((f"clip {i}", clip.astype(np.float32)))
        reps = np.resize(clip, n)
        parts.append((f"clip {i} at -10 dB SNR in pink noise", at_db(reps, -35) + at_db(coloured(rng, n, 1), -25)))
    parts.append(("clips in a row", stream.astype(np.float32)))
    return parts


def embed_windows(model, audio: np.ndarray, window: int, hop: int) -> np.ndarray:
    import torch

    from audioclip.model.audioclip import normalize

    out = []
    with torch.inference_mode():
        for start in range(0, len(audio) - window + 1, hop):
            out.append(normalize(model.encode_audio(audio[None, start:start + window])).numpy()[0])
    return np.stack(out)


def events_per_hour(scores: np.ndarray, threshold: float, hysteresis: float, hours: float) -> float:
    """Upward crossings per column (events with hysteresis, min_windows 1), per hour, averaged over columns."""
    above = scores >= threshold
    below = scores < threshold - hysteresis
    count = 0
    for j in range(scores.shape[1]):
        open_ = False
        for a, b in zip(above[:, j], below[:, j]):
            if not open_ and a:
                open_, count = True, count + 1
            elif open_ and b:
                open_ = False
    return count / scores.shape[1] / hours


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="full")
    p.add_argument("--clips", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=6.0, help="Minutes of background audio in all.")
    p.add_argument("--hop", type=float, default=1.01769)
    p.add_argument("--template", default="{}")
    p.add_argument("--embeddings", type=Path, help="Keep (or reuse) the window embeddings here (.npy).")
    args = p.parse_args()

    import soundfile as sf
    import torch

    from audioclip.model import load_model
    from audioclip.model.audioclip import normalize
    from audioclip.model.background import bank_texts, torch_bank
    from audioclip.stream.scoring import label_scores

    torch.set_num_threads(2)
    model = load_model(args.checkpoint)
    rng = np.random.default_rng(0)
    clips = [sf.read(f, dtype="float32")[0] for f in sorted(args.clips.glob("*.wav"))]
    parts = background(clips, 1.0, rng)
    seconds_each = args.minutes * 60 / len(parts)
    parts = background(clips, seconds_each, rng)
    window, hop = 5 * RATE, int(round(args.hop * RATE))
    if args.embeddings is not None and args.embeddings.exists():
        audio = np.load(args.embeddings)
    else:
        t0 = time.perf_counter()
        audio = np.concatenate([embed_windows(model, x, window, hop) for _, x in parts])
        print(f"embedded {len(audio)} windows in {time.perf_counter() - t0:.0f} s")
        if args.embeddings is not None:
            np.save(args.embeddings, audio)
    hours = len(audio) * args.hop / 3600
    bank = torch_bank(model, args.template)
    scale = float(torch.clamp(model.logit_scale_at.detach().exp(), 1, 100))
    with torch.inference_mode():
        labels = normalize(model.encode_text(LABELS, args.template).float()).numpy()
    typical = label_scores(audio, labels, bank, scale)
    m = len(bank)
    loo = np.concatenate([label_scores(audio, bank[i:i + 1], np.delete(bank, i, axis=0), scale)
                          for i in range(m)], axis=1)
    print(f"{len(audio)} windows of {window / RATE:g} s every {args.hop:g} s ({hours:.3f} h); {len(LABELS)} typical "
          f"labels; {m} bank entries as labels (leave one out); {len(bank_texts())} bank entries")
    for name, s in (("typical labels", typical), ("bank entries, leave one out", loo)):
        q = np.percentile(s, [50, 90, 99, 99.9])
        print(f"{name}: median {q[0]:.3f}, p90 {q[1]:.3f}, p99 {q[2]:.3f}, p99.9 {q[3]:.3f}, max {s.max():.3f}")
    print("threshold  windows>=t (typical / loo)  events per label-hour (typical / loo)")
    for t in (0.5, 0.7, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.95, 0.97, 0.99):
        print(f"{t:9.2f}  {np.mean(typical >= t):8.4f} / {np.mean(loo >= t):8.4f}      "
              f"{events_per_hour(typical, t, 0.05, hours):7.2f} / {events_per_hour(loo, t, 0.05, hours):7.2f}")


if __name__ == "__main__":
    main()
