"""``RagGuardHandler``: retrieval and guards from ``model-config.yaml``, no code needed.

Configured by ``handler.rag`` and ``handler.guards`` (see :mod:`tsvllm.config`). What
each hook does (call order in :mod:`tsvllm.worker.hooks`):

* ``on_request``: guards on the user's messages (refuse with 400 ``content_filter`` or
  redact), retrieval on the last user message, guards on each retrieved chunk (a chunk
  that carries an injection is dropped), then a context block right *after* the system
  prompt, so the system prompt stays first and vLLM's prefix cache keeps hitting.
* ``on_response``: guards on each answer (redact, or replace it with the refusal text
  and ``finish_reason: "content_filter"``); citations in the body (``"citations"``).
* the same on ``v1/responses`` and ``v1/messages`` (their bodies and events, through
  :mod:`tsvllm.worker.api_texts`): context goes into ``instructions`` / ``system``; a
  blocked answer becomes ``status: incomplete`` / ``stop_reason: refusal``; in a stream the
  events that repeat a whole text carry exactly what the guards let through.
* ``on_chunk``/``on_stream_end``: a sliding-window scanner per choice holds back the last
  few characters until checked, redacts, or ends the stream with ``content_filter``
  (the engine request is aborted); citations in a final chunk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tsvllm.engine.base import Api, Engine, StreamEvent
from tsvllm.errors import ContentFiltered
from tsvllm.worker import api_texts
from tsvllm.worker.handler import VLLMHandler
from tsvllm.worker.hooks import EndStream, RequestContext

logger = logging.getLogger(__name__)


class RagGuardHandler(VLLMHandler):
    """VLLMHandler with retrieval-augmented generation and guards, configured from YAML."""

    features = frozenset({"rag", "guards"})
    #: its hooks read completions, chat, Responses and Messages bodies (tsvllm.worker.api_texts)
    hook_apis = frozenset(Api)

    def __init__(self) -> None:
        super().__init__()
        self.retriever: Any = None
        #: batches the query embeddings of concurrent requests (LocalRetriever only)
        self.batcher: Any = None
        self.guards: Any = None

    async def setup(self, *, engine: Engine, model_dir: Path) -> None:
        """Load the index (in a thread) and build the guard chain for ``engine``."""
        cfg = self.config.handler
        if cfg.rag is not None and self.retriever is None:  # kept across engine restarts
            self.retriever = await asyncio.to_thread(_load_retriever, cfg.rag, model_dir)
            from tsvllm.rag.batching import BatchingRetriever
            from tsvllm.rag.retriever import LocalRetriever

            if isinstance(self.retriever, LocalRetriever):
                self.batcher = BatchingRetriever(self.retriever)
        if cfg.guards is not None:
            self.guards = build_guard_chain(
                cfg.guards, engine=engine, served_name=(cfg.served_model_name or ["model"])[0]
            )

    async def teardown(self) -> None:
        """Close the guard chain of the engine being replaced (the judge's HTTP client)."""
        guards, self.guards = self.guards, None
        if guards is not None:
            await guards.aclose()

    # -- before the engine -----------------------------------------------------------

    async def on_request(self, body: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        from tsvllm.guards import Stage

        if self.guards is not None:
            # what the judge sees as the user turn
            ctx.metadata["prompt"] = api_texts.last_user_text(body, ctx.api)
            for get, put in api_texts.user_texts(body, ctx.api):
                text = get()
                decision = await self._check(text, Stage.INPUT, ctx)
                if decision.blocked:
                    raise ContentFiltered(
                        "the request was refused by a guard: " + ", ".join(decision.categories),
                        categories=decision.categories,
                    )
                if decision.text is not None and decision.text != text:
                    put(decision.text)
        if self.retriever is not None:
            body = await self._augment(body, ctx)
        return body

    async def _augment(self, body: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        from tsvllm.guards import Stage

        rag = self.config.handler.rag
        query = api_texts.last_user_text(body, ctx.api)
        if not query:
            return body
        start = time.perf_counter()
        if self.batcher is not None:
            chunks = await self.batcher.retrieve(query, k=rag.k)
        else:  # any Retriever: its own embedding, in a thread
            chunks = await asyncio.to_thread(self.retriever.retrieve, query, k=rag.k)
        ctx.metadata["retrieval_ms"] = (time.perf_counter() - start) * 1000
        used = []
        for chunk in chunks:
            if chunk.score < rag.min_score:
                continue
            text = chunk.text
            if self.guards is not None:
                decision = await self._check(text, Stage.CONTEXT, ctx)
                if decision.blocked:
                    logger.warning("dropped retrieved chunk %s: %s", chunk.id, decision.categories)
                    continue
                text = decision.text if decision.text is not None else text
            used.append((chunk, text))
        if not used:
            return body
        ctx.metadata["citations"] = [
            {"index": i, "id": c.id, "source": c.source, "score": round(c.score, 4)}
            for i, (c, _) in enumerate(used, 1)
        ]
        block = (
            rag.context_header
            + "\n\n"
            + "\n\n".join(
                f"[{i}] (source: {c.source})\n{text}" for i, (c, text) in enumerate(used, 1)
            )
        )
        return api_texts.with_context(body, ctx.api, block)

    # -- after the engine ------------------------------------------------------------

    async def on_response(self, body: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        from tsvllm.guards import Stage

        if self.guards is not None and ctx.api in (Api.RESPONSES, Api.MESSAGES):
            await self._guard_outputs(body, ctx)
        elif self.guards is not None:
            for choice in body.get("choices", []):
                text = _text(choice, ctx.api)
                if not text:
                    continue
                decision = await self._check(text, Stage.OUTPUT, ctx)
                if decision.blocked:
                    _set_text(choice, ctx.api, self.config.handler.guards.refusal)
                    choice["finish_reason"] = "content_filter"
                elif decision.text is not None and decision.text != text:
                    _set_text(choice, ctx.api, decision.text)
        if self._citations_on() and "citations" in ctx.metadata:
            body["citations"] = ctx.metadata["citations"]
        return body

    async def _guard_outputs(self, body: dict[str, Any], ctx: RequestContext) -> None:
        """Responses/Messages: each output text checked, redacted or replaced."""
        from tsvllm.guards import Stage

        for get, put in api_texts.output_texts(body, ctx.api):
            text = get()
            if not text:
                continue
            decision = await self._check(text, Stage.OUTPUT, ctx)
            if decision.blocked:
                put(self.config.handler.guards.refusal)
                api_texts.mark_filtered(body, ctx.api)
            elif decision.text is not None and decision.text != text:
                put(decision.text)

    async def on_chunk(self, event: StreamEvent, ctx: RequestContext) -> Sequence[StreamEvent]:
        if self.guards is None:
            return (event,)
        if ctx.api in (Api.RESPONSES, Api.MESSAGES):
            return await self._on_api_event(event, ctx)
        scanners = ctx.metadata.setdefault("scanners", {})
        payload = event.payload
        keep = []
        for choice in payload.get("choices", []):
            index = choice.get("index", 0)
            scanner = self._scanner(scanners, index, ctx)
            verdict = await scanner.push(_text(choice, ctx.api, part="delta") or "")
            emit = verdict.emit
            if not verdict.decision.blocked and choice.get("finish_reason") is not None:
                final = await scanner.finish()
                emit += final.emit
                verdict = final
                scanners.pop(index)
            self._record(verdict.decision, ctx)
            if verdict.decision.blocked:
                raise EndStream("content_filter", detail=", ".join(verdict.decision.categories))
            _set_text(choice, ctx.api, emit, part="delta")
            if emit or _carries_more_than_text(choice, ctx.api):
                keep.append(choice)
        if not keep and payload.get("choices"):
            return ()  # everything held back
        payload["choices"] = keep
        event.payload = payload
        return (event,)

    async def _on_api_event(self, event: StreamEvent, ctx: RequestContext) -> Sequence[StreamEvent]:
        """Responses/Messages streams: text deltas through a scanner per text; the events
        that close a text first send what the scanner still held, and every event that
        repeats a whole text gets exactly the text the guards let through."""
        payload, api = event.payload, ctx.api
        scanners = ctx.metadata.setdefault("scanners", {})
        passed = ctx.metadata.setdefault("passed", {})
        delta = api_texts.stream_delta(payload, api)
        if delta is not None:
            key, get, put = delta
            verdict = await self._scanner(scanners, key, ctx).push(get())
            self._end_if_blocked(verdict.decision, ctx)
            if not verdict.emit:
                return ()  # held back
            put(verdict.emit)
            passed[key] = passed.get(key, "") + verdict.emit
            event.payload = payload
            return (event,)
        out = []
        key = api_texts.stream_text_ends(payload, api)
        if key in scanners:
            final = await scanners.pop(key).finish()
            self._end_if_blocked(final.decision, ctx)
            if final.emit:
                passed[key] = passed.get(key, "") + final.emit
                out.append(api_texts.delta_event(api, key, final.emit, like=payload))
        for key, put in api_texts.stream_full_texts(payload, api):
            put(passed.get(key, ""))
        event.payload = payload
        return [*out, event]

    def _scanner(self, scanners: dict[Any, Any], key: Any, ctx: RequestContext) -> Any:
        if key not in scanners:
            g = self.config.handler.guards
            scanners[key] = self.guards.stream_scanner(
                window=g.stream_window, hold=g.stream_hold, ctx=ctx.metadata
            )
        return scanners[key]

    def _end_if_blocked(self, decision: Any, ctx: RequestContext) -> None:
        self._record(decision, ctx)
        if decision.blocked:
            raise EndStream("content_filter", detail=", ".join(decision.categories))

    async def on_stream_end(self, ctx: RequestContext) -> Sequence[StreamEvent]:
        from tsvllm.worker.hooks import closing_events, final_chunk

        if ctx.api in (Api.RESPONSES, Api.MESSAGES):  # their texts closed in on_chunk
            for scanner in ctx.metadata.get("scanners", {}).values():
                verdict = await scanner.finish()
                self._record(verdict.decision, ctx)
                if verdict.decision.blocked:
                    return closing_events(ctx, finish_reason="content_filter")
            return ()
        out: list[StreamEvent] = []
        for index, scanner in sorted(ctx.metadata.get("scanners", {}).items()):
            verdict = await scanner.finish()  # a stream that ended without finish_reason
            self._record(verdict.decision, ctx)
            if verdict.decision.blocked:
                out.append(final_chunk(ctx, finish_reason="content_filter"))
                return out
            if verdict.emit:
                chunk = final_chunk(ctx, finish_reason=None).payload
                chunk["choices"][0]["index"] = index
                _set_text(chunk["choices"][0], ctx.api, verdict.emit, part="delta")
                out.append(StreamEvent.from_payload(chunk))
        if self._citations_on() and "citations" in ctx.metadata:
            chunk = final_chunk(ctx, finish_reason=None).payload
            chunk["choices"] = []
            chunk["citations"] = ctx.metadata["citations"]
            out.append(StreamEvent.from_payload(chunk))
        return out

    # -- helpers -----------------------------------------------------------------------

    def _citations_on(self) -> bool:
        rag = self.config.handler.rag
        return rag is not None and rag.citations

    async def _check(self, text: str, stage: Any, ctx: RequestContext) -> Any:
        decision = await self.guards.check(text, stage=stage, ctx=ctx.metadata)
        self._record(decision, ctx)
        return decision

    @staticmethod
    def _record(decision: Any, ctx: RequestContext) -> None:
        if decision.categories:
            ctx.metadata.setdefault("guard_decisions", []).append(
                (decision.guard, decision.action.value, tuple(decision.categories))
            )


def _load_retriever(rag: Any, model_dir: Path) -> Any:
    from tsvllm.rag import load_index
    from tsvllm.rag.embedder import Embedder

    path = Path(rag.index)
    if not path.is_absolute():
        path = model_dir / path
    embedder = Embedder.load(precision=rag.query_precision)
    retriever = load_index(
        path, hybrid=rag.hybrid, search=rag.search, nprobe=rag.nprobe, embedder=embedder
    )
    retriever.warm_up()  # load the query embedder now, not on the first request
    return retriever


def build_guard_chain(guards: Any, *, engine: Engine, served_name: str) -> Any:
    """The guard chain described by ``handler.guards`` (typed config → guard objects)."""
    from tsvllm.guards import (
        DenyListGuard,
        GuardChain,
        InjectionGuard,
        LlamaGuardJudge,
        PIIGuard,
        SecretsGuard,
        Stage,
        engine_completer,
        openai_completer,
    )

    def stages(names: list[str]) -> tuple[Any, ...]:
        return tuple(Stage(n) for n in names)

    chain = []
    if guards.deny is not None:
        chain.append(
            DenyListGuard(
                guards.deny.terms, mode=guards.deny.mode, stages=stages(guards.deny.stages)
            )
        )
    if guards.injection is not None:
        g = guards.injection
        chain.append(InjectionGuard(mode=g.mode, stages=stages(g.stages)))
    if guards.secrets is not None:
        g = guards.secrets
        chain.append(SecretsGuard(mode=g.mode, stages=stages(g.stages)))
    if guards.pii is not None:
        chain.append(PIIGuard(mode=guards.pii.mode, stages=stages(guards.pii.stages)))
    if guards.judge is not None:
        j = guards.judge
        if j.url:
            key = os.environ.get(j.api_key_env) if j.api_key_env else None
            complete = openai_completer(j.url, model=j.model or served_name, api_key=key)
        else:
            complete = engine_completer(engine, model=j.model or served_name)
        kwargs: dict[str, Any] = {"stages": stages(j.stages), "timeout": j.timeout}
        if j.categories:
            kwargs["categories"] = tuple(j.categories)
        chain.append(LlamaGuardJudge(complete, fail_closed=j.fail_closed, **kwargs))
    return GuardChain(chain, fail_closed=guards.fail_closed)


# -- reading and writing OpenAI bodies ------------------------------------------------


def _text(choice: dict[str, Any], api: Api, *, part: str = "message") -> str | None:
    """A choice's text: ``message`` (full chat answer) or ``delta`` (chat stream chunk)."""
    if api is Api.CHAT:
        return (choice.get(part) or {}).get("content")
    return choice.get("text")


def _set_text(choice: dict[str, Any], api: Api, text: str, *, part: str = "message") -> None:
    if api is Api.CHAT:
        choice.setdefault(part, {})["content"] = text
    else:
        choice["text"] = text


def _carries_more_than_text(choice: dict[str, Any], api: Api) -> bool:
    """A chunk choice that must go out even with no text (role, tool calls, finish)."""
    if choice.get("finish_reason") is not None:
        return True
    if api is Api.CHAT:
        delta = choice.get("delta") or {}
        return any(v for k, v in delta.items() if k != "content")
    return False
