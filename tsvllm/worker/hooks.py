"""Hooks for handler authors: the contract (:class:`Hooks`) and the per-request context.

Subclass :class:`tsvllm.VLLMHandler` and override any hook; :class:`Hooks` documents
their call order once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsvllm.engine.base import Api, Engine, StreamEvent


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
    """The hook contract, with pass-through defaults.

    Every hook is ``async`` and runs on the worker's event loop, which also writes every
    stream: do blocking work (embedding, file I/O, long regex scans) with
    ``asyncio.to_thread``. Call order::

        setup(engine=, model_dir=)   once per engine start, after the engine is up and
                                     before any request: load indexes, build guards.
                                     If it raises, the engine is shut down; a ConfigError
                                     is final (no retry), anything else is retried.
        teardown()                   when a dead engine is replaced, before the next
                                     setup: release what setup took (clients, files).

        for each generation request (after auth, body limit and decoding):
          on_request(body, ctx)      once per engine request, before the engine. May
                                     rewrite the OpenAI request body, fill ctx.metadata,
                                     or refuse by raising ContentFiltered (HTTP 400,
                                     code "content_filter").
          ── the engine generates ──
          non-streaming:
            on_response(body, ctx)   once, with the full OpenAI response body. May
                                     rewrite it (redact text, finish_reason
                                     "content_filter").
          streaming ("stream": true):
            on_chunk(event, ctx)     per chunk, as it arrives. Returns the events to send
                                     now: [event] passes it on, [] holds it back, a
                                     rewritten or longer list replaces it. Raise
                                     EndStream to stop: the engine request is aborted and
                                     the client gets a final chunk with EndStream's
                                     finish_reason, then [DONE].
            on_stream_end(ctx)       once, after the last chunk, before [DONE] (not after
                                     EndStream). Returns extra events: text held back,
                                     citations.

    Which routes run which hooks: ``v1/completions`` and ``v1/chat/completions`` run
    them all; ``vertex/predict`` runs ``on_request``/``on_response`` once per instance
    (it never streams); ``v1/responses`` and ``v1/messages`` run them all with their own
    bodies and events (``ctx.api`` RESPONSES / MESSAGES; only if :attr:`hook_apis` lists
    them); ``v1/models``, ``health`` and vLLM's other routes (tokenize, pooling, ...) run
    none, and routes that generate text no hook sees are not served by a handler whose
    hooks are overridden. All of a request's hooks
    run under its deadline (``handler.request_timeout_s``). An exception other than
    ContentFiltered/EndStream in a request hook fails only its own request (HTTP 500,
    or an error event in a stream).
    """

    #: the APIs (``ctx.api``) whose bodies these hooks understand. A handler that
    #: overrides a request hook serves v1/responses and v1/messages only if their API is
    #: listed here (its hooks would otherwise miss what they guard); widen it once your
    #: hooks read those bodies. A handler that overrides no hook serves every route.
    hook_apis: frozenset[Api] = frozenset({Api.COMPLETIONS, Api.CHAT})

    async def setup(self, *, engine: Engine, model_dir: Path) -> None:
        """After each engine start, before any request: prepare what the hooks use."""

    async def teardown(self) -> None:
        """Before a replacement engine's setup: release what the last setup took."""

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


def closing_events(ctx: RequestContext, *, finish_reason: str) -> list[StreamEvent]:
    """The events that end a stream early (``EndStream``), in the stream's own API."""
    if ctx.api is Api.MESSAGES:
        stop = "refusal" if finish_reason == "content_filter" else finish_reason
        delta = {"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {}}
        return [
            StreamEvent.from_payload(delta, event="message_delta"),
            StreamEvent.from_payload({"type": "message_stop"}, event="message_stop"),
        ]
    if ctx.api is Api.RESPONSES:
        last = ctx.last_chunk or {}
        response = {
            **(last.get("response") or {}),
            "status": "incomplete",
            "incomplete_details": {"reason": finish_reason},
        }
        payload = {"type": "response.incomplete", "response": response}
        return [StreamEvent.from_payload(payload, event="response.incomplete")]
    return [final_chunk(ctx, finish_reason=finish_reason)]


def hook_apis(obj: object) -> frozenset[Api] | None:
    """The APIs ``obj``'s hooks understand, or None when it overrides no request hook (it
    then serves every route; see :func:`tsvllm.worker.routes.resolve`)."""
    names = ("on_request", "on_response", "on_chunk", "on_stream_end")
    if not any(overrides(obj, name) for name in names):
        return None
    return frozenset(obj.hook_apis)


def overrides(obj: object, name: str) -> bool:
    """True when ``obj``'s class overrides hook ``name`` (lets the handler skip no-op hooks)."""
    return getattr(type(obj), name) is not getattr(Hooks, name)


#: Methods of TorchServe's VLLMHandler / BaseVLLMHandler (and BaseHandler's request path) that
#: tsvllm never calls, with what to use instead (docs/MIGRATING.md).
TORCHSERVE_METHODS = {
    "preprocess": "on_request(body, ctx), which gets the decoded OpenAI request body",
    "inference": (
        "build_engine(model_dir=) to use another engine; on_response/on_chunk to change "
        "what the engine returns"
    ),
    "postprocess": (
        "on_response(body, ctx) for a full response, on_chunk(event, ctx) and "
        "on_stream_end(ctx) for a stream"
    ),
    "_get_vllm_engine_config": (
        "handler.vllm_engine_config in model-config.yaml (or build_engine(model_dir=))"
    ),
    "_set_attr_value": "handler.vllm_engine_config in model-config.yaml",
    "_get_sampling_params": "on_request(body, ctx): set temperature, max_tokens, ... in the body",
    "_get_lora_request": (
        "handler.adapters in model-config.yaml: clients send the adapter's name as `model`"
    ),
}


def check_torchserve_overrides(cls: type, *, base: type) -> None:
    """Refuse a handler class that defines a method TorchServe's VLLMHandler called but tsvllm
    never calls (it would be skipped silently): raise TypeError naming the hook to use.

    A class that overrides ``handle`` itself (``base`` is where tsvllm defines it) owns the
    request path and may call such methods, so it is not checked.
    """
    if getattr(cls, "handle", None) is not getattr(base, "handle", None):
        return
    found = [name for name in TORCHSERVE_METHODS if callable(getattr(cls, name, None))]
    if found:
        lines = "\n".join(f"  {name}: use {TORCHSERVE_METHODS[name]}" for name in found)
        raise TypeError(
            f"handler {cls.__module__}.{cls.__qualname__} defines {', '.join(found)}, which "
            "TorchServe's VLLMHandler called but tsvllm never calls; move the code to tsvllm's "
            f"hooks (see docs/MIGRATING.md) and remove or rename the method:\n{lines}"
        )
