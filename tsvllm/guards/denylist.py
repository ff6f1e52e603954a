"""DenyListGuard: words and phrases that must not pass, robust to simple evasion.

Both the terms and the text are folded (:func:`tsvllm.textfold.fold`): NFKC,
case-folding, invisible characters removed, common Cyrillic/Greek look-alikes mapped to Latin
(``homoglyphs=True``). Words of a phrase match across any run of whitespace (``bad   word``,
``bad\\nword``), and a term matches on word boundaries only: ``ass`` does not match
``class``. So ``B\u200bad Ｗｏｒｄ`` matches the term ``bad word``.

Not handled: spelled-out evasions (``b a d``, ``b.a.d``, leetspeak ``b4d``); list them as
terms when they matter. Terms compile into one regular expression; lists of a few hundred
terms are fine, much longer lists should use a dedicated matcher.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tsvllm.guards.base import Action, Finding, RuleGuard, Stage
from tsvllm.textfold import fold, fold_with_map

__all__ = ["DenyListGuard"]


def _term_pattern(term: str, homoglyphs: bool) -> str | None:
    """The regex for one folded term: words joined by ``\\s+``, on word boundaries.

    The left boundary is checked *after* the first character (``b(?<!\\w.)ad``) rather than
    before it, so the pattern starts with a literal and the regex engine can skip quickly to
    the places where a term could start.
    """
    words = fold(term, homoglyphs=homoglyphs).split()
    if not words:
        return None
    first = words[0]
    if re.match(r"\w", first):
        head = re.escape(first[0]) + r"(?<!\w.)" + re.escape(first[1:])
    else:
        head = re.escape(first)
    body = r"\s+".join([head, *(re.escape(w) for w in words[1:])])
    tail = r"(?!\w)" if re.search(r"\w$", words[-1]) else ""
    return body + tail


class DenyListGuard(RuleGuard):
    """Block (or redact) listed words and phrases. Category ``category`` (``denylist``).

    ``terms`` is a list of words or phrases (case and Unicode form do not matter). The
    redaction label is ``[REDACTED:DENYLIST]``. The matched term is never put in ``detail``.
    """

    name = "denylist"

    def __init__(
        self,
        terms: Iterable[str],
        *,
        mode: Action | str = Action.BLOCK,
        stages: Iterable[Stage | str] | None = None,
        homoglyphs: bool = True,
        category: str = "denylist",
        name: str | None = None,
    ) -> None:
        super().__init__(mode=mode, stages=stages, name=name)
        if isinstance(terms, str):
            raise TypeError("terms must be a list of strings, not one string")
        self.homoglyphs = bool(homoglyphs)
        self.category = category
        patterns = []
        for term in terms:
            if not isinstance(term, str):
                raise TypeError(f"deny-list terms must be strings, not {type(term).__name__}")
            pattern = _term_pattern(term, self.homoglyphs)
            if pattern is None:
                raise ValueError("deny-list terms must not be empty or whitespace")
            patterns.append(pattern)
        # Longest first, so a phrase wins over a word it starts with.
        patterns = sorted(set(patterns), key=len, reverse=True)
        self.size = len(patterns)
        self._re = re.compile("|".join(patterns)) if patterns else None

    def find(self, text: str) -> list[Finding]:
        """Spans of deny-listed terms, in ``text`` offsets."""
        if self._re is None:
            return []
        folded = fold(text, homoglyphs=self.homoglyphs)
        label = "[REDACTED:DENYLIST]"
        if text.isascii():  # folding kept every offset
            return [Finding(*m.span(), self.category, label) for m in self._re.finditer(folded)]
        matches = list(self._re.finditer(folded))
        if not matches:
            return []
        unit_folded, offsets = fold_with_map(text, homoglyphs=self.homoglyphs)
        if unit_folded != folded:  # NFKC composed across characters: match the per-unit form
            matches = list(self._re.finditer(unit_folded))
            if not matches:  # flag the whole text rather than miss it
                return [Finding(0, len(text), self.category, label)]
        return [Finding(*offsets.span(*m.span()), self.category, label) for m in matches]
