"""TorchServe's side of the seam: the worker protocol details the handler relies on.

Everything that touches TorchServe's Python worker internals (``ts.*``) lives here, so
the handler reads as plain request → response logic.

Two traps of TorchServe 0.12 async mode are contained here (see FACTS.md):

* a reply with a non-200 *message* code fails every request in flight on the worker,
  so per-request errors are sent as message code 200 with a per-request HTTP status;
* stream chunks are written to the frontend socket from the event-loop thread while
  final replies are written from a sender thread, unguarded. :func:`install_socket_lock`
  makes the two mutually exclusive.
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


def install_socket_lock() -> None:
    """Make TorchServe's sender thread take :data:`_SOCKET_LOCK` for each final reply.

    Must run before TorchServe builds its ``AsyncService`` (i.e. in ``initialize``), which
    starts the sender thread from the class attribute patched here.
    """
    global _installed
    if _installed:
        return
    try:
        import asyncio

        from ts.async_service import AsyncService
    except ImportError:  # not inside a TorchServe worker (unit tests, scripts)
        return

    def send_responses(self: Any) -> None:
        while True:
            future = asyncio.run_coroutine_threadsafe(self.out_queue.get(), self.loop)
            message = future.result()
            with _SOCKET_LOCK:
                self.service.cl_socket.sendall(message)

    AsyncService.send_responses = send_responses
    _installed = True


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
    with _SOCKET_LOCK:
        context.cl_socket.sendall(message)


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

    for name, value, dims in counters:
        metrics.add_counter(name, value, 0, [Dimension(k, v) for k, v in dims.items()])
    for name, value, dims in times_ms:
        metrics.add_time(name, value, 0, "ms", [Dimension(k, v) for k, v in dims.items()])
