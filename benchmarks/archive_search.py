"""Search benchmark: exact search against the vector index and other FAISS indexes over a synthetic archive.

Writes a real ``audioclip-label`` folder (``archive.json``, ``windows.parquet``, ``embeddings.npy``)
of N clustered unit vectors (float16) under a temporary folder, then in one run: the shipped index's
build time (through ``vindex.open_or_build``, so it is saved as a search would save it), its file
size, the time to open the saved index again (memory-mapped) and its first search, then for each
index the median latency over ``--queries`` queries and recall@10 against exact search for three
kinds of query: near (a fresh member of a random cluster), random (a random direction: no row
near) and cos 0.25 (a random stored row mixed with a random direction so that their cosine is
``--far-cos``, the cosines a text query has to audio embeddings). Every index's candidates are
scored again exactly (``VectorIndex.search``). ``--sq`` also builds FAISS's own flat scalar
quantisers (``IndexScalarQuantizer``, every row scanned), ``--ivf-nprobe`` the previous
``IVF{sqrt N},SQ8`` index at those probe counts; ``--exact-rows`` times exact search over the
first rows only, to place the exact-search threshold. Example:

    python benchmarks/archive_search.py --rows 1000000 --queries 12 --sq 8bit fp16 \\
        --ivf-nprobe 125 250 500
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


def far_queries(embeddings: np.ndarray, count: int, cos: float, rng) -> np.ndarray:
    """Random stored rows, each mixed with a random direction orthogonal to it so that their cosine is ``cos``."""
    rows = _unit(np.asarray(embeddings[np.sort(rng.choice(len(embeddings), count, replace=False))], np.float32))
    r = rng.standard_normal(rows.shape, dtype=np.float32)
    r = _unit(r - np.sum(r * rows, axis=1, keepdims=True) * rows)
    return _unit(cos * rows + np.sqrt(1 - cos * cos) * r)


def measure(name: str, vectors, query_sets: dict, exact: dict, k: int, figures: dict, **extra) -> None:
    row = {"index": name, **extra}
    for kind, queries in query_sets.items():
        ms, found = median_ms(lambda q: vectors.search(q, k), queries)
        row[f"{kind}_ms"], row[f"{kind}_recall"] = ms, _recall(found, exact[kind], k)
        row[f"{kind}_scores_equal_exact"] = all(
            np.allclose(f[1][np.isin(f[0], e[0])], e[1][np.isin(e[0], f[0])], atol=1e-6)
            for f, e in zip(found, exact[kind]))
    figures["index"].append(row)
    print(f"{name}: " + ", ".join(f"{kind} {row[kind + '_ms']:.1f} ms recall@{k} {row[kind + '_recall']:.3f}"
                                  for kind in query_sets)
          + "".join(f", {key} {value:.1f}" if isinstance(value, float) else f", {key} {value}"
                    for key, value in extra.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--clusters", type=int, help="default: rows / 100")
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm around a cluster's centre")
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--far-cos", type=float, default=0.25, help="the far queries' cosine to a stored row")
    parser.add_argument("--sq", nargs="*", default=[], choices=["8bit", "fp16", "8bit_uniform", "4bit"],
                        help="also FAISS's flat IndexScalarQuantizer with these codes")
    parser.add_argument("--ivf-nprobe", type=int, nargs="*", default=[],
                        help="also the IVF{sqrt N},SQ8 index at these probe counts")
    parser.add_argument("--exact-rows", type=int, nargs="*", default=[], help="also exact search over these rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="where to write the archive (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import faiss
    import torch

    from audioclip.archive.search import ArchiveIndex
    from audioclip.search.exact import top_k
    from audioclip.search.vindex import INDEX_FILE, SIDECAR_FILE, VectorIndex, open_or_build

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        centres = write_archive(root, args.rows, args.dim, args.clusters or max(1, args.rows // 100), args.spread)
        print(f"wrote {args.rows:,} x {args.dim} float16 embeddings in {time.perf_counter() - t0:.1f} s")
        archive = ArchiveIndex.open(root)
        emb = archive.embeddings
        rng = np.random.default_rng(1)
        noise = rng.standard_normal((args.queries, args.dim), dtype=np.float32) * np.float32(
            args.spread / np.sqrt(args.dim))
        query_sets = {"near": _unit(centres[rng.integers(0, len(centres), args.queries)] + noise),
                      "random": _unit(rng.standard_normal((args.queries, args.dim), dtype=np.float32)),
                      f"cos{args.far_cos:g}": far_queries(emb, args.queries, args.far_cos, rng)}
        figures = {"rows": args.rows, "dim": args.dim, "k": args.k, "queries": args.queries,
                   "threads": args.threads, "load_average_start": os.getloadavg(), "exact": {}, "index": []}
        exact = {}
        for kind, queries in query_sets.items():
            ms, exact[kind] = median_ms(lambda q: top_k(emb, q, args.k), queries)
            figures["exact"][kind] = {"ms": ms, "top1_cos": float(np.median([e[1][0] for e in exact[kind]])),
                                      f"top{args.k}_cos": float(np.median([e[1][-1] for e in exact[kind]]))}
            print(f"exact search, {kind} queries: {ms:.0f} ms (median of {args.queries}), cosine of the top hit "
                  f"{figures['exact'][kind]['top1_cos']:.3f}, of the {args.k}th "
                  f"{figures['exact'][kind][f'top{args.k}_cos']:.3f}", flush=True)

        t0 = time.perf_counter()
        vectors = open_or_build(root, emb)
        build_s = time.perf_counter() - t0
        del vectors  # from here on the saved index, opened as a later search opens it (memory-mapped)
        size_mb = (root / INDEX_FILE).stat().st_size / 2 ** 20
        t0 = time.perf_counter()
        vectors = VectorIndex.load(root, emb, json.loads((root / SIDECAR_FILE).read_text())["source"])
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        vectors.search(query_sets["near"][0], args.k)
        first_ms = (time.perf_counter() - t0) * 1e3
        print(f"shipped index: built and saved in {build_s:.1f} s, {size_mb:.0f} MiB, opened again memory-mapped in "
              f"{load_s * 1e3:.0f} ms, first search {first_ms:.0f} ms")
        measure("flat 8-bit scan (vindex)", vectors, query_sets, exact, args.k, figures, build_s=build_s,
                file_mb=size_mb, load_ms=load_s * 1e3, first_search_ms=first_ms)
        del vectors

        for codes in args.sq:
            t0 = time.perf_counter()
            index = faiss.IndexScalarQuantizer(args.dim, getattr(faiss.ScalarQuantizer, f"QT_{codes}"),
                                               faiss.METRIC_INNER_PRODUCT)
            sample = np.sort(rng.choice(args.rows, min(args.rows, 100_000), replace=False))
            index.train(np.asarray(emb[sample], np.float32))
            for start in range(0, args.rows, 1 << 16):
                index.add(np.asarray(emb[start:start + (1 << 16)], np.float32))
            build_s = time.perf_counter() - t0
            path = root / f"sq_{codes}.faiss"
            faiss.write_index(index, str(path))
            del index
            t0 = time.perf_counter()
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)  # flat codes memory-mapped
            load_s = time.perf_counter() - t0
            measure(f"IndexScalarQuantizer QT_{codes}", VectorIndex(index, emb), query_sets, exact, args.k,
                    figures, build_s=build_s, file_mb=path.stat().st_size / 2 ** 20, load_ms=load_s * 1e3)
            del index
            path.unlink()

        if args.ivf_nprobe:
            nlist = round(np.sqrt(args.rows))
            t0 = time.perf_counter()
            index = faiss.index_factory(args.dim, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
            sample = np.sort(rng.choice(args.rows, min(args.rows, max(100_000, 40 * nlist)), replace=False))
            index.train(np.asarray(emb[sample], np.float32))
            for start in range(0, args.rows, 1 << 16):
                index.add(np.asarray(emb[start:start + (1 << 16)], np.float32))
            build_s = time.perf_counter() - t0
            for nprobe in args.ivf_nprobe:
                index.nprobe = nprobe
                measure(f"IVF{nlist},SQ8 nprobe {nprobe} (in memory)", VectorIndex(index, emb), query_sets, exact,
                        args.k, figures, build_s=build_s)
            del index

        figures["exact_rows"] = {}
        for n in args.exact_rows:
            part = emb[:n]
            ms, _ = median_ms(lambda q, part=part: top_k(part, q, args.k), query_sets["near"])
            figures["exact_rows"][n] = ms
            print(f"exact search over the first {n:,} rows: {ms:.0f} ms")
        figures["load_average_end"] = os.getloadavg()
        print("load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
