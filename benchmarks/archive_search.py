"""Search benchmark: exact search against the FAISS vector index over a synthetic archive of N embeddings.

Writes a real ``audioclip-label`` folder (``archive.json``, ``windows.parquet``, ``embeddings.npy``)
of N clustered unit vectors (float16) under a temporary folder, then in one run: the index's build
time (through ``vindex.open_or_build``, so it is saved as a search would save it), the time to
open the saved index again and its first search (from here on the index is the one opened again,
memory-mapped, as a later search opens it), the median latency over ``--queries`` queries of exact
search and of the index, recall@10 of the index against exact search (for queries near a cluster,
and for random directions, the worst case), and the exact/index ratio. ``--nprobe`` also measures
other probe counts on the same index; ``--exact-rows`` times exact search over the first rows only,
to place the exact-search threshold. Example:

    python benchmarks/archive_search.py --rows 1000000 --queries 20 --nprobe 32 64 250 \\
        --exact-rows 100000 150000 200000 300000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def write_archive(root: Path, rows: int, dim: int, clusters: int, spread: float, seed: int = 0) -> np.ndarray:
    """An archive folder of ``rows`` float16 unit vectors, each a random cluster's centre plus Gaussian noise of
    norm about ``spread``; returns the centres (float32 ``[clusters, dim]``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((clusters, dim), dtype=np.float32))
    emb = np.lib.format.open_memmap(root / "embeddings.npy", mode="w+", dtype=np.float16, shape=(rows, dim))
    for start in range(0, rows, 1 << 16):
        n = min(1 << 16, rows - start)
        noise = rng.standard_normal((n, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
        emb[start:start + n] = _unit(centres[rng.integers(0, clusters, n)] + noise)
    emb.flush()
    del emb
    per_file = 720  # an hour of 5-s windows per recording
    i = np.arange(rows)
    files = pa.DictionaryArray.from_arrays(pa.array(i // per_file, pa.int32()),
                                           pa.array([f"rec{j:05d}.wav" for j in range((rows - 1) // per_file + 1)]))
    pq.write_table(pa.table({"file": files.cast(pa.string()), "t_start": (i % per_file) * 5.0,
                             "t_end": (i % per_file) * 5.0 + 5.0}), root / "windows.parquet")
    settings = {"embeddings": True, "window": 5.0, "hop": 5.0, "model": "synthetic"}
    (root / "archive.json").write_text(json.dumps(settings))
    return centres


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def median_ms(search, queries: np.ndarray) -> tuple[float, list]:
    search(queries[0])  # warm: page cache, FAISS's and PyTorch's first-call costs
    times, results = [], []
    for q in queries:
        t0 = time.perf_counter()
        results.append(search(q))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3, results


def _recall(found: list, exact: list, k: int) -> float:
    return float(np.mean([len(set(f[0]) & set(e[0])) / k for f, e in zip(found, exact)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--clusters", type=int, help="default: rows / 100")
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm around a cluster's centre")
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nlist", type=int, help="inverted lists (default: the library's choice for --rows)")
    parser.add_argument("--nprobe", type=int, nargs="*", default=[], help="also these probe counts")
    parser.add_argument("--exact-rows", type=int, nargs="*", default=[], help="also exact search over these rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="where to write the archive (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import faiss
    import torch

    from audioclip.archive.search import ArchiveIndex, top_k
    from audioclip.archive.vindex import IndexParams, VectorIndex, open_or_build

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        centres = write_archive(root, args.rows, args.dim, args.clusters or max(1, args.rows // 100), args.spread)
        print(f"wrote {args.rows:,} x {args.dim} float16 embeddings in {time.perf_counter() - t0:.1f} s")
        rng = np.random.default_rng(1)
        noise = rng.standard_normal((args.queries, args.dim), dtype=np.float32) * np.float32(
            args.spread / np.sqrt(args.dim))
        queries = _unit(centres[rng.integers(0, len(centres), args.queries)] + noise)
        far = _unit(rng.standard_normal((args.queries, args.dim), dtype=np.float32))  # the worst case: no cluster near

        archive = ArchiveIndex.open(root)
        t0 = time.perf_counter()
        params = IndexParams.for_rows(args.rows)
        if args.nlist:
            train = min(args.rows, max(params.train_rows, 40 * args.nlist))
            params = IndexParams(f"IVF{args.nlist},SQ8", args.nlist, params.nprobe, train)
        vectors = open_or_build(root, archive.embeddings, params)
        build_s = time.perf_counter() - t0
        del vectors  # from here on the saved index, opened as a later search opens it (memory-mapped)
        t0 = time.perf_counter()
        vectors = VectorIndex.load(root, archive.embeddings, json.loads((root / "vectors.json").read_text())["source"])
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        vectors.search(queries[0], args.k)
        first_ms = (time.perf_counter() - t0) * 1e3

        exact_ms, exact = median_ms(lambda q: top_k(archive.embeddings, q, args.k), queries)
        _, exact_far = median_ms(lambda q: top_k(archive.embeddings, q, args.k), far)
        figures = {"rows": args.rows, "dim": args.dim, "k": args.k, "queries": args.queries, "threads": args.threads,
                   "load_average": os.getloadavg(), "params": vars(vectors.params), "build_s": build_s,
                   "index_file_mb": (root / "vectors.faiss").stat().st_size / 2 ** 20, "load_s": load_s,
                   "first_search_ms": first_ms,
                   "exact_ms": exact_ms, "index": []}
        print(f"index {vectors.params.factory}: built and saved in {build_s:.1f} s, "
              f"{figures['index_file_mb']:.0f} MiB, opened again in {load_s:.2f} s, first search {first_ms:.0f} ms")
        print(f"exact search: {exact_ms:.0f} ms (median of {args.queries} queries)")
        ivf = faiss.extract_index_ivf(vectors.index)
        for nprobe in sorted({vectors.params.nprobe, *args.nprobe}):
            ivf.nprobe = nprobe
            index_ms, found = median_ms(lambda q: vectors.search(q, args.k), queries)
            recall = _recall(found, exact, args.k)
            recall_far = _recall([vectors.search(q, args.k) for q in far], exact_far, args.k)
            same = all(np.allclose(f[1][np.isin(f[0], e[0])], e[1][np.isin(e[0], f[0])], atol=1e-6)
                       for f, e in zip(found, exact))
            figures["index"].append({"nprobe": nprobe, "ms": index_ms, "recall": recall, "recall_random": recall_far,
                                     "ratio": exact_ms / index_ms, "scores_equal_exact": same})
            print(f"index search, nprobe {nprobe}{' (default)' if nprobe == vectors.params.nprobe else ''}: "
                  f"{index_ms:.1f} ms, recall@{args.k} {recall:.3f} (random queries {recall_far:.3f}), "
                  f"exact/index {exact_ms / index_ms:.1f}x, common hits' scores equal exact: {same}")
        figures["exact_rows"] = {}
        for n in args.exact_rows:
            part = archive.embeddings[:n]
            ms, _ = median_ms(lambda q, part=part: top_k(part, q, args.k), queries)
            figures["exact_rows"][n] = ms
            print(f"exact search over the first {n:,} rows: {ms:.0f} ms")
        print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
