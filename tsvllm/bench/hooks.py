"""``tsvllm bench hooks``: what RAG and the rule guards cost per request, against targets.

Measures, on this machine and with the real models:

* search over ``--chunks`` embedding-like unit vectors (384-d, embedding excluded) as the
  retriever does it at that size (partitioned from 20k chunks), and its recall@4 against
  exact search (:func:`tsvllm.bench.rag.clustered_vectors` says what the vectors are);
* query embedding with the packaged all-MiniLM-L6-v2;
* all four rule guards on 4 KB of ordinary text (``scan``), and the stream scanner.

Prints a table (median of ``--repeat`` runs) with each target and writes ``--json``.
Detailed breakdowns: ``python -m tsvllm.bench.rag`` and ``python -m tsvllm.bench.guards``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: (metric, target, unit) from the hooks issue
TARGETS = {
    "retrieval_p50_ms": 2.0,
    "query_embedding_p50_ms": 15.0,
    "rule_guards_p50_ms_per_4kb": 0.5,
}


def _p50_ms(fn: Callable[[], object], *, repeat: int) -> float:
    from tsvllm.bench.rag import _ms

    return _ms(fn, repeat=repeat)["p50_ms"]


def run(*, chunks: int = 100_000, repeat: int = 200) -> dict[str, Any]:
    """Measure and return the report (``results``, ``targets``, ``met``)."""

    from tsvllm.bench.guards import _SAMPLE, _stream_cost
    from tsvllm.bench.rag import QUERIES, clustered_vectors, recall_at_k
    from tsvllm.guards import DenyListGuard, InjectionGuard, PIIGuard, SecretsGuard
    from tsvllm.rag.chunking import Passage
    from tsvllm.rag.embedder import Embedder
    from tsvllm.rag.retriever import LocalRetriever

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    vectors, queries = clustered_vectors(chunks, 384, queries=200)
    passages = [Passage(id=f"doc{i}#0", source=f"doc{i}", text="") for i in range(chunks)]
    retriever = LocalRetriever(vectors, passages)
    counter = iter(range(10**9))
    retrieval = _p50_ms(
        lambda: retriever.retrieve_by_vector(queries[next(counter) % 200], k=4), repeat=repeat
    )
    recall = 1.0
    if retriever.partitions is not None:
        exact = LocalRetriever(vectors, passages, search="exact")
        recall = recall_at_k(retriever, exact, queries, k=4)
        del exact

    embedder = Embedder.load()
    embedding = _p50_ms(
        lambda: embedder.embed_query(QUERIES[next(counter) % len(QUERIES)]), repeat=repeat
    )

    guards = [
        PIIGuard(),
        SecretsGuard(),
        DenyListGuard(["forbidden fruit", "project nightingale"]),
        InjectionGuard(stages=["input", "context", "output"]),
    ]
    text = (_SAMPLE * (4096 // len(_SAMPLE) + 1))[:4096]
    rules = _p50_ms(lambda: [g.scan(text) for g in guards], repeat=repeat)
    per_push_us, _ = asyncio.run(_stream_cost(guards, text, 16))

    results = {
        "retrieval_p50_ms": round(retrieval, 3),
        "retrieval_search": "exact" if retriever.partitions is None else "partitioned",
        "retrieval_recall_at_4": round(recall, 4),
        "query_embedding_p50_ms": round(embedding, 3),
        "rule_guards_p50_ms_per_4kb": round(rules, 3),
        "stream_scanner_us_per_16_char_push": round(per_push_us, 1),
        "chunks": chunks,
        "matrix_mb": round(retriever.matrix.nbytes / 2**20, 1),
    }
    met = {k: results[k] <= target for k, target in TARGETS.items()}
    return {"results": results, "targets": TARGETS, "met": met}


def render(report: dict[str, Any]) -> str:
    rows = [f"{'metric':34s} {'p50':>10s} {'target':>8s}  met"]
    for key, target in report["targets"].items():
        value = report["results"][key]
        rows.append(
            f"{key:34s} {value:10.3f} {target:8.3f}  {'yes' if report['met'][key] else 'NO'}"
        )
    results = report["results"]
    rows.append(
        f"{'retrieval recall@4 vs exact':34s} {results['retrieval_recall_at_4']:10.3f}"
        f"  ({results['retrieval_search']} search)"
    )
    rows.append(
        f"{'stream scanner (us per 16-char push)':34s} "
        f"{report['results']['stream_scanner_us_per_16_char_push']:10.1f}"
    )
    return "\n".join(rows)


def main(*, chunks: int, repeat: int, json_path: str | None) -> int:
    report = run(chunks=chunks, repeat=repeat)
    print(render(report))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    return 0
