"""TorchServe's side of the seam: the worker protocol details the handler relies on.

Everything that touches TorchServe's Python worker internals (``ts.*``) lives here, so
the handler reads as plain request → response logic.

Two traps of TorchServe 0.12 async mode are contained here (see FACTS.md):

* a reply with a non-200 *message* code fails every request in flight on the worker,
  so per-request errors are sent as message code 200 with a per-request HTTP status;
* stream chunks are written to the frontend socket from the event-loop thread while
  final replies are written from a sender thread, unguarded. :func:`install_worker_path`
  writes both from the event loop under one lock.
"""

from __future__ import annotations

import logging
import threading
from http import HTTPStatus
from typing import Any

logger = logging.getLogger(__name__)

#: Held around every write to the frontend socket (stream chunks and final replies).
_SOCKET_LOCK = threading.Lock()
_installed = False


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
    * three stdout lines the frontend parses and logs: ``Backend received inference at``,
      ``self._entry_point=...`` and the ``PredictionTime`` metric (the frontend's own
      ``ts_inference_latency_microseconds`` still measures each request).

    Stream chunks and final replies are written from the loop, in order, those of one loop
    turn in one ``sendall`` (:class:`_FrameWriter`), under :data:`_SOCKET_LOCK` (TorchServe
    wrote them from two threads unguarded). A handler that raises gets a per-request 500,
    never a non-200 message code (which would fail every request in flight, see FACTS.md).

    With ``lean=False`` (``handler.lean_worker: false``) TorchServe's own path stays, and
    only its sender thread is made to take :data:`_SOCKET_LOCK` for each final reply.
    """
    global _installed
    if _installed:
        return
    try:
        from ts.async_service import AsyncService
    except ImportError:  # not inside a TorchServe worker (unit tests, scripts)
        return
    if lean:
        AsyncService.receive_requests = _receive_requests
        AsyncService.call_predict = _call_predict
        _WRITER.coalesce = True
    else:
        AsyncService.send_responses = _locked_send_responses
    _installed = True


def _locked_send_responses(self: Any) -> None:
    """TorchServe's sender thread, taking :data:`_SOCKET_LOCK` around each reply."""
    import asyncio

    while True:
        future = asyncio.run_coroutine_threadsafe(self.out_queue.get(), self.loop)
        message = future.result()
        with _SOCKET_LOCK:
            self.service.cl_socket.sendall(message)


def _receive_requests(self: Any) -> None:
    """Read requests off the frontend socket and start each on the event loop at once."""
    import asyncio

    from ts.protocol.otf_message_handler import (
        PREDICT_MSG,
        _retrieve_buffer,
        _retrieve_inference_msg,
    )

    sock = self.service.cl_socket
    while True:
        cmd = _retrieve_buffer(sock, 1)
        if cmd != PREDICT_MSG:
            raise ValueError(f"unexpected command {cmd!r} from the frontend")
        batch = _retrieve_inference_msg(sock)
        asyncio.run_coroutine_threadsafe(self.call_predict(batch), self.loop)


async def _call_predict(self: Any, batch: list[dict[str, Any]]) -> None:
    """One request: a shallow per-request context, the handler, the reply (under the lock)."""
    import copy

    from ts.protocol.otf_message_handler import create_predict_response
    from ts.service import Service

    service = self.service
    headers, input_batch, req_id_map = Service.retrieve_data_for_inference(batch)
    context = copy.copy(service.context)
    context.request_ids = req_id_map
    context.request_processor = headers
    context.cl_socket = service.cl_socket
    try:
        ret = await service._entry_point(input_batch, context)
        if not isinstance(ret, list) or len(ret) != len(input_batch):
            raise TypeError(f"the handler returned {type(ret).__name__}, not [reply]")
    except Exception as exc:  # the handler never raises for a request; a bug might
        logger.exception("handler failed")
        ret = [_internal_error(context, exc)]
    message = create_predict_response(ret, req_id_map, "Prediction success", 200, context)
    _WRITER.write(service.cl_socket, message)  # after this request's chunks, in order


def _internal_error(context: Any, exc: BaseException) -> bytes:
    import json

    from tsvllm.errors import to_error_body

    status, body = to_error_body(exc)
    set_reply(context, status=status, content_type="application/json")
    return json.dumps(body).encode()


def request_id(context: Any) -> str:
    """TorchServe's id for the (single) request in this call."""
    return next(iter(context.request_ids.values()))


def request_header(context: Any, name: str) -> str | None:
    return context.get_request_header(0, name)


def request_headers(context: Any) -> dict[str, str]:
    """The request's HTTP headers (TorchServe also passes its own, e.g. ``url_path``)."""
    headers = context.get_all_request_header(0) or {}
    return {k: v for k, v in headers.items() if isinstance(v, str)}


def set_reply(context: Any, *, status: int, content_type: str) -> None:
    """Status and content type of the (single) request, sent with message code 200."""
    context.set_response_status(status, HTTPStatus(status).phrase, 0)
    context.set_response_content_type(0, content_type)


def send_chunk(context: Any, chunk: bytes) -> None:
    """Send one intermediate chunk of a streamed reply (the return value ends it)."""
    from ts.protocol.otf_message_handler import create_predict_response

    message = create_predict_response(
        [chunk], context.request_ids, "Intermediate Prediction success", 200, context, True
    )
    if message is None:  # not rank 0
        return
    _WRITER.write(context.cl_socket, message)


def emit_metrics(
    context: Any,
    *,
    counters: list[tuple[str, float, dict[str, str]]] = (),
    times_ms: list[tuple[str, float, dict[str, str]]] = (),
) -> None:
    """Emit model metrics through TorchServe (Prometheus with model_metrics_auto_detect)."""
    metrics = getattr(context, "metrics", None)
    if metrics is None:
        return
    from ts.metrics.dimension import Dimension

    # the worker's metrics cache is shared by concurrent requests (no per-request deep
    # copy): point it at this request; nothing awaits between here and the last add
    metrics.request_ids = context.request_ids
    for name, value, dims in counters:
        metrics.add_counter(name, value, 0, [Dimension(k, v) for k, v in dims.items()])
    for name, value, dims in times_ms:
        metrics.add_time(name, value, 0, "ms", [Dimension(k, v) for k, v in dims.items()])
