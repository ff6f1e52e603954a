"""Retrieval for concurrent requests in batches: one embedding call for many queries.

Embedding a query is the expensive part of retrieval (~9 ms for all-MiniLM-L6-v2 on an
idle 2-core machine, and the model runs one batch at a time). Under load, queries that
arrive while a batch is being embedded wait and go together in the next one: a batch of
16 costs little more than one query. Nothing waits on purpose (no timer), so a lone
request is served at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from tsvllm.rag.base import Chunk


class BatchingRetriever:
    """Wraps a :class:`~tsvllm.rag.retriever.LocalRetriever`; ``await retrieve(query, k=)``.

    Each batch runs in one worker thread: embed every query of the batch at once, then
    search for each. Use it from one event loop.
    """

    def __init__(self, retriever: Any, *, max_batch: int = 32):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.retriever = retriever
        self.max_batch = max_batch
        self._pending: list[tuple[str, int, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None

    async def retrieve(self, query: str, *, k: int) -> list[Chunk]:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((query, k, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            batch = [item for item in batch if not item[2].done()]  # cancelled meanwhile
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(self._run, [(q, k) for q, k, _ in batch])
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), chunks in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(chunks)

    def _run(self, batch: Sequence[tuple[str, int]]) -> list[list[Chunk]]:
        vectors = self.retriever.embedder.embed([query for query, _ in batch])
        return [
            self.retriever.retrieve(query, k=k, vector=vector)
            for (query, k), vector in zip(batch, vectors, strict=True)
        ]
