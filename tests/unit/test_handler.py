"""Routing, replies and error mapping of VLLMHandler, behind a fake engine."""

from __future__ import annotations

import asyncio
import json

import pytest
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.unit.conftest import golden, make_context
from tsvllm.engine.base import Api


def serve(handler, url_path, body=None, *, raw=None):
    ctx = make_context(url_path)
    request = {"body": raw if raw is not None else body}
    reply = asyncio.run(handler.handle([request], ctx))
    assert isinstance(reply, list) and len(reply) == 1
    status, phrase = ctx.get_response_status(0)
    return ctx, status, ctx.get_response_content_type(0), reply[0]


def error_of(payload: bytes) -> dict:
    err = json.loads(payload)["error"]
    # OpenAI's four fields; an unknown route's 404 adds the list of routes served
    assert set(err) - {"routes"} == {"message", "type", "param", "code"}
    return err


def test_chat_completion_is_the_engine_body_as_json(handler, engine):
    _, status, ctype, payload = serve(
        handler, "v1/chat/completions", {"model": "tiny", "messages": []}
    )
    assert (status, ctype) == (200, "application/json")
    parsed = ChatCompletion.model_validate_json(payload)
    assert parsed.choices[0].message.content == "The capital of France is Paris."
    api, body, request_id = engine.calls[0]
    assert (api, request_id) == (Api.CHAT, "req-1")


def test_completion_route(handler, engine):
    _, status, _, payload = serve(handler, "/v1/completions?x=1", {"prompt": "hi"})
    assert status == 200
    assert Completion.model_validate_json(payload).choices[0].text == " world"
    assert engine.calls[0][0] is Api.COMPLETIONS


def test_models_route_needs_no_body(handler):
    _, status, _, payload = serve(handler, "v1/models", None)
    assert status == 200
    data = json.loads(payload)["data"]
    assert [Model.model_validate(m).id for m in data] == ["tiny"]


def test_json_body_as_raw_bytes_is_decoded(handler, engine):
    raw = json.dumps({"model": "tiny", "prompt": "hi"}).encode()
    _, status, _, _ = serve(handler, "v1/completions", raw=raw)
    assert status == 200
    assert engine.calls[0][1]["prompt"] == "hi"


def test_stream_sends_sse_chunks_then_done(handler, engine):
    ctx, status, ctype, last = serve(
        handler, "v1/chat/completions", {"messages": [], "stream": True}
    )
    assert (status, ctype) == (200, "text/event-stream")
    assert last == b"data: [DONE]\n\n"
    events = ctx.cl_socket.payloads()
    assert len(events) == len(golden("chat_completion_chunks.json"))
    chunks = []
    for event in events:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        chunks.append(ChatCompletionChunk.model_validate_json(event[6:]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Paris."
    assert chunks[-1].usage.completion_tokens == 2
    assert engine.closed_streams == 1


def test_failure_mid_stream_ends_with_error_event_and_done(handler, engine, monkeypatch):
    chunks = golden("chat_completion_chunks.json")[:2] + [{"explode": True}]
    monkeypatch.setattr(engine, "generate", _returning(engine._stream(chunks)))
    ctx, status, _, last = serve(handler, "v1/chat/completions", {"stream": True})
    assert status == 200  # headers went out with the first chunk
    assert len(ctx.cl_socket.payloads()) == 2
    head, done = last.split(b"\n\n", 1)
    assert error_of(head.removeprefix(b"data: "))["code"] == 500
    assert done == b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("url_path", "body", "raw", "status", "error_type", "needle"),
    [
        ("v1/nothing", {}, None, 404, "NotFoundError", "unknown route 'v1/nothing'"),
        (None, {}, None, 404, "NotFoundError", "unknown route '(none)'"),
        ("v1/completions", None, b"{bad json", 400, "BadRequestError", "not valid JSON"),
        ("v1/completions", None, b"\xff\xfe", 400, "BadRequestError", "not valid JSON"),
        ("v1/completions", None, b"   ", 400, "BadRequestError", "body is empty"),
        ("v1/completions", [1, 2], None, 400, "BadRequestError", "must be a JSON object"),
        ("v1/completions", {"model": "nope"}, None, 404, "NotFoundError", "does not exist"),
        ("v1/completions", {"max_tokens": "x"}, None, 400, "BadRequestError", "max_tokens"),
    ],
)
def test_request_errors_are_returned_with_their_status(
    handler, url_path, body, raw, status, error_type, needle
):
    ctx, got_status, ctype, payload = serve(handler, url_path, body, raw=raw)
    err = error_of(payload)
    assert (got_status, ctype) == (status, "application/json")
    assert (err["type"], err["code"]) == (error_type, status)
    assert needle in err["message"]
    assert ("routes" in err) == needle.startswith("unknown route")  # not the engine's 404
    assert ctx.cl_socket.frames == []  # nothing streamed


def test_body_over_the_limit_is_413(handler):
    handler.max_body_bytes = 10
    _, status, _, payload = serve(handler, "v1/completions", raw=b'{"prompt": "0123456789"}')
    assert status == 413
    assert error_of(payload)["type"] == "PayloadTooLargeError"


def test_unexpected_engine_exception_is_a_500_without_internals(handler, engine, monkeypatch):
    async def boom(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(engine, "generate", boom)
    _, status, _, payload = serve(handler, "v1/completions", {"prompt": "x"})
    err = error_of(payload)
    assert status == 500
    assert "secret" not in err["message"] and "RuntimeError" in err["message"]


def test_concurrent_bad_requests_do_not_disturb_good_ones(handler):
    async def run():
        good = [
            handler.handle([{"body": {"stream": True}}], make_context("v1/chat/completions"))
            for _ in range(8)
        ]
        bad = [
            handler.handle([{"body": b"{oops"}], make_context("v1/chat/completions"))
            for _ in range(8)
        ]
        return await asyncio.gather(*good, *bad)

    replies = asyncio.run(run())
    assert [r[0] for r in replies[:8]] == [b"data: [DONE]\n\n"] * 8
    assert all(error_of(r[0])["code"] == 400 for r in replies[8:])


def _returning(value):
    async def generate(*args, **kwargs):
        return value

    return generate


@pytest.mark.parametrize("name", ["content-length", "Content-Length", "CONTENT-LENGTH"])
def test_declared_body_size_is_read_in_any_header_spelling(handler, name):
    """A body TorchServe decoded already is measured by its Content-Length header."""
    handler.max_body_bytes = 10
    ctx = make_context("v1/completions", headers={name: "5000"})
    payload = asyncio.run(handler.handle([{"body": {"prompt": "x"}}], ctx))[0]
    assert ctx.get_response_status(0)[0] == 413
    assert "5000 bytes" in error_of(payload)["message"]
