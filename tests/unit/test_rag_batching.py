"""Concurrent retrievals share embedding calls and each gets its own answer."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.unit.test_rag_retriever import WordHashEmbedder, passages
from tsvllm.rag.batching import BatchingRetriever
from tsvllm.rag.retriever import LocalRetriever

QUERIES = ["Tromso 2019", "24 volts pumps", "Friday support", "irrigation interval minutes"]
WANT = ["history.md", "pumps.md", "support.md", "irrigation.md"]


class RecordingEmbedder(WordHashEmbedder):
    """Records the size of each batch it is asked to embed (how the tests see batching)."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def embed(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        self.batch_sizes.append(len(texts))
        return super().embed(texts, batch_size=batch_size)


def make() -> tuple[BatchingRetriever, RecordingEmbedder]:
    emb = RecordingEmbedder()
    ps = passages()
    retriever = LocalRetriever(emb.embed([p.text for p in ps]), ps, embedder=emb)
    emb.calls = 0
    emb.batch_sizes.clear()
    return BatchingRetriever(retriever), emb


def test_concurrent_queries_are_embedded_together_and_answered_in_order():
    batcher, emb = make()

    async def run():
        return await asyncio.gather(*(batcher.retrieve(q, k=1) for q in QUERIES * 5))

    results = asyncio.run(run())
    assert [r[0].source for r in results] == WANT * 5
    assert sum(emb.batch_sizes) == 20 and emb.calls == len(emb.batch_sizes) < 20


def test_a_lone_query_is_served_at_once_and_failures_reach_every_waiter():
    batcher, emb = make()
    assert asyncio.run(batcher.retrieve("Tromso", k=2))[0].source == "history.md"
    assert emb.batch_sizes == [1]

    def broken(texts, **kwargs):
        raise RuntimeError("embedder down")

    batcher.retriever.embedder.embed = broken

    async def run():
        return await asyncio.gather(
            *(batcher.retrieve(q, k=1) for q in QUERIES), return_exceptions=True
        )

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(run()))


def test_a_cancelled_waiter_does_not_break_the_others():
    batcher, _ = make()

    async def run():
        first = asyncio.create_task(batcher.retrieve("Tromso", k=1))
        doomed = asyncio.create_task(batcher.retrieve("pumps", k=1))
        rest = asyncio.create_task(batcher.retrieve("Friday support", k=1))
        await asyncio.sleep(0)
        doomed.cancel()
        return await first, await rest

    first, rest = asyncio.run(run())
    assert first[0].source == "history.md" and rest[0].source == "support.md"
    with pytest.raises(ValueError):
        BatchingRetriever(object(), max_batch=0)


def test_the_batcher_keeps_no_state_that_grows_with_the_batches_it_ran():
    batcher, emb = make()

    async def run():
        for _ in range(3):
            await asyncio.gather(*(batcher.retrieve(q, k=1) for q in QUERIES))

    asyncio.run(run())
    assert len(emb.batch_sizes) >= 3
    grown = {
        name: value
        for name, value in vars(batcher).items()
        if isinstance(value, (list, dict, set, tuple)) and value
    }
    assert not grown, f"per-batch state kept by the batcher: {sorted(grown)}"
