"""Split ``.txt``/``.md`` documents into passages small enough to embed and to quote.

Rules, in order of preference:

* Markdown is first cut into sections at heading lines (``#`` .. ``######``, not inside
  code fences). A section that fits in ``chunk_chars`` is never split, so a heading stays
  with its text; consecutive small sections are packed together while they fit.
* A section too long for one chunk is split at paragraph breaks, then line breaks, then
  sentence ends, then spaces, and only as a last resort inside a word. Its chunks overlap
  by up to ``overlap`` characters, the overlap starting at a sentence or word boundary.
  Overlap never reaches back across a section boundary.
* Every chunk is a verbatim (whitespace-stripped) slice of the document, at most
  ``chunk_chars`` long. Its id is ``"{source}#{n}"`` (n from 0 in document order) and its
  source is the file's path relative to the corpus root, with ``/`` separators.

Plain-text files are treated as one section.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

SUFFIXES = (".md", ".txt")
DEFAULT_CHUNK_CHARS = 800
DEFAULT_OVERLAP = 100

_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]|$)")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
# split points, from the most to the least preferred; each is the offset a new piece starts at
_SPLITTERS = (
    re.compile(r"\n[ \t]*\n\s*"),  # paragraph break
    re.compile(r"\n\s*"),  # line break
    re.compile(r"(?<=[.!?])[\"')\]]*\s+"),  # sentence end
    re.compile(r"\s+"),  # word break
)
_SENTENCE_START = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=\S)")
_WORD_START = re.compile(r"\s+(?=\S)")


@dataclass(frozen=True)
class Passage:
    """A chunk of a document before scoring: what the index stores, one per line."""

    id: str
    source: str
    text: str


def _check(chunk_chars: int, overlap: int) -> None:
    if chunk_chars < 50:
        raise ValueError(f"chunk_chars must be >= 50, got {chunk_chars}")
    if not 0 <= overlap <= chunk_chars // 2:
        raise ValueError(f"overlap must be between 0 and chunk_chars/2, got {overlap}")


def _sections(text: str, *, markdown: bool) -> list[tuple[int, int]]:
    """(start, end) spans that tile ``text``; each markdown section starts at its heading."""
    if not markdown:
        return [(0, len(text))]
    starts = [0]
    in_fence = False
    offset = 0
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and _HEADING.match(line) and offset > 0:
            starts.append(offset)
        offset += len(line)
    ends = starts[1:] + [len(text)]
    return list(zip(starts, ends, strict=True))


def _only_headings(text: str) -> bool:
    return all(_HEADING.match(line) for line in text.splitlines() if line.strip())


def _split(text: str, start: int, end: int, limit: int, level: int = 0) -> list[tuple[int, int]]:
    """Tile ``text[start:end]`` with spans no longer than ``limit``, cut at the best boundary."""
    if end - start <= limit:
        return [(start, end)]
    if level == len(_SPLITTERS):  # one unbreakable run: hard cut
        return [(i, min(i + limit, end)) for i in range(start, end, limit)]
    cuts = [m.end() for m in _SPLITTERS[level].finditer(text, start, end) if start < m.end() < end]
    if not cuts:
        return _split(text, start, end, limit, level + 1)
    spans: list[tuple[int, int]] = []
    bounds = [start, *cuts, end]
    for a, b in pairwise(bounds):
        spans.extend(_split(text, a, b, limit, level + 1))
    return spans


def _overlap_start(text: str, end: int, overlap: int, floor: int) -> int:
    """Where a continuation chunk starts: a sentence (else word) start in the last ``overlap``
    characters before ``end``, not before ``floor``; ``end`` itself when there is none."""
    lo = max(floor, end - overlap)
    if overlap <= 0 or lo >= end:
        return end
    for pattern in (_SENTENCE_START, _WORD_START):
        m = pattern.search(text, lo, end)
        if m and m.end() < end:
            return m.end()
    return end


def split_text(
    text: str,
    *,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    overlap: int = DEFAULT_OVERLAP,
    markdown: bool = True,
) -> list[str]:
    """Chunk ``text`` by the rules in the module docstring; returns the chunk texts in order."""
    _check(chunk_chars, overlap)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    chunks: list[tuple[int, int]] = []
    cur: tuple[int, int] | None = None  # the chunk being packed with whole sections

    for s_start, s_end in _sections(text, markdown=markdown):
        if not text[s_start:s_end].strip():
            continue
        if s_end - s_start <= chunk_chars:
            if cur is not None and s_end - cur[0] <= chunk_chars:
                cur = (cur[0], s_end)
            else:
                if cur is not None:
                    chunks.append(cur)
                cur = (s_start, s_end)
            continue
        # a long section: pack its pieces greedily, each new chunk overlapping the last
        pieces = _split(text, s_start, s_end, chunk_chars - overlap)
        c_start, c_end = pieces[0]
        if cur is not None:
            # bare headings just before it (``# Title`` then ``## Part``) stay with it
            if _only_headings(text[cur[0] : cur[1]]) and c_end - cur[0] <= chunk_chars:
                c_start = cur[0]
            else:
                chunks.append(cur)
            cur = None
        for _, p_end in pieces[1:]:
            if p_end - c_start <= chunk_chars:
                c_end = p_end
                continue
            chunks.append((c_start, c_end))
            c_start = _overlap_start(text, c_end, overlap, floor=s_start)
            c_end = p_end
        chunks.append((c_start, c_end))
    if cur is not None:
        chunks.append(cur)
    return [t for a, b in chunks if (t := text[a:b].strip())]


def iter_corpus(corpus_dir: Path | str) -> list[Path]:
    """The ``.md``/``.txt`` files under ``corpus_dir``, recursively, sorted by relative path.

    Hidden files and folders (``.git``, ``.cache``, ...) are skipped.
    """
    root = Path(corpus_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"corpus directory not found: {root}")
    files = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def chunk_file(
    path: Path | str,
    *,
    root: Path | str,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    overlap: int = DEFAULT_OVERLAP,
) -> list[Passage]:
    """The passages of one file; ``source`` is its path relative to ``root``."""
    path = Path(path)
    source = path.relative_to(root).as_posix()
    text = path.read_text(encoding="utf-8", errors="replace")
    texts = split_text(
        text, chunk_chars=chunk_chars, overlap=overlap, markdown=path.suffix.lower() == ".md"
    )
    return [Passage(id=f"{source}#{n}", source=source, text=t) for n, t in enumerate(texts)]


def chunk_corpus(
    corpus_dir: Path | str,
    *,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    overlap: int = DEFAULT_OVERLAP,
) -> Iterator[Passage]:
    """Every passage of every corpus file, in a deterministic order (files sorted by path)."""
    _check(chunk_chars, overlap)
    for path in iter_corpus(corpus_dir):
        yield from chunk_file(path, root=corpus_dir, chunk_chars=chunk_chars, overlap=overlap)
