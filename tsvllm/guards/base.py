"""The guard seam: stages, actions, decisions, the :class:`Guard` protocol and :class:`RuleGuard`.

A guard looks at one piece of text at one :class:`Stage` and returns a :class:`Decision`:

* ``ALLOW``  - pass the text on unchanged;
* ``REDACT`` - pass ``decision.text`` on instead (the offending spans replaced by labels such
  as ``[REDACTED:EMAIL]``);
* ``BLOCK``  - refuse the request (input/context) or end the response (output).

``Decision.detail`` is for logs and error messages. Guards in this package never put the
matched text into ``detail`` (it would copy an e-mail address or a key into the worker log):
only categories and counts.

Rule guards (:class:`RuleGuard` subclasses) are synchronous underneath: ``scan(text)`` can be
called directly (benchmarks, tests), and :meth:`RuleGuard.find` reports the spans, which the
stream scanner (:mod:`tsvllm.guards.chain`) needs to redact text it has not emitted yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, ClassVar, Protocol, runtime_checkable

__all__ = [
    "Action",
    "Decision",
    "Finding",
    "Guard",
    "RuleGuard",
    "Stage",
    "apply_redactions",
    "merge_findings",
    "parse_stages",
    "summarize_findings",
]

#: rule guards scan a longer text in a thread (4 KiB takes ~0.35 ms inline; 1 MiB ~90 ms)
INLINE_SCAN_CHARS = 4096


class Stage(str, Enum):
    """Where in the request a text comes from."""

    INPUT = "input"  # the user's messages / prompt
    CONTEXT = "context"  # retrieved documents (RAG), tool results: indirect injection
    OUTPUT = "output"  # the model's response, whole or streamed


class Action(str, Enum):
    """What to do with the text."""

    ALLOW = "allow"
    REDACT = "redact"
    BLOCK = "block"


@dataclass(frozen=True)
class Decision:
    """A guard's (or a chain's) verdict on one text.

    ``categories`` name what was found (``pii.email``, ``secret.aws``, ``injection.role_tag``,
    ``llamaguard.S1``, ``guard.error``...). ``text`` is the redacted text when ``action`` is
    ``REDACT`` and ``None`` otherwise. ``guard`` names the guard that decided (for a chain's
    redaction: the guards that redacted, comma-separated).
    """

    action: Action
    categories: tuple[str, ...] = ()
    detail: str = ""
    text: str | None = None
    guard: str = ""

    @classmethod
    def allow(cls, *, detail: str = "", guard: str = "") -> Decision:
        """Nothing to do."""
        return cls(Action.ALLOW, detail=detail, guard=guard)

    @classmethod
    def block(cls, categories: Iterable[str], *, detail: str = "", guard: str = "") -> Decision:
        """Refuse the text."""
        return cls(Action.BLOCK, tuple(categories), detail=detail, guard=guard)

    @classmethod
    def redact(
        cls, text: str, categories: Iterable[str], *, detail: str = "", guard: str = ""
    ) -> Decision:
        """Pass ``text`` (the redacted version) on instead of the original."""
        return cls(Action.REDACT, tuple(categories), detail=detail, text=text, guard=guard)

    @property
    def allowed(self) -> bool:
        """True for ALLOW only (a redaction is not 'allowed as is')."""
        return self.action is Action.ALLOW

    @property
    def redacted(self) -> bool:
        return self.action is Action.REDACT

    @property
    def blocked(self) -> bool:
        return self.action is Action.BLOCK

    def text_or(self, original: str) -> str:
        """The text to pass on: the redacted text for REDACT, else ``original``."""
        return self.text if self.action is Action.REDACT and self.text is not None else original


@runtime_checkable
class Guard(Protocol):
    """Anything that can check a text. Guards must be safe to call concurrently.

    Optional attributes the chain honours when present:

    * ``stages`` - the stages the guard applies to (absent: all stages);
    * ``incremental`` - ``False`` when the guard is too expensive to run on every streamed
      window (an LLM judge); the stream scanner then runs it once on the whole text at
      ``finish()``. Absent means ``True``.
    """

    name: str

    async def check(
        self, text: str, *, stage: Stage, ctx: Mapping[str, Any] | None = None
    ) -> Decision:
        """Return the decision for ``text`` seen at ``stage``. ``ctx`` is request metadata."""
        ...


@dataclass(frozen=True)
class Finding:
    """One match of a rule: ``text[start:end]`` is ``category`` and is replaced by ``label``.

    ``open`` marks a match that runs to the end of the text because its end has not been
    seen yet (a PEM block without its END line); see :meth:`RuleGuard.find_close`.
    """

    start: int
    end: int
    category: str
    label: str
    weight: float = 1.0
    open: bool = False


def parse_stages(stages: Iterable[Stage | str]) -> frozenset[Stage]:
    """``("input", Stage.OUTPUT)`` → a frozenset of :class:`Stage`; ValueError on a bad name."""
    if isinstance(stages, (str, Stage)):
        stages = (stages,)
    out = set()
    for s in stages:
        try:
            out.add(Stage(s))
        except ValueError:
            names = ", ".join(x.value for x in Stage)
            raise ValueError(f"unknown stage {s!r}; expected one of: {names}") from None
    return frozenset(out)


def _parse_mode(mode: Action | str) -> Action:
    try:
        action = Action(mode)
    except ValueError:
        action = None
    if action not in (Action.REDACT, Action.BLOCK):
        raise ValueError(f"mode must be 'redact' or 'block', not {mode!r}")
    return action


def apply_redactions(text: str, findings: Iterable[Finding]) -> str:
    """Replace each finding's span by its label; overlapping spans merge (first label wins)."""
    spans = merge_findings(findings)
    if not spans:
        return text
    parts = []
    pos = 0
    for f in spans:
        parts.append(text[pos : f.start])
        parts.append(f.label)
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts)


def merge_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Sort by start and merge overlapping spans (the earliest finding's label is kept)."""
    ordered = sorted(findings, key=lambda f: (f.start, -f.end))
    merged: list[Finding] = []
    for f in ordered:
        if merged and f.start < merged[-1].end:
            last = merged[-1]
            if f.end > last.end:
                merged[-1] = replace(last, end=f.end, open=f.open)
            elif f.end == last.end and f.open:
                merged[-1] = replace(last, open=True)
            continue
        merged.append(f)
    return merged


def summarize_findings(findings: Iterable[Finding]) -> str:
    """``"pii.email x2, pii.card"`` - categories and counts, never the matched text."""
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.category] = counts.get(f.category, 0) + 1
    return ", ".join(f"{c} x{n}" if n > 1 else c for c, n in counts.items())


def _categories(findings: Iterable[Finding]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(f.category for f in findings))


class RuleGuard:
    """Base class for synchronous, regex-style guards.

    Subclasses implement :meth:`find`; this class turns findings into decisions according to
    ``mode`` (``"redact"`` or ``"block"``) and ``stages``. ``threshold``: the findings' weights
    must add up to at least this much for the guard to act (see :meth:`score`; with 1.0 and
    weight-1 rules, any finding acts).
    """

    #: the default name of the guard (``Decision.guard``); instances may override it
    name: str = "rule"
    #: rule guards are cheap enough to run on every streamed window
    incremental: ClassVar[bool] = True
    default_stages: ClassVar[tuple[Stage, ...]] = (Stage.INPUT, Stage.CONTEXT, Stage.OUTPUT)

    def __init__(
        self,
        *,
        mode: Action | str = Action.REDACT,
        stages: Iterable[Stage | str] | None = None,
        threshold: float = 1.0,
        name: str | None = None,
    ) -> None:
        self.mode = _parse_mode(mode)
        self.stages = parse_stages(self.default_stages if stages is None else stages)
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, not {threshold!r}")
        self.threshold = float(threshold)
        if name is not None:
            self.name = name

    def __repr__(self) -> str:
        stages = ",".join(sorted(s.value for s in self.stages))
        return f"{type(self).__name__}(name={self.name!r}, mode={self.mode.value}, stages={stages})"

    def applies(self, stage: Stage | str) -> bool:
        """True when this guard checks texts at ``stage``."""
        return Stage(stage) in self.stages

    def find(self, text: str) -> list[Finding]:
        """All findings in ``text``, in original-text offsets. Subclasses implement this."""
        raise NotImplementedError

    def score(self, findings: Iterable[Finding]) -> float:
        """The weight of ``findings``: per category, the largest weight, summed.

        Repeating one weak signal ("you are now" twice) does not add up; two different weak
        signals do.
        """
        best: dict[str, float] = {}
        for f in findings:
            if f.weight > best.get(f.category, 0.0):
                best[f.category] = f.weight
        return sum(best.values())

    def find_close(self, text: str, category: str, start: int) -> int | None:
        """Where an *open* finding of ``category`` ends in ``text``, or ``None`` if not yet.

        The stream scanner calls this after it has released an open finding (one that ran to
        the end of the text it had): ``text[start:]`` is what followed. Guards that report no
        open findings close at once (``start``).
        """
        return start

    def acts_on(self, findings: list[Finding]) -> bool:
        """True when ``findings`` reach the threshold."""
        return bool(findings) and self.score(findings) >= self.threshold - 1e-9

    def decide(self, text: str, findings: list[Finding]) -> Decision:
        """Turn ``findings`` in ``text`` into a decision according to ``mode``."""
        if not self.acts_on(findings):
            if findings:
                score = self.score(findings)
                found = summarize_findings(findings)
                detail = f"below threshold ({score:g} < {self.threshold:g}): {found}"
                return Decision.allow(detail=detail, guard=self.name)
            return Decision.allow(guard=self.name)
        cats = _categories(findings)
        detail = summarize_findings(findings)
        if self.mode is Action.BLOCK:
            return Decision.block(cats, detail=detail, guard=self.name)
        return Decision.redact(
            apply_redactions(text, findings), cats, detail=detail, guard=self.name
        )

    def scan(self, text: str, *, stage: Stage | str | None = None) -> Decision:
        """Check ``text`` synchronously. With ``stage``, a stage the guard skips → ALLOW."""
        if stage is not None and not self.applies(stage):
            return Decision.allow(guard=self.name)
        return self.decide(text, self.find(text))

    async def check(
        self, text: str, *, stage: Stage, ctx: Mapping[str, Any] | None = None
    ) -> Decision:
        """The :class:`Guard` protocol: :meth:`scan`, in a thread for a text longer than
        :data:`INLINE_SCAN_CHARS` (the event loop also writes every stream)."""
        if len(text) <= INLINE_SCAN_CHARS:
            return self.scan(text, stage=stage)
        return await asyncio.to_thread(self.scan, text, stage=stage)
