"""``VLLMHandler``: a TorchServe async handler serving the OpenAI API from vLLM.

This module owns the engine's lifecycle: the start inside TorchServe's model load, the
failures that end it, and the worker's exit when its engine dies. Requests go through the
one request path in :mod:`tsvllm.worker.core`; the routes are in :mod:`tsvllm.worker.routes`.
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
from tsvllm.worker import core, engine_metrics, report, ts_worker
from tsvllm.worker.audit import AuditLog
from tsvllm.worker.drain_watch import DrainWatch
from tsvllm.worker.hooks import Hooks, check_torchserve_overrides, overrides
from tsvllm.worker.stream_marks import StreamMarks, open_marks

logger = logging.getLogger(__name__)

#: seconds of ``startupTimeout`` kept for what a worker's load does besides the engine
#: start (the handler's set-up, the reply): TorchServe ends a load that runs past it
LOAD_MARGIN_S = 5.0
#: seconds before the first retry of a start that failed; doubled each time, up to the max
FIRST_RETRY_DELAY_S = 5.0
MAX_RETRY_DELAY_S = 60.0
#: how often a worker checks that its engine still runs
ENGINE_CHECK_S = 1.0
#: seconds a worker whose engine died gives its requests to get their error replies
EXIT_GRACE_S = 5.0
#: the worker's exit status when its engine died (TorchServe then restarts the worker)
ENGINE_DIED_EXIT = 3


class EngineLoadFailed(RuntimeError):
    """The engine did not start within the load's time, for a reason a new worker may get
    past (a worker node that was away, a crash): TorchServe is left to end this worker at
    its ``startupTimeout`` and start a new one (:func:`ts_worker.await_load_timeout`)."""


class VLLMHandler(Hooks):
    """TorchServe async handler (``asyncCommunication: true``) around a vLLM engine.

    Configure it in ``model-config.yaml`` (see :mod:`tsvllm.config`). To customise,
    subclass it in a handler file and override the hooks (:class:`Hooks` documents their
    call order) or :meth:`build_engine` to use another engine.

    TorchServe's signals tell the truth (docs/TORCHSERVE.md, "Readiness"):

    * ``initialize`` returns once the engine serves, so TorchServe marks the worker READY
      (describe-model, a synchronous registration or scale-up, tsvllm's ``/ping``) only
      when the next request will be served. The start is bounded by the model config's
      ``startupTimeout``.
    * A start that fails for a reason a retry may fix (a timeout, a crash) is retried with
      back-off while the load's time lasts, each failure in the worker log. Then the worker
      waits for TorchServe to end the load at ``startupTimeout`` and start a new worker
      (its own back-off, for up to ``maxRetryTimeoutInSec``).
    * A start that no retry can fix (:class:`~tsvllm.engine.base.EngineCannotStart`, an
      invalid config) is final at once: the load succeeds so that every request gets HTTP
      500 with code ``engine_start_failed`` and the reason, instead of waiting in
      TorchServe's queue for a worker that never comes.
    * An engine that dies under a running worker ends the worker (after its requests got
      their 503): TorchServe restarts it, and it is READY again once its new engine serves.
    """

    #: optional ``handler:`` sections this class runs (subclasses add "rag", "guards")
    features: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.config: Any = None
        self.max_body_bytes: int = 1 << 20
        self.max_response_bytes: int | None = None
        self.request_timeout_s: float = 300.0
        self._model_dir = Path(".")
        self.initialized = False
        #: the key every request must carry (``TSVLLM_API_KEY_FILE``), see tsvllm.auth
        self.api_key: ApiKeys | None = None
        #: when TorchServe asked this worker to load the model (time.monotonic)
        self._created = time.monotonic()
        #: set when the engine died: the worker answers 503 with it, then exits
        self.engine_died: EngineUnavailable | None = None
        self._engine_watch: asyncio.Task | None = None
        #: set when the engine can never start; every request gets it
        self.start_failed: EngineStartFailed | None = None
        #: why this worker's GPUs cannot be placed (:mod:`tsvllm.worker.placement`), or None
        self.placement_error: Exception | None = None
        #: the generation requests running now (:mod:`tsvllm.worker.core` keeps it)
        self.inflight: set[Any] = set()
        #: the host's drain requests (None without ``TSVLLM_CONTROL_DIR``)
        self.drain_watch: DrainWatch | None = None
        self._drain_task: asyncio.Task | None = None
        #: the streams started on this host (:mod:`tsvllm.worker.stream_marks`)
        self.stream_marks: StreamMarks | None = None
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
        self.max_response_bytes = handler_cfg.max_response_bytes
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
        # TorchServe runs this same loop right after initialize() returns
        loop = asyncio.get_event_loop()
        self._watch_drain(loop, model=context.model_name)
        self.stream_marks = open_marks(os.environ, stale_after_s=2 * self.request_timeout_s)
        engine_metrics.start(self, context)  # vllm:* series for the host's scrape endpoint
        self.initialized = True
        try:
            loop.run_until_complete(self._start_engine())
        except EngineLoadFailed as exc:
            ts_worker.await_load_timeout(str(exc), left_s=self.load_time_left())

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
            on_gone=lambda ids: core.end_gone(self, ids),
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
        """Start the engine and :meth:`setup` within the load's time.

        Returns the engine, or None when the start failed for good (:meth:`_give_up`). A
        failure a new attempt may fix is retried with back-off while the load's time lasts;
        then :class:`EngineLoadFailed` says why the last attempt failed.
        """
        from tsvllm.config import ConfigError

        delay = FIRST_RETRY_DELAY_S
        attempt = 1
        while True:
            try:
                self.engine = await self._start_once()
                break
            except (EngineCannotStart, ConfigError) as exc:
                self._give_up(exc)
                return None
            except Exception as exc:
                reason = f"the engine did not start ({_reason(exc)}; attempt {attempt})"
                if self.load_time_left() <= delay:
                    logger.exception("tsvllm: %s; no time left within startupTimeout", reason)
                    raise EngineLoadFailed(reason) from exc
                logger.exception("tsvllm: %s; retrying in %.0f s", reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY_S)
            attempt += 1
        self._engine_watch = asyncio.get_running_loop().create_task(self._watch_engine())
        logger.info("tsvllm: engine ready")
        return self.engine

    def load_time_left(self) -> float:
        """Seconds left of ``startupTimeout`` for the engine start (TorchServe counts it from
        when it asked this worker to load the model), keeping :data:`LOAD_MARGIN_S`."""
        elapsed = time.monotonic() - self._created
        return float(self.config.startupTimeout) - elapsed - LOAD_MARGIN_S

    def start_timeout_s(self) -> float:
        """The bound of one engine start: what is left of the load's time (at least 1 s)."""
        return max(self.load_time_left(), 1.0)

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
                report.emit_hook_time(self._context, "setup", time.perf_counter() - started)
        return engine

    def _give_up(self, exc: Exception) -> None:
        """Stop trying: every request gets :class:`EngineStartFailed` from now on."""
        reason = f"{type(exc).__name__}: {exc}"
        self.start_failed = EngineStartFailed(reason)
        logger.error("tsvllm: %s; fix the model config and register the model again", reason)

    async def ready_engine(self) -> Engine:
        """The engine that serves requests; raise (503, or the start failure) when none
        does. (TorchServe sends requests only once the load, i.e. the start, is over.)"""
        return self.serving_engine()

    def serving_engine(self) -> Engine:
        """The engine if it serves now; else raise at once: the start failure (500), or 503
        while the worker is not initialized or its engine died."""
        if self.start_failed is not None:
            raise self.start_failed
        if self.engine_died is not None:
            raise self.engine_died
        engine = self.engine
        if engine is None:
            raise EngineUnavailable("the handler is not initialized")
        if engine.dead:
            raise self._mark_dead()
        return engine

    def _mark_dead(self) -> EngineUnavailable:
        """Note that the engine died: from now on every request gets this 503."""
        if self.engine_died is None:
            message = "the engine died; this worker restarts (TorchServe starts a new one)"
            nnodes = _nnodes(self.config)
            if nnodes > 1:
                from tsvllm.engine.vllm_engine import DEFAULT_MASTER_PORT

                engine_cfg = self.config.handler.vllm_engine_config
                message += (
                    f". The engine spans nnodes {nnodes} hosts: a worker node may have gone; "
                    + worker_nodes_hint(
                        nnodes=nnodes,
                        master_addr=engine_cfg.get("master_addr"),
                        master_port=engine_cfg.get("master_port", DEFAULT_MASTER_PORT),
                    )
                )
            self.engine_died = EngineUnavailable(message + "; retry shortly")
            logger.error("tsvllm: %s", message)
        return self.engine_died

    async def _watch_engine(self) -> None:
        """End this worker once its engine dies, so that TorchServe stops showing it READY
        and restarts it (a new load, a new engine). Its running requests get their error
        replies first, within :data:`EXIT_GRACE_S`; the engine's processes are reaped."""
        engine = self.engine
        while engine is not None and not engine.dead:
            await asyncio.sleep(ENGINE_CHECK_S)
        self._mark_dead()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EXIT_GRACE_S
        while self.inflight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.inflight:  # stuck on the dead engine: 503 now (their deadline's path)
            core.end_inflight(self)
            while self.inflight and loop.time() < deadline + 1:
                await asyncio.sleep(0.05)
        if engine is not None:
            await asyncio.to_thread(engine.shutdown)
        ts_worker.exit_worker(ENGINE_DIED_EXIT)

    async def build_engine(self, *, model_dir: Path) -> Engine:
        """Start the vLLM engine described by ``handler:`` (override for another engine)."""
        from tsvllm.engine.vllm_engine import (
            VllmEngine,
            engine_environ,
            handler_argv,
            import_vllm,
            parse_engine_args,
        )

        os.environ.update(engine_environ(self.config.handler, environ=os.environ))
        await asyncio.to_thread(import_vllm)  # seconds, cold: not on the event loop
        argv = handler_argv(self.config.handler, resolve=lambda p: _in_archive(p, model_dir))
        return await VllmEngine.start(parse_engine_args(argv), timeout_s=self.start_timeout_s())

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
