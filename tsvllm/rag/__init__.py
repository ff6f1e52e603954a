"""Retrieval-augmented generation for tsvllm: chunk, embed, index and search local documents.

``tsvllm index CORPUS --out INDEX`` runs :func:`build_index`; the handler loads the index
with :func:`load_index` and calls ``retriever.retrieve(query, k=...)`` in a thread. Any
object with that method (see :class:`Retriever`) can replace the bundled
:class:`LocalRetriever`, e.g. a thin wrapper around a LangChain or LlamaIndex retriever.

Importing this package is cheap: numpy, torch, transformers and bm25s load only when a
name that needs them is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from tsvllm.rag.base import Chunk, Retriever, TextEmbedder

_LAZY = {
    "Embedder": "tsvllm.rag.embedder",
    "EmbeddingModelError": "tsvllm.rag.embedder",
    "MODEL_NAME": "tsvllm.rag.embedder",
    "MODEL_SHA256": "tsvllm.rag.embedder",
    "Passage": "tsvllm.rag.chunking",
    "split_text": "tsvllm.rag.chunking",
    "chunk_corpus": "tsvllm.rag.chunking",
    "LocalRetriever": "tsvllm.rag.retriever",
    "rrf_fuse": "tsvllm.rag.retriever",
    "build_index": "tsvllm.rag.index",
    "load_index": "tsvllm.rag.index",
    "read_manifest": "tsvllm.rag.index",
    "IndexFormatError": "tsvllm.rag.index",
}

__all__ = ["Chunk", "Retriever", "TextEmbedder", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tsvllm.rag' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
