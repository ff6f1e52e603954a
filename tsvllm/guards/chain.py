"""GuardChain: run guards in order on one text; StreamScanner: guard a streamed response.

``await chain.check(text, stage=Stage.INPUT)`` runs every guard that applies to the stage,
in order:

* REDACT passes the redacted text on to the next guard; the final decision is REDACT with
  the final text and the union of all categories (``guard`` lists the redacting guards);
* BLOCK stops at once (categories: those found so far plus the blocking guard's);
* a guard that raises, or returns something that is not a valid :class:`Decision`, counts
  as BLOCK with category ``guard.error`` when ``fail_closed`` (the default), and is skipped
  (ALLOW, logged at WARNING) otherwise.

Streaming
---------
``scanner = chain.stream_scanner(window=256, hold=64)``; feed it each text delta with
``await scanner.push(delta)`` and forward ``verdict.emit``; at the end, ``await
scanner.finish()`` and forward its ``emit``. When a verdict is BLOCK, stop the stream (its
``emit`` is empty and every later call returns the same BLOCK).

How it works: the scanner keeps the text not yet released (``pending``) and the last
``window`` characters already released (the *context*, as generated). On each push, once more
than ``hold`` characters are pending, it checks context + pending and releases all but the
last ``hold`` characters, with redactions applied. A span that straddles the release point
is released whole, as its label. A match that runs into the end of the buffer is not acted on
yet (more text may extend or undo it: ``f32:`` + ``:E...``) unless it already reaches back
over the release point.

Guarantee: a match of at most ``hold + 1`` characters is never emitted in clear, even when it
arrives split over many deltas - by the time its first character is released, the whole of it
has been checked together (with up to ``window`` characters of text before it, so a match that
begins before the release point is caught too). Emitted text lags the generated text by at
most ``hold`` characters between calls. API keys, secret values and PEM private keys longer
than that are covered too: they are recognised within their first few dozen characters, and
once their label is out the scanner keeps redacting until the key or the END line ends
(:meth:`~tsvllm.guards.base.RuleGuard.find_close`).

Limits: other matches longer than ``hold`` characters (a 70-character e-mail address) may be
partly released before they are recognised, and matches that need more than ``window + hold``
characters to be recognised are missed; raise ``hold``/``window`` for those (cost: latency,
and CPU per push). With ``mode="block"`` the stream stops as soon as a match is seen.
Guards that redact must be :class:`RuleGuard` instances (which report spans); another guard
that returns REDACT on a window ends the stream with BLOCK. Guards with ``incremental =
False`` (the LLM judge) run once, on the whole emitted text, at ``finish()``: they can stop
only the last ``hold`` characters and mark the stream blocked. One scanner per stream; calls
must not overlap.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from tsvllm.guards.base import (
    Action,
    Decision,
    Finding,
    Guard,
    RuleGuard,
    Stage,
    merge_findings,
    summarize_findings,
)

__all__ = ["GuardChain", "StreamScanner", "StreamVerdict"]

logger = logging.getLogger(__name__)


def guard_name(guard: Any) -> str:
    """A guard's ``name``, or its class name when it has none."""
    return str(getattr(guard, "name", "") or type(guard).__name__)


def guard_applies(guard: Any, stage: Stage) -> bool:
    """True when ``guard`` checks texts at ``stage`` (no ``stages`` attribute: every stage)."""
    stages = getattr(guard, "stages", None)
    return stages is None or stage in stages


def _union(*groups: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(c for group in groups for c in group))


class GuardChain:
    """An ordered list of guards applied as one (see the module docstring)."""

    def __init__(self, guards: Iterable[Guard], *, fail_closed: bool = True) -> None:
        self.guards: tuple[Guard, ...] = tuple(guards)
        for guard in self.guards:
            if not callable(getattr(guard, "check", None)):
                raise TypeError(f"{guard!r} is not a guard: it has no check() method")
        self.fail_closed = bool(fail_closed)

    def __repr__(self) -> str:
        names = ", ".join(guard_name(g) for g in self.guards)
        return f"GuardChain([{names}], fail_closed={self.fail_closed})"

    def for_stage(self, stage: Stage | str) -> tuple[Guard, ...]:
        """The guards that apply to ``stage``, in chain order."""
        stage = Stage(stage)
        return tuple(g for g in self.guards if guard_applies(g, stage))

    def applies(self, stage: Stage | str) -> bool:
        """True when at least one guard checks texts at ``stage`` (else skip the work)."""
        return bool(self.for_stage(stage))

    async def aclose(self) -> None:
        """Release what the guards hold (the judge's HTTP client): call once, at shutdown.

        Awaits each guard's ``aclose()`` where it has one; a failure is logged, not raised.
        """
        for guard in self.guards:
            close = getattr(guard, "aclose", None)
            if close is None:
                continue
            try:
                await close()
            except Exception:
                logger.warning("closing guard %s failed", guard_name(guard), exc_info=True)

    async def check(
        self, text: str, *, stage: Stage | str, ctx: Mapping[str, Any] | None = None
    ) -> Decision:
        """Run the stage's guards in order on ``text`` and combine their decisions."""
        stage = Stage(stage)
        current = text
        categories: tuple[str, ...] = ()
        redactors: list[str] = []
        details: list[str] = []
        for guard in self.for_stage(stage):
            decision = await self.run_guard(guard, current, stage=stage, ctx=ctx)
            if decision.blocked:
                return Decision.block(
                    _union(categories, decision.categories),
                    detail=decision.detail,
                    guard=decision.guard or guard_name(guard),
                )
            if decision.redacted:
                current = decision.text if decision.text is not None else current
                categories = _union(categories, decision.categories)
                name = decision.guard or guard_name(guard)
                redactors.append(name)
                if decision.detail:
                    details.append(f"{name}: {decision.detail}")
        if redactors:
            return Decision.redact(
                current, categories, detail="; ".join(details), guard=",".join(redactors)
            )
        return Decision.allow()

    async def run_guard(
        self,
        guard: Guard,
        text: str,
        *,
        stage: Stage,
        ctx: Mapping[str, Any] | None = None,
    ) -> Decision:
        """One guard's decision, with errors turned into :meth:`error_decision`."""
        try:
            decision = await guard.check(text, stage=stage, ctx=ctx)
            if not isinstance(decision, Decision):
                raise TypeError(f"check() returned {type(decision).__name__}, not a Decision")
            if decision.redacted and decision.text is None:
                raise ValueError("check() returned REDACT without the redacted text")
        except Exception as exc:
            return self.error_decision(guard_name(guard), exc)
        return decision

    def error_decision(self, name: str, exc: BaseException) -> Decision:
        """BLOCK ``guard.error`` when fail-closed, else ALLOW; logged either way."""
        detail = f"guard {name} failed: {type(exc).__name__}"
        if self.fail_closed:
            logger.error("%s; blocking (fail_closed)", detail, exc_info=exc)
            return Decision.block(("guard.error",), detail=detail, guard=name)
        logger.warning("%s; skipping it (fail_closed is off)", detail, exc_info=exc)
        return Decision.allow(detail=detail, guard=name)

    def stream_scanner(
        self,
        *,
        window: int = 256,
        hold: int = 64,
        stage: Stage | str = Stage.OUTPUT,
        ctx: Mapping[str, Any] | None = None,
    ) -> StreamScanner:
        """A scanner for one streamed text (see the module docstring)."""
        return StreamScanner(self, window=window, hold=hold, stage=stage, ctx=ctx)


@dataclass(frozen=True)
class StreamVerdict:
    """What to forward now (``emit``, possibly empty) and the decision for this step.

    ``decision`` is ALLOW, REDACT (``emit`` contains redactions; ``decision.text == emit``) or
    BLOCK (``emit`` is empty: end the stream).
    """

    emit: str
    decision: Decision


class StreamScanner:
    """Guards one streamed text incrementally. Not for concurrent use: one per stream."""

    def __init__(
        self,
        chain: GuardChain,
        *,
        window: int = 256,
        hold: int = 64,
        stage: Stage | str = Stage.OUTPUT,
        ctx: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ValueError(f"window must be an int >= 0, not {window!r}")
        if isinstance(hold, bool) or not isinstance(hold, int) or hold < 0:
            raise ValueError(f"hold must be an int >= 0, not {hold!r}")
        self.chain = chain
        self.window = window
        self.hold = hold
        self.stage = Stage(stage)
        self.ctx = ctx
        guards = chain.for_stage(self.stage)
        #: every guard in chain order, split by how the scanner runs it
        self._incremental = [g for g in guards if getattr(g, "incremental", True)]
        self._final = [g for g in guards if not getattr(g, "incremental", True)]
        self._context = ""  # the last `window` released characters, as generated
        self._pending = ""  # generated, not released yet
        self._emitted: list[str] = []  # everything emitted (kept for the final guards)
        self._categories: tuple[str, ...] = ()
        self._redacted_until = 0  # generated-text offset where the last released label ends
        self._open: tuple[RuleGuard, str] | None = None  # an open redaction still running
        self._blocked: Decision | None = None
        self._finished = False
        self.generated = 0  #: characters pushed so far
        self.released = 0  #: characters of generated text released so far

    @property
    def blocked(self) -> bool:
        return self._blocked is not None

    @property
    def decision(self) -> Decision:
        """The stream's decision so far: BLOCK, REDACT (text: all emitted text) or ALLOW."""
        if self._blocked is not None:
            return self._blocked
        if self._categories:
            return Decision.redact("".join(self._emitted), self._categories, guard="stream")
        return Decision.allow()

    async def push(self, delta: str) -> StreamVerdict:
        """Add generated text; return what may be emitted now."""
        if self._blocked is not None:
            return StreamVerdict("", self._blocked)
        if self._finished:
            raise RuntimeError("push() after finish()")
        self._pending += delta
        self.generated += len(delta)
        if len(self._pending) <= self.hold:
            return StreamVerdict("", Decision.allow())
        return await self._step(final=False)

    async def finish(self) -> StreamVerdict:
        """The stream ended: check and release the rest, then run the whole-text guards."""
        if self._blocked is not None:
            return StreamVerdict("", self._blocked)
        if self._finished:
            return StreamVerdict("", Decision.allow())
        self._finished = True
        verdict = await self._step(final=True)
        if verdict.decision.blocked or not self._final:
            return verdict
        full = "".join(self._emitted)
        for guard in self._final:
            d = await self.chain.run_guard(guard, full, stage=self.stage, ctx=self.ctx)
            if d.blocked or d.redacted:
                if d.redacted:  # the text is out already: a late redaction can only block
                    d = Decision.block(d.categories, detail=d.detail, guard=d.guard)
                return StreamVerdict("", self._block(d))
        return verdict

    def _block(self, decision: Decision) -> Decision:
        self._blocked = Decision.block(
            _union(self._categories, decision.categories),
            detail=decision.detail,
            guard=decision.guard,
        )
        self._pending = ""
        return self._blocked

    async def _step(self, *, final: bool) -> StreamVerdict:
        """Check context + pending text and release all but the last ``hold`` characters
        (all of them when ``final``): continue an open redaction, scan, release."""
        context = self._context
        text = context + self._pending
        base = len(context)  # window offset of the release point
        size = len(text)
        cut = size if final else size - self.hold
        if cut <= base and not final:
            return StreamVerdict("", Decision.allow())
        spans: list[Finding] = []
        openers: dict[str, RuleGuard] = {}
        blocked = self._continue_open(text, base=base, spans=spans, openers=openers)
        if blocked is None:
            blocked = await self._scan(
                text, base=base, cut=cut, final=final, spans=spans, openers=openers
            )
        if blocked is not None:
            return StreamVerdict("", self._block(blocked))
        return self._release(text, base=base, cut=cut, spans=spans, openers=openers)

    def _continue_open(
        self, text: str, *, base: int, spans: list[Finding], openers: dict[str, RuleGuard]
    ) -> Decision | None:
        """An open redaction (PEM block) continues until it closes: add its span.

        Returns the decision that blocks the stream when the guard fails closed.
        """
        if self._open is None:
            return None
        guard, category = self._open
        try:
            end = guard.find_close(text, category, base)
        except Exception as exc:
            d = self.chain.error_decision(guard_name(guard), exc)
            if d.blocked:
                return d
            end = base
        if end is None:
            spans.append(Finding(base, len(text), category, "", open=True))
            openers[category] = guard
        else:
            self._open = None
            if end > base:
                spans.append(Finding(base, end, category, ""))
        return None

    async def _scan(
        self,
        text: str,
        *,
        base: int,
        cut: int,
        final: bool,
        spans: list[Finding],
        openers: dict[str, RuleGuard],
    ) -> Decision | None:
        """Run the incremental guards on ``text``; add the redacting guards' spans.

        Returns the decision that blocks the stream, or None.
        """
        size = len(text)
        redacted_view: str | None = None
        for guard in self._incremental:
            if isinstance(guard, RuleGuard):
                try:
                    findings = guard.find(text)
                except Exception as exc:
                    d = self.chain.error_decision(guard_name(guard), exc)
                    if d.blocked:
                        return d
                    continue
                if not final:
                    # a match that runs into the end of the buffer may be incomplete (more text
                    # can still extend or undo it): decide on it later, unless it already
                    # reaches back over the release point
                    findings = [f for f in findings if f.end < size or f.start < cut]
                touching = [f for f in findings if f.end > base]
                if not touching or not guard.acts_on(findings):
                    continue
                if guard.mode is Action.BLOCK:
                    return Decision.block(
                        _union(f.category for f in touching),
                        detail=summarize_findings(touching),
                        guard=guard.name,
                    )
                spans += touching
                openers.update((f.category, guard) for f in touching if f.open)
                redacted_view = None
            else:
                if redacted_view is None:
                    redacted_view = _apply(text, spans, base=0)
                d = await self.chain.run_guard(guard, redacted_view, stage=self.stage, ctx=self.ctx)
                if d.redacted:  # no spans: the scanner cannot place the redaction
                    d = Decision.block(
                        d.categories,
                        detail=f"{d.detail} (redaction is not possible mid-stream)".strip(),
                        guard=d.guard or guard_name(guard),
                    )
                if d.blocked:
                    return d
        return None

    def _release(
        self,
        text: str,
        *,
        base: int,
        cut: int,
        spans: list[Finding],
        openers: dict[str, RuleGuard],
    ) -> StreamVerdict:
        """Release ``text[base:cut]`` (moved past any span straddling ``cut``), redacted."""
        context = self._context
        offset = self.released - base  # window offset + offset = offset in the generated text
        merged = merge_findings(spans)
        for f in merged:  # a span straddling the release point is released whole
            if f.start < cut < f.end:
                cut = f.end
        released = []
        for f in merged:
            if f.start >= cut or f.end <= base:
                continue
            if f.start < base and offset + f.start < self._redacted_until:
                # the rest of a match whose start went out redacted: no second label
                f = replace(f, label="")
            released.append(f)
        emit = _apply(text[:cut], released, base=base)
        for f in released:
            self._redacted_until = max(self._redacted_until, offset + f.end)
        if released and released[-1].open and released[-1].end >= cut:
            category = released[-1].category
            if category in openers:
                self._open = (openers[category], category)
        if self.window:
            self._context = (context + self._pending[: cut - base])[-self.window :]
        self._pending = text[cut:]
        self.released += cut - base
        self._emitted.append(emit)
        if released:
            cats = _union(f.category for f in released)
            self._categories = _union(self._categories, cats)
            detail = summarize_findings(released)
            return StreamVerdict(emit, Decision.redact(emit, cats, detail=detail, guard="stream"))
        return StreamVerdict(emit, Decision.allow())


def _apply(text: str, findings: list[Finding], *, base: int) -> str:
    """``text[base:]`` with each finding's span (clipped to ``base``) replaced by its label."""
    parts = []
    pos = base
    for f in merge_findings(findings):
        start = max(f.start, base)
        if f.end <= start:
            continue
        parts.append(text[pos:start])
        parts.append(f.label)
        pos = max(pos, f.end)
    parts.append(text[pos:])
    return "".join(parts)
