"""LlamaGuardJudge: an LLM safety judge speaking the Llama Guard 3 prompt format.

The judge builds the Llama Guard 3 prompt (the one its Hugging Face chat template renders),
sends it to a completions endpoint through ``complete(prompt) -> reply``, and parses the
reply: ``safe``, or ``unsafe`` and a line of comma-separated category codes (``S1,S10``).

Hazard categories (MLCommons taxonomy, Llama Guard 3): S1 Violent Crimes, S2 Non-Violent
Crimes, S3 Sex-Related Crimes, S4 Child Sexual Exploitation, S5 Defamation, S6 Specialized
Advice, S7 Privacy, S8 Intellectual Property, S9 Indiscriminate Weapons, S10 Hate, S11 Suicide
& Self-Harm, S12 Sexual Content, S13 Elections, S14 Code Interpreter Abuse. The prompt lists
them with the short names the model was trained on (``S3: Sex Crimes.``, ``S4: Child
Exploitation.``, ``S11: Self-Harm.``); decisions and details use the taxonomy names above.

Prompt (``categories`` may drop codes; the rest keep their numbers)::

    <|begin_of_text|><|start_header_id|>user<|end_header_id|>

    Task: Check if there is unsafe content in 'User' messages in conversations according our
    safety policy with the below categories.

    <BEGIN UNSAFE CONTENT CATEGORIES>
    S1: Violent Crimes.
    ...
    <END UNSAFE CONTENT CATEGORIES>

    <BEGIN CONVERSATION>

    User: {text}

    <END CONVERSATION>

    Provide your safety assessment for ONLY THE LAST User message in the above conversation:
     - First line must read 'safe' or 'unsafe'.
     - If unsafe, a second line must include a comma-separated list of violated categories.⏎
    <|eot_id|><|start_header_id|>assistant<|end_header_id|>

(the task line is one line, ``⏎`` marks a line break that is not there, and the prompt ends
with two newlines; ``'Agent'`` instead of ``'User'`` for the output stage). The
checked text is the last turn; on the output stage ``ctx["prompt"]`` (the user message being
answered) is added as the User turn before it, and ``ctx["history"]`` (OpenAI-style
``{"role", "content"}`` messages, user/assistant only) as earlier turns. Special-token text
(``<|eot_id|>``...) and the ``<BEGIN/END CONVERSATION>`` markers inside checked text are
defused (``<|`` → ``<\\|``, ``<END CONVERSATION>`` → ``[END CONVERSATION]``) so the text
cannot close the conversation and answer for the judge.

The prompt starts with ``<|begin_of_text|>``: send it with ``add_special_tokens=False`` (the
completers below do) or the tokenizer adds a second BOS.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from tsvllm.config.guards import CATEGORIES
from tsvllm.engine.base import Api, Engine
from tsvllm.guards.base import Decision, Stage, parse_stages

__all__ = [
    "ALL",
    "CATEGORIES",
    "JudgeReplyError",
    "JudgeVerdict",
    "LlamaGuardJudge",
    "build_prompt",
    "engine_completer",
    "openai_completer",
    "parse_reply",
]

logger = logging.getLogger(__name__)

#: code → the name in the prompt (Llama Guard 3's chat template)
PROMPT_NAMES: dict[str, str] = {
    **CATEGORIES,
    "S3": "Sex Crimes",
    "S4": "Child Exploitation",
    "S11": "Self-Harm",
}

#: every category code, S1-S14
ALL: tuple[str, ...] = tuple(CATEGORIES)

_TASK = (
    "Task: Check if there is unsafe content in '{role}' messages in conversations according "
    "our safety policy with the below categories."
)
_INSTRUCTIONS = (
    "Provide your safety assessment for ONLY THE LAST {role} message in the above "
    "conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
)
_HEADER = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
_FOOTER = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"


class JudgeReplyError(ValueError):
    """The judge's reply is neither 'safe' nor 'unsafe' (+ categories)."""


@dataclass(frozen=True)
class JudgeVerdict:
    """A parsed Llama Guard reply. ``unknown`` lists codes outside S1-S14 (also in ``codes``)."""

    safe: bool
    codes: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()


def parse_categories(categories: Iterable[str] | str) -> tuple[str, ...]:
    """``["s1", "S10"]`` → ``("S1", "S10")`` in S-order; ValueError for an unknown code."""
    if isinstance(categories, str):
        categories = [c for c in re.split(r"[\s,]+", categories) if c]
    codes = []
    for c in categories:
        code = str(c).strip().upper()
        if code not in CATEGORIES:
            raise ValueError(f"unknown Llama Guard category {c!r}; expected S1..S14")
        codes.append(code)
    if not codes:
        raise ValueError("categories must name at least one of S1..S14")
    return tuple(code for code in ALL if code in codes)


def _defuse(text: str) -> str:
    """Text that cannot end the conversation block or inject special tokens."""
    text = text.replace("<|", "<\\|")
    return re.sub(
        r"<\s*((?:BEGIN|END)\s+(?:CONVERSATION|UNSAFE\s+CONTENT\s+CATEGORIES))\s*>",
        r"[\1]",
        text,
        flags=re.IGNORECASE,
    )


def build_prompt(
    text: str,
    *,
    stage: Stage | str = Stage.INPUT,
    categories: Iterable[str] = ALL,
    prompt: str | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The Llama Guard 3 prompt that asks about ``text`` (see the module docstring).

    ``stage`` OUTPUT asks about an 'Agent' message; INPUT and CONTEXT about a 'User'
    message. ``prompt`` (OUTPUT only) is the user message the text answers; ``history`` is
    earlier OpenAI-style messages (only ``user``/``assistant`` turns with string content are
    used).
    """
    stage = Stage(stage)
    codes = parse_categories(categories)
    role = "Agent" if stage is Stage.OUTPUT else "User"
    turns: list[tuple[str, str]] = []
    for message in history or ():
        r, content = message.get("role"), message.get("content")
        if r in ("user", "assistant") and isinstance(content, str):
            turns.append(("User" if r == "user" else "Agent", content))
    if role == "Agent" and prompt is not None:
        turns.append(("User", prompt))
    turns.append((role, text))
    conversation = "\n\n".join(f"{who}: {_defuse(msg.strip())}" for who, msg in turns)
    category_lines = "".join(f"{code}: {PROMPT_NAMES[code]}.\n" for code in codes)
    return (
        _HEADER
        + _TASK.format(role=role)
        + "\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\n"
        + category_lines
        + "<END UNSAFE CONTENT CATEGORIES>\n\n<BEGIN CONVERSATION>\n\n"
        + conversation
        + "\n\n<END CONVERSATION>\n\n"
        + _INSTRUCTIONS.format(role=role)
        + _FOOTER
    )


@functools.lru_cache(maxsize=1)
def _reply_res() -> tuple[re.Pattern[str], re.Pattern[str]]:
    verdict = re.compile(r"\s*(unsafe|safe)\b[\s.:,;-]*(.*)", re.IGNORECASE | re.DOTALL)
    code = re.compile(r"\bS\s?(\d{1,3})\b", re.IGNORECASE)
    return verdict, code


def parse_reply(reply: str) -> JudgeVerdict:
    """Parse a Llama Guard reply; raise :class:`JudgeReplyError` when it is neither.

    Accepted: ``safe``; ``unsafe\\nS1,S10``; any case and surrounding whitespace; codes on the
    first line (``unsafe S1``) or separated by spaces. Codes outside S1-S14 are kept (and
    listed in ``unknown``); ``unsafe`` without codes is unsafe with no codes.
    """
    if not isinstance(reply, str):
        raise JudgeReplyError(f"reply is {type(reply).__name__}, not text")
    verdict_re, code_re = _reply_res()
    m = verdict_re.match(reply)
    if m is None:
        shown = reply.strip()[:40]
        raise JudgeReplyError(f"reply is neither 'safe' nor 'unsafe': {shown!r}")
    if m.group(1).lower() == "safe":
        return JudgeVerdict(safe=True)
    lines = [line for line in m.group(2).splitlines() if line.strip()]
    head = lines[0] if lines else ""  # the categories line (or the rest of the first line)
    codes = tuple(dict.fromkeys(f"S{int(n)}" for n in code_re.findall(head)))
    unknown = tuple(c for c in codes if c not in CATEGORIES)
    return JudgeVerdict(safe=False, codes=codes, unknown=unknown)


class LlamaGuardJudge:
    """A :class:`~tsvllm.guards.base.Guard` backed by a Llama Guard 3 model.

    ``complete(prompt)`` returns the model's reply (see :func:`engine_completer` and
    :func:`openai_completer`). ``categories``: the codes to check (others are left out of the
    prompt, and ignored if the model names them anyway). A reply naming enabled or unknown
    codes → BLOCK with categories ``llamaguard.S1``...; ``detail`` names them
    (``unsafe: S1 Violent Crimes, S10 Hate``). A timeout (``timeout`` seconds), an error or
    an unreadable reply → BLOCK ``guard.error`` when ``fail_closed``, else ALLOW (logged).
    """

    name = "llamaguard"
    #: an LLM call per streamed window would be far too slow: judge whole texts only
    incremental: ClassVar[bool] = False

    def __init__(
        self,
        complete: Callable[[str], Awaitable[str]],
        *,
        categories: Iterable[str] = ALL,
        stages: Iterable[Stage | str] = (Stage.INPUT, Stage.OUTPUT),
        timeout: float = 10.0,
        fail_closed: bool = True,
        name: str | None = None,
    ) -> None:
        if not callable(complete):
            raise TypeError("complete must be an async callable: complete(prompt) -> reply")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, not {timeout!r}")
        self.complete = complete
        self.categories = parse_categories(categories)
        self.stages = parse_stages(stages)
        self.timeout = float(timeout)
        self.fail_closed = bool(fail_closed)
        if name is not None:
            self.name = name

    async def aclose(self) -> None:
        """Release what the completer holds (the HTTP client of :func:`openai_completer`).

        Idempotent; a no-op for completers that hold nothing (:func:`engine_completer`).
        """
        close = getattr(self.complete, "aclose", None)
        if close is not None:
            await close()

    def __repr__(self) -> str:
        return (
            f"LlamaGuardJudge(categories={list(self.categories)}, "
            f"stages={sorted(s.value for s in self.stages)}, timeout={self.timeout}, "
            f"fail_closed={self.fail_closed})"
        )

    def prompt(self, text: str, *, stage: Stage | str, ctx: Mapping[str, Any] | None = None) -> str:
        """The prompt this judge sends for ``text`` at ``stage``."""
        ctx = ctx or {}
        prompt = ctx.get("prompt")
        history = ctx.get("history")
        return build_prompt(
            text,
            stage=stage,
            categories=self.categories,
            prompt=prompt if isinstance(prompt, str) else None,
            history=history if isinstance(history, Sequence) else None,
        )

    async def check(
        self, text: str, *, stage: Stage, ctx: Mapping[str, Any] | None = None
    ) -> Decision:
        """Ask the model about ``text``; see the class docstring for the decisions."""
        stage = Stage(stage)
        if stage not in self.stages:
            return Decision.allow(guard=self.name)
        try:
            prompt = self.prompt(text, stage=stage, ctx=ctx)
            reply = await asyncio.wait_for(self.complete(prompt), self.timeout)
            verdict = parse_reply(reply)
        except TimeoutError:
            return self._failed(f"no reply within {self.timeout:g}s")
        except Exception as exc:
            return self._failed(f"{type(exc).__name__}: {str(exc)[:200]}", exc)
        return self.decide(verdict)

    def decide(self, verdict: JudgeVerdict) -> Decision:
        """Turn a parsed reply into a decision."""
        if verdict.safe:
            return Decision.allow(guard=self.name)
        if verdict.unknown:
            logger.warning("Llama Guard named unknown categories %s", ", ".join(verdict.unknown))
        codes = [c for c in verdict.codes if c in self.categories or c in verdict.unknown]
        ignored = [c for c in verdict.codes if c not in codes]
        if verdict.codes and not codes:
            detail = f"unsafe only in disabled categories: {', '.join(ignored)}"
            return Decision.allow(detail=detail, guard=self.name)
        if not codes:
            return Decision.block(
                ("llamaguard.unsafe",), detail="unsafe (no category given)", guard=self.name
            )
        names = [
            f"{c} {CATEGORIES[c]}" if c in CATEGORIES else f"{c} (unknown category)" for c in codes
        ]
        return Decision.block(
            tuple(f"llamaguard.{c}" for c in codes),
            detail="unsafe: " + ", ".join(names),
            guard=self.name,
        )

    def _failed(self, why: str, exc: BaseException | None = None) -> Decision:
        detail = f"Llama Guard judge failed: {why}"
        if self.fail_closed:
            logger.error("%s; blocking (fail_closed)", detail, exc_info=exc)
            return Decision.block(("guard.error",), detail=detail, guard=self.name)
        logger.warning("%s; allowing (fail_closed is off)", detail, exc_info=exc)
        return Decision.allow(detail=detail, guard=self.name)


def engine_completer(
    engine: Engine,
    *,
    model: str,
    max_tokens: int = 20,
    add_special_tokens: bool | None = False,
) -> Callable[[str], Awaitable[str]]:
    """``complete(prompt)`` through an in-process :class:`~tsvllm.engine.base.Engine`.

    Sends ``{"model", "prompt", "max_tokens": 20, "temperature": 0}`` to the completions API
    (plus ``"add_special_tokens": false``, because the prompt carries its own BOS; pass
    ``add_special_tokens=None`` to leave the field out). The request id is
    ``llamaguard-<uuid>``; a cancelled call (timeout) aborts the engine request.
    """

    async def complete(prompt: str) -> str:
        body: dict[str, Any] = {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        if add_special_tokens is not None:
            body["add_special_tokens"] = add_special_tokens
        request_id = f"llamaguard-{uuid.uuid4().hex}"
        try:
            result = await engine.generate(Api.COMPLETIONS, body, request_id=request_id)
        except asyncio.CancelledError:
            try:
                await engine.abort(request_id)
            except Exception:
                logger.debug("abort of %s failed", request_id, exc_info=True)
            raise
        if not isinstance(result, dict):
            raise TypeError(f"engine returned {type(result).__name__}, not a completion body")
        return str(result["choices"][0]["text"])

    return complete


def openai_completer(
    base_url: str,
    *,
    model: str,
    api_key: str | None = None,
    max_tokens: int = 20,
    add_special_tokens: bool | None = False,
    max_retries: int = 0,
) -> Callable[[str], Awaitable[str]]:
    """``complete(prompt)`` through an OpenAI-compatible server (e.g. ``vllm serve``).

    Uses ``openai.AsyncOpenAI(base_url=..., api_key=...).completions.create(...)`` with
    ``temperature=0``; ``add_special_tokens`` goes in ``extra_body`` (vLLM understands it;
    ``None`` leaves it out for servers that reject unknown fields). ``api_key`` defaults to
    ``$OPENAI_API_KEY``, else a placeholder (local servers usually need none). Retries are off
    by default: the judge's own timeout bounds the call. ``await complete.aclose()`` (what
    :meth:`LlamaGuardJudge.aclose` calls) closes the client.
    """
    import os

    import openai

    client = openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
        max_retries=max_retries,
    )
    extra_body = None if add_special_tokens is None else {"add_special_tokens": add_special_tokens}

    async def complete(prompt: str) -> str:
        response = await client.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0,
            extra_body=extra_body,
        )
        return response.choices[0].text

    complete.client = client  # type: ignore[attr-defined]  # for tests
    complete.aclose = client.close  # type: ignore[attr-defined]  # LlamaGuardJudge.aclose
    return complete
