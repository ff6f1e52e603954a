"""In-memory search over a local index: cosine in numpy, optionally fused with BM25.

:class:`LocalRetriever` keeps every chunk embedding in one contiguous, L2-normalised
float32 matrix. Exact search scores a query against every row; it is bound by reading the
matrix (154 MB at 100k chunks x 384 dims: ~6.5 ms per query on the reference machine,
~23 GB/s, whatever computes the dot products). So from ``partition_from`` chunks up (20k
by default) the retriever searches a partitioned index instead
(:mod:`tsvllm.rag.partitions`): exact cosines over the few groups of rows nearest the
query, ~1.5 ms at 100k chunks. Its recall@4 against exact search is 0.96 on real text
(scripts/bench_real_recall.py) and 0.998 on ``tsvllm bench hooks``'s synthetic vectors.
``search="exact"`` forces exact search at any size.

Dense scoring uses ``np.einsum`` rather than ``matrix @ q``: both read the matrix at about
memory bandwidth on an idle 2-core machine, but OpenBLAS's two-thread matrix-vector
product ran about 2x slower while the other core was busy (as it is when the vLLM engine
runs beside the handler); single-threaded einsum was unaffected.

With ``hybrid=True`` (the index must have been built with ``bm25=True``) the dense ranking
and a BM25 keyword ranking (``bm25s``) are merged by reciprocal rank fusion, which helps
with rare names, codes and numbers that embeddings blur.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from tsvllm.rag.base import Chunk, TextEmbedder
from tsvllm.rag.chunking import Passage
from tsvllm.rag.partitions import Partitions, build_partitions, default_lists

RRF_K = 60


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first; equal scores keep index order.

    Uses ``np.partition`` to find the k-th best value (linear time), then sorts only the
    candidates at or above it, so ties at the cut-off are resolved by index, not by chance.
    """
    n = scores.shape[0]
    if k <= 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    if k < n:
        kth = np.partition(scores, n - k)[n - k]
        candidates = np.flatnonzero(scores >= kth)
    else:
        candidates = np.arange(n)
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order[:k]]


def rrf_fuse(rankings: Sequence[Sequence[int]], *, k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: ``score(d) = sum over rankings of 1 / (k + rank_d)``, rank from 1.

    A document missing from a ranking gets nothing from it. Returns ``(doc, score)`` best
    first; ties go to the document ranked better in the earliest ranking that differs.
    """
    scores: dict[int, float] = {}
    positions: dict[int, list[float]] = {}
    for r, ranking in enumerate(rankings):
        for rank, doc in enumerate(ranking, start=1):
            doc = int(doc)
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
            positions.setdefault(doc, [float("inf")] * len(rankings))[r] = rank
    return sorted(scores.items(), key=lambda item: (-item[1], positions[item[0]], item[0]))


def bm25_tokenize(texts: list[str]) -> list[list[str]]:
    """The one tokenisation used for both indexing and querying BM25: lower-cased words of
    two or more characters, English stop words removed (``bm25s.tokenize`` defaults)."""
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


class LocalRetriever:
    """Exact cosine retrieval over an in-memory index, optionally hybrid with BM25.

    ``embeddings`` is ``(N, dims)``, row ``i`` the embedding of ``passages[i]``. Rows are
    stored L2-normalised, so scores are cosine similarities whatever the input scaling.
    ``embedder`` embeds queries; by default the packaged all-MiniLM-L6-v2 is loaded on
    first use (:meth:`Embedder.load`). ``model_sha256`` (from the index manifest) is
    checked against the embedder's ``sha256`` so an index is never queried with a model
    other than the one that built it. ``bm25`` is a ``bm25s.BM25`` over the same passages.

    Thread-safe for concurrent ``retrieve`` calls (the handler calls it in a thread).

    ``Chunk.score`` is always the cosine similarity between the query and the chunk, in
    [-1, 1]. In hybrid mode the *order* is the RRF order, so scores need not decrease down
    the list, and a chunk found by keywords alone can have a low cosine. ``min_score``
    always filters on that cosine.

    ``search``: ``"exact"`` scans every row; ``"partitioned"`` groups the rows with
    k-means at construction (seconds at 100k chunks) and scans the ``nprobe`` groups
    nearest each query (default: 1/6 of the groups, at least 8); ``"auto"`` partitions
    from ``partition_from`` chunks up.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        passages: Sequence[Passage],
        *,
        embedder: TextEmbedder | None = None,
        bm25: Any | None = None,
        hybrid: bool = False,
        model_sha256: str | None = None,
        rrf_k: int = RRF_K,
        rrf_depth: int = 100,
        search: Literal["auto", "exact", "partitioned"] = "auto",
        partition_from: int = 20_000,
        nprobe: int | None = None,
    ) -> None:
        matrix = np.array(embeddings, dtype=np.float32, order="C", copy=True, ndmin=2)
        if matrix.shape[0] != len(passages):
            raise ValueError(f"{matrix.shape[0]} embeddings for {len(passages)} passages")
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix /= np.where(norms > 0, norms, 1.0)
        if hybrid and bm25 is None:
            raise ValueError(
                "hybrid=True needs a BM25 index: rebuild the index with bm25=True "
                "(the default), or use hybrid=False"
            )
        passages = list(passages)
        if search not in ("auto", "exact", "partitioned"):
            raise ValueError(f"search must be auto, exact or partitioned, not {search!r}")
        self.partitions: Partitions | None = None
        self.nprobe: int | None = None
        #: row of the matrix holding document ``i`` of ``passages`` as given (BM25's ids)
        self._row_of_doc: np.ndarray | None = None
        if search == "partitioned" or (search == "auto" and len(passages) >= partition_from):
            parts = build_partitions(matrix, lists=default_lists(len(passages)))
            matrix = matrix[parts.order]
            passages = [passages[i] for i in parts.order.tolist()]
            self._row_of_doc = np.argsort(parts.order)
            self.partitions = parts
            self.nprobe = nprobe or max(8, -(-parts.lists // 6))
        self.matrix = matrix
        self.passages = passages
        self.bm25 = bm25
        self.hybrid = hybrid
        self.model_sha256 = model_sha256
        self.rrf_k = rrf_k
        self.rrf_depth = rrf_depth
        self._embedder = None
        self._embedder_lock = threading.Lock()
        if embedder is not None:
            self._embedder = self._checked(embedder)

    @property
    def dims(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return len(self.passages)

    @property
    def embedder(self) -> TextEmbedder:
        """The query embedder, loaded on first use."""
        if self._embedder is None:
            with self._embedder_lock:
                if self._embedder is None:
                    from tsvllm.rag.embedder import Embedder

                    self._embedder = self._checked(Embedder.load())
        return self._embedder

    def warm_up(self) -> None:
        """Load the query embedder and run one query now, not on the first request.

        Loading the packaged model takes seconds (importing torch and transformers, checking
        the weights' sha256); a server should call this at start-up, in a thread.
        """
        if self.passages:
            self.retrieve("warm-up", k=1)
        else:
            self.embedder.embed_query("warm-up")

    def _checked(self, embedder: TextEmbedder) -> TextEmbedder:
        sha = getattr(embedder, "sha256", None)
        if self.model_sha256 is not None and sha != self.model_sha256:
            raise ValueError(
                f"this index was built with embedding model sha256 {self.model_sha256}, "
                f"but the query embedder is {sha}: rebuild the index with this model"
            )
        return embedder

    def retrieve(
        self,
        query: str,
        *,
        k: int = 4,
        min_score: float | None = None,
        vector: np.ndarray | None = None,
    ) -> list[Chunk]:
        """The ``k`` best chunks for ``query``, best first (see the class doc for ``score``).

        ``vector``: the query's embedding when the caller has it already (batched
        embedding, :mod:`tsvllm.rag.batching`); BM25 still reads ``query``.
        """
        _check_k(k)
        if not self.passages:
            return []
        if vector is None:
            vector = self.embedder.embed_query(query)
        vec = self._unit(np.asarray(vector, dtype=np.float32))
        if self.hybrid:
            depth = max(k, self.rrf_depth)
            dense = self._dense(vec, depth)
            keyword = self._bm25_ranking(query, depth)
            fused = rrf_fuse([dense.tolist(), keyword], k=self.rrf_k)
            rows = np.array([row for row, _ in fused], dtype=np.int64)
        else:
            rows = self._dense(vec, k)
        return self._chunks(rows, vec, k=k, min_score=min_score)

    def retrieve_by_vector(
        self, vec: np.ndarray, *, k: int = 4, min_score: float | None = None
    ) -> list[Chunk]:
        """Dense-only search with a ready query embedding (it is L2-normalised here)."""
        _check_k(k)
        if not self.passages:
            return []
        vec = self._unit(np.asarray(vec, dtype=np.float32))
        return self._chunks(self._dense(vec, k), vec, k=k, min_score=min_score)

    def _unit(self, vec: np.ndarray) -> np.ndarray:
        vec = vec.reshape(-1)
        if vec.shape[0] != self.dims:
            raise ValueError(f"query vector has {vec.shape[0]} dims, the index {self.dims}")
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm > 0 else vec

    def _dense(self, vec: np.ndarray, depth: int) -> np.ndarray:
        """Rows of the ``depth`` best cosines to the unit vector ``vec``, best first."""
        if self.partitions is None:
            return top_k_indices(np.einsum("nd,d->n", self.matrix, vec), depth)
        rows, scores = self.partitions.probe(self.matrix, vec, nprobe=self.nprobe)
        return rows[top_k_indices(scores, depth)]

    def _bm25_ranking(self, query: str, depth: int) -> list[int]:
        ids = self.bm25.get_tokens_ids(bm25_tokenize([query])[0])
        if not ids:
            return []
        scores = np.asarray(self.bm25.get_scores_from_ids(ids), dtype=np.float32)
        top = top_k_indices(scores, depth)
        top = top[scores[top] > 0]
        return (top if self._row_of_doc is None else self._row_of_doc[top]).tolist()

    def _chunks(
        self, rows: np.ndarray, vec: np.ndarray, *, k: int, min_score: float | None
    ) -> list[Chunk]:
        out: list[Chunk] = []
        scores = self.matrix[rows] @ vec if len(rows) else np.empty(0, dtype=np.float32)
        for i, score in zip(rows.tolist(), scores.tolist(), strict=True):
            if min_score is not None and score < min_score:
                continue
            p = self.passages[i]
            out.append(Chunk(text=p.text, score=score, id=p.id, source=p.source))
            if len(out) == k:
                break
        return out


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
