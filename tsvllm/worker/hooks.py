"""Hooks for handler authors: the contract (:class:`Hooks`) and the per-request context.

Subclass :class:`tsvllm.VLLMHandler` and override any hook; :class:`Hooks` documents
their call order once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tsvllm.engine.base import Api, Engine, StreamEvent
from tsvllm.errors import BadRequest
from tsvllm.headers import Headers

#: vLLM 0.32's output-token cap when a completions body sets none (``max_tokens`` 16);
#: the other APIs then generate up to what the model's context leaves
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class RequestView:
    """A read-only, typed view of one engine request's OpenAI body (``ctx.request``).

    It reads the body as it stands (a hook's in-place rewrite shows at once). Change the
    request through the body ``on_request`` gets (and returns); change the output-token
    cap with :meth:`RequestContext.set_max_output_tokens`. Fields it does not cover are
    in :attr:`body` (read-only) and in the ``body`` dict itself.
    """

    __slots__ = ("_body", "api", "route")

    def __init__(self, body: Mapping[str, Any], *, api: Api | None, route: str):
        self._body = body
        #: the API the body is written for (``None``: an engine route no hook reads)
        self.api = api
        #: e.g. ``"v1/chat/completions"``
        self.route = route

    @property
    def body(self) -> Mapping[str, Any]:
        """The whole body, read-only (for fields the view does not cover)."""
        return MappingProxyType(self._body)

    @property
    def model(self) -> str | None:
        """The model (or adapter) name the client asked for, if any."""
        model = self._body.get("model")
        return model if isinstance(model, str) else None

    @property
    def messages(self) -> tuple[Mapping[str, Any], ...] | None:
        """Chat and Messages: ``messages``; Responses: ``input`` when it is a list."""
        key = "input" if self.api is Api.RESPONSES else "messages"
        value = self._body.get(key) if self.api is not Api.COMPLETIONS else None
        return tuple(value) if isinstance(value, list) else None

    @property
    def prompt(self) -> Any:
        """Completions: ``prompt`` (a string, or a list); Responses: ``input`` when it is a
        string; else None."""
        if self.api is Api.COMPLETIONS:
            return self._body.get("prompt")
        value = self._body.get("input") if self.api is Api.RESPONSES else None
        return value if isinstance(value, str) else None

    @property
    def stream(self) -> bool:
        return bool(self._body.get("stream"))

    @property
    def max_output_tokens_field(self) -> str | None:
        """The body field vLLM 0.32 takes the output-token cap from: chat
        ``max_completion_tokens`` when it is set (not null), else ``max_tokens``;
        completions and Messages ``max_tokens``; Responses ``max_output_tokens``."""
        if self.api is Api.CHAT:
            if self._body.get("max_completion_tokens") is not None:
                return "max_completion_tokens"
            return "max_tokens"
        if self.api is Api.RESPONSES:
            return "max_output_tokens"
        return None if self.api is None else "max_tokens"

    @property
    def max_output_tokens(self) -> int | None:
        """The output-token cap vLLM will use for this body (the field it reads,
        :attr:`max_output_tokens_field`), or None when the body sets none (vLLM then stops
        where the model's context ends; a completions body without one gets
        :data:`COMPLETIONS_DEFAULT_MAX_TOKENS`). A value vLLM would refuse (not an
        integer, negative) is a 400 naming the field."""
        name = self.max_output_tokens_field
        if name is None:
            return None
        value = _token_count(self._body.get(name), name=name)
        if value is None and self.api is Api.COMPLETIONS:
            return COMPLETIONS_DEFAULT_MAX_TOKENS
        return value

    def __repr__(self) -> str:
        return f"RequestView(api={self.api!r}, route={self.route!r})"


def _token_count(value: Any, *, name: str) -> int | None:
    """``value`` as vLLM's request models parse a token count: an integer (a digit string
    or an integral float too); None stays None."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(
            f"{name} must be a positive integer, not {value!r}; send an integer >= 1 or "
            "leave it out",
            param=name,
        )
    return value


@dataclass
class RequestContext:
    """What hooks know about the request they run for."""

    #: TorchServe's request id (also vLLM's, so logs line up)
    request_id: str
    #: e.g. ``"v1/chat/completions"``
    route: str
    api: Api
    #: the HTTP request headers; names are case-insensitive (``ctx.headers.get("X-Team")``
    #: finds ``x-team``), as TorchServe passes them as the client spelled them
    headers: Mapping[str, str] = field(default_factory=Headers)
    #: free space for hooks to share state within this request (e.g. citations)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: whether the client asked for a stream
    stream: bool = False
    #: the last chunk the engine produced (set while streaming; for building final chunks)
    last_chunk: dict[str, Any] | None = None
    #: the engine request's body the view starts on (tsvllm binds each body it passes)
    body: InitVar[Mapping[str, Any] | None] = None
    #: a typed, read-only view of the engine request (see :class:`RequestView`)
    request: RequestView = field(init=False, repr=False)

    def __post_init__(self, body: Mapping[str, Any] | None) -> None:
        if not isinstance(self.headers, Headers):
            self.headers = Headers(self.headers)
        self.bind(body if body is not None else {})

    def bind(self, body: Mapping[str, Any]) -> None:
        """Point :attr:`request` at ``body`` (tsvllm does, before and after ``on_request``)."""
        self.request = RequestView(body, api=self.api, route=self.route)

    def set_max_output_tokens(self, body: dict[str, Any], tokens: int) -> None:
        """Set the engine request's output-token cap to ``tokens``, in the field(s) vLLM
        reads for this API (chat: ``max_completion_tokens``, and ``max_tokens`` too when
        the body has it; completions and Messages: ``max_tokens``; Responses:
        ``max_output_tokens``), and point :attr:`request` at ``body``."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ValueError(f"an output-token cap is an integer >= 1, not {tokens!r}")
        if self.api is Api.CHAT:
            body["max_completion_tokens"] = tokens
            if body.get("max_tokens") is not None:
                body["max_tokens"] = tokens
        elif self.api is Api.RESPONSES:
            body["max_output_tokens"] = tokens
        elif self.api is not None:
            body["max_tokens"] = tokens
        else:
            raise ValueError(f"{self.route} has no output-token cap a hook can set")
        self.bind(body)


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
                                     rewrite the OpenAI request body (ctx.request reads
                                     it typed; ctx.set_max_output_tokens caps the
                                     output), fill ctx.metadata, or refuse by raising
                                     ClientError (any 4xx, OpenAI type/code, headers
                                     such as Retry-After) or ContentFiltered (HTTP 400,
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
    run under its deadline (``handler.request_timeout_s``). A tsvllm error a hook raises
    (``ClientError``, ``ContentFiltered``, ``BadRequest``) is answered with its own status,
    body and headers; any other exception is a 500 whose worker log line names the hook.
    Either way only that request fails (or its stream ends with an error event). Each
    overridden hook is timed: the ``HookLatency`` histogram, by ``Stage``.

    Example: a handler file (``tsvllm archive CONFIG --handler my_handler.py``) that asks
    for a team header and caps the output, whichever field the client used::

        from tsvllm import ClientError, VLLMHandler

        CAP = 256


        class TeamHandler(VLLMHandler):
            async def on_request(self, body, ctx):
                team = ctx.headers.get("x-team")  # any spelling: X-Team, X-TEAM
                if not team:
                    raise ClientError(
                        401,
                        "send an x-team header",
                        code="missing_team",
                        headers={"WWW-Authenticate": 'Team realm="tsvllm"'},
                    )
                asked = ctx.request.max_output_tokens  # max_completion_tokens or max_tokens
                if asked is None or asked > CAP:
                    ctx.set_max_output_tokens(body, CAP)
                ctx.metadata["team"] = team
                return body
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
