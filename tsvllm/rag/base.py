"""The two small types every retriever in tsvllm speaks: :class:`Chunk` and :class:`Retriever`.

The handler only needs *something with a ``retrieve`` method*; the bundled
:class:`~tsvllm.rag.retriever.LocalRetriever` is one, and any other search stack can be
plugged in with a few lines of glue. ``retrieve`` is synchronous on purpose: the handler
runs it in a worker thread (``asyncio.to_thread``), so blocking I/O or CPU work is fine.

Wrapping a LangChain retriever (any ``BaseRetriever``; tsvllm does not depend on it)::

    from tsvllm.rag import Chunk

    class LangChainRetriever:
        def __init__(self, lc_retriever):
            self.lc = lc_retriever

        def retrieve(self, query: str, *, k: int) -> list[Chunk]:
            docs = self.lc.invoke(query)[:k]
            return [
                Chunk(
                    text=d.page_content,
                    score=float(d.metadata.get("score", 0.0)),
                    id=str(d.id or f"{d.metadata.get('source', '')}#{i}"),
                    source=str(d.metadata.get("source", "")),
                )
                for i, d in enumerate(docs)
            ]

Wrapping a LlamaIndex retriever (``index.as_retriever(similarity_top_k=k)``)::

    class LlamaIndexRetriever:
        def __init__(self, li_retriever):
            self.li = li_retriever

        def retrieve(self, query: str, *, k: int) -> list[Chunk]:
            hits = self.li.retrieve(query)[:k]
            return [
                Chunk(
                    text=h.node.get_content(),
                    score=float(h.score or 0.0),
                    id=h.node.node_id,
                    source=str(h.node.metadata.get("file_name", "")),
                )
                for h in hits
            ]

``isinstance(obj, Retriever)`` is true for both (the protocol is runtime-checkable; it
checks only that a ``retrieve`` attribute exists, not its signature).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Chunk:
    """One retrieved passage, as the handler puts it into the prompt and cites it.

    ``text`` is the passage itself; ``score`` is the retriever's relevance score (for
    :class:`~tsvllm.rag.retriever.LocalRetriever`: cosine similarity, higher is better);
    ``id`` is stable and readable (``"guide.md#2"``) and ``source`` names the document it
    came from (a path relative to the corpus root), which is what citations show.
    """

    text: str
    score: float
    id: str
    source: str


@runtime_checkable
class Retriever(Protocol):
    """Anything that returns the ``k`` most relevant chunks for a query, best first."""

    def retrieve(self, query: str, *, k: int) -> list[Chunk]: ...


@runtime_checkable
class TextEmbedder(Protocol):
    """What indexing and :class:`LocalRetriever` need from an embedding model.

    :class:`~tsvllm.rag.embedder.Embedder` is the real one; tests inject their own.
    ``name``/``sha256``/``dims`` go into the index manifest, so an index is never queried
    with a different model than the one that built it.
    """

    name: str
    sha256: str
    dims: int

    def embed(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...
