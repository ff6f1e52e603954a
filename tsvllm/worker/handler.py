"""``VLLMHandler``: a TorchServe async handler serving the OpenAI API from vLLM.

Routes (the part of the URL after ``/predictions/<model>/<version>/``, which TorchServe
passes as the ``url_path`` request header):

=========================  ==============================================
``v1/completions``         OpenAI completions (JSON or SSE stream)
``v1/chat/completions``    OpenAI chat completions (JSON or SSE stream)
``v1/models``              the served model names and LoRA adapters
``health``                 200 ``{"status": "ok", "running_requests": n}``
                           once the engine serves, else 503
=========================  ==============================================

Every request is bounded by ``handler.request_timeout_s``: past it the generation is
aborted (TorchServe never tells the handler a client left; this deadline frees the engine).
If the engine dies, requests in flight get 503, and the worker builds a new engine.

Each call of :meth:`VLLMHandler.handle` serves one request and *always returns* a
reply: a request's own failure becomes an OpenAI error body with its HTTP status and
never escapes (TorchServe would fail every request in flight on the worker).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from tsvllm.auth import ApiKey
from tsvllm.engine.base import Api, Engine, StreamEvent
from tsvllm.errors import (
    BadRequest,
    EngineUnavailable,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    to_error_body,
)
from tsvllm.worker import ts_worker as torchserve
from tsvllm.worker import vertex_envelope as vertex
from tsvllm.worker.hooks import EndStream, Hooks, RequestContext, final_chunk, overrides

logger = logging.getLogger(__name__)

JSON = "application/json"
SSE = "text/event-stream"
DONE = b"data: [DONE]\n\n"

ROUTES: dict[str, Api | str] = {
    "v1/completions": Api.COMPLETIONS,
    "v1/chat/completions": Api.CHAT,
    "v1/models": "models",
    "health": "health",
}


class VLLMHandler(Hooks):
    """TorchServe async handler (``asyncCommunication: true``) around a vLLM engine.

    Configure it in ``model-config.yaml`` (see :mod:`tsvllm.config`). To customise,
    subclass it in a handler file and override the hooks (:mod:`tsvllm.worker.hooks` documents
    their call order) or :meth:`build_engine` to use another engine.

    The engine starts in the background: ``initialize`` returns at once and requests that
    arrive before the engine is up wait for it. (TorchServe 0.12 kills an async worker that
    receives a request while it is still loading after a restart, so a slow
    ``initialize`` could never recover under traffic.) If the engine cannot start, the
    worker keeps retrying with back-off and answers 503 meanwhile.
    """

    #: optional ``handler:`` sections this class runs (subclasses add "rag", "guards")
    features: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.config: Any = None
        self.max_body_bytes: int = 1 << 20
        self.request_timeout_s: float = 300.0
        self._model_dir = Path(".")
        self.initialized = False
        #: the key every request must carry (``TSVLLM_API_KEY_FILE``), see tsvllm.auth
        self.api_key: ApiKey | None = None
        self._starting: asyncio.Task | None = None
        #: why the last engine start failed (None once it runs)
        self.start_error: Exception | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def initialize(self, context: Any) -> None:
        """Called once by TorchServe, synchronously, in the worker's main thread."""
        from tsvllm.config import ConfigError, validate_model_config

        model_dir = Path(context.system_properties.get("model_dir") or ".")
        self.config = validate_model_config(
            context.model_yaml_config or {}, source=str(model_dir / "model-config.yaml")
        )
        handler_cfg = self.config.handler
        for section in ("rag", "guards"):
            if getattr(handler_cfg, section) is not None and section not in self.features:
                raise ConfigError(
                    str(model_dir / "model-config.yaml"),
                    [
                        f"handler.{section}: {type(self).__name__} does not run {section}; "
                        "archive with --handler handlers/rag_guard_handler.py"
                    ],
                )
        self.max_body_bytes = handler_cfg.max_body_bytes
        self.request_timeout_s = handler_cfg.request_timeout_s
        self._model_dir = model_dir
        self.api_key = ApiKey.from_environ(os.environ)
        os.environ.update(handler_cfg.env)
        torchserve.install_worker_path(lean=handler_cfg.lean_worker)

        from tsvllm.worker.lifeline import start_reaper

        start_reaper()  # the engine's processes die with this worker, however it ends
        # TorchServe runs this same loop right after initialize() returns.
        loop = asyncio.get_event_loop()
        self._starting = loop.create_task(self._start_engine(model_dir=model_dir))
        self.initialized = True

    async def _start_engine(self, *, model_dir: Path) -> Engine:
        """Start the engine; on failure retry here, with back-off, and never exit.

        The worker stays up on purpose: TorchServe 0.12 cannot restart an async worker
        while requests are queued for it (IllegalStateException "more than 1 control
        command"), so a worker that exited under traffic might never come back.
        """
        delay = 5.0
        while True:
            try:
                self.engine = await self.build_engine(model_dir=model_dir)
            except Exception as exc:
                self.start_error = exc
                logger.exception("tsvllm: the engine failed to start; retrying in %.0fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            self.start_error = None
            logger.info("tsvllm: engine ready")
            return self.engine

    async def ready_engine(self) -> Engine:
        """The engine, once started (requests that arrive during start-up wait here).

        A dead engine (its process was killed, it crashed) is shut down and a new one
        started in the background; until it serves, requests get 503.
        """
        engine = self.engine
        if engine is not None and not engine.dead:
            return engine
        if engine is not None:
            logger.error("tsvllm: the engine died; starting a new one")
            self.engine = None
            engine.shutdown()  # reaps whatever is left of its processes
            loop = asyncio.get_running_loop()
            self._starting = loop.create_task(self._start_engine(model_dir=self._model_dir))
            raise EngineUnavailable("the engine died and is restarting; retry shortly")
        if self._starting is None:
            raise EngineUnavailable("the handler is not initialized")
        if self.start_error is not None:
            raise EngineUnavailable(
                f"the engine failed to start ({type(self.start_error).__name__}) and is "
                "retrying; see the worker log"
            )
        return await asyncio.shield(self._starting)

    async def build_engine(self, *, model_dir: Path) -> Engine:
        """Start the vLLM engine described by ``handler:`` (override for another engine)."""
        from tsvllm.engine.vllm_engine import VllmEngine, handler_argv, parse_engine_args

        argv = handler_argv(self.config.handler, resolve=lambda p: _in_archive(p, model_dir))
        return await VllmEngine.start(parse_engine_args(argv))

    # -- requests ----------------------------------------------------------------------

    async def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """Serve one request; always returns ``[reply]`` (errors included)."""
        stats: dict[str, Any] = {"start": time.perf_counter()}
        try:
            return [await self._serve(data[0], context, stats)]
        except asyncio.CancelledError:
            return [self._error_reply(context, TimeoutError("request cancelled"))]
        except Exception as exc:  # a request's own failure: reply, never raise
            return [self._error_reply(context, exc)]
        finally:
            self._emit_metrics(context, stats)

    async def _serve(self, request: dict[str, Any], context: Any, stats: dict[str, Any]) -> bytes:
        headers = torchserve.request_headers(context)
        if self.api_key is not None:
            self.api_key.check(headers)
        route = (torchserve.request_header(context, "url_path") or "").split("?")[0].strip("/")
        if (
            route == vertex.ROUTE
        ):  # Vertex AI's {"instances": [...]} envelope (tsvllm.worker.vertex_envelope)
            envelope = self._decode_body(
                request, headers, limit=vertex.MAX_BODY_BYTES, limit_name=vertex.LIMIT_NAME
            )
            reply = await vertex.predict(
                self, envelope, headers=headers, request_id=torchserve.request_id(context)
            )
            return self._json_reply(context, reply)
        if route not in ROUTES:
            raise NotFound(
                f"unknown route {route or '(none)'!r}; this model serves "
                + ", ".join(f"/{r}" for r in ROUTES),
            )
        api = ROUTES[route]
        if api == "models":
            return self._json_reply(context, await (await self.ready_engine()).models())
        if api == "health":
            engine = await self.ready_engine()
            await engine.health()
            body = {"status": "ok", "running_requests": engine.running_requests()}
            return self._json_reply(context, body)

        body = self._decode_body(request, headers)
        ctx = RequestContext(
            request_id=torchserve.request_id(context),
            route=route,
            api=api,
            headers=headers,
            stream=bool(body.get("stream")),
        )
        stats["ctx"] = ctx
        deadline = asyncio.get_running_loop().time() + self.request_timeout_s
        timer = asyncio.timeout_at(deadline)
        try:
            async with timer:
                engine = await self.ready_engine()
                body = await self.on_request(body, ctx)
                result = await engine.generate(api, body, request_id=ctx.request_id)
                if isinstance(result, dict):
                    stats["usage"] = result.get("usage")
                    return self._json_reply(context, await self.on_response(result, ctx))
        except TimeoutError:
            if timer.expired():  # cancelling generate() aborted the engine request
                stats["timed_out"] = True
                raise self._timeout() from None
            raise
        return await self._stream(result, ctx, context, stats, deadline=deadline)

    async def _stream(
        self,
        events: Any,
        ctx: RequestContext,
        context: Any,
        stats: dict[str, Any],
        *,
        deadline: float,
    ) -> bytes:
        """Send each event as it comes; the returned bytes close the response."""
        torchserve.set_reply(context, status=200, content_type=SSE)
        hooked = overrides(self, "on_chunk")
        tail: list[StreamEvent] = []
        last: StreamEvent | None = None
        timer = asyncio.timeout_at(deadline)
        try:
            async with timer:
                async for event in events:
                    if last is None:
                        stats["ttft_ms"] = (time.perf_counter() - stats["start"]) * 1000
                    last = event
                    if not hooked:
                        torchserve.send_chunk(context, event.encode().encode())
                        continue
                    ctx.last_chunk = event.payload
                    for out in await self.on_chunk(event, ctx):
                        torchserve.send_chunk(context, out.encode().encode())
                if last is not None and '"usage"' in last.data:  # include_usage was asked
                    stats["usage"] = last.payload.get("usage")
                tail = list(await self.on_stream_end(ctx))
        except EndStream as end:  # closing `events` below aborts the engine request
            tail = [final_chunk(ctx, finish_reason=end.finish_reason)]
        except Exception as exc:  # mid-stream: the status is already 200
            if isinstance(exc, TimeoutError) and timer.expired():
                stats["timed_out"] = True
                exc = self._timeout()  # closing `events` below aborts the engine request
            else:
                logger.exception("stream %s failed", ctx.request_id)
            _, err = to_error_body(exc)
            tail = [StreamEvent.from_payload(err)]
        finally:
            await events.aclose()
        return b"".join(e.encode().encode() for e in tail) + DONE

    def _decode_body(
        self,
        request: dict[str, Any],
        headers: dict[str, str],
        *,
        limit: int | None = None,
        limit_name: str = "handler.max_body_bytes",
    ) -> dict[str, Any]:
        """The request's JSON object, at most ``limit`` bytes (``handler.max_body_bytes``).

        TorchServe's worker has usually decoded it already (``application/json``); the size
        check then uses the Content-Length header, or (a chunked upload has none) the size
        of the decoded body re-encoded."""
        limit = self.max_body_bytes if limit is None else limit
        body = request.get("body")
        if body is None:
            body = request.get("data")
        length = len(body) if isinstance(body, (bytes, bytearray, str)) else None
        if length is None:
            declared = next((v for k, v in headers.items() if k.lower() == "content-length"), "")
            if declared.strip().isdigit():
                length = int(declared)
            elif body is not None:
                length = len(json.dumps(body, separators=(",", ":")).encode())
        if length is not None and length > limit:
            raise PayloadTooLarge(
                f"request body is {length} bytes; the limit is {limit} ({limit_name})"
            )
        if isinstance(body, (bytes, bytearray, str)):
            if not body.strip():
                raise BadRequest("request body is empty; send a JSON object")
            try:
                body = json.loads(body)
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
                raise BadRequest(
                    f"request body is not valid JSON ({reason[:200]}); send a JSON object "
                    "with Content-Type: application/json"
                ) from None
        if not isinstance(body, dict):
            raise BadRequest(f"request body must be a JSON object, not {type(body).__name__}")
        return body

    # -- replies -----------------------------------------------------------------------

    def _timeout(self) -> RequestTimeout:
        return RequestTimeout(
            f"the request ran past the server's limit of {self.request_timeout_s:g}s "
            "(handler.request_timeout_s) and was stopped"
        )

    def _json_reply(self, context: Any, body: dict[str, Any], *, status: int = 200) -> bytes:
        torchserve.set_reply(context, status=status, content_type=JSON)
        return json.dumps(body, separators=(",", ":")).encode()

    def _emit_metrics(self, context: Any, stats: dict[str, Any]) -> None:
        """Token counts, time to first token, deadline hits, retrieval time, guard decisions."""
        try:
            counters, times = [], []
            usage = stats.get("usage") or {}
            for key, name in (
                ("prompt_tokens", "PromptTokens"),
                ("completion_tokens", "CompletionTokens"),
            ):
                if usage.get(key) is not None:
                    counters.append((name, usage[key], {}))
            if stats.get("timed_out"):
                counters.append(("RequestTimeouts", 1, {}))
            if "ttft_ms" in stats:
                times.append(("TimeToFirstToken", stats["ttft_ms"], {}))
            ctx = stats.get("ctx")
            meta = ctx.metadata if ctx is not None else {}
            if "retrieval_ms" in meta:
                times.append(("RetrievalLatency", meta["retrieval_ms"], {}))
            for guard, action, categories in meta.get("guard_decisions", ()):
                for category in categories or ("none",):
                    dims = {"Guard": guard, "Action": action, "Category": category}
                    counters.append(("GuardDecisions", 1, dims))
            torchserve.emit_metrics(context, counters=counters, times_ms=times)
        except Exception:  # metrics must never fail a request
            logger.exception("emitting metrics failed")

    def _error_reply(self, context: Any, exc: BaseException) -> bytes:
        status, body = to_error_body(exc)
        if status >= 500:
            logger.error("request failed", exc_info=exc)
        return self._json_reply(context, body, status=status)


def _in_archive(path: str, model_dir: Path) -> str:
    """A relative path that exists inside the archive's model_dir, else ``path`` as is
    (absolute paths, and Hugging Face ids that vLLM resolves itself)."""
    candidate = model_dir / path
    return str(candidate) if not Path(path).is_absolute() and candidate.exists() else path
