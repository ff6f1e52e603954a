"""Unit-test doubles behind the engine seam, and TorchServe's real request context."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tsvllm.engine.base import Api, EngineReply, EngineRoute, StreamEvent
from tsvllm.errors import BadRequest, NotFound

GOLDEN = Path(__file__).parent / "golden"


def golden(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


def wait_until(holds: Callable[[], bool], *, what: str, timeout: float = 10.0) -> None:
    """Poll ``holds()`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)


async def until(holds: Callable[[], bool], *, what: str, timeout: float = 10.0) -> None:
    """:func:`wait_until` on the event loop: other tasks run between the polls."""
    deadline = time.monotonic() + timeout
    while not holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.005)


class FakeEngine:
    """Answers with golden OpenAI bodies; validates like vLLM would, minimally."""

    def __init__(self) -> None:
        self.calls: list[tuple[Api, dict[str, Any], str]] = []
        self.aborted: list[str] = []
        self.closed_streams = 0
        self.dead = False
        self.generates = True
        self.delay_s = 0.0  # per stream chunk, and before a full response
        self.shut_down = False
        self.running = 0  # requests between their start and their last byte, as vLLM counts
        self.hold: asyncio.Event | None = None  # if set, a full response waits for it

    async def generate(self, api: Api, body: Mapping[str, Any], *, request_id: str):
        self.calls.append((api, dict(body), request_id))
        if body.get("model", "tiny") != "tiny":
            raise NotFound(f"The model `{body['model']}` does not exist.", param="model")
        if "max_tokens" in body and not isinstance(body["max_tokens"], int):
            raise BadRequest("max_tokens: Input should be a valid integer", param="max_tokens")
        if body.get("stream"):
            return self._stream(golden("chat_completion_chunks.json"))
        self.running += 1
        try:
            if self.hold is not None:
                await self.hold.wait()
            await asyncio.sleep(self.delay_s)
            return golden("chat_completion.json" if api is Api.CHAT else "completion.json")
        finally:
            self.running -= 1

    async def _stream(self, chunks: list[dict[str, Any]]) -> AsyncIterator[StreamEvent]:
        self.running += 1
        try:
            for chunk in chunks:
                if chunk.get("explode"):
                    raise RuntimeError("engine died mid-stream")
                await asyncio.sleep(self.delay_s)
                yield StreamEvent(json.dumps(chunk))
        finally:
            self.closed_streams += 1
            self.running -= 1

    ROUTES = (
        EngineRoute("tokenize", frozenset({"POST"})),
        EngineRoute("version", frozenset({"GET"})),
        EngineRoute("v1/responses", frozenset({"POST"})),
        EngineRoute("v1/chat/completions/batch", frozenset({"POST"})),
    )

    def routes(self):
        return list(self.ROUTES)

    def route_for(self, path: str):
        return next((r for r in self.ROUTES if r.template == path), None)

    async def call(self, route, path: str, body: bytes, *, request_id: str) -> EngineReply:
        """Echoes the request; ``v1/responses`` streams a Responses-style event stream."""
        self.calls.append((route.template, json.loads(body) if body else None, request_id))
        if path == "version":
            return EngineReply(200, "application/json", b'{"version":"0.32.0"}')
        request = json.loads(body)
        if path == "v1/responses" and request.get("stream"):
            return EngineReply(200, "text/event-stream", chunks=self._response_events())
        reply = {"echo": request, "usage": {"input_tokens": 3, "output_tokens": 2}}
        return EngineReply(200, "application/json", json.dumps(reply).encode())

    async def _response_events(self) -> AsyncIterator[bytes]:
        self.running += 1
        try:
            for i, kind in enumerate(["created", "output_text.delta", "completed"]):
                await asyncio.sleep(self.delay_s)
                data = json.dumps({"type": f"response.{kind}", "sequence_number": i})
                yield f"event: response.{kind}\ndata: {data}\n\n".encode()
        finally:
            self.closed_streams += 1
            self.running -= 1

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def models(self) -> dict[str, Any]:
        return golden("models.json")

    async def health(self) -> None:
        return None

    def running_requests(self) -> int:
        return self.running

    def shutdown(self) -> None:
        self.shut_down = True


class RecordingSocket:
    """Stands in for the frontend socket: keeps every frame the handler sends."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.frames.append(bytes(data))

    def payloads(self) -> list[bytes]:
        """The response payload of each frame (TorchServe's predict-response encoding)."""
        out = []
        for frame in self.frames:
            pos = 4  # message code
            (n,) = struct.unpack_from("!i", frame, pos)
            pos += 4 + n  # message
            (n,) = struct.unpack_from("!i", frame, pos)
            pos += 4 + n  # request id
            (n,) = struct.unpack_from("!i", frame, pos)
            pos += 4 + n  # content type
            pos += 4  # status
            (n,) = struct.unpack_from("!i", frame, pos)
            pos += 4 + n  # phrase
            (headers,) = struct.unpack_from("!i", frame, pos)
            pos += 4
            for _ in range(headers * 2):
                (n,) = struct.unpack_from("!i", frame, pos)
                pos += 4 + n
            (n,) = struct.unpack_from("!i", frame, pos)
            out.append(frame[pos + 4 : pos + 4 + n])
        return out


def make_context(
    url_path: str | None, *, request_id: str = "req-1", headers: dict[str, str] | None = None
):
    """TorchServe's own Context, set up as its async worker does for one request."""
    from ts.context import Context, RequestProcessor

    ctx = Context("tiny", "/tmp", None, 1, None, "0.12.0")
    ctx.request_ids = {0: request_id}
    headers = dict(headers or {})
    if url_path is not None:
        headers["url_path"] = url_path
    ctx.request_processor = [RequestProcessor(headers)]
    ctx.cl_socket = RecordingSocket()
    return ctx


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def handler(engine):
    from tsvllm.worker.handler import VLLMHandler

    h = VLLMHandler()
    h.engine = engine
    h.initialized = True
    return h
