"""Unit: chunking boundaries, overlap, ids and deterministic corpus order (no model)."""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

import pytest

from tsvllm.rag.chunking import (
    Passage,
    _sections,
    chunk_corpus,
    chunk_file,
    iter_corpus,
    split_text,
)


def sentence(i: int) -> str:
    return f"Sentence number {i} talks about hydroponic channel {i} in some detail."


def paragraph(i: int, sentences: int = 3) -> str:
    return " ".join(sentence(i * 10 + j) for j in range(sentences))


def test_short_text_is_one_stripped_chunk() -> None:
    assert split_text("  \n# Title\n\nHello world.\n\n") == ["# Title\n\nHello world."]


def test_empty_and_blank_texts_give_no_chunks() -> None:
    assert split_text("") == []
    assert split_text(" \n\n \t\n") == []


def test_chunks_are_bounded_verbatim_slices_of_the_text() -> None:
    text = "\n\n".join(paragraph(i, sentences=2 + i % 4) for i in range(40))
    chunks = split_text(text, chunk_chars=300, overlap=60)
    assert len(chunks) > 5
    for c in chunks:
        assert len(c) <= 300
        assert c in text
        assert c == c.strip()
    # together they cover every sentence
    for i in range(40):
        assert any(sentence(i * 10) in c for c in chunks)


def test_without_overlap_chunks_are_whole_paragraphs() -> None:
    paras = [paragraph(i) for i in range(12)]  # ~215 chars each
    chunks = split_text("\n\n".join(paras), chunk_chars=500, overlap=0)
    assert len(chunks) == 6
    for c in chunks:
        assert all(part in paras for part in c.split("\n\n"))


def test_overlap_repeats_the_tail_of_the_previous_chunk_from_a_sentence_start() -> None:
    text = "\n\n".join(paragraph(i) for i in range(12))
    chunks = split_text(text, chunk_chars=500, overlap=100)
    assert len(chunks) > 1
    for prev, nxt in pairwise(chunks):
        shared = next(n for n in range(len(nxt), 0, -1) if prev.endswith(nxt[:n]))
        assert 0 < shared <= 100
        assert nxt.startswith("Sentence number"), nxt[:40]


def test_overlap_falls_back_to_a_word_start() -> None:
    words = " ".join(f"word{i:03d}" for i in range(300))  # no sentence ends, no newlines
    chunks = split_text(words, chunk_chars=200, overlap=40)
    for prev, nxt in pairwise(chunks):
        assert re.fullmatch(r"word\d{3}", nxt.split(" ")[0])
        assert nxt.split(" ")[0] in prev  # starts inside the previous chunk
    assert all(len(c) <= 200 for c in chunks)


def test_long_paragraph_is_cut_at_sentence_ends() -> None:
    text = " ".join(sentence(i) for i in range(30))  # one paragraph, ~2 KB
    chunks = split_text(text, chunk_chars=400, overlap=0)
    assert len(chunks) > 3
    assert all(c.endswith(".") for c in chunks)


def test_unbreakable_run_is_hard_cut_without_loss() -> None:
    text = "x" * 1050
    chunks = split_text(text, chunk_chars=400, overlap=0)
    assert [len(c) for c in chunks] == [400, 400, 250]
    assert "".join(chunks) == text


def test_sections_start_chunks_and_small_ones_are_packed() -> None:
    text = (
        "# Guide\n\nIntro line.\n\n"
        "## Alpha\n\n" + paragraph(1) + "\n\n"
        "## Beta\n\n" + paragraph(2) + "\n\n"
        "## Gamma\n\n" + paragraph(3) + "\n"
    )
    chunks = split_text(text, chunk_chars=500, overlap=100)
    # intro 22 chars + ~225 per section: intro, Alpha and Beta fit in 500; Gamma starts anew
    assert len(chunks) == 2
    assert chunks[0].startswith("# Guide") and "## Alpha" in chunks[0] and "## Beta" in chunks[0]
    assert chunks[1].startswith("## Gamma")
    assert paragraph(2) not in chunks[1], "sections are not overlapped"
    for c in chunks:
        assert not c.splitlines()[-1].startswith("#"), "a heading ends a chunk"


def test_long_section_overlaps_only_inside_itself() -> None:
    text = "## Short\n\nJust this.\n\n## Long\n\n" + "\n\n".join(paragraph(i) for i in range(8))
    chunks = split_text(text, chunk_chars=400, overlap=100)
    assert chunks[0] == "## Short\n\nJust this."
    assert chunks[1].startswith("## Long")
    assert all("Just this" not in c for c in chunks[1:])


def test_bare_heading_stays_with_the_long_section_after_it() -> None:
    text = "# Manual\n\n## Setup\n\n" + "\n\n".join(paragraph(i) for i in range(8))
    chunks = split_text(text, chunk_chars=400, overlap=50)
    assert chunks[0].startswith("# Manual\n\n## Setup\n\nSentence number 0")


def test_headings_inside_code_fences_are_not_sections() -> None:
    text = "# Real\n\ntext\n\n```bash\n# not a heading\necho hi\n```\n\n## Also real\n\nmore\n"
    starts = [text[a:b].splitlines()[0] for a, b in _sections(text, markdown=True)]
    assert starts == ["# Real", "## Also real"]
    assert _sections(text, markdown=False) == [(0, len(text))]


def test_crlf_is_normalised() -> None:
    assert split_text("# T\r\n\r\nline one\r\nline two\r\n") == ["# T\n\nline one\nline two"]


@pytest.mark.parametrize(("chunk_chars", "overlap"), [(10, 0), (800, -1), (800, 401)])
def test_bad_settings_are_rejected(chunk_chars: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        split_text("text", chunk_chars=chunk_chars, overlap=overlap)


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_ids_are_relative_path_and_number(tmp_path: Path) -> None:
    _write(tmp_path, "guides/setup.md", "\n\n".join(f"## S{i}\n\n{paragraph(i)}" for i in range(6)))
    passages = chunk_file(tmp_path / "guides/setup.md", root=tmp_path, chunk_chars=300, overlap=50)
    assert [p.id for p in passages] == [f"guides/setup.md#{n}" for n in range(len(passages))]
    assert {p.source for p in passages} == {"guides/setup.md"}
    assert isinstance(passages[0], Passage)


def test_txt_files_have_no_markdown_sections(tmp_path: Path) -> None:
    _write(tmp_path, "notes.txt", "# not a heading in txt\nbody\n\n# another\nmore body\n")
    (p,) = chunk_file(tmp_path / "notes.txt", root=tmp_path)
    assert p.text.startswith("# not a heading in txt") and p.text.endswith("more body")


def test_corpus_order_is_sorted_recursive_and_filtered(tmp_path: Path) -> None:
    for rel in ["b.md", "a.txt", "sub/z.md", "sub/a.MD", "c.rst", ".hidden/x.md", "sub/.y.md"]:
        _write(tmp_path, rel, f"text of {rel}")
    rels = [p.relative_to(tmp_path).as_posix() for p in iter_corpus(tmp_path)]
    assert rels == ["a.txt", "b.md", "sub/a.MD", "sub/z.md"]
    first = list(chunk_corpus(tmp_path))
    assert [p.id for p in first] == ["a.txt#0", "b.md#0", "sub/a.MD#0", "sub/z.md#0"]
    assert list(chunk_corpus(tmp_path)) == first


def test_missing_corpus_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        iter_corpus(tmp_path / "nope")


def test_bundled_example_corpus_is_small_and_chunks_cleanly() -> None:
    corpus = Path(__file__).resolve().parents[2] / "examples" / "corpus"
    files = iter_corpus(corpus)
    assert 6 <= len(files) <= 10
    assert sum(f.stat().st_size for f in files) < 30_000
    passages = list(chunk_corpus(corpus))
    assert all(len(p.text) <= 800 for p in passages)
    designer = [p.source for p in passages if "Mirela Okonkwo-Tanaka" in p.text]
    interval = [p.source for p in passages if "47 minutes" in p.text]
    assert designer == ["history.md"]
    assert interval == ["irrigation.md"]
