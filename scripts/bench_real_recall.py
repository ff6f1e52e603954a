"""Recall of partitioned search on real embeddings: Python docstrings from this venv.

    .venv/bin/python scripts/bench_real_recall.py [--chunks 20000] [--cache DIR]

Embeds ``--chunks`` docstrings (150-800 characters, deduplicated, shuffled with a fixed
seed) from the installed packages with the packaged all-MiniLM-L6-v2, and as queries the
first line of 200 other docstrings; then reports recall@4 and @10 of partitioned search
against exact search for several ``nprobe``, and how often exact search with bfloat16
query vectors (``rag.query_precision``) finds float32's top 4 and 10. Embedding 20k
docstrings takes ~15-25 min on 2 cores; ``--cache`` keeps the vectors for another run (in
the same venv: the docstrings come from its packages). Synthetic vectors
(``tsvllm bench rag``) are easier than real text: this is the honest number.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import sys
import sysconfig
from pathlib import Path

import numpy as np


def docstrings(limit: int) -> list[str]:
    seen: dict[str, None] = {}
    for path in sorted(Path(sysconfig.get_paths()["purelib"]).rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 150:
                    seen.setdefault(doc[:800])
        if len(seen) > limit:
            break
    docs = list(seen)
    random.Random(0).shuffle(docs)
    return docs


def _agreement(retriever, reference: np.ndarray, other: np.ndarray, *, k: int) -> float:
    """Mean share of the top ``k`` for ``reference`` queries also found for ``other``."""
    shares = []
    for ref, alt in zip(reference, other, strict=True):
        want = {c.id for c in retriever.retrieve("", k=k, vector=ref)}
        got = {c.id for c in retriever.retrieve("", k=k, vector=alt)}
        shares.append(len(want & got) / k)
    return float(np.mean(shares))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=20_000)
    p.add_argument("--cache", type=Path, help="folder to keep/reuse the embeddings in")
    args = p.parse_args(argv)

    from tsvllm.bench.rag import recall_at_k
    from tsvllm.rag.chunking import Passage
    from tsvllm.rag.embedder import Embedder
    from tsvllm.rag.retriever import LocalRetriever

    docs = docstrings(args.chunks + 200)
    if len(docs) < args.chunks + 200:
        sys.exit(f"only {len(docs)} docstrings found; lower --chunks")
    embedder = Embedder.load()
    held_out = [d.split("\n")[0][:120] for d in docs[args.chunks : args.chunks + 200]]
    queries = np.asarray([embedder.embed_query(text) for text in held_out])
    if args.cache and (args.cache / "X.npy").exists():
        vectors = np.load(args.cache / "X.npy")
    else:
        corpus = docs[: args.chunks]
        vectors = np.concatenate(
            [embedder.embed(corpus[i : i + 64], batch_size=64) for i in range(0, len(corpus), 64)]
        ).astype(np.float32)
        if args.cache:
            args.cache.mkdir(parents=True, exist_ok=True)
            np.save(args.cache / "X.npy", vectors)
    passages = [Passage(id=str(i), source="docstrings", text="") for i in range(len(vectors))]
    exact = LocalRetriever(vectors, passages, search="exact")
    parted = LocalRetriever(vectors, passages, search="partitioned")
    lists, default = parted.partitions.lists, parted.nprobe
    report = {"chunks": len(vectors), "lists": lists, "default_nprobe": default, "runs": []}
    for nprobe in sorted({max(1, lists // 16), max(1, lists // 10), default, lists // 3}):
        parted.nprobe = nprobe
        report["runs"].append(
            {
                "nprobe": nprobe,
                "scanned": round(nprobe / lists, 3),
                "recall_at_4": round(recall_at_k(parted, exact, queries, k=4), 4),
                "recall_at_10": round(recall_at_k(parted, exact, queries, k=10), 4),
            }
        )
    half = Embedder.load(precision="bfloat16")
    half_queries = np.asarray([half.embed_query(text) for text in held_out])
    report["bfloat16_queries"] = {
        f"recall_at_{k}": round(_agreement(exact, queries, half_queries, k=k), 4) for k in (4, 10)
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
