"""Replies of any size: over 4 MiB they go to TorchServe as several frames, each under the
frontend's max_response_size; above ``handler.max_response_bytes`` they are refused."""

from __future__ import annotations

import asyncio
import json

from tests.unit.conftest import make_context
from tests.unit.test_handler import error_of, serve
from tests.unit.test_ts_worker import batch, decode, fake_service
from tsvllm.worker import ts_worker

PIECE = ts_worker.FRAME_BODY_BYTES


def test_a_reply_over_one_frame_goes_as_frames_each_under_the_limit(handler, engine):
    """Through the worker path, as TorchServe's frontend receives it: the frames before the
    last say ``ts_stream_next: true`` (the frontend sends one chunked HTTP body, status and
    headers from the first), the last says ``false``."""
    handler.max_body_bytes = 3 * PIECE
    prompt = "x" * (2 * PIECE + 12345)  # the engine echoes it: a reply of 3 frames
    request = batch(b"big-1", value={"prompt": prompt})
    request[0]["headers"] = [{"name": b"url_path", "value": b"tokenize"}]
    async_service = fake_service(handler.handle)
    asyncio.run(ts_worker._call_predict(async_service, request))

    frames = [decode(frame) for frame in async_service.service.cl_socket.frames]
    assert [len(f["body"]) for f in frames[:-1]] == [PIECE, PIECE]
    assert 0 < len(frames[-1]["body"]) <= PIECE
    for frame in frames:
        assert (frame["code"], frame["status"], frame["request_id"]) == (200, 200, "big-1")
        assert frame["content_type"] == "application/json"
    assert [f["headers"]["ts_stream_next"] for f in frames] == ["true", "true", "false"]
    whole = b"".join(f["body"] for f in frames)
    assert json.loads(whole)["echo"]["prompt"] == prompt


def test_a_reply_of_one_frame_is_returned_whole(handler):
    ctx, status, _, payload = serve(handler, "tokenize", {"prompt": "x" * 1000})
    assert status == 200 and ctx.cl_socket.frames == []
    assert json.loads(payload)["echo"]["prompt"] == "x" * 1000


def test_a_stream_chunk_over_one_frame_is_split(handler):
    ctx = make_context("v1/chat/completions")
    chunk = b"data: " + b"y" * (PIECE + 10) + b"\n\n"
    ts_worker.send_chunk(ctx, chunk)
    frames = [decode(frame) for frame in ctx.cl_socket.frames]
    assert [len(f["body"]) for f in frames] == [PIECE, len(chunk) - PIECE]
    assert b"".join(f["body"] for f in frames) == chunk


def test_a_reply_over_max_response_bytes_is_refused_naming_the_setting(handler, engine):
    handler.max_response_bytes = 100
    for path, body in (
        ("v1/completions", {"prompt": "hi"}),
        ("tokenize", {"prompt": "x" * 200}),
    ):
        ctx, status, content_type, payload = serve(handler, path, body)
        err = error_of(payload)
        assert (status, content_type) == (400, "application/json")
        assert err["code"] == "response_too_large"
        assert "handler.max_response_bytes" in err["message"]
        assert ctx.cl_socket.frames == []


def test_a_stream_is_not_capped(handler):
    handler.max_response_bytes = 100
    ctx, status, _, last = serve(handler, "v1/chat/completions", {"stream": True})
    assert status == 200 and last.endswith(b"data: [DONE]\n\n")
    assert sum(map(len, ctx.cl_socket.payloads())) + len(last) > 100
    assert b'"error"' not in last
