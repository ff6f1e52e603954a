"""Hooks for handler authors: the contract, its call order and the per-request context.

Subclass :class:`tsvllm.VLLMHandler` and override any of the hooks below; each default
passes everything through unchanged. All hooks are ``async`` and run on the worker's
event loop, so do blocking work (embedding, file I/O) with ``asyncio.to_thread``.

Call order for one generation request (``v1/completions``, ``v1/chat/completions``)::

    on_request(body, ctx)        once, before the engine. May rewrite the OpenAI request
                                 body (messages, prompt, sampling params), fill
                                 ctx.metadata, or refuse by raising ContentFiltered
                                 (the client gets HTTP 400, code "content_filter").
    ── the engine generates ──
    non-streaming:
      on_response(body, ctx)     once, with the full OpenAI response body. May rewrite it,
                                 e.g. redact text or set finish_reason "content_filter".
    streaming ("stream": true):
      on_chunk(event, ctx)       for each chunk, as it arrives. Returns the events to send
                                 now: [event] passes it on, [] holds it back, a rewritten
                                 or longer list replaces it. Raise EndStream to stop: the
                                 engine request is aborted and the client gets a final
                                 chunk with EndStream's finish_reason, then [DONE].
      on_stream_end(ctx)         once, after the last chunk and before [DONE] (not after
                                 EndStream). Returns extra events: text held back,
                                 citations.

``v1/models`` runs no hooks. An exception other than ContentFiltered/EndStream in a hook
fails only its own request (HTTP 500, or an error event in a stream).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tsvllm.engine.base import Api, StreamEvent


@dataclass
class RequestContext:
    """What hooks know about the request they run for."""

    #: TorchServe's request id (also vLLM's, so logs line up)
    request_id: str
    #: e.g. ``"v1/chat/completions"``
    route: str
    api: Api
    #: the HTTP request headers as TorchServe passes them (lower-case names)
    headers: dict[str, str] = field(default_factory=dict)
    #: free space for hooks to share state within this request (e.g. citations)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: whether the client asked for a stream
    stream: bool = False
    #: the last chunk the engine produced (set while streaming; for building final chunks)
    last_chunk: dict[str, Any] | None = None


class EndStream(Exception):
    """Raised by ``on_chunk`` to end a stream now with ``finish_reason``."""

    def __init__(self, finish_reason: str = "content_filter", *, detail: str = ""):
        super().__init__(detail or finish_reason)
        self.finish_reason = finish_reason
        self.detail = detail


class Hooks:
    """The hook contract with pass-through defaults (call order in the module docstring)."""

    async def on_request(self, body: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        """Before the engine: return the (possibly rewritten) request body."""
        return body

    async def on_response(self, body: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        """Non-streaming: return the (possibly rewritten) full response body."""
        return body

    async def on_chunk(self, event: StreamEvent, ctx: RequestContext) -> Sequence[StreamEvent]:
        """Streaming, per chunk: return the events to send now ([] holds back)."""
        return (event,)

    async def on_stream_end(self, ctx: RequestContext) -> Sequence[StreamEvent]:
        """Streaming, after the last chunk: return extra events to send before [DONE]."""
        return ()


def final_chunk(ctx: RequestContext, *, finish_reason: str | None, **extra: Any) -> StreamEvent:
    """A closing chunk in the shape of the stream's own chunks (chat or completion)."""
    last = ctx.last_chunk or {}
    chat = ctx.api is Api.CHAT
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
    choice.update({"delta": {}} if chat else {"text": ""})
    payload = {
        "id": last.get("id", f"{'chatcmpl' if chat else 'cmpl'}-{ctx.request_id}"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": last.get("created", 0),
        "model": last.get("model", ""),
        "choices": [choice],
        **extra,
    }
    return StreamEvent.from_payload(payload)


def overrides(obj: object, name: str) -> bool:
    """True when ``obj``'s class overrides hook ``name`` (lets the handler skip no-op hooks)."""
    return getattr(type(obj), name) is not getattr(Hooks, name)
