"""Measure the RAG pieces on this machine: ``python -m tsvllm.bench.rag [--chunks 100000]``.

Prints, as JSON: query embedding latency, exact search latency over random unit vectors
(embedding excluded, via ``retrieve_by_vector``) with its parts, partitioned search against
exact on embedding-like vectors (latency, recall@k), and indexing throughput
on copies of ``examples/corpus``. Loads the real embedding model; starts no server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tsvllm.host.archive import REPO_ROOT

EXAMPLE_CORPUS = REPO_ROOT / "examples" / "corpus"
QUERIES = [
    "Who designed the Zorblax-7?",
    "What is the default irrigation interval?",
    "What does error E-319 mean?",
    "When is customer support open on Saturdays?",
    "How long is the warranty for sensor probes?",
    "Can I use pumps from another brand with the controller?",
]


def _ms(fn: Callable[[], object], *, repeat: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 3),
        "p90_ms": round(times[int(0.9 * (len(times) - 1))], 3),
        "min_ms": round(times[0], 3),
    }


def bench_query_embedding(*, repeat: int) -> dict[str, object]:
    from tsvllm.rag.embedder import Embedder

    t = time.perf_counter()
    embedder = Embedder.load()
    load_s = time.perf_counter() - t
    it = iter(range(10**9))
    stats = _ms(lambda: embedder.embed_query(QUERIES[next(it) % len(QUERIES)]), repeat=repeat)
    return {"load_s": round(load_s, 2), **stats}


def clustered_vectors(
    n: int, dims: int, *, topics: int = 2000, queries: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors shaped like text embeddings, and queries near some of them.

    Rows sit around ``topics`` random directions (cosine ~0.7 to their topic, ~0.5 within
    a topic, ~0 across, as sentence embeddings of a mixed corpus roughly do); each query
    is a perturbed row (a paraphrase). Uniform random vectors, the worst case for a
    partitioned index, have no such structure and no real corpus looks like them.
    """
    rng = np.random.default_rng(seed)
    centers = _unit(rng.standard_normal((topics, dims), dtype=np.float32))
    noise = rng.standard_normal((n, dims), dtype=np.float32) / np.sqrt(dims)
    rows = _unit(centers[rng.integers(0, topics, n)] + noise)
    picked = rows[rng.integers(0, n, queries)]
    paraphrase = 0.5 * rng.standard_normal(picked.shape, dtype=np.float32) / np.sqrt(dims)
    asked = _unit(picked + paraphrase)
    return rows, asked


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def recall_at_k(approx: object, exact: object, queries: np.ndarray, *, k: int) -> float:
    """Mean share of the exact top-``k`` that ``approx`` also returns."""
    hits = 0
    for q in queries:
        want = {c.id for c in exact.retrieve_by_vector(q, k=k)}
        hits += len(want & {c.id for c in approx.retrieve_by_vector(q, k=k)})
    return hits / (k * len(queries))


def bench_partitioned(*, n: int, dims: int, k: int, repeat: int) -> dict[str, object]:
    """Partitioned vs exact search over embedding-like vectors: latency and recall@k."""
    from tsvllm.rag.chunking import Passage
    from tsvllm.rag.retriever import LocalRetriever

    vectors, queries = clustered_vectors(n, dims, queries=200)
    passages = [Passage(id=f"doc{i}#0", source=f"doc{i}", text="") for i in range(n)]
    exact = LocalRetriever(vectors, passages, search="exact")
    started = time.perf_counter()
    parted = LocalRetriever(vectors, passages, search="partitioned")
    build_s = time.perf_counter() - started
    it = iter(range(10**9))

    def timed(r: object) -> dict[str, float]:
        return _ms(
            lambda: r.retrieve_by_vector(queries[next(it) % len(queries)], k=k), repeat=repeat
        )

    return {
        "chunks": n,
        "lists": parted.partitions.lists,
        "nprobe": parted.nprobe,
        "build_s": round(build_s, 2),
        "partitioned": timed(parted),
        "exact": timed(exact),
        f"recall_at_{k}": round(recall_at_k(parted, exact, queries, k=k), 4),
    }


def bench_search(*, n: int, dims: int, k: int, repeat: int) -> dict[str, object]:
    """Exact search over uniform random vectors, with its parts."""
    from tsvllm.rag.chunking import Passage
    from tsvllm.rag.retriever import LocalRetriever, top_k_indices

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dims), dtype=np.float32)
    passages = [Passage(id=f"doc{i}#0", source=f"doc{i}", text="") for i in range(n)]
    retriever = LocalRetriever(vectors, passages, search="exact")
    del vectors
    queries = rng.standard_normal((64, dims), dtype=np.float32)
    it = iter(range(10**9))

    def query() -> np.ndarray:
        return queries[next(it) % len(queries)]

    matrix = retriever.matrix
    q = query() / np.linalg.norm(queries[0])
    scores = matrix @ q
    return {
        "chunks": n,
        "dims": dims,
        "k": k,
        "matrix_mb": round(matrix.nbytes / 2**20, 1),
        "retrieve_by_vector": _ms(
            lambda: retriever.retrieve_by_vector(query(), k=k), repeat=repeat
        ),
        "einsum_scores_only": _ms(lambda: np.einsum("nd,d->n", matrix, q), repeat=repeat),
        "matmul_scores_only": _ms(lambda: matrix @ q, repeat=repeat),
        "top_k_only": _ms(lambda: top_k_indices(scores, k), repeat=repeat),
        "read_matrix_once": _ms(lambda: matrix.sum(), repeat=max(10, repeat // 4)),
    }


def bench_indexing(*, copies: int) -> dict[str, object]:
    from tsvllm.rag.index import build_index

    with tempfile.TemporaryDirectory(prefix="tsvllm-rag-bench-") as tmp:
        corpus = Path(tmp) / "corpus"
        for i in range(copies):
            shutil.copytree(EXAMPLE_CORPUS, corpus / f"copy{i:03d}")
        stats = build_index(corpus, Path(tmp) / "index", progress=False)
    return {"copies": copies, **stats, "out_dir": None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--copies", type=int, default=16, help="copies of examples/corpus")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    report = {
        "torch_threads": torch.get_num_threads(),
        "search": bench_search(n=args.chunks, dims=args.dims, k=args.k, repeat=args.repeat),
        "partitioned_search": bench_partitioned(
            n=args.chunks, dims=args.dims, k=args.k, repeat=args.repeat
        ),
        "query_embedding": bench_query_embedding(repeat=args.repeat),
        "indexing": bench_indexing(copies=args.copies),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
