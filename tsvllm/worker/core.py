"""THE request path: every route goes through :func:`handle`, in this order.

1. **auth**: the API key (``TSVLLM_API_KEY_FILE``, :mod:`tsvllm.auth`), 401 without it;
2. **route**: :func:`tsvllm.worker.routes.resolve`, 404 listing what the model serves;
   a probe (``v1/models``, ``health``) is answered now from the engine's state: 503 at
   once while the engine starts, never waiting;
3. **body limit**: the adapter's or ``handler.max_body_bytes`` (413), then JSON decoding
   (400);
4. the **adapter** turns the body into engine requests (OpenAI: the body itself; Vertex:
   one per instance);
5. under the **deadline** (``handler.request_timeout_s``: 504, and the engine requests are
   aborted; 503 with the start's status if it passes while the request still waits for the
   engine to start): wait for the engine, then per engine request ``on_request`` → engine →
   ``on_response``; or for a stream ``on_chunk`` per chunk and ``on_stream_end``
   (:class:`tsvllm.worker.hooks.Hooks` documents the hooks);
6. the adapter builds the reply body: a non-streamed one over
   ``handler.max_response_bytes`` is refused (400 ``response_too_large``); one over 4 MiB
   goes to TorchServe as several frames (:func:`tsvllm.worker.ts_worker.last_frame`);
7. **metrics** (tokens, time to first token, deadline hits, retrieval, guard decisions,
   the time spent in each hook) and the audit line, once per HTTP request whatever
   happened (:mod:`tsvllm.worker.report`);
8. **errors**: any failure becomes an OpenAI error body with its own status and headers
   (:mod:`tsvllm.errors`), *returned* (never raised: TorchServe would fail every request
   in flight on the worker); a hook's unexpected exception is a 500 naming the hook.

A stream that TorchServe hands to this worker after the worker sending it was removed (a
scale-down puts the removed worker's requests back in the queue) is refused before step 5:
its client already has part of a generation, so it gets an error event and ``[DONE]``,
never a second generation in the same response (:mod:`tsvllm.worker.stream_marks`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tsvllm import drain
from tsvllm.engine.base import EngineReply, StreamEvent
from tsvllm.errors import (
    BadRequest,
    ClientGone,
    EngineUnavailable,
    HookFailed,
    NotFound,
    PayloadTooLarge,
    TsVllmError,
    error_headers,
    to_error_body,
)
from tsvllm.headers import Headers
from tsvllm.worker import hooks, report, routes, ts_worker
from tsvllm.worker.adapters import Adapter, EngineRequest
from tsvllm.worker.hooks import EndStream, RequestContext, closing_events, overrides

if TYPE_CHECKING:
    from tsvllm.worker.handler import VLLMHandler
    from tsvllm.worker.stream_marks import StreamMarks

logger = logging.getLogger(__name__)

JSON = "application/json"
SSE = "text/event-stream"
DONE = b"data: [DONE]\n\n"
#: seconds between a stream's end and the removal of its started-mark: its last bytes are
#: with the frontend by then (a worker killed sooner leaves the mark: the safe side)
RELEASE_AFTER_S = 1.0


@dataclass(eq=False)  # kept in a set by identity (VLLMHandler.inflight)
class Record:
    """What one HTTP request did, for its metrics."""

    start: float = field(default_factory=time.perf_counter)
    contexts: list[RequestContext] = field(default_factory=list)
    usages: list[dict[str, Any]] = field(default_factory=list)
    ttft_ms: float | None = None
    #: seconds spent in each request hook (summed over chunks and engine requests)
    hook_s: dict[str, float] = field(default_factory=dict)
    timed_out: bool = False
    #: the deadline now running (the drain's abort makes it expire at once)
    timer: asyncio.Timeout | None = None
    #: TorchServe's id of the request
    request_id: str = "?"
    #: ended by the drain's abort, not by its own deadline
    ended_by_shutdown: bool = False
    #: ended because its client closed the connection (tsvllm's frontend plugin saw it)
    client_gone: bool = False
    #: waiting for the engine to start (nothing of the request has run yet)
    waiting_for_engine: bool = False
    #: for the audit log: the route, whose key, the bodies as the client sent them, and
    #: what came back (outputs only with ``log_content``)
    route: str | None = None
    key: str | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


async def handle(handler: VLLMHandler, data: list[dict[str, Any]], context: Any) -> list[bytes]:
    """Serve one TorchServe request; always returns ``[reply]``, errors included."""
    record = Record(request_id=_request_id(context))
    try:
        return [ts_worker.last_frame(context, await _serve(handler, data[0], context, record))]
    except asyncio.CancelledError:  # only the worker's loop stopping cancels a request
        exc = EngineUnavailable("the request was cancelled: the worker is stopping; retry")
        return [error_reply(context, exc)]
    except Exception as exc:  # a request's own failure: reply, never raise
        return [error_reply(context, exc)]
    finally:
        handler.inflight.discard(record)
        report.emit_request_metrics(handler, context, record)
        if handler.audit is not None:
            handler.audit.write(report.audit_entry(context, record, content=handler.audit_content))


async def _serve(
    handler: VLLMHandler, request: dict[str, Any], context: Any, record: Record
) -> bytes:
    headers = Headers(ts_worker.request_headers(context))
    if handler.api_key is not None:
        record.key = handler.api_key.check(headers)
    url_path = ts_worker.request_header(context, "url_path")
    if not (url_path or "").strip("/"):  # TorchServe's default-version URL has no sub-path
        url_path = routes.implied_path(request.get("body")) or url_path
    route = _resolve(handler, url_path)
    record.route = route.path
    if handler.draining:
        raise EngineUnavailable(
            "the server is shutting down and takes no new requests; retry",
            retry_after_s=drain.RETRY_AFTER_S,
        )
    if route.probe is not None:
        return json_reply(context, await _answer_probe(handler, route.probe))
    handler.inflight.add(record)
    deadline = asyncio.get_running_loop().time() + handler.request_timeout_s
    if route.engine_route is not None:
        path = (url_path or "").split("?")[0].strip("/")
        return await _serve_engine_route(
            handler, route, path, request, headers, context, record, deadline
        )
    adapter = route.adapter
    limit = adapter.max_body_bytes or handler.max_body_bytes
    body = decode_body(request, headers, limit=limit, limit_name=adapter.limit_name)
    calls = adapter.to_engine(body, api=route.api)
    if handler.audit_content:
        record.requests = [call.body for call in calls]
    request_id = ts_worker.request_id(context)
    contexts = record.contexts = [
        RequestContext(
            request_id=request_id if len(calls) == 1 else f"{request_id}-{i}",
            route=route.path,
            api=call.api,
            headers=headers,
            stream=adapter.streams and bool(call.body.get("stream")),
            body=call.body,
        )
        for i, call in enumerate(calls)
    ]

    if contexts[0].stream and _started_elsewhere(handler, request_id):
        return _refused_stream(context)

    async def start() -> Any:
        engine = await _ready_engine(handler, record)
        if contexts[0].stream:
            return await _open_stream(handler, engine, calls[0], contexts[0], record)
        return await _generate_all(handler, engine, adapter, calls, contexts, record)

    result = await _under_deadline(handler, record, start, deadline=deadline)
    if contexts[0].stream:
        return await _stream(handler, result, contexts[0], context, record, deadline=deadline)
    return json_reply(context, adapter.to_reply(result), cap=handler.max_response_bytes)


def _resolve(handler: VLLMHandler, url_path: str | None) -> routes.Route:
    """The route; a path only the engine may serve waits for it (503, or the start failure)."""
    engine = handler.engine if handler.engine is not None and not handler.engine.dead else None
    try:
        return routes.resolve(url_path, engine=engine, hook_apis=hooks.hook_apis(handler))
    except EngineUnavailable:
        if handler.start_failed is not None:
            raise handler.start_failed from None
        raise


async def _under_deadline(
    handler: VLLMHandler, record: Record, work: Any, *, deadline: float
) -> Any:
    """``await work()`` before ``deadline``: past it, the work is cancelled (the engine
    aborts its requests) and the request fails with :func:`_deadline_error`."""
    timer = record.timer = asyncio.timeout_at(deadline)
    try:
        async with timer:
            return await work()
    except TimeoutError:
        if timer.expired():
            raise _deadline_error(handler, record) from None
        raise


async def _serve_engine_route(
    handler: VLLMHandler,
    route: routes.Route,
    path: str,
    request: dict[str, Any],
    headers: Headers,
    context: Any,
    record: Record,
    deadline: float,
) -> bytes:
    """A route the engine serves itself (:meth:`Engine.call`) at ``path``; hooks run where
    the route has an API they understand (``route.api``: Responses, Messages)."""
    body = _engine_body(request, headers, limit=handler.max_body_bytes)
    ctx = RequestContext(
        request_id=ts_worker.request_id(context),
        route=route.path,
        api=route.api,
        headers=headers,
        stream=isinstance(body, dict) and bool(body.get("stream")),
        body=body if isinstance(body, dict) else None,
    )
    record.contexts = [ctx]
    if handler.audit_content and isinstance(body, dict):
        record.requests = [body]
    if ctx.stream and _started_elsewhere(handler, ctx.request_id):
        return _refused_stream(context, done=b"")

    async def start() -> EngineReply:
        engine = await _ready_engine(handler, record)
        payload = body
        if route.api is not None:
            payload = await _on_request(handler, body, ctx, record)
        raw = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        reply = await engine.call(route.engine_route, path, raw, request_id=ctx.request_id)
        if reply.chunks is not None or reply.status != 200:
            return reply
        if route.api is not None:
            result = json.loads(reply.body)
            record.usages.append(_usage(result))
            result = await _hook(handler, "on_response", record, result, ctx)
            reply.body = json.dumps(result, separators=(",", ":")).encode()
        elif route.path in routes.POOLING:
            record.usages.append(_reply_usage(reply))
        return reply

    reply = await _under_deadline(handler, record, start, deadline=deadline)
    ts_worker.set_reply(context, status=reply.status, content_type=reply.content_type)
    if reply.chunks is None:
        return _capped(reply.body, cap=handler.max_response_bytes)
    if route.api is None or not overrides(handler, "on_chunk"):
        return await _relay(handler, reply.chunks, ctx, context, record, deadline=deadline)
    events = _sse_events(reply.chunks)
    return await _stream(handler, events, ctx, context, record, deadline=deadline, done=b"")


def _engine_body(request: dict[str, Any], headers: Headers, *, limit: int) -> dict[str, Any] | None:
    """An engine route's JSON body, or None when the request has none (a GET)."""
    raw = request.get("body")
    if raw is None:
        raw = request.get("data")
    if raw is None or (isinstance(raw, (bytes, bytearray, str)) and not raw.strip()):
        return None
    return decode_body(request, headers, limit=limit, limit_name="handler.max_body_bytes")


def _reply_usage(reply: EngineReply) -> dict[str, Any]:
    """:func:`_usage` of an engine route's JSON reply; nothing for another (e.g. pooling's
    ``encoding_format: bytes``, whose counts are in a header)."""
    if not reply.content_type.startswith(JSON):
        return {}
    try:
        result = json.loads(reply.body)
    except ValueError:  # metrics never fail a request
        return {}
    return _usage(result) if isinstance(result, dict) else {}


def _usage(result: dict[str, Any]) -> dict[str, Any]:
    """Token counts of a reply body in OpenAI's completion terms: ``usage`` (Responses and
    Messages name them input/output tokens) or Cohere's ``meta.billed_units`` (v2/embed)."""
    usage = result.get("usage") or (result.get("meta") or {}).get("billed_units") or {}
    return {
        "prompt_tokens": usage.get("input_tokens", usage.get("prompt_tokens")),
        "completion_tokens": usage.get("output_tokens", usage.get("completion_tokens")),
    }


async def _sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[StreamEvent]:
    """The server-sent events in a stream of body chunks (closing it closes ``chunks``)."""
    buffer = ""
    try:
        async for chunk in chunks:
            buffer += chunk.decode()
            *complete, buffer = buffer.split("\n\n")
            for text in complete:
                event = StreamEvent.parse(text)
                if event is not None:
                    yield event
    finally:
        await chunks.aclose()


async def _relay(
    handler: VLLMHandler,
    chunks: AsyncIterator[bytes],
    ctx: RequestContext,
    context: Any,
    record: Record,
    *,
    deadline: float,
) -> bytes:
    """Pass a stream on as it comes (no hook looks at it); the empty return closes it."""
    timer = record.timer = asyncio.timeout_at(deadline)
    marks = handler.stream_marks
    claimed = False
    tail = b""
    try:
        async with timer:
            async for chunk in chunks:
                if record.ttft_ms is None:
                    record.ttft_ms = (time.perf_counter() - record.start) * 1000
                if marks is not None and not claimed:
                    marks.claim(ctx.request_id)
                    claimed = True
                ts_worker.send_chunk(context, chunk)
    except TimeoutError:
        if not timer.expired():
            raise
        _, err = to_error_body(_deadline_error(handler, record))
        tail = StreamEvent.from_payload(err).encode().encode()
    finally:
        await chunks.aclose()
    if claimed:
        _release_later(marks, ctx.request_id)
    return tail


def _started_elsewhere(handler: VLLMHandler, request_id: str) -> bool:
    """True when another worker already sent chunks of this stream (it was removed, and
    TorchServe handed its request to this worker)."""
    marks = handler.stream_marks
    return marks is not None and marks.started(request_id)


def _refused_stream(context: Any, *, done: bytes = DONE) -> bytes:
    """The end of a stream another worker began: an error event and ``done`` (the client
    already has that worker's 200 and first chunks; the engine is not asked).

    ``ts_stream_next: false`` marks it as the stream's last part: the frontend's job counted
    the other worker's chunks, and without it the frontend would append this reply and
    never end the response."""
    ts_worker.set_reply(context, status=200, content_type=SSE)
    ts_worker.set_header(context, "ts_stream_next", "false")
    exc = EngineUnavailable(
        "the worker serving this stream was removed (the model was scaled down) after it "
        "had sent part of it; the stream ends here: retry the request"
    )
    _, err = to_error_body(exc)
    return StreamEvent.from_payload(err).encode().encode() + done


def _release_later(marks: StreamMarks, request_id: str) -> None:
    """Remove the stream's started-mark once its last bytes are surely sent (only when the
    stream ended here: a worker stopping or killed mid-stream leaves it)."""
    asyncio.get_running_loop().call_later(RELEASE_AFTER_S, marks.release, request_id)


async def _ready_engine(handler: VLLMHandler, record: Record) -> Any:
    """:meth:`VLLMHandler.ready_engine`, noting in ``record`` while the request waits (still
    set when the deadline cancels the wait: :func:`_deadline_error` reads it)."""
    record.waiting_for_engine = True
    engine = await handler.ready_engine()
    record.waiting_for_engine = False
    return engine


def _deadline_error(handler: VLLMHandler, record: Record) -> Exception:
    """Why a request's deadline fired: its own limit (504), the drain's abort (503), or it
    passed while the request still waited for the engine to start (503 with the start's
    status: the request never ran)."""
    if record.client_gone:
        return ClientGone("the client closed the connection; the generation was stopped")
    if record.ended_by_shutdown:
        return EngineUnavailable(
            "the server is shutting down and ended this request; retry",
            retry_after_s=drain.RETRY_AFTER_S,
        )
    if record.waiting_for_engine:
        try:
            handler.serving_engine()
        except TsVllmError as exc:
            return exc
    record.timed_out = True
    return handler.timeout_error()


def end_gone(handler: VLLMHandler, request_ids: set[str]) -> None:
    """End the running requests whose client has gone, as if their deadline had come (the
    engine aborts them; what they answer reaches nobody)."""
    now = asyncio.get_running_loop().time()
    for record in handler.inflight:
        if record.request_id in request_ids and not record.client_gone:
            record.client_gone = True
            logger.info("request %s: its client has gone; ending it", record.request_id)
            if record.timer is not None:
                record.timer.reschedule(now)


def end_inflight(handler: VLLMHandler) -> None:
    """The drain's abort: every running request ends now, as if its deadline had come
    (a stream gets an error event and ``[DONE]``, a plain request 503; the engine aborts
    them)."""
    now = asyncio.get_running_loop().time()
    for record in handler.inflight:
        record.ended_by_shutdown = True
        if record.timer is not None:
            record.timer.reschedule(now)


async def _answer_probe(handler: VLLMHandler, probe: routes.Probe) -> dict[str, Any]:
    if probe is routes.Probe.LOAD:  # vLLM's /load: the requests this worker serves now
        if not handler.config.handler.vllm_engine_config.get("enable_server_load_tracking"):
            raise NotFound(
                "server load tracking is off; set vllm_engine_config."
                "enable_server_load_tracking: true (vLLM's --enable-server-load-tracking)"
            )
        return {"server_load": len(handler.inflight)}
    engine = handler.serving_engine()  # 503 (or the start failure) at once, never waits
    if probe is routes.Probe.MODELS:
        return await engine.models()
    await engine.health()
    return {"status": "ok", "running_requests": engine.running_requests()}


async def _hook(handler: VLLMHandler, stage: str, record: Record, *args: Any) -> Any:
    """``await handler.<stage>(*args)``, timed into ``record``. A tsvllm error (ClientError,
    ContentFiltered, ...) and EndStream pass as raised; anything else is logged here, with
    the hook's name and traceback, and becomes :class:`HookFailed` (500)."""
    start = time.perf_counter()
    try:
        return await getattr(handler, stage)(*args)
    except (TsVllmError, EndStream):
        raise
    except Exception as exc:
        hook = f"hook {type(handler).__name__}.{stage}"
        logger.exception("%s failed (request %s)", hook, _ctx_of(args).request_id)
        raise HookFailed(hook, exc) from exc
    finally:
        record.hook_s[stage] = record.hook_s.get(stage, 0.0) + time.perf_counter() - start


def _ctx_of(args: tuple[Any, ...]) -> RequestContext:
    """The RequestContext among a hook's arguments (every request hook takes one last)."""
    return args[-1]


async def _on_request(
    handler: VLLMHandler, body: dict[str, Any], ctx: RequestContext, record: Record
) -> dict[str, Any]:
    """``on_request``, with ``ctx.request`` reading the body it gets, then the one it returns."""
    ctx.bind(body)
    body = await _hook(handler, "on_request", record, body, ctx)
    ctx.bind(body)
    return body


async def _generate_one(
    handler: VLLMHandler, engine: Any, call: EngineRequest, ctx: RequestContext, record: Record
) -> dict[str, Any]:
    body = await _on_request(handler, call.body, ctx, record)
    result = await engine.generate(call.api, body, request_id=ctx.request_id)
    record.usages.append(result.get("usage") or {})
    result = await _hook(handler, "on_response", record, result, ctx)
    if handler.audit is not None:
        for choice in result.get("choices") or ():
            record.finish_reasons.append(choice.get("finish_reason"))
            if handler.audit_content:
                record.outputs.append(_choice_text(choice, part="message"))
    return result


async def _generate_all(
    handler: VLLMHandler,
    engine: Any,
    adapter: Adapter,
    calls: list[EngineRequest],
    contexts: list[RequestContext],
    record: Record,
) -> list[dict[str, Any]]:
    """Every engine request of one HTTP request, concurrently; the first failure wins."""
    if len(calls) == 1:
        try:
            return [await _generate_one(handler, engine, calls[0], contexts[0], record)]
        except Exception as exc:
            raise adapter.request_error(0, exc) from None
    results = await asyncio.gather(
        *(
            _generate_one(handler, engine, c, x, record)
            for c, x in zip(calls, contexts, strict=True)
        ),
        return_exceptions=True,
    )
    for i, result in enumerate(results):
        if isinstance(result, BaseException):
            raise adapter.request_error(i, result)
    return results


async def _open_stream(
    handler: VLLMHandler, engine: Any, call: EngineRequest, ctx: RequestContext, record: Record
) -> AsyncIterator[StreamEvent]:
    body = await _on_request(handler, call.body, ctx, record)
    return await engine.generate(call.api, body, request_id=ctx.request_id)


async def _stream(
    handler: VLLMHandler,
    events: AsyncIterator[StreamEvent],
    ctx: RequestContext,
    context: Any,
    record: Record,
    *,
    deadline: float,
    done: bytes = DONE,
) -> bytes:
    """Send each event as it comes; the returned bytes close the response (``done``
    last: ``[DONE]`` for OpenAI's completion streams; Responses/Messages have none)."""
    ts_worker.set_reply(context, status=200, content_type=SSE)
    hooked = overrides(handler, "on_chunk")
    audited = handler.audit is not None
    marks = handler.stream_marks
    claimed = False
    tail: list[StreamEvent] = []
    last: StreamEvent | None = None
    before_last: StreamEvent | None = None
    timer = record.timer = asyncio.timeout_at(deadline)
    if record.ended_by_shutdown:  # aborted between the two phases
        timer.reschedule(asyncio.get_running_loop().time())
    try:
        async with timer:
            async for event in events:
                if last is None:
                    record.ttft_ms = (time.perf_counter() - record.start) * 1000
                before_last, last = last, event
                if hooked:
                    ctx.last_chunk = event.payload
                    sent = await _hook(handler, "on_chunk", record, event, ctx)
                else:
                    sent = (event,)
                for out in sent:
                    if marks is not None and not claimed:
                        marks.claim(ctx.request_id)
                        claimed = True
                    ts_worker.send_chunk(context, out.encode().encode())
                    if audited and handler.audit_content:  # what the client saw
                        _add_stream_text(record, out)
            if last is not None and '"usage"' in last.data:  # include_usage was asked
                record.usages.append(last.payload.get("usage") or {})
            tail = list(await _hook(handler, "on_stream_end", record, ctx))
        if audited:  # the finish reasons are in the last chunks (usage may come after)
            for event in (before_last, last):
                for choice in event.payload.get("choices", ()) if event else ():
                    if choice.get("finish_reason") is not None:
                        record.finish_reasons.append(choice["finish_reason"])
    except EndStream as end:  # closing `events` below aborts the engine request
        record.finish_reasons.append(end.finish_reason)
        tail = closing_events(ctx, finish_reason=end.finish_reason)
    except Exception as exc:  # mid-stream: the status is already 200
        if isinstance(exc, TimeoutError) and timer.expired():
            exc = _deadline_error(handler, record)  # closing `events` aborts the request
        elif not isinstance(exc, HookFailed):  # that one is logged where it failed
            logger.exception("stream %s failed", ctx.request_id)
        _, err = to_error_body(exc)
        tail = [StreamEvent.from_payload(err)]
    finally:
        await events.aclose()
    if claimed:
        _release_later(marks, ctx.request_id)
    return b"".join(e.encode().encode() for e in tail) + done


def decode_body(
    request: dict[str, Any], headers: Headers, *, limit: int, limit_name: str
) -> dict[str, Any]:
    """The request's JSON object, at most ``limit`` bytes.

    TorchServe's worker has usually decoded it already (``application/json``); the size
    check then uses the Content-Length header, or (a chunked upload has none) the size
    of the decoded body re-encoded."""
    body = request.get("body")
    if body is None:
        body = request.get("data")
    length = len(body) if isinstance(body, (bytes, bytearray, str)) else None
    if length is None:
        declared = headers.get("content-length", "")
        if declared.strip().isdigit():
            length = int(declared)
        elif body is not None:
            length = len(json.dumps(body, separators=(",", ":")).encode())
    if length is not None and length > limit:
        raise PayloadTooLarge(
            f"request body is {length} bytes; the limit is {limit} ({limit_name})"
        )
    if isinstance(body, (bytes, bytearray, str)):
        body = _parse_json(body)
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, not {type(body).__name__}")
    return body


def _parse_json(raw: bytes | bytearray | str) -> Any:
    if not raw.strip():
        raise BadRequest("request body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise BadRequest(
            f"request body is not valid JSON ({reason[:200]}); send a JSON object "
            "with Content-Type: application/json"
        ) from None


def json_reply(
    context: Any, body: dict[str, Any], *, status: int = 200, cap: int | None = None
) -> bytes:
    ts_worker.set_reply(context, status=status, content_type=JSON)
    return _capped(json.dumps(body, separators=(",", ":")).encode(), cap=cap)


def _capped(body: bytes, *, cap: int | None) -> bytes:
    """A whole (non-streamed) reply, refused when it is over ``cap``
    (``handler.max_response_bytes``; None: no cap, as ``vllm serve``)."""
    if cap is not None and len(body) > cap:
        raise BadRequest(
            f"the reply is {len(body)} bytes, over this server's cap of {cap} bytes "
            "(handler.max_response_bytes); ask for less (fewer prompt_logprobs, logprobs, "
            "top_logprobs, n or inputs) or raise handler.max_response_bytes",
            code="response_too_large",
        )
    return body


def error_reply(context: Any, exc: BaseException) -> bytes:
    """The OpenAI error reply for ``exc``: its status, body and headers (``Retry-After``,
    ``WWW-Authenticate``, ...). A 500 (a bug, not a busy server) is logged with its
    traceback; a 503 (an expected answer: the engine died and its worker restarts) with one
    line; a client's error not at all."""
    status, body = to_error_body(exc)
    headers = error_headers(exc)
    if status == 503 and "Retry-After" not in headers:
        logger.warning("request %s: 503 %s", _request_id(context), exc)
    elif status >= 500 and "Retry-After" not in headers and not isinstance(exc, HookFailed):
        logger.error("request %s failed: %s", _request_id(context), exc, exc_info=exc)
    reply = json_reply(context, body, status=status)
    for name, value in headers.items():
        ts_worker.set_header(context, name, value)
    return reply


def _request_id(context: Any) -> str:
    try:
        return ts_worker.request_id(context)
    except Exception:  # a context without ids: the log line still goes out
        return "?"


def _choice_text(choice: dict[str, Any], *, part: str = "delta") -> str:
    """A choice's text: chat (``message`` or ``delta`` content) or completion (``text``)."""
    if "text" in choice:
        return choice.get("text") or ""
    return (choice.get(part) or {}).get("content") or ""


def _add_stream_text(record: Record, event: StreamEvent) -> None:
    for choice in event.payload.get("choices", ()):
        index = choice.get("index", 0)
        record.outputs += [""] * (index + 1 - len(record.outputs))
        record.outputs[index] += _choice_text(choice)
