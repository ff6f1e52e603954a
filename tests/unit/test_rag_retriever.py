"""Unit: top-k with ties, RRF math and LocalRetriever with an injected fake embedder."""

from __future__ import annotations

import re
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tsvllm.rag.base import Chunk, Retriever, TextEmbedder
from tsvllm.rag.chunking import Passage
from tsvllm.rag.retriever import LocalRetriever, bm25_tokenize, rrf_fuse, top_k_indices


class WordHashEmbedder:
    """A deterministic bag-of-words embedder: each lower-cased word bumps one hashed dim."""

    name = "test/word-hash"
    sha256 = "0" * 64
    dims = 64

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, zlib.crc32(word.encode()) % self.dims] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


DOCS = {
    "pumps.md": "Pumps must run on 24 volts and draw at most 3 amperes.",
    "support.md": "Support is open Monday to Friday from eight to four.",
    "history.md": "Mirela designed the controller in Tromso in 2019.",
    "irrigation.md": "The default irrigation interval is 47 minutes for every channel.",
}


def passages() -> list[Passage]:
    return [Passage(id=f"{src}#0", source=src, text=text) for src, text in DOCS.items()]


def retriever(**kwargs) -> LocalRetriever:
    embedder = kwargs.pop("embedder", WordHashEmbedder())
    ps = passages()
    return LocalRetriever(embedder.embed([p.text for p in ps]), ps, embedder=embedder, **kwargs)


# --- top-k -----------------------------------------------------------------------------


def test_top_k_is_best_first() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7], dtype=np.float32)
    assert top_k_indices(scores, 2).tolist() == [1, 3]
    assert top_k_indices(scores, 4).tolist() == [1, 3, 2, 0]


def test_top_k_ties_are_broken_by_index_even_at_the_cut() -> None:
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0, 3.0], dtype=np.float32)
    assert top_k_indices(scores, 2).tolist() == [1, 2]
    assert top_k_indices(scores, 5).tolist() == [1, 2, 4, 5, 3]
    assert top_k_indices(np.zeros(1000, dtype=np.float32), 3).tolist() == [0, 1, 2]


def test_top_k_handles_k_beyond_n_and_empty() -> None:
    scores = np.array([0.2, 0.4], dtype=np.float32)
    assert top_k_indices(scores, 10).tolist() == [1, 0]
    assert top_k_indices(np.array([], dtype=np.float32), 3).tolist() == []


def test_top_k_matches_a_stable_full_sort() -> None:
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 20, size=5000).astype(np.float32)  # lots of ties
    for k in (1, 4, 17, 500):
        expected = np.argsort(-scores, kind="stable")[:k]
        assert top_k_indices(scores, k).tolist() == expected.tolist()


# --- RRF -------------------------------------------------------------------------------


def test_rrf_scores_are_sums_of_reciprocal_ranks() -> None:
    fused = dict(rrf_fuse([[0, 1, 2], [2, 0]]))
    assert fused[0] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[1] == pytest.approx(1 / 62)
    assert fused[2] == pytest.approx(1 / 63 + 1 / 61)
    assert [doc for doc, _ in rrf_fuse([[0, 1, 2], [2, 0]])] == [0, 2, 1]


def test_rrf_k_parameter_and_empty_rankings() -> None:
    assert rrf_fuse([[5], []], k=1) == [(5, 0.5)]
    assert rrf_fuse([[], []]) == []


def test_rrf_ties_prefer_the_earlier_ranking() -> None:
    assert [doc for doc, _ in rrf_fuse([[7], [3]])] == [7, 3]
    assert [doc for doc, _ in rrf_fuse([[3, 7], [7, 3]])] == [3, 7]


# --- LocalRetriever with a fake embedder ------------------------------------------------


def test_fake_embedder_satisfies_the_protocols() -> None:
    r = retriever()
    assert isinstance(WordHashEmbedder(), TextEmbedder)
    assert isinstance(r, Retriever)


def test_retrieve_returns_chunks_with_cosine_scores() -> None:
    r = retriever()
    hits = r.retrieve("What is the default irrigation interval?", k=2)
    assert [type(h) for h in hits] == [Chunk, Chunk]
    top = hits[0]
    assert (top.id, top.source, top.text) == ("irrigation.md#0", "irrigation.md", DOCS[top.source])
    emb = WordHashEmbedder()
    expected = float(
        emb.embed_query("What is the default irrigation interval?")
        @ emb.embed_query(DOCS["irrigation.md"])
    )
    assert top.score == pytest.approx(expected, abs=1e-6)
    assert hits[0].score >= hits[1].score


def test_k_larger_than_the_index_and_invalid_k() -> None:
    r = retriever()
    assert len(r.retrieve("pumps", k=50)) == len(DOCS)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            r.retrieve("pumps", k=bad)


def test_min_score_filters_on_cosine() -> None:
    r = retriever()
    hits = r.retrieve("pumps volts amperes", k=4, min_score=0.3)
    assert [h.source for h in hits] == ["pumps.md"]
    assert r.retrieve("zzz qqq", k=4, min_score=0.5) == []


def test_retrieve_by_vector_normalises_and_skips_the_embedder() -> None:
    emb = WordHashEmbedder()
    r = retriever(embedder=emb)
    vec = emb.embed_query("support open monday")
    calls = emb.calls
    a = r.retrieve_by_vector(vec, k=2)
    b = r.retrieve_by_vector(vec * 7.5, k=2)
    assert emb.calls == calls
    assert [h.id for h in a] == [h.id for h in b]
    assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)
    assert a[0].source == "support.md"
    with pytest.raises(ValueError, match="dims"):
        r.retrieve_by_vector(np.ones(3, dtype=np.float32), k=1)


def test_stored_rows_are_normalised_contiguous_float32() -> None:
    ps = passages()
    raw = np.arange(len(ps) * 4, dtype=np.float64).reshape(len(ps), 4) + 1
    r = LocalRetriever(raw.T.copy().T, ps, embedder=None)
    assert r.matrix.dtype == np.float32 and r.matrix.flags.c_contiguous
    assert np.allclose(np.linalg.norm(r.matrix, axis=1), 1.0)


def test_mismatched_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="passages"):
        LocalRetriever(np.zeros((2, 4), dtype=np.float32), passages())
    with pytest.raises(ValueError, match="bm25"):
        retriever(hybrid=True)


def test_embedder_of_another_model_is_refused() -> None:
    with pytest.raises(ValueError, match="rebuild the index"):
        retriever(model_sha256="f" * 64)
    assert retriever(model_sha256="0" * 64).retrieve("pumps", k=1)


def test_warm_up_runs_one_query() -> None:
    emb = WordHashEmbedder()
    r = retriever(embedder=emb)
    calls = emb.calls
    r.warm_up()
    assert emb.calls == calls + 1


def test_empty_index_returns_nothing() -> None:
    r = LocalRetriever(np.zeros((0, 8), dtype=np.float32), [], embedder=WordHashEmbedder())
    assert r.retrieve("anything", k=3) == []


def test_concurrent_retrieves_agree() -> None:
    r = retriever()
    queries = ["pumps volts", "support monday", "designed Tromso", "irrigation interval"] * 8
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda q: r.retrieve(q, k=1)[0].source, queries))
    assert results == [r.retrieve(q, k=1)[0].source for q in queries]


# --- hybrid (real bm25s, fake dense) ----------------------------------------------------


class BlindEmbedder(WordHashEmbedder):
    """Dense side that knows nothing: every text maps to the same vector."""

    def embed(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        out[:, 0] = 1.0
        return out


def bm25_over(ps: list[Passage]):
    import bm25s

    index = bm25s.BM25()
    index.index(bm25_tokenize([p.text for p in ps]), show_progress=False)
    return index


def test_hybrid_lets_keywords_win_when_dense_is_blind() -> None:
    ps = passages()
    emb = BlindEmbedder()
    vectors = emb.embed([p.text for p in ps])
    dense = LocalRetriever(vectors, ps, embedder=emb)
    hybrid = LocalRetriever(vectors, ps, embedder=emb, bm25=bm25_over(ps), hybrid=True)
    assert dense.retrieve("Tromso 2019", k=1)[0].source == "pumps.md"  # index order
    hits = hybrid.retrieve("Tromso 2019", k=2)
    assert hits[0].source == "history.md"
    assert hits[0].score == pytest.approx(1.0)  # still the (blind) cosine
    # no keyword in the vocabulary: falls back to the dense order
    assert hybrid.retrieve("zzz", k=1)[0].source == "pumps.md"


def test_hybrid_order_is_the_rrf_of_dense_and_bm25() -> None:
    ps = passages()
    emb = WordHashEmbedder()
    r = LocalRetriever(
        emb.embed([p.text for p in ps]), ps, embedder=emb, bm25=bm25_over(ps), hybrid=True
    )
    query = "default interval for the controller"
    scores = r.matrix @ emb.embed_query(query)
    dense_rank = np.argsort(-scores, kind="stable").tolist()
    bm25_scores = r.bm25.get_scores(bm25_tokenize([query])[0])
    bm25_rank = [i for i in np.argsort(-bm25_scores, kind="stable") if bm25_scores[i] > 0]
    expected = [ps[d].id for d, _ in rrf_fuse([dense_rank, bm25_rank])][:3]
    assert [h.id for h in r.retrieve(query, k=3)] == expected


# --- partitioned search -------------------------------------------------------------------


def test_auto_partitions_only_large_indexes() -> None:
    assert retriever().partitions is None
    parted = retriever(partition_from=3)
    assert parted.partitions is not None
    assert sorted(parted.partitions.order.tolist()) == list(range(len(DOCS)))
    with pytest.raises(ValueError, match="search must be"):
        retriever(search="fast")


def test_partitioned_search_finds_what_exact_finds_with_exact_scores() -> None:
    from tsvllm.bench.rag import clustered_vectors, recall_at_k

    vectors, queries = clustered_vectors(6000, 48, topics=120, queries=100, seed=3)
    ps = [Passage(id=f"d{i}", source=f"s{i}", text="") for i in range(len(vectors))]
    exact = LocalRetriever(vectors, ps, search="exact")
    parted = LocalRetriever(vectors, ps, search="partitioned")
    assert parted.partitions.lists == 77 and parted.nprobe == 13  # ~sqrt(n); 1/6 of them
    assert recall_at_k(parted, exact, queries, k=4) >= 0.95
    by_id = {p.id: i for i, p in enumerate(ps)}
    for chunk in parted.retrieve_by_vector(queries[0], k=4):
        assert chunk.score == pytest.approx(float(vectors[by_id[chunk.id]] @ queries[0]), abs=1e-5)
    # scanning every group is exact search
    parted.nprobe = parted.partitions.lists
    assert recall_at_k(parted, exact, queries, k=4) == 1.0


def test_partitioned_hybrid_maps_keyword_hits_to_the_right_chunks() -> None:
    ps = passages()
    emb = BlindEmbedder()
    vectors = np.zeros((4, emb.dims), dtype=np.float32)
    vectors[[0, 2], 0] = 1.0  # two groups, {0, 2} and {1, 3}: rows are regrouped
    vectors[[1, 3], 1] = 1.0
    hybrid = LocalRetriever(
        vectors, ps, embedder=emb, bm25=bm25_over(ps), hybrid=True, search="partitioned"
    )
    assert [p.source for p in hybrid.passages] != [p.source for p in ps]
    assert hybrid.retrieve("Tromso 2019", k=1)[0].source == "history.md"
    assert hybrid.retrieve("Support Friday", k=1)[0].source == "support.md"


# --- import weight ------------------------------------------------------------------------


def test_importing_the_package_pulls_in_no_heavy_modules() -> None:
    code = (
        "import sys, tsvllm.rag as r\n"
        "from tsvllm.rag import Chunk, Retriever, LocalRetriever, build_index, load_index\n"
        "from tsvllm.rag import Embedder, split_text\n"
        "heavy = [m for m in ('torch', 'transformers', 'bm25s') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
