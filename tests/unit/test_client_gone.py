"""A request whose client has gone is ended: tsvllm's frontend plugin marks it in the
control folder (``gone/<request id>``), the worker's drain watch sees the mark and ends
that request alone; the engine stops its generation."""

from __future__ import annotations

import asyncio
import json

from tests.unit.conftest import make_context, until
from tsvllm import drain
from tsvllm.worker import core
from tsvllm.worker.drain_watch import DrainWatch


def mark_gone(directory, request_id: str) -> None:
    (directory / drain.GONE).mkdir(exist_ok=True)
    (directory / drain.GONE / request_id).touch()


def test_the_marks_are_read_from_the_gone_folder(tmp_path):
    assert drain.gone_requests(tmp_path) == set()  # no folder yet: nothing gone
    mark_gone(tmp_path, "a")
    mark_gone(tmp_path, "b")
    assert drain.gone_requests(tmp_path) == {"a", "b"}


def test_only_the_requests_whose_client_left_are_ended(handler, engine, tmp_path):
    engine.delay_s = 10  # would run far longer than the test
    timeouts = []
    handler.timeout_error = lambda: timeouts.append(1)
    watch = DrainWatch(
        tmp_path,
        model="tiny",
        running=lambda: len(handler.inflight),
        on_abort=lambda: core.end_inflight(handler),
        on_gone=lambda ids: core.end_gone(handler, ids),
    )

    async def run():
        left = make_context("v1/chat/completions", request_id="left")
        stays = make_context("v1/completions", request_id="stays")
        plain_left = make_context("v1/completions", request_id="plain-left")
        tasks = [
            asyncio.ensure_future(handler.handle([{"body": {"stream": True}}], left)),
            asyncio.ensure_future(handler.handle([{"body": {"prompt": "x"}}], stays)),
            asyncio.ensure_future(handler.handle([{"body": {"prompt": "x"}}], plain_left)),
        ]
        await until(lambda: engine.running == 3, what="the three requests run in the engine")
        mark_gone(tmp_path, "left")
        mark_gone(tmp_path, "plain-left")
        watch.poll()
        watch.poll()  # the marks stay until the plugin removes them: ended once
        ended = await asyncio.wait_for(asyncio.gather(tasks[0], tasks[2]), 5)
        still = not tasks[1].done()
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)
        return left, plain_left, ended, still

    left, plain_left, (stream_reply, plain_reply), still = asyncio.run(run())
    assert still  # the other request was left alone
    assert engine.closed_streams == 1  # the stream's generation was closed: aborted
    head, done = stream_reply[0].split(b"\n\n", 1)
    assert json.loads(head.removeprefix(b"data: "))["error"]["type"] == "ClientClosedRequest"
    assert done == b"data: [DONE]\n\n"
    assert plain_left.get_response_status(0) == (499, "Client Closed Request")
    assert json.loads(plain_reply[0])["error"]["code"] == 499
    assert timeouts == []  # not counted as the requests' own deadline
