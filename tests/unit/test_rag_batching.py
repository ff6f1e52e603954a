"""Concurrent retrievals share embedding calls and each gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.test_rag_retriever import WordHashEmbedder, passages
from tsvllm.rag.batching import BatchingRetriever
from tsvllm.rag.retriever import LocalRetriever

QUERIES = ["Tromso 2019", "24 volts pumps", "Friday support", "irrigation interval minutes"]
WANT = ["history.md", "pumps.md", "support.md", "irrigation.md"]


def make() -> tuple[BatchingRetriever, WordHashEmbedder]:
    emb = WordHashEmbedder()
    ps = passages()
    retriever = LocalRetriever(emb.embed([p.text for p in ps]), ps, embedder=emb)
    emb.calls = 0
    return BatchingRetriever(retriever), emb


def test_concurrent_queries_are_embedded_together_and_answered_in_order():
    batcher, emb = make()

    async def run():
        return await asyncio.gather(*(batcher.retrieve(q, k=1) for q in QUERIES * 5))

    results = asyncio.run(run())
    assert [r[0].source for r in results] == WANT * 5
    assert sum(batcher.batch_sizes) == 20 and emb.calls == len(batcher.batch_sizes) < 20


def test_a_lone_query_is_served_at_once_and_failures_reach_every_waiter():
    batcher, _ = make()
    assert asyncio.run(batcher.retrieve("Tromso", k=2))[0].source == "history.md"
    assert batcher.batch_sizes == [1]

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
