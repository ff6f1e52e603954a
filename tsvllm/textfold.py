"""Text folding for evasion-resistant matching, with a map back to the original offsets.

``fold(text)`` is what the deny list and the injection heuristics (:mod:`tsvllm.guards`) match
on, and what the config's check for blank deny-list terms uses (:mod:`tsvllm.config.guards`);
standard library only, so both may import it:

* invisible characters are removed: zero-width space/joiners/marks (U+200B-U+200F), word
  joiner and invisible operators (U+2060-U+2064), BOM (U+FEFF), soft hyphen (U+00AD), bidi
  embeddings/overrides/isolates (U+202A-U+202E, U+2066-U+2069), Arabic letter mark, Mongolian
  vowel separator, combining grapheme joiner, and Unicode *tag* characters (U+E0000-U+E007F,
  "ASCII smuggling");
* each remaining character is NFKC-normalised (full-width ``Ｉｇｎｏｒｅ`` → ``Ignore``,
  ligatures ``ﬁ`` → ``fi``, super/subscripts → digits) and, optionally, case-folded;
* optionally, common Cyrillic/Greek look-alikes of Latin letters map to the Latin letter
  (``раураl`` written with Cyrillic ``р``/``а``/``у`` → ``paypal``).

Whitespace is not collapsed here: patterns match runs of whitespace with ``\\s+``, which keeps
offsets simple. :func:`fold_with_map` folds per character (with its combining marks), so a
match can be mapped back onto the original text for redaction. Pure-ASCII text takes a fast path
(NFKC is the identity on ASCII and no invisible characters can be present).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
import unicodedata

__all__ = [
    "OffsetMap",
    "decode_tag_chars",
    "fold",
    "fold_with_map",
    "strip_invisible",
]

_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD),  # soft hyphen
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x061C, 0x061C),  # Arabic letter mark (bidi)
    (0x180E, 0x180E),  # Mongolian vowel separator
    (0x200B, 0x200F),  # zero-width space, ZWNJ, ZWJ, LRM, RLM
    (0x202A, 0x202E),  # bidi embeddings and overrides
    (0x2060, 0x2064),  # word joiner, invisible function application/times/separator/plus
    (0x2066, 0x2069),  # bidi isolates
    (0xFEFF, 0xFEFF),  # zero-width no-break space / BOM
    (0xE0000, 0xE007F),  # tag characters
)

# Latin look-alikes from Cyrillic and Greek (lower and upper case); deliberately small.
_HOMOGLYPHS = {
    "а": "a",
    "А": "A",
    "В": "B",
    "с": "c",
    "С": "C",
    "е": "e",
    "Е": "E",
    "ё": "e",
    "һ": "h",
    "Н": "H",
    "і": "i",
    "І": "I",
    "ј": "j",
    "Ј": "J",
    "К": "K",
    "М": "M",
    "о": "o",
    "О": "O",
    "р": "p",
    "Р": "P",
    "ѕ": "s",
    "Ѕ": "S",
    "Т": "T",
    "у": "y",
    "У": "Y",
    "х": "x",
    "Х": "X",
    "ԁ": "d",
    "ԛ": "q",
    "ԝ": "w",
    "ɡ": "g",
    "α": "a",
    "Α": "A",
    "Β": "B",
    "ε": "e",
    "Ε": "E",
    "Η": "H",
    "ι": "i",
    "Ι": "I",
    "κ": "k",
    "Κ": "K",
    "Μ": "M",
    "ν": "v",
    "Ν": "N",
    "ο": "o",
    "Ο": "O",
    "ρ": "p",
    "Ρ": "P",
    "τ": "t",
    "Τ": "T",
    "υ": "u",
    "Υ": "Y",
    "χ": "x",
    "Χ": "X",
    "Ζ": "Z",
}


@functools.lru_cache(maxsize=1)
def _invisible_table() -> dict[int, None]:
    return {cp: None for lo, hi in _INVISIBLE_RANGES for cp in range(lo, hi + 1)}


@functools.lru_cache(maxsize=1)
def _map_table() -> dict[int, str | None]:
    """Invisible characters → removed, look-alikes → Latin (for ``str.translate``)."""
    table: dict[int, str | None] = dict(_invisible_table())
    table.update({ord(k): v for k, v in _HOMOGLYPHS.items()})
    return table


@functools.lru_cache(maxsize=1)
def _non_ascii_re() -> re.Pattern[str]:
    return re.compile("[^\\x00-\\x7f]+")


@functools.lru_cache(maxsize=1)
def _tag_run_re() -> re.Pattern[str]:
    return re.compile("[\\U000e0000-\\U000e007f]+")


def strip_invisible(text: str) -> str:
    """``text`` without the invisible characters listed in the module docstring."""
    if text.isascii():
        return text
    return text.translate(_invisible_table())


def _fold_str(text: str, casefold: bool, homoglyphs: bool) -> str:
    """NFKC, then invisible characters removed and look-alikes mapped, then case-folded.

    ``str.translate`` costs a dictionary look-up per character on non-ASCII strings, so it
    runs on the non-ASCII runs only (mostly-ASCII text stays fast).
    """
    text = unicodedata.normalize("NFKC", text)
    if not text.isascii():
        table = _map_table() if homoglyphs else _invisible_table()
        text = _non_ascii_re().sub(lambda m: m.group().translate(table), text)
    return text.casefold() if casefold else text


@functools.lru_cache(maxsize=8192)
def _fold_char(ch: str, casefold: bool, homoglyphs: bool) -> str:
    return _fold_str(ch, casefold, homoglyphs)


@functools.lru_cache(maxsize=16)
def _fold_cached(text: str, casefold: bool, homoglyphs: bool) -> str:
    return _fold_str(text, casefold, homoglyphs)


_CACHE_MAX_CHARS = 65536  # longer texts are folded without caching (bounded memory)


def fold(text: str, *, casefold: bool = True, homoglyphs: bool = True) -> str:
    """The folded form of ``text`` (see the module docstring), folded as one string.

    This is the fast form for detection. It can differ from the per-character folding of
    :func:`fold_with_map` only where NFKC composes across characters (rare); callers that
    need offsets re-match on that form. Recent results are cached, so guards in one chain
    share the work.
    """
    if text.isascii():
        return text.lower() if casefold else text
    if len(text) > _CACHE_MAX_CHARS:
        return _fold_str(text, casefold, homoglyphs)
    return _fold_cached(text, casefold, homoglyphs)


def _units(text: str) -> list[tuple[int, int]]:
    """Spans of each character with the combining marks that follow it."""
    combining = unicodedata.combining
    units = []
    start = 0
    for i in range(1, len(text)):
        if not combining(text[i]):
            units.append((start, i))
            start = i
    units.append((start, len(text)))
    return units


class OffsetMap:
    """Maps positions in a folded text back to the original text (see :func:`fold_with_map`).

    Stored per stretch, not per character: an ASCII stretch maps linearly, a non-ASCII
    stretch keeps one entry per unit. Building it costs little for mostly-ASCII text.
    """

    def __init__(self) -> None:
        # (folded start, folded end, original start, original end, linear?)
        self._entries: list[tuple[int, int, int, int, bool]] = []
        self._keys: list[int] = []

    def _add(self, fstart: int, fend: int, ostart: int, oend: int, linear: bool) -> None:
        self._entries.append((fstart, fend, ostart, oend, linear))
        self._keys.append(fstart)

    def _locate(self, j: int) -> tuple[int, int]:
        """The original span of the unit that produced folded character ``j``."""
        fstart, _, ostart, oend, linear = self._entries[bisect.bisect_right(self._keys, j) - 1]
        if linear:
            o = ostart + (j - fstart)
            return o, o + 1
        return ostart, oend

    def span(self, a: int, b: int) -> tuple[int, int]:
        """The span of the original text that produced ``folded[a:b]`` (``b > a``)."""
        return self._locate(a)[0], self._locate(b - 1)[1]


def fold_with_map(
    text: str, *, casefold: bool = True, homoglyphs: bool = True
) -> tuple[str, OffsetMap]:
    """``(folded, offsets)``: the folded text and a map back to ``text``.

    Folding is done per unit (a character plus the combining marks after it), so ``folded``
    equals :func:`fold` except where NFKC composes across units (rare; callers re-match on
    this form then). ``offsets.span(a, b)`` covers whole units, including invisible characters
    inside the span.
    """
    offsets = OffsetMap()
    if text.isascii():
        offsets._add(0, len(text), 0, len(text), True)
        return (text.lower() if casefold else text), offsets
    parts: list[str] = []
    flen = 0
    pos = 0
    n = len(text)
    for m in itertools.chain(_non_ascii_re().finditer(text), (None,)):
        a, b = m.span() if m is not None else (n, n)
        if m is not None and a > pos and unicodedata.combining(text[a]):
            a -= 1  # a combining mark belongs with the (ASCII) character before it
        if a > pos:
            seg = text[pos:a]
            parts.append(seg.lower() if casefold else seg)
            offsets._add(flen, flen + a - pos, pos, a, True)
            flen += a - pos
        for s, e in _units(text[a:b]) if b > a else ():
            unit = text[a + s : a + e]
            piece = (
                _fold_char(unit, casefold, homoglyphs)
                if e - s == 1
                else _fold_str(unit, casefold, homoglyphs)
            )
            if piece:
                parts.append(piece)
                offsets._add(flen, flen + len(piece), a + s, a + e, False)
                flen += len(piece)
        pos = max(pos, b)
    return "".join(parts), offsets


def decode_tag_chars(text: str) -> list[tuple[int, int, str]]:
    """Runs of Unicode tag characters decoded to ASCII: ``[(start, end, decoded), ...]``.

    Tag characters U+E0020-U+E007E mirror printable ASCII and render as nothing; they have
    been used to hide instructions from human reviewers. Flag emoji subdivision sequences
    (England, Scotland, Wales) use a few of them legitimately.
    """
    if text.isascii() or len(text.encode("utf-16-le", "surrogatepass")) == 2 * len(text):
        return []  # no character outside the BMP (a fast C-level test)
    runs = []
    for m in _tag_run_re().finditer(text):
        decoded = "".join(chr(ord(c) - 0xE0000) for c in m.group() if 0xE0020 <= ord(c) <= 0xE007E)
        runs.append((m.start(), m.end(), decoded))
    return runs
