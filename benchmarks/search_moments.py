"""Search benchmark for the monitor's database: a million moments, searched as the web page and audioclip-search do.

Writes a real detections database (``EventStore``'s schema) holding ``--rows`` moments of one source, one every
``--every`` seconds (1,000,000 at 5 s: about two months), as normalised float16 vectors of ``--dim`` values
around random centres (each a centre plus Gaussian noise, as ``benchmarks/archive_search.py`` makes them), and
one event with an embedding and a clip span every ``--event-every`` moments. The rows go in through one bulk
transaction; the rate of :meth:`EventStore.add_moment` (what the database sink does for each moment) is timed
separately on ``--add`` rows.

Then, in one run and one process: :meth:`MonitorIndex.open` (loading every row into memory, timed, with the
process's resident memory), and for three kinds of query (near: a fresh member of a random cluster; random: a
random direction; far: a stored row mixed with a random direction to cosine ``--far-cos``, as a text query is to
audio embeddings) the median latency of ``MonitorIndex.search(q, k)`` over ``--queries`` queries against the
baseline measured in the same run, ``search(q, k, exact=True)`` (exact search over every row), the two run on
each query in turn so that load from other processes hits both alike (wall clock and CPU time), with their
ratio and the recall@k of the default search against the baseline. The first search past ``EXACT_MAX_ROWS`` rows builds
the vector index: that search is timed on its own. Also: ``since`` filters (the last day, the last 30 days),
and a search right after ``--add`` new moments were stored (the index reads only those). Example:

    python benchmarks/search_moments.py --rows 1000000 --queries 12
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sqlite3
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

T0 = datetime(2026, 10, 1, tzinfo=timezone.utc)
MODEL = "synthetic"


def cpu_summary() -> str:
    """The CPU's model name, its cores and the vector extensions the search may use (from /proc/cpuinfo)."""
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
              "amx_bf16"]
    return f"{name}, {os.cpu_count()} cores; flags: {' '.join(f for f in wanted if f in flags) or 'none of note'}"


def memory_mb() -> tuple[float, float]:
    """This process's resident memory and its peak, in MiB (Linux)."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found.get("VmRSS", float("nan")), found.get("VmHWM", float("nan"))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def stamp(seconds: float) -> str:
    from audioclip.monitor.events import utc_iso

    return utc_iso(T0 + timedelta(seconds=seconds))


def write_database(path: Path, args, centres: np.ndarray, rng) -> None:
    """The schema through EventStore, then the moments and events in one bulk transaction."""
    from audioclip.monitor.store import EventStore

    EventStore(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("BEGIN")
    block = 1 << 15
    for start in range(0, args.rows, block):
        n = min(block, args.rows - start)
        noise = rng.standard_normal((n, args.dim), dtype=np.float32) * np.float32(args.spread / np.sqrt(args.dim))
        x = unit(centres[rng.integers(0, len(centres), n)] + noise).astype("<f2")
        t = (start + np.arange(n)) * args.every
        utc = [s + "Z" for s in np.datetime_as_string(np.datetime64(T0.replace(tzinfo=None), "ms")
                                                      + (t * 1000).astype("timedelta64[ms]"), unit="ms")]
        conn.executemany("INSERT INTO moments (id, source, utc, t_start, t_end, model, dim, vector) "
                         "VALUES (?, 'yard', ?, ?, ?, ?, ?, ?)",
                         ((start + i + 1, utc[i], t[i], t[i] + 5.0, MODEL, args.dim, x[i].tobytes())
                          for i in range(n)))
        events = [i for i in range(n) if (start + i) % args.event_every == 0]
        conn.executemany("INSERT INTO events (id, source, label, start_utc, end_utc, start_s, end_s, peak, mean, clip, "
                         "clip_start_s, clip_end_s) VALUES (?, 'yard', 'dog', ?, ?, ?, ?, 0.9, 0.8, ?, ?, ?)",
                         (((start + i) // args.event_every + 1, stamp(t[i]), stamp(t[i] + 4.0), t[i], t[i] + 4.0,
                           f"clips/{start + i}.flac", t[i] - 2.0, t[i] + 6.0) for i in events))
        conn.executemany("INSERT INTO embeddings (event_id, model, window, dim, vector) VALUES (?, ?, 5.0, ?, ?)",
                         (((start + i) // args.event_every + 1, MODEL, args.dim, x[i].tobytes()) for i in events))
    conn.execute("COMMIT")
    conn.close()


def side_by_side(baseline, candidate, queries) -> dict:
    """Both searches on each query in turn (which goes first alternates), so that load from other processes hits
    them alike: the median wall-clock and CPU milliseconds of each, and the results."""
    times = {"baseline": ([], []), "candidate": ([], [])}
    results = {"baseline": [], "candidate": []}
    for i, q in enumerate(queries):
        order = [("baseline", baseline), ("candidate", candidate)]
        for name, search in order if i % 2 == 0 else order[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            results[name].append(search(q))
            times[name][0].append(time.perf_counter() - t0)
            times[name][1].append(time.process_time() - c0)
    out = {f"{name}_{kind}_ms": float(np.median(values)) * 1e3 for name, (wall, cpu) in times.items()
           for kind, values in (("wall", wall), ("cpu", cpu))}
    return {**out, "results": results}


def recall(found: list, exact: list, k: int) -> float:
    return float(np.mean([len({(h.kind, h.id) for h in f} & {(h.kind, h.id) for h in e}) / k
                          for f, e in zip(found, exact)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="moments stored")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between moments")
    parser.add_argument("--event-every", type=int, default=1000, help="one event per this many moments")
    parser.add_argument("--spread", type=float, default=1.0, help="noise around each centre (norm)")
    parser.add_argument("--queries", type=int, default=12, help="queries of each kind")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--far-cos", type=float, default=0.25)
    parser.add_argument("--add", type=int, default=2000, help="moments added through EventStore.add_moment")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch and FAISS threads")
    parser.add_argument("--dir", default=None, help="where the temporary database goes")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import faiss
    import torch

    from audioclip.monitor.index import MonitorIndex
    from audioclip.monitor.store import EventStore
    from audioclip.search.exact import EXACT_MAX_ROWS

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    print(cpu_summary())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; torch and FAISS on "
          f"{args.threads} threads; EXACT_MAX_ROWS {EXACT_MAX_ROWS:,}", flush=True)
    figures = {"rows": args.rows, "dim": args.dim, "k": args.k, "queries": args.queries, "cpu": cpu_summary(),
               "load_average_start": os.getloadavg()}
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((max(1, args.rows // 100), args.dim), dtype=np.float32))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        db = Path(tmp) / "detections.sqlite"
        t0 = time.perf_counter()
        write_database(db, args, centres, rng)
        figures["write_s"] = time.perf_counter() - t0
        print(f"wrote {args.rows:,} moments x {args.dim} and {args.rows // args.event_every:,} events in "
              f"{figures['write_s']:.1f} s: {db.stat().st_size / 2 ** 30:.2f} GiB", flush=True)

        rss0, _ = memory_mb()
        t0 = time.perf_counter()
        index = MonitorIndex.open(db, model=MODEL)
        figures["open_s"] = time.perf_counter() - t0
        rss1, peak1 = memory_mb()
        figures["open_rss_mb"] = rss1 - rss0
        print(f"MonitorIndex.open: {figures['open_s']:.1f} s; resident memory +{rss1 - rss0:,.0f} MiB "
              f"(peak {peak1:,.0f} MiB)", flush=True)

        noise = rng.standard_normal((args.queries, args.dim), dtype=np.float32) * np.float32(
            args.spread / np.sqrt(args.dim))
        stored = np.stack([index._moments[MODEL].matrix[i].astype(np.float32)
                           for i in rng.choice(args.rows, args.queries, replace=False)])
        orthogonal = rng.standard_normal(stored.shape, dtype=np.float32)
        orthogonal = unit(orthogonal - (orthogonal * stored).sum(axis=1, keepdims=True) * stored)
        cos = np.float32(args.far_cos)
        query_sets = {"near": unit(centres[rng.integers(0, len(centres), args.queries)] + noise),
                      "random": unit(rng.standard_normal((args.queries, args.dim), dtype=np.float32)),
                      f"far (cos {args.far_cos:g})": cos * stored + np.sqrt(1 - cos * cos) * orthogonal}

        t0 = time.perf_counter()
        index.search(query_sets["near"][0], k=args.k)
        figures["first_search_s"] = time.perf_counter() - t0
        rss2, peak2 = memory_mb()
        print(f"first search (builds the vector index): {figures['first_search_s']:.1f} s; resident memory "
              f"+{rss2 - rss1:,.0f} MiB more (peak {peak2:,.0f} MiB)", flush=True)
        index.search(query_sets["near"][1], k=args.k, exact=True)  # PyTorch's first call

        end = args.rows * args.every
        runs = [(kind, queries, None) for kind, queries in query_sets.items()]
        runs += [(f"random, {name}", query_sets["random"], T0 + timedelta(seconds=max(0.0, end - seconds)))
                 for name, seconds in (("last day", 86400.0), ("last 30 days", 30 * 86400.0))]
        figures["runs"] = {}
        print(f"\nmedian ms per query, wall clock (CPU time, both threads); baseline: exact search over every row "
              f"in range\n{'queries':<26} {'exact':>13} {'index':>13} {'ratio':>6} {'recall@' + str(args.k):>10}")
        for kind, queries, since in runs:
            m = side_by_side(lambda q, since=since: index.search(q, k=args.k, since=since, exact=True),
                             lambda q, since=since: index.search(q, k=args.k, since=since), queries)
            exact, found = m.pop("results").values()
            r = recall(found, exact, args.k)
            same = all(abs(a.score - b.score) < 1e-6 for f, e in zip(found, exact) for a in f for b in e
                       if (a.kind, a.id) == (b.kind, b.id))
            figures["runs"][kind] = {**m, "ratio": m["candidate_wall_ms"] / m["baseline_wall_ms"], "recall": r,
                                     "same_scores": same}
            print(f"{kind:<26} {m['baseline_wall_ms']:>5.0f} ({m['baseline_cpu_ms']:>5.0f}) "
                  f"{m['candidate_wall_ms']:>5.0f} ({m['candidate_cpu_ms']:>5.0f}) "
                  f"{m['candidate_wall_ms'] / m['baseline_wall_ms']:>6.2f} {r:>10.3f}"
                  f"{'' if same else '  (scores differ!)'}", flush=True)

        store = EventStore(db)
        x = unit(rng.standard_normal((args.add, args.dim), dtype=np.float32))
        t0 = time.perf_counter()
        for i in range(args.add):
            t = end + i * args.every
            store.add_moment("yard", T0 + timedelta(seconds=t), t, t + 5.0, MODEL, x[i])
        figures["add_moment_us"] = (time.perf_counter() - t0) / args.add * 1e6
        t0 = time.perf_counter()
        hits = index.search(x[-1], k=args.k)
        figures["search_after_add_ms"] = (time.perf_counter() - t0) * 1e3
        assert hits[0].id == args.rows + args.add, hits[0]
        times = []
        for q in query_sets["random"]:
            t0 = time.perf_counter()
            index.search(q, k=args.k)
            times.append(time.perf_counter() - t0)
        figures["search_after_add_median_ms"] = ms = float(np.median(times)) * 1e3
        print(f"\nEventStore.add_moment: {figures['add_moment_us']:.0f} us per moment; the next search (reads the "
              f"{args.add:,} new rows, extends the vector index, finds the last one first): "
              f"{figures['search_after_add_ms']:.0f} ms; then {ms:.0f} ms (median)")
        store.close()
        index.close()
    figures["load_average_end"] = os.getloadavg()
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
