"""No spliced stream: a stream TorchServe re-dispatches after another worker sent part of
it is refused (tsvllm.worker.stream_marks), behind the fake engine."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from tests.unit.conftest import make_context, until
from tsvllm import drain
from tsvllm.worker import core
from tsvllm.worker.stream_marks import MIN_STALE_S, StreamMarks, open_marks

STREAM = {"stream": True}


@pytest.fixture
def marks(handler, tmp_path):
    handler.stream_marks = StreamMarks(tmp_path / "streams")
    handler.stream_marks.directory.mkdir()
    return handler.stream_marks


def test_a_stream_is_marked_from_its_first_chunk_until_just_after_its_end(
    handler, engine, marks, monkeypatch
):
    monkeypatch.setattr(core, "RELEASE_AFTER_S", 0.05)
    engine.delay_s = 0.05
    seen: dict[str, bool] = {}

    async def run():
        ctx = make_context("v1/chat/completions", request_id="r-1")
        task = asyncio.ensure_future(handler.handle([{"body": STREAM}], ctx))
        await until(lambda: ctx.cl_socket.frames, what="the first chunk is sent")
        seen["while streaming"] = marks.started("r-1")
        reply = await task
        seen["at the end"] = marks.started("r-1")
        await until(lambda: not marks.started("r-1"), what="the mark is removed")
        return reply[0]

    last = asyncio.run(run())
    assert seen == {"while streaming": True, "at the end": True}
    assert last.endswith(core.DONE) and b"error" not in last


def test_a_stream_started_by_a_removed_worker_is_refused_without_the_engine(handler, engine, marks):
    marks.claim("r-2")  # what the removed worker did before its first chunk
    ctx = make_context("v1/chat/completions", request_id="r-2")
    reply = asyncio.run(handler.handle([{"body": STREAM}], ctx))
    assert ctx.get_response_status(0)[0] == 200  # the client has its 200 already
    assert ctx.get_response_headers(0)["ts_stream_next"] == "false"  # the frontend ends it
    assert ctx.cl_socket.frames == [] and engine.calls == []
    head, done = reply[0].split(b"\n\n", 1)
    err = json.loads(head.removeprefix(b"data: "))["error"]
    assert err["code"] == 503 and "removed" in err["message"] and "retry" in err["message"]
    assert done == core.DONE


def test_an_engine_route_stream_is_refused_the_same_way(handler, engine, marks):
    marks.claim("r-3")
    ctx = make_context("v1/responses", request_id="r-3")
    body = {"model": "tiny", "input": "hi", "stream": True}
    reply = asyncio.run(handler.handle([{"body": body}], ctx))
    assert engine.calls == []
    err = json.loads(reply[0].removeprefix(b"data: "))["error"]
    assert err["code"] == 503 and "removed" in err["message"]


def test_an_engine_route_stream_is_marked_while_it_runs(handler, engine, marks, monkeypatch):
    monkeypatch.setattr(core, "RELEASE_AFTER_S", 0.0)
    engine.delay_s = 0.05

    async def run():
        ctx = make_context("v1/responses", request_id="r-4")
        body = {"model": "tiny", "input": "hi", "stream": True}
        task = asyncio.ensure_future(handler.handle([{"body": body}], ctx))
        await until(lambda: ctx.cl_socket.frames, what="the first chunk is sent")
        during = marks.started("r-4")
        await task
        await until(lambda: not marks.started("r-4"), what="the mark is removed")
        return during

    assert asyncio.run(run()) is True


def test_requests_that_are_not_streamed_are_never_marked_nor_refused(handler, engine, marks):
    marks.claim("r-5")  # a stale mark with the same id changes nothing for them
    ctx = make_context("v1/completions", request_id="r-5")
    asyncio.run(handler.handle([{"body": {"prompt": "x"}}], ctx))
    assert ctx.get_response_status(0)[0] == 200 and len(engine.calls) == 1
    ctx = make_context("v1/completions", request_id="r-6")
    asyncio.run(handler.handle([{"body": {"prompt": "x"}}], ctx))
    assert not marks.started("r-6")


def test_a_stream_cut_by_the_worker_stopping_keeps_its_mark(handler, engine, marks, monkeypatch):
    """The removed worker's own loop may cancel its requests before it dies: the mark
    stays, so the worker that receives the request next refuses it."""
    monkeypatch.setattr(core, "RELEASE_AFTER_S", 0.0)
    engine.delay_s = 0.2  # per chunk: the second one is far off when the first is sent

    async def run():
        ctx = make_context("v1/chat/completions", request_id="r-7")
        task = asyncio.ensure_future(handler.handle([{"body": STREAM}], ctx))
        await until(lambda: ctx.cl_socket.frames, what="the first chunk is sent")
        task.cancel()
        reply = await task  # handle answers every request, a cancelled one too
        await asyncio.sleep(0)  # a release, had one been scheduled, would run now
        return ctx, reply[0]

    ctx, reply = asyncio.run(run())
    assert json.loads(reply)["error"]["code"] == 503 and len(ctx.cl_socket.frames) == 1
    assert marks.started("r-7")


def test_odd_request_ids_become_plain_file_names(marks):
    marks.claim("../../etc/passwd")
    (name,) = [p.name for p in marks.directory.iterdir()]
    assert "/" not in name and len(name) == 64
    assert marks.started("../../etc/passwd")


def test_the_sweep_removes_only_stale_marks(marks):
    marks.claim("old")
    marks.claim("new")
    stale = time.time() - marks.stale_after_s - 10
    os.utime(marks.directory / "old", (stale, stale))
    assert marks.sweep() == 1
    assert not marks.started("old") and marks.started("new")


def test_marks_live_in_the_control_dir_when_there_is_one(tmp_path):
    marks = StreamMarks.for_environ({drain.CONTROL_DIR_ENV: str(tmp_path)}, stale_after_s=10)
    assert marks.directory == tmp_path / "streams" and marks.directory.is_dir()
    assert marks.stale_after_s == MIN_STALE_S  # never shorter than a long stream


def test_without_one_a_private_folder_under_the_temp_dir(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    marks = StreamMarks.for_environ({}, stale_after_s=7200)
    assert marks.directory == tmp_path / f"tsvllm-streams-{os.getuid()}"
    assert marks.directory.stat().st_mode & 0o777 == 0o700
    assert marks.stale_after_s == 7200


def test_a_folder_others_can_write_is_not_used(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    shared = tmp_path / f"tsvllm-streams-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    assert open_marks({}, stale_after_s=10) is None
    assert "not a private folder" in caplog.text
