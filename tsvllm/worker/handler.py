"""``VLLMHandler``: a TorchServe async handler serving the OpenAI API from vLLM.

This module owns the engine's lifecycle (start in the background, bounded retries,
replacement of a dead engine). Requests go through the one request path in
:mod:`tsvllm.worker.core`; the routes are in :mod:`tsvllm.worker.routes`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from tsvllm import drain
from tsvllm.auth import ApiKeys
from tsvllm.engine.base import Engine, EngineCannotStart, worker_nodes_hint
from tsvllm.errors import EngineStartFailed, EngineUnavailable, RequestTimeout
from tsvllm.worker import core, engine_metrics, ts_worker
from tsvllm.worker.audit import AuditLog
from tsvllm.worker.drain_watch import DrainWatch
from tsvllm.worker.hooks import Hooks, check_torchserve_overrides, overrides

logger = logging.getLogger(__name__)

#: attempts to start the engine after a failure that may be transient (then: give up)
START_ATTEMPTS = 5
#: seconds before the first retry; doubled for each next one, up to MAX_RETRY_DELAY_S
FIRST_RETRY_DELAY_S = 5.0
MAX_RETRY_DELAY_S = 60.0


class VLLMHandler(Hooks):
    """TorchServe async handler (``asyncCommunication: true``) around a vLLM engine.

    Configure it in ``model-config.yaml`` (see :mod:`tsvllm.config`). To customise,
    subclass it in a handler file and override the hooks (:class:`Hooks` documents their
    call order) or :meth:`build_engine` to use another engine.

    The engine starts in the background, without blocking the worker's event loop:
    ``initialize`` returns at once; generation requests that arrive before the engine is up
    wait for it (within their deadline; past it, 503 with the start's status) and probes
    (``v1/models``, ``health``) answer 503 at once with what the start is doing
    (:meth:`start_status`). (TorchServe 0.12 kills an async
    worker that receives a request while it is still loading after a restart, so a slow
    ``initialize`` could never recover under traffic.) A start failure that no retry can
    fix (:class:`~tsvllm.engine.base.EngineCannotStart`, an invalid config) is final:
    every request then gets HTTP 500 with code ``engine_start_failed`` and the reason.
    Other failures are retried :data:`START_ATTEMPTS` times with back-off. Each start
    attempt is bounded by the model config's ``startupTimeout`` (seconds): an engine that
    has not started by then (e.g. one spanning several nodes whose worker node is gone) is
    ended and the attempt fails with
    :class:`~tsvllm.engine.base.EngineStartTimeout`, a transient failure. A generation
    request that arrives during a start waits for that attempt only; between attempts,
    requests get 503 with the reason of the last failure.
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
        self.api_key: ApiKeys | None = None
        self._starting: asyncio.Task | None = None
        #: resolved when the running start attempt ends (requests wait for it, see ready_engine)
        self._attempt_end: asyncio.Future | None = None
        #: the running start attempt: its number and when it began (time.monotonic), or None
        self._attempt: tuple[int, float] | None = None
        #: why the last engine start failed (None once it runs)
        self.start_error: Exception | None = None
        #: set when the engine can never start; every request gets it
        self.start_failed: EngineStartFailed | None = None
        #: why this worker's GPUs cannot be placed (:mod:`tsvllm.worker.placement`), or None
        self.placement_error: Exception | None = None
        #: the generation requests running now (:mod:`tsvllm.worker.core` keeps it)
        self.inflight: set[Any] = set()
        #: the host's drain requests (None without ``TSVLLM_CONTROL_DIR``)
        self.drain_watch: DrainWatch | None = None
        self._drain_task: asyncio.Task | None = None
        #: one JSON line per request (``handler.audit_log``), and whether with the text
        self.audit: AuditLog | None = None
        self.audit_content = False
        #: TorchServe's worker context (its metrics), for what is timed outside requests
        self._context: Any = None

    # -- lifecycle ---------------------------------------------------------------------

    def initialize(self, context: Any) -> None:
        """Called once by TorchServe, synchronously, in the worker's main thread."""
        from tsvllm.config import validate_model_config

        self._context = context
        model_dir = Path(context.system_properties.get("model_dir") or ".")
        source = str(model_dir / "model-config.yaml")
        self.config = validate_model_config(context.model_yaml_config or {}, source=source)
        self._check_features(source)
        check_torchserve_overrides(type(self), base=VLLMHandler)  # never skip them silently
        for warning in self.config.warnings():  # risky but workable settings
            logger.warning("tsvllm: %s: %s", source, warning)
        handler_cfg = self.config.handler
        self.max_body_bytes = handler_cfg.max_body_bytes
        self.request_timeout_s = handler_cfg.request_timeout_s
        self._model_dir = model_dir
        self.api_key = ApiKeys.from_environ(os.environ)
        self._open_audit_log(handler_cfg.audit_log)
        from tsvllm.worker.placement import assign_gpus

        # deviceType gpu: this worker's GPUs in CUDA_VISIBLE_DEVICES before the engine starts
        self.placement_error = assign_gpus(self.config, context.system_properties, os.environ)
        os.environ.update(handler_cfg.env)
        ts_worker.install_worker_path(lean=handler_cfg.lean_worker)

        from tsvllm.worker.lifeline import start_reaper

        start_reaper()  # the engine's processes die with this worker, however it ends
        # TorchServe runs this same loop right after initialize() returns.
        loop = asyncio.get_event_loop()
        self._starting = loop.create_task(self._start_engine())
        self._watch_drain(loop, model=context.model_name)
        engine_metrics.start(self, context)  # vllm:* series for the host's scrape endpoint
        self.initialized = True

    def _open_audit_log(self, cfg: Any) -> None:
        if cfg is None:
            return
        path = Path(cfg.path)
        if not path.is_absolute():
            path = Path(os.environ.get("LOG_LOCATION") or ".") / path
        self.audit = AuditLog(path, max_bytes=cfg.max_bytes, backups=cfg.backups)
        self.audit_content = cfg.log_content

    def _watch_drain(self, loop: asyncio.AbstractEventLoop, *, model: str) -> None:
        directory = drain.control_dir(os.environ)
        if directory is None:
            return
        self.drain_watch = DrainWatch(
            directory,
            model=model,
            running=lambda: len(self.inflight),
            on_abort=lambda: core.end_inflight(self),
        )
        self._drain_task = loop.create_task(self.drain_watch.run())

    @property
    def draining(self) -> bool:
        """True once the host asked this worker to drain (:mod:`tsvllm.drain`)."""
        return self.drain_watch is not None and self.drain_watch.draining

    def _check_features(self, source: str) -> None:
        from tsvllm.config import ConfigError

        for section in ("rag", "guards"):
            if getattr(self.config.handler, section) is not None and section not in self.features:
                raise ConfigError(
                    source,
                    [
                        f"handler.{section}: {type(self).__name__} does not run {section}; "
                        "archive with --handler handlers/rag_guard_handler.py"
                    ],
                )

    async def _start_engine(self) -> Engine | None:
        """Start the engine and :meth:`setup`; retry a transient failure, with a bound.

        The worker stays up even when it gives up, answering every request with the
        reason: TorchServe 0.12 cannot restart an async worker while requests are queued
        for it (IllegalStateException "more than 1 control command"), and a worker that
        exited would be restarted, and fail again, forever.
        """
        from tsvllm.config import ConfigError

        delay = FIRST_RETRY_DELAY_S
        for attempt in range(1, START_ATTEMPTS + 1):
            self._attempt = (attempt, time.monotonic())
            try:
                self.engine = await self._start_once()
            except (EngineCannotStart, ConfigError) as exc:
                self._give_up(exc)
                self._attempt_ended()
                return None
            except Exception as exc:
                self.start_error = exc
                if attempt == START_ATTEMPTS:
                    self._give_up(exc, attempts=attempt)
                    self._attempt_ended()
                    return None
                logger.exception(
                    "tsvllm: the engine failed to start (attempt %d of %d); retrying in %.0fs",
                    attempt,
                    START_ATTEMPTS,
                    delay,
                )
                self._attempt_ended()  # requests waiting for it get 503 with the reason
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY_S)
                continue
            self.start_error = None
            self._attempt_ended()
            logger.info("tsvllm: engine ready")
            return self.engine
        return None

    def _attempt_ended(self) -> None:
        """Wake the requests waiting for the start attempt that just ended."""
        self._attempt = None
        end, self._attempt_end = self._attempt_end, None
        if end is not None and not end.done():
            end.set_result(None)

    async def _start_once(self) -> Engine:
        """One engine plus the handler's set-up; a failure leaves nothing running."""
        if self.placement_error is not None:
            raise self.placement_error  # a ConfigError: final, no retry
        engine = await self.build_engine(model_dir=self._model_dir)
        started = time.perf_counter()
        try:
            await self.setup(engine=engine, model_dir=self._model_dir)
        except BaseException:
            await asyncio.to_thread(engine.shutdown)
            raise
        finally:
            if self._context is not None and overrides(self, "setup"):
                core.emit_hook_time(self._context, "setup", time.perf_counter() - started)
        return engine

    def _give_up(self, exc: Exception, *, attempts: int = 1) -> None:
        """Stop trying: every request gets :class:`EngineStartFailed` from now on."""
        self.start_error = exc
        reason = f"{type(exc).__name__}: {exc}"
        if attempts > 1:
            reason += f" (gave up after {attempts} attempts)"
        self.start_failed = EngineStartFailed(reason)
        logger.error("tsvllm: %s; fix the model config and register the model again", reason)

    async def ready_engine(self) -> Engine:
        """The engine, once started: generation requests that arrive during start-up wait
        here (within their deadline) for the running start attempt, not for the retries:
        when that attempt fails they get 503 with its reason (or the final failure)."""
        while True:
            engine = self._engine_now()  # raises when the last attempt failed
            if engine is not None:
                return engine
            starting = self._starting
            if starting.done():  # the start ended without an engine
                if not starting.cancelled() and starting.exception() is not None:
                    raise EngineUnavailable(
                        f"the engine did not start ({_reason(starting.exception())})"
                    )
                raise self.start_failed or EngineUnavailable("the engine did not start")
            if self._attempt_end is None or self._attempt_end.done():
                self._attempt_end = asyncio.get_running_loop().create_future()
            # neither is cancelled when this request is
            await asyncio.wait({self._attempt_end, starting}, return_when=asyncio.FIRST_COMPLETED)

    def serving_engine(self) -> Engine:
        """The engine if it serves now; else raise at once (503 with :meth:`start_status`,
        or the start failure)."""
        engine = self._engine_now()
        if engine is None:
            raise EngineUnavailable(self.start_status())
        return engine

    def start_status(self) -> str:
        """What the engine is doing while it starts, for a 503: the running attempt's time
        against ``startupTimeout`` and, for an engine across nodes, what it waits for."""
        text = "the engine is starting"
        if self._attempt is not None:
            number, began = self._attempt
            text += f" ({time.monotonic() - began:.0f} s"
            limit = getattr(self.config, "startupTimeout", None)
            if limit is not None:
                text += f" of startupTimeout {limit} s"
            if number > 1:
                text += f", attempt {number} of {START_ATTEMPTS}"
                if self.start_error is not None:
                    text += f" after {type(self.start_error).__name__}"
            text += ")"
        nnodes = _nnodes(self.config)
        if nnodes > 1:
            from tsvllm.engine.vllm_engine import DEFAULT_MASTER_PORT

            engine_cfg = self.config.handler.vllm_engine_config
            hint = worker_nodes_hint(
                nnodes=nnodes,
                master_addr=engine_cfg.get("master_addr"),  # required with nnodes > 1
                master_port=engine_cfg.get("master_port", DEFAULT_MASTER_PORT),
            )
            text += f"; {hint}"
        return text

    def _engine_now(self) -> Engine | None:
        """The engine if it serves, None while it starts; raise when it cannot serve.

        A dead engine (its process was killed, it crashed) is shut down and a new one
        started in the background; until it serves, requests get 503. During a start attempt
        this returns None (requests may wait for it); between two attempts it raises the
        last failure's reason.
        """
        engine = self.engine
        if engine is not None and not engine.dead:
            return engine
        if engine is not None:
            self._replace(engine)
        if self.start_failed is not None:
            raise self.start_failed
        if self._starting is None:
            raise EngineUnavailable("the handler is not initialized")
        if self.start_error is not None and self._attempt is None:  # between two attempts
            raise EngineUnavailable(
                f"the engine failed to start ({_reason(self.start_error)}) and is "
                "retrying; see the worker log"
            )
        return None

    def _replace(self, engine: Engine) -> None:
        """Shut a dead engine down (off the event loop) and start a new one."""
        logger.error("tsvllm: the engine died; starting a new one")
        self.engine = None

        async def restart() -> Engine | None:
            await asyncio.to_thread(engine.shutdown)  # reaps whatever is left of it
            await self.teardown()
            return await self._start_engine()

        self._starting = asyncio.get_running_loop().create_task(restart())
        message = "the engine died and is restarting; retry shortly"
        nnodes = _nnodes(self.config)
        if nnodes > 1:
            message += (
                f". The engine spans nnodes {nnodes} hosts: a worker node may have gone "
                f"(check `tsvllm worker-node` on each worker host); the restart waits up to "
                f"startupTimeout {self.config.startupTimeout} s for every worker node to join"
            )
        raise EngineUnavailable(message)

    async def build_engine(self, *, model_dir: Path) -> Engine:
        """Start the vLLM engine described by ``handler:`` (override for another engine)."""
        from tsvllm.engine.vllm_engine import (
            VllmEngine,
            engine_environ,
            handler_argv,
            import_vllm,
            parse_engine_args,
        )

        os.environ.update(engine_environ(self.config.handler))
        await asyncio.to_thread(import_vllm)  # seconds, cold: not on the event loop
        argv = handler_argv(self.config.handler, resolve=lambda p: _in_archive(p, model_dir))
        return await VllmEngine.start(parse_engine_args(argv), timeout_s=self.config.startupTimeout)

    # -- requests ----------------------------------------------------------------------

    async def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """Serve one request (:mod:`tsvllm.worker.core`); always returns ``[reply]``."""
        return await core.handle(self, data, context)

    def timeout_error(self) -> RequestTimeout:
        return RequestTimeout(
            f"the request ran past the server's limit of {self.request_timeout_s:g}s "
            "(handler.request_timeout_s) and was stopped"
        )


def _reason(exc: BaseException) -> str:
    """``Name: message`` (or the name alone when there is no message)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _nnodes(config: Any) -> int:
    """The hosts the engine spans (``vllm_engine_config.nnodes``); 1 when unknown."""
    try:
        return int(config.handler.nnodes)
    except (AttributeError, TypeError, ValueError):
        return 1


def _in_archive(path: str, model_dir: Path) -> str:
    """A relative path that exists inside the archive's model_dir, else ``path`` as is
    (absolute paths, and Hugging Face ids that vLLM resolves itself)."""
    candidate = model_dir / path
    return str(candidate) if not Path(path).is_absolute() and candidate.exists() else path
