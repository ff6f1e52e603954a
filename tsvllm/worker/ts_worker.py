"""TorchServe's side of the seam: the worker protocol details the handler relies on.

Everything that touches TorchServe's Python worker internals (``ts.*``) lives here, so
the handler reads as plain request → response logic.

Two traps of TorchServe 0.12 async mode are contained here (docs/TORCHSERVE.md, "The async
worker protocol the handler relies on"):

* a reply with a non-200 *message* code fails every request in flight on the worker,
  so per-request errors are sent as message code 200 with a per-request HTTP status;
* stream chunks are written to the frontend socket from the event-loop thread while
  final replies are written from a sender thread, unguarded. :func:`install_worker_path`
  writes both from the event loop under one lock.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import struct
import threading
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

logger = logging.getLogger(__name__)

#: Held around every write to the frontend socket (stream chunks and final replies).
_SOCKET_LOCK = threading.Lock()
_installed = False
#: the TorchServe version whose worker internals :func:`install_worker_path` patches
PATCHED_VERSION = "0.12.0"
#: the largest body one frame to the frontend carries. The frontend refuses a frame whose
#: body is over its ``max_response_size`` (TorchServe's default 6,553,500 bytes) by dropping
#: the worker's connection: the worker restarts and every request on it is lost
#: (docs/TORCHSERVE.md, "Replies of any size"). A larger reply or stream chunk goes as
#: several frames (:func:`send_chunk`, :func:`last_frame`).
FRAME_BODY_BYTES = 4 << 20


class _FrameWriter:
    """Frames for the frontend, in order; those queued in one event-loop turn go out in one
    ``sendall`` (at 64 concurrent streams an engine step makes 64 chunks: one system call
    instead of 64). Only with :func:`install_worker_path`, where every frame is written
    from the loop; otherwise each frame is sent at once."""

    def __init__(self) -> None:
        self.coalesce = False
        self._frames: list[bytes] = []
        self._sock: Any = None
        self._scheduled = False

    def write(self, sock: Any, frame: bytes) -> None:
        if not self.coalesce:
            with _SOCKET_LOCK:
                sock.sendall(frame)
            return
        import asyncio

        self._frames.append(frame)
        self._sock = sock
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        frames, self._frames = self._frames, []
        if frames:
            with _SOCKET_LOCK:
                self._sock.sendall(b"".join(frames))


_WRITER = _FrameWriter()


def install_worker_path(*, lean: bool = True) -> None:
    """Replace TorchServe 0.12's per-request path in the async worker with a lean one.

    Must run before TorchServe builds its ``AsyncService`` (i.e. in ``initialize``). Same
    wire protocol and replies; what goes away, per request (each measured in
    docs/PERFORMANCE.md):

    * two thread hand-offs: a request goes from the receive thread straight to the event
      loop (not through a queue and a batching thread), and the reply is written from the
      loop (not through a queue and a sender thread);
    * a deep copy of the whole worker context (a shallow copy with fresh per-request fields
      does: the handler never mutates shared state);
    * about 70 system calls to read one request: TorchServe's decoder reads each field
      with its own ``recv``; the lean path reads the socket through a buffer
      (:class:`_BufferedReads`);
    * three stdout lines the frontend parses and logs: ``Backend received inference at``,
      ``self._entry_point=...`` and the ``PredictionTime`` metric (the frontend's own
      ``ts_inference_latency_microseconds`` still measures each request).

    The lean path also runs the worker's event loop on uvloop (:func:`_use_uvloop`), as
    vLLM's own server does.

    Stream chunks and final replies are written from the loop, in order, those of one loop
    turn in one ``sendall`` (:class:`_FrameWriter`), under :data:`_SOCKET_LOCK` (TorchServe
    wrote them from two threads unguarded). A handler that raises gets a per-request 500,
    never a non-200 message code (which would fail every request in flight:
    docs/TORCHSERVE.md).

    With ``lean=False`` (``handler.lean_worker: false``) TorchServe's own path stays, and
    only its sender thread is made to take :data:`_SOCKET_LOCK` for each final reply.

    The patch is written against TorchServe :data:`PATCHED_VERSION`; on any other version
    nothing is patched (a warning says so). One log line names the path that runs.
    """
    global _installed
    if _installed:
        return
    try:
        from ts.async_service import AsyncService
        from ts.version import __version__ as ts_version
    except ImportError:  # not inside a TorchServe worker (unit tests, scripts)
        return
    if ts_version != PATCHED_VERSION:
        logger.warning(
            "TorchServe %s: the worker path patch is written for TorchServe %s; keeping "
            "TorchServe's own path (slower; stream chunks and final replies are written "
            "unguarded from two threads). Pin torchserve==%s to get the lean path.",
            ts_version,
            PATCHED_VERSION,
            PATCHED_VERSION,
        )
        path = "TorchServe's path unpatched"
    elif lean:
        AsyncService.receive_requests = _receive_requests
        AsyncService.call_predict = _call_predict
        _WRITER.coalesce = True
        _METRICS.batching = True
        path = f"lean path on {_use_uvloop()}"
    else:
        AsyncService.send_responses = _locked_send_responses
        path = "TorchServe's path with the socket lock"
    logger.info("TorchServe %s worker path: %s", ts_version, path)
    _installed = True


def _use_uvloop() -> str:
    """Make the worker's event loop a uvloop loop, as vLLM's own server runs on (uvicorn
    picks uvloop when it is installed); returns what the loop is, for the log line.

    TorchServe runs the main thread's default loop (``asyncio.get_event_loop()``), which
    nothing has created yet when ``initialize`` starts: the loop set here is the one the
    engine starts on and every request runs on. Everything the worker does per request
    and per token (vLLM's output handler, its ZeroMQ sockets, the request core) runs on it;
    asyncio's own loop is pure Python.
    """
    import asyncio

    try:
        import uvloop
    except ImportError:
        return "asyncio (uvloop is not installed: pip install uvloop)"
    asyncio.set_event_loop(uvloop.new_event_loop())
    return "uvloop"


def _locked_send_responses(self: Any) -> None:
    """TorchServe's sender thread, taking :data:`_SOCKET_LOCK` around each reply."""
    import asyncio

    while True:
        future = asyncio.run_coroutine_threadsafe(self.out_queue.get(), self.loop)
        message = future.result()
        with _SOCKET_LOCK:
            self.service.cl_socket.sendall(message)


def _receive_requests(self: Any) -> None:
    """Read requests off the frontend socket and start each on the event loop at once.

    Like TorchServe's own receive loop, a LOAD command (the model is loaded already) is read
    whole, logged and skipped; any other unknown command byte leaves the stream out of step
    (its length is unknown), so it is logged and raised, and the worker exits (TorchServe's
    ``retrieve_msg`` raises there too) for the frontend to restart it.
    """
    import asyncio

    from ts.protocol.otf_message_handler import (
        LOAD_MSG,
        PREDICT_MSG,
        _retrieve_buffer,
        _retrieve_inference_msg,
        _retrieve_load_msg,
    )

    sock = _BufferedReads(self.service.cl_socket)
    while True:
        cmd = bytes(_retrieve_buffer(sock, 1))
        if cmd == LOAD_MSG:
            _retrieve_load_msg(sock)
            logger.warning("ignoring a LOAD command from the frontend: the model is loaded")
            continue
        if cmd != PREDICT_MSG:
            logger.error(
                "unknown command %r from the frontend: the socket is out of step; the worker "
                "exits and TorchServe restarts it",
                cmd,
            )
            raise ValueError(f"unknown command {cmd!r} from the frontend")
        batch = _retrieve_inference_msg(sock)
        future = asyncio.run_coroutine_threadsafe(self.call_predict(batch), self.loop)
        future.add_done_callback(functools.partial(_log_escaped, _raw_request_ids(batch)))


class _BufferedReads:
    """The frontend socket for TorchServe's message decoder, read through a buffer: the
    decoder asks for each field on its own (a request with 15 headers is about 70 reads),
    and each ``recv`` is then a copy from memory instead of a system call. ``recv`` returns
    what is buffered, up to ``n`` bytes, reading the socket only when the buffer is empty;
    ``b""`` at end of stream, as ``socket.recv``."""

    def __init__(self, sock: Any, *, buffer_bytes: int = 1 << 16):
        self.recv = sock.makefile("rb", buffering=buffer_bytes).read1


def _log_escaped(request_ids: dict[int, str], future: concurrent.futures.Future) -> None:
    """Done-callback of each request: log what escaped :func:`_call_predict` (a bug there;
    that request got no reply and waits for the frontend's responseTimeout)."""
    if future.cancelled():
        logger.error("request %s was cancelled before it was answered", _ids(request_ids))
        return
    exc = future.exception()
    if exc is not None:
        logger.error(
            "request %s got no reply: an exception escaped the worker path",
            _ids(request_ids),
            exc_info=exc,
        )


async def _call_predict(self: Any, batch: list[dict[str, Any]]) -> None:
    """One request: a shallow per-request context, the handler, the reply (under the lock).

    Whatever fails on the way (TorchServe unpacking the batch, the handler, encoding the
    reply) becomes a per-request 500 in OpenAI error shape, sent with message code 200.
    """
    service = self.service
    try:
        message = await _predict(service, batch)
    except Exception as exc:
        logger.exception("request %s failed; replying 500", _ids(_raw_request_ids(batch)))
        message = _error_response(service, batch, exc)
    if message is not None:  # None: not rank 0
        _WRITER.write(service.cl_socket, message)  # after this request's chunks, in order


async def _predict(service: Any, batch: list[dict[str, Any]]) -> bytes | None:
    """The handler's reply, encoded; raises on anything that is not a 200-coded message."""
    import copy

    from ts.protocol.otf_message_handler import create_predict_response
    from ts.service import Service

    headers, input_batch, req_id_map = Service.retrieve_data_for_inference(batch)
    context = copy.copy(service.context)
    context.request_ids = req_id_map
    context.request_processor = headers
    context.cl_socket = service.cl_socket
    ret = await service._entry_point(input_batch, context)
    if not isinstance(ret, list) or len(ret) != len(input_batch):
        raise TypeError(f"the handler returned {type(ret).__name__}, not [reply]")
    message = create_predict_response(ret, req_id_map, "Prediction success", 200, context)
    if message is not None and _message_code(message) != 200:
        # TorchServe's encoder answers an unserialisable reply with message code 503, which
        # would fail every request in flight on this worker
        raise TypeError("the handler's reply could not be encoded")
    return message


def _error_response(service: Any, batch: Any, exc: BaseException) -> bytes | None:
    """A per-request error reply (message code 200) built from the raw batch alone."""
    import copy
    import json

    from ts.context import RequestProcessor
    from ts.protocol.otf_message_handler import create_predict_response

    from tsvllm.errors import to_error_body

    req_id_map = _raw_request_ids(batch)
    if not req_id_map:
        raise RuntimeError("cannot reply: the batch has no request id") from exc
    size = max(req_id_map) + 1
    context = copy.copy(service.context)
    context.request_ids = req_id_map
    context.request_processor = [RequestProcessor({}) for _ in range(size)]
    context.stopping_criteria = None
    status, body = to_error_body(exc)
    for idx in req_id_map:
        context.set_response_status(status, _phrase(status), idx)
        context.set_response_content_type(idx, "application/json")
    payload = json.dumps(body).encode()
    return create_predict_response([payload] * size, req_id_map, "Prediction failed", 200, context)


def _raw_request_ids(batch: Any) -> dict[int, str]:
    """``{index: request id}`` read straight from a raw batch, skipping what is unreadable."""
    ids: dict[int, str] = {}
    for idx, request in enumerate(batch if isinstance(batch, list) else ()):
        rid = request.get("requestId") if isinstance(request, dict) else None
        if isinstance(rid, (bytes, bytearray)):
            rid = bytes(rid).decode("utf-8", "replace")
        if isinstance(rid, str):
            ids[idx] = rid
    return ids


def _ids(request_ids: dict[int, str]) -> str:
    return ", ".join(request_ids.values()) or "(no request id)"


def _message_code(message: bytes | bytearray) -> int:
    return struct.unpack_from("!i", message)[0]


def await_load_timeout(reason: str, *, left_s: float) -> None:
    """Leave a model load that failed unanswered until the frontend ends it.

    A failed LOAD reply (or a worker that exits during its load) sends TorchServe 0.12's
    AsyncWorkerThread down a path that swallows the interrupt, takes the next queued request
    and loses it ("Received more than 1 control command", docs/TORCHSERVE.md). A load that
    runs past ``startupTimeout`` takes the clean path instead: the frontend ends this
    worker and starts a new one with its back-off. So: log, and wait for that (``left_s``
    plus a margin); exit only if it never comes.
    """
    import os
    import time

    logger.error(
        "tsvllm: %s; TorchServe ends this worker at its startupTimeout (in about %.0f s) "
        "and starts a new one",
        reason,
        max(left_s, 0.0),
    )
    time.sleep(max(left_s, 0.0) + 60)
    logger.error("tsvllm: TorchServe did not end this worker's load; exiting")
    logging.shutdown()
    os._exit(1)


def exit_worker(status: int) -> None:
    """End this worker process now, after the frames already queued for the frontend: the
    frontend sees the worker gone and restarts it (its own back-off). ``os._exit``, because
    TorchServe's worker loop would catch SystemExit, and nothing of the worker is to be
    cleaned up (the engine was shut down; :mod:`tsvllm.worker.lifeline` reaps the rest)."""
    import os

    _METRICS.flush()
    _WRITER.flush()
    logging.shutdown()
    os._exit(status)


def _phrase(status: int) -> str:
    """The reason phrase of ``status`` (nginx's for 499, which HTTPStatus lacks)."""
    if status == 499:
        return "Client Closed Request"
    return HTTPStatus(status).phrase


def request_id(context: Any) -> str:
    """TorchServe's id for the (single) request in this call."""
    return next(iter(context.request_ids.values()))


def request_header(context: Any, name: str) -> str | None:
    """One of TorchServe's own headers (``url_path``: it spells them itself)."""
    return context.get_request_header(0, name)


def request_headers(context: Any) -> dict[str, str]:
    """The request's HTTP headers (TorchServe also passes its own, e.g. ``url_path``), with
    their names as the client spelled them: TorchServe does not lower-case them, so read
    them through :class:`tsvllm.headers.Headers` (case-insensitive)."""
    headers = context.get_all_request_header(0) or {}
    return {k: v for k, v in headers.items() if isinstance(v, str)}


def set_reply(context: Any, *, status: int, content_type: str) -> None:
    """Status and content type of the (single) request, sent with message code 200."""
    context.set_response_status(status, _phrase(status), 0)
    context.set_response_content_type(0, content_type)


def set_header(context: Any, name: str, value: str) -> None:
    """A response header of the (single) request."""
    context.set_response_header(0, name, value)


def send_chunk(context: Any, chunk: bytes | memoryview) -> None:
    """Send one intermediate chunk of a streamed reply (the return value ends it), as
    several frames when it is larger than :data:`FRAME_BODY_BYTES`."""
    if len(chunk) <= FRAME_BODY_BYTES:  # nearly always: no copy
        _send_frame(context, bytes(chunk))
        return
    view = memoryview(chunk)
    for start in range(0, len(chunk), FRAME_BODY_BYTES):
        _send_frame(context, bytes(view[start : start + FRAME_BODY_BYTES]))


def last_frame(context: Any, reply: bytes) -> bytes:
    """The body of a reply's last frame: a reply larger than :data:`FRAME_BODY_BYTES` goes
    out as intermediate frames now (the client gets one chunked HTTP body, status and
    headers from the first frame), and only its tail is left for the return value."""
    if len(reply) <= FRAME_BODY_BYTES:
        return reply
    tail = (len(reply) - 1) // FRAME_BODY_BYTES * FRAME_BODY_BYTES
    send_chunk(context, memoryview(reply)[:tail])
    return reply[tail:]


def _send_frame(context: Any, body: bytes) -> None:
    from ts.protocol.otf_message_handler import create_predict_response

    message = create_predict_response(
        [body], context.request_ids, "Intermediate Prediction success", 200, context, True
    )
    if message is None:  # not rank 0
        return
    _WRITER.write(context.cl_socket, message)


Metric = tuple[str, float, dict[str, str]]


def emit_metrics(
    context: Any,
    *,
    counters: Sequence[Metric] = (),
    times_ms: Sequence[Metric] = (),
    histograms_s: Sequence[Metric] = (),
) -> None:
    """Emit model metrics through TorchServe (Prometheus with model_metrics_auto_detect).

    ``times_ms`` become gauges in milliseconds; ``histograms_s`` Prometheus histograms in
    seconds (the frontend's buckets are the Prometheus client's defaults, 5 ms to 10 s).
    On the lean path they are batched (:class:`_MetricBatch`): written within
    :data:`METRICS_FLUSH_S`, not with each request.
    """
    metrics = getattr(context, "metrics", None)
    if metrics is None:
        return
    if _METRICS.batching:
        _METRICS.add(metrics, counters=counters, times_ms=times_ms, histograms_s=histograms_s)
        return
    # the worker's metrics cache is shared by concurrent requests (no per-request deep
    # copy): point it at this request; nothing awaits between here and the last add
    metrics.request_ids = context.request_ids
    _write_metrics(metrics, counters=counters, times_ms=times_ms, histograms_s=histograms_s)


def _write_metrics(
    metrics: Any,
    *,
    counters: Iterable[Metric],
    times_ms: Iterable[Metric],
    histograms_s: Iterable[Metric],
) -> None:
    """One stdout line per metric, which the frontend parses (TorchServe's metrics cache)."""
    from ts.metrics.dimension import Dimension
    from ts.metrics.metric_type_enum import MetricTypes

    for name, value, dims in counters:
        metrics.add_counter(name, value, 0, [Dimension(k, v) for k, v in dims.items()])
    for name, value, dims in times_ms:
        metrics.add_time(name, value, 0, "ms", [Dimension(k, v) for k, v in dims.items()])
    for name, value, dims in histograms_s:
        dimensions = [Dimension(k, v) for k, v in dims.items()]
        metrics.add_time(name, value, 0, "s", dimensions, metric_type=MetricTypes.HISTOGRAM)


#: the longest a batched metric waits before the worker writes it (:class:`_MetricBatch`)
METRICS_FLUSH_S = 1.0


class _MetricBatch:
    """Model metrics written once per :data:`METRICS_FLUSH_S` instead of with each request.

    Each metric is a line on the worker's stdout that the frontend reads, parses and adds
    to its Prometheus registry: two or three per request, a cost on both sides for every
    request. Batched, counters with the same name and dimensions are summed into one line,
    a gauge keeps its last value (what Prometheus would have shown), and each histogram
    observation is kept. The lines carry no request id then (TorchServe's Prometheus mode
    drops it anyway). Only on the lean path, where metrics are emitted from the event loop;
    :func:`exit_worker` writes what is pending first.
    """

    def __init__(self) -> None:
        self.batching = False
        self._metrics: Any = None
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._histograms: list[Metric] = []
        self._timer: Any = None

    def add(
        self,
        metrics: Any,
        *,
        counters: Iterable[Metric],
        times_ms: Iterable[Metric],
        histograms_s: Iterable[Metric],
    ) -> None:
        import asyncio

        self._metrics = metrics
        for name, value, dims in counters:
            key = (name, tuple(dims.items()))
            self._counters[key] = self._counters.get(key, 0) + value
        for name, value, dims in times_ms:
            self._gauges[(name, tuple(dims.items()))] = value
        self._histograms.extend(histograms_s)
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # outside the loop (none runs yet): write at once
                self.flush()
                return
            self._timer = loop.call_later(METRICS_FLUSH_S, self.flush)

    def flush(self) -> None:
        """Write what is pending now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        counters, self._counters = self._counters, {}
        gauges, self._gauges = self._gauges, {}
        histograms, self._histograms = self._histograms, []
        if self._metrics is None or not (counters or gauges or histograms):
            return
        metrics = self._metrics
        metrics.request_ids = None  # a line per batch, not per request
        # the dimensions TorchServe adds to a request's metric (its _add_default_dims), in
        # its order: without a request id it would add only Level "Error"
        defaults = {"ModelName": str(metrics.model_name), "Level": "Model"}

        def full(dims: dict[str, str]) -> dict[str, str]:
            return {**dims, **{k: v for k, v in defaults.items() if k not in dims}}

        _write_metrics(
            metrics,
            counters=[(name, v, full(dict(dims))) for (name, dims), v in counters.items()],
            times_ms=[(name, v, full(dict(dims))) for (name, dims), v in gauges.items()],
            histograms_s=[(name, v, full(dims)) for name, v, dims in histograms],
        )


_METRICS = _MetricBatch()
