"""Build a local RAG index from a folder of ``.md``/``.txt`` files, and load it back.

An index is a folder::

    manifest.json     what built it: format version, embedding model + sha256, dims,
                      count, chunk settings, bm25 flag, creation time
    chunks.jsonl      one {"id", "source", "text"} per line, row i <-> embedding i
    embeddings.npy    float32 (count, dims), rows L2-normalised
    bm25/             a bm25s index over the same chunks (only when built with bm25=True)

``build_index`` writes into a temporary sibling folder and renames it into place, so an
interrupted build never leaves a half-written index behind. ``tsvllm index CORPUS --out DIR``
calls it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tsvllm.rag.base import TextEmbedder
from tsvllm.rag.chunking import DEFAULT_CHUNK_CHARS, DEFAULT_OVERLAP, Passage, chunk_corpus
from tsvllm.rag.retriever import LocalRetriever, bm25_tokenize

FORMAT = "tsvllm-rag-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNKS = "chunks.jsonl"
EMBEDDINGS = "embeddings.npy"
BM25_DIR = "bm25"
INDEX_ENTRIES = frozenset({MANIFEST, CHUNKS, EMBEDDINGS, BM25_DIR})


class IndexFormatError(ValueError):
    """The folder is not a readable tsvllm index (missing files, wrong version, mismatch)."""


def build_index(
    corpus_dir: Path | str,
    out_dir: Path | str,
    *,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    overlap: int = DEFAULT_OVERLAP,
    bm25: bool = True,
    progress: bool = True,
    force: bool = False,
    batch_size: int = 16,
    embedder: TextEmbedder | None = None,
) -> dict[str, Any]:
    """Chunk, embed and save every ``.md``/``.txt`` file under ``corpus_dir`` into ``out_dir``.

    Files are read recursively in sorted order, so the same corpus gives the same index.
    ``out_dir`` must not exist or be empty; with ``force=True`` an existing *index* there is
    replaced (a folder holding anything else is never deleted). ``embedder`` defaults to
    the packaged all-MiniLM-L6-v2. ``progress`` shows a tqdm bar on stderr while embedding.
    ``batch_size`` 16 measured ~1.5x faster than 64 for 800-character chunks on 2 CPU cores.

    Returns stats: files, chunks, dims, bm25, seconds, passages_per_s, out_dir.
    """
    corpus = Path(corpus_dir)
    out = Path(out_dir)
    _check_target(out, force=force)
    started = time.perf_counter()

    passages = list(chunk_corpus(corpus, chunk_chars=chunk_chars, overlap=overlap))
    if not passages:
        raise ValueError(f"no text found in {corpus}: it has no non-empty .md or .txt files")
    files = len({p.source for p in passages})

    if embedder is None:
        from tsvllm.rag.embedder import Embedder

        embedder = Embedder.load()
    embed_started = time.perf_counter()
    vectors = _embed_all(embedder, [p.text for p in passages], batch_size, progress)
    embed_seconds = time.perf_counter() - embed_started

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_index(
            tmp,
            passages,
            vectors,
            embedder=embedder,
            files=files,
            chunk_chars=chunk_chars,
            overlap=overlap,
            bm25=bm25,
        )
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    seconds = time.perf_counter() - started
    return {
        "files": files,
        "chunks": len(passages),
        "dims": int(vectors.shape[1]),
        "bm25": bm25,
        "seconds": round(seconds, 3),
        "passages_per_s": round(len(passages) / embed_seconds, 1) if embed_seconds else None,
        "out_dir": str(out),
    }


def _write_index(
    folder: Path,
    passages: list[Passage],
    vectors: np.ndarray,
    *,
    embedder: TextEmbedder,
    files: int,
    chunk_chars: int,
    overlap: int,
    bm25: bool,
) -> None:
    """Write every file of an index into the empty ``folder``, the manifest last."""
    np.save(folder / EMBEDDINGS, vectors)
    with open(folder / CHUNKS, "w", encoding="utf-8") as fh:
        for p in passages:
            row = {"id": p.id, "source": p.source, "text": p.text}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    if bm25:
        _build_bm25(passages, folder / BM25_DIR)
    manifest = _manifest(
        embedder,
        dims=int(vectors.shape[1]),
        count=len(passages),
        files=files,
        chunk_chars=chunk_chars,
        overlap=overlap,
        bm25=bm25,
    )
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _manifest(
    embedder: TextEmbedder,
    *,
    dims: int,
    count: int,
    files: int,
    chunk_chars: int,
    overlap: int,
    bm25: bool,
) -> dict[str, Any]:
    """What built the index (``manifest.json``), stamped with the current time."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "embedding_model": {
            "name": embedder.name,
            "sha256": embedder.sha256,
            "pooling": "mean",
            "normalized": True,
        },
        "dims": dims,
        "count": count,
        "files": files,
        "chunking": {"chunk_chars": chunk_chars, "overlap": overlap},
        "bm25": bm25,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def read_manifest(index_dir: Path | str) -> dict[str, Any]:
    """The manifest of an index folder, checked for format and version."""
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise IndexFormatError(f"{index_dir} is not a tsvllm index: {MANIFEST} is missing")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} has format version {manifest.get('format_version')}, this tsvllm reads "
            f"version {FORMAT_VERSION}: rebuild it with `tsvllm index`"
        )
    return manifest


def load_index(
    index_dir: Path | str,
    *,
    hybrid: bool = False,
    embedder: TextEmbedder | None = None,
    search: Literal["auto", "exact", "partitioned"] = "auto",
    nprobe: int | None = None,
) -> LocalRetriever:
    """Load an index folder into a :class:`LocalRetriever` (the query embedder loads lazily).

    ``hybrid=True`` needs an index built with ``bm25=True``. ``search`` and ``nprobe``:
    see :class:`LocalRetriever` (partitioning runs here, at load: ~3 s at 100k chunks).
    """
    root = Path(index_dir)
    manifest = read_manifest(root)
    vectors = np.load(root / EMBEDDINGS, allow_pickle=False)
    passages = []
    with open(root / CHUNKS, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                passages.append(Passage(id=row["id"], source=row["source"], text=row["text"]))
    count, dims = manifest["count"], manifest["dims"]
    if vectors.shape != (count, dims) or len(passages) != count:
        raise IndexFormatError(
            f"{root}: manifest says {count} x {dims}, found embeddings {vectors.shape} and "
            f"{len(passages)} chunks: the index is damaged, rebuild it"
        )
    if hybrid and not manifest["bm25"]:
        raise IndexFormatError(
            f"{root} was built without BM25: rebuild it with bm25 on, or use hybrid=False"
        )
    bm25_index = _load_bm25(root / BM25_DIR) if hybrid else None
    return LocalRetriever(
        vectors,
        passages,
        embedder=embedder,
        bm25=bm25_index,
        hybrid=hybrid,
        model_sha256=manifest["embedding_model"]["sha256"],
        search=search,
        nprobe=nprobe,
    )


def _check_target(out: Path, *, force: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return
    if not force:
        raise FileExistsError(
            f"{out} already exists and is not empty; pass force=True to replace it"
        )
    if MANIFEST not in entries or not entries <= INDEX_ENTRIES:
        extra = sorted(entries - INDEX_ENTRIES) or [f"no {MANIFEST}"]
        raise FileExistsError(
            f"{out} does not look like a tsvllm index ({', '.join(extra)}); "
            "refusing to replace it even with force=True"
        )


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, swapping out an old index if there is one."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / "index")
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old / "index", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _embed_all(
    embedder: TextEmbedder, texts: list[str], batch_size: int, progress: bool
) -> np.ndarray:
    from tqdm.auto import tqdm

    # longest first: similar lengths batch together (less padding) and the ETA is honest
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    vectors = np.zeros((len(texts), embedder.dims), dtype=np.float32)
    with tqdm(total=len(texts), desc="embedding", unit="chunk", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            vectors[idx] = embedder.embed([texts[i] for i in idx], batch_size=batch_size)
            bar.update(len(idx))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _build_bm25(passages: list[Passage], folder: Path) -> None:
    import bm25s

    index = bm25s.BM25()
    index.index(bm25_tokenize([p.text for p in passages]), show_progress=False)
    index.save(str(folder), show_progress=False)


def _load_bm25(folder: Path) -> Any:
    import bm25s

    if not folder.is_dir():
        raise IndexFormatError(f"{folder} is missing: rebuild the index with bm25 on")
    return bm25s.BM25.load(str(folder), show_progress=False)
