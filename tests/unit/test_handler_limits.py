"""The request deadline, the health route and a dead engine, behind a fake engine."""

from __future__ import annotations

import asyncio
import json

from tests.unit.conftest import make_context, until
from tests.unit.test_handler import error_of, serve


def test_health_reports_running_requests(handler, engine):
    async def health() -> dict:
        ctx = make_context("health")
        reply = await handler.handle([{"body": None}], ctx)
        assert (ctx.get_response_status(0)[0], ctx.get_response_content_type(0)) == (
            200,
            "application/json",
        )
        return json.loads(reply[0])

    async def scenario():
        assert await health() == {"status": "ok", "running_requests": 0}
        engine.hold = asyncio.Event()
        ctx = make_context("v1/completions")
        held = asyncio.ensure_future(handler.handle([{"body": {"prompt": "hi"}}], ctx))
        await until(lambda: engine.running == 1, what="the request reaches the engine")
        during = await health()
        engine.hold.set()
        await held
        assert ctx.get_response_status(0)[0] == 200
        stream = make_context("v1/chat/completions")
        await handler.handle([{"body": {"stream": True}}], stream)
        return during, await health()

    during, after = asyncio.run(scenario())
    assert during == {"status": "ok", "running_requests": 1}
    assert after == {"status": "ok", "running_requests": 0}  # a full reply and a stream later


def test_a_slow_full_response_is_stopped_at_the_deadline(handler, engine):
    handler.request_timeout_s = 0.05
    engine.delay_s = 5
    _, status, _, payload = serve(handler, "v1/completions", {"prompt": "hi"})
    assert status == 504
    err = error_of(payload)
    assert err["type"] == "TimeoutError" and "request_timeout_s" in err["message"]


def test_a_slow_stream_ends_with_a_timeout_event_and_is_aborted(handler, engine):
    handler.request_timeout_s = 0.3
    engine.delay_s = 0.2  # the 2nd chunk comes after the deadline
    ctx, status, _, last = serve(handler, "v1/chat/completions", {"stream": True})
    assert status == 200
    assert 1 <= len(ctx.cl_socket.payloads()) < 3
    head, done = last.split(b"\n\n", 1)
    assert error_of(head.removeprefix(b"data: "))["code"] == 504
    assert done == b"data: [DONE]\n\n"
    assert engine.closed_streams == 1  # closing the stream aborts the generation


def test_a_dead_engine_gets_503_at_once(handler, engine, caplog):
    """The worker then exits and TorchServe restarts it (test_engine_lifecycle.py). An
    expected 503 is one log line, not a traceback."""
    engine.dead = True

    async def scenario():
        ctx = make_context("v1/completions")
        first = await handler.handle([{"body": {"prompt": "hi"}}], ctx)
        return ctx.get_response_status(0)[0], error_of(first[0])["message"]

    with caplog.at_level("INFO", logger="tsvllm.worker.core"):
        status, message = asyncio.run(scenario())
    assert status == 503 and message.startswith("the engine died; this worker restarts")
    assert engine.calls == []  # never sent to the dead engine
    [line] = [r for r in caplog.records if r.name == "tsvllm.worker.core"]
    assert line.levelname == "WARNING" and line.exc_info is None
    assert line.getMessage().startswith("request req-1: 503 the engine died")


def test_deeply_nested_json_is_a_400_not_a_crash(handler):
    raw = b"[" * 100_000 + b"]" * 100_000
    _, status, _, payload = serve(handler, "v1/completions", raw=raw)
    assert status == 400 and "nested too deeply" in error_of(payload)["message"]


def test_a_decoded_body_over_the_limit_is_refused_by_its_content_length(handler, engine):
    handler.max_body_bytes = 100
    ctx = make_context("v1/completions", headers={"Content-Length": "5000"})
    payload = asyncio.run(handler.handle([{"body": {"prompt": "hi"}}], ctx))[0]
    assert ctx.get_response_status(0)[0] == 413
    assert "handler.max_body_bytes" in error_of(payload)["message"]
    assert engine.calls == []


def test_a_text_body_holding_json_is_accepted(handler, engine):
    _, status, _, _ = serve(handler, "v1/completions", raw='{"prompt": "hi"}')
    assert status == 200 and engine.calls[0][1]["prompt"] == "hi"
