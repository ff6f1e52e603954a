"""The worker's side of the drain (tsvllm.drain protocol), behind the fake engine."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from tests.unit.conftest import make_context, until
from tsvllm import drain
from tsvllm.worker import core
from tsvllm.worker.drain_watch import DrainWatch


def watch_for(handler, directory, *, model="tiny") -> DrainWatch:
    handler.drain_watch = DrainWatch(
        directory,
        model=model,
        running=lambda: len(handler.inflight),
        on_abort=lambda: core.end_inflight(handler),
    )
    return handler.drain_watch


def status(directory) -> dict:
    return json.loads((directory / f"worker-{os.getpid()}.json").read_text())


def test_nothing_asked_nothing_written(handler, tmp_path):
    watch = watch_for(handler, tmp_path)
    watch.poll()
    assert not watch.draining and list(tmp_path.iterdir()) == []


def test_another_models_drain_is_not_ours(handler, tmp_path):
    drain.request(tmp_path, drain.DRAIN, model="other")
    watch = watch_for(handler, tmp_path, model="tiny")
    watch.poll()
    assert not watch.draining


def test_while_draining_new_requests_and_probes_get_503_with_retry_after(handler, tmp_path):
    drain.request(tmp_path, drain.DRAIN, model="tiny")
    watch = watch_for(handler, tmp_path)
    watch.poll()
    assert watch.draining and status(tmp_path) == {"pid": os.getpid(), "running": 0}
    for route, body in (("v1/completions", {"prompt": "x"}), ("v1/models", None)):
        ctx = make_context(route)
        reply = asyncio.run(handler.handle([{"body": body}], ctx))
        assert ctx.get_response_status(0)[0] == 503
        assert ctx.get_response_headers(0)["Retry-After"] == str(drain.RETRY_AFTER_S)
        err = json.loads(reply[0])["error"]
        assert err["type"] == "ServiceUnavailableError" and "shutting down" in err["message"]


def test_running_requests_finish_during_the_drain_and_are_counted(handler, engine, tmp_path):
    engine.delay_s = 0.05  # a slow stream: it is still running when the drain starts
    watch = watch_for(handler, tmp_path)

    async def run():
        ctx = make_context("v1/chat/completions")
        task = asyncio.ensure_future(handler.handle([{"body": {"stream": True}}], ctx))
        await until(lambda: engine.running == 1, what="the stream runs in the engine")
        drain.request(tmp_path, drain.DRAIN)
        watch.poll()
        during = status(tmp_path)["running"]
        reply = await task
        watch.poll()
        return during, ctx, reply[0]

    during, ctx, last = asyncio.run(run())
    assert during == 1 and status(tmp_path)["running"] == 0
    assert ctx.get_response_status(0)[0] == 200
    assert last.endswith(b"data: [DONE]\n\n") and b"error" not in last


def test_abort_ends_streams_with_an_error_event_and_plain_requests_with_503(
    handler, engine, tmp_path
):
    engine.delay_s = 10  # would run far longer than the test
    watch = watch_for(handler, tmp_path)
    timeouts = []
    handler.timeout_error = lambda: timeouts.append(1)

    async def run():
        stream_ctx, plain_ctx = make_context("v1/chat/completions"), make_context("v1/completions")
        stream = asyncio.ensure_future(handler.handle([{"body": {"stream": True}}], stream_ctx))
        plain = asyncio.ensure_future(handler.handle([{"body": {"prompt": "x"}}], plain_ctx))
        await until(lambda: engine.running == 2, what="both requests run in the engine")
        drain.request(tmp_path, drain.DRAIN)
        drain.request(tmp_path, drain.ABORT)
        watch.poll()
        replies = await asyncio.wait_for(asyncio.gather(stream, plain), 5)
        watch.poll()
        return stream_ctx, plain_ctx, replies

    stream_ctx, plain_ctx, (stream_reply, plain_reply) = asyncio.run(run())
    head, done = stream_reply[0].split(b"\n\n", 1)
    assert json.loads(head.removeprefix(b"data: "))["error"]["code"] == 503
    assert done == b"data: [DONE]\n\n"
    assert engine.closed_streams == 1  # the engine's stream was closed: generation aborted
    assert plain_ctx.get_response_status(0)[0] == 503
    assert "ended this request" in json.loads(plain_reply[0])["error"]["message"]
    assert timeouts == []  # not counted as the requests' own deadline
    assert status(tmp_path)["running"] == 0 and not handler.inflight


def test_a_cancelled_drain_takes_requests_again(handler, tmp_path):
    watch = watch_for(handler, tmp_path)
    drain.request(tmp_path, drain.DRAIN, model="tiny")
    watch.poll()
    assert watch.draining
    drain.cancel(tmp_path, model="tiny")
    watch.poll()
    assert not watch.draining
    # its last count ("running: 0") is gone: the next drain waits for a fresh report
    assert list(tmp_path.glob("worker-*.json")) == []
    assert drain.running(tmp_path, [os.getpid()]) == {os.getpid(): None}
    ctx = make_context("v1/completions")
    asyncio.run(handler.handle([{"body": {"prompt": "x"}}], ctx))
    assert ctx.get_response_status(0)[0] == 200


def test_an_aborted_drain_is_not_cancelled(handler, tmp_path):
    watch = watch_for(handler, tmp_path)
    drain.request(tmp_path, drain.DRAIN)
    drain.request(tmp_path, drain.ABORT)

    async def run():  # the abort ends requests on the event loop
        watch.poll()
        drain.cancel(tmp_path)
        watch.poll()

    asyncio.run(run())
    assert watch.draining and watch.aborted


def test_a_worker_drain_is_this_workers_alone(handler, tmp_path):
    """``tsvllm scale`` drains the workers TorchServe removes by pid; the others serve."""
    watch = watch_for(handler, tmp_path)
    drain.request(tmp_path, drain.DRAIN, pid=os.getpid() + 1)
    watch.poll()
    assert not watch.draining
    drain.request(tmp_path, drain.DRAIN, pid=os.getpid())
    watch.poll()
    assert watch.draining and status(tmp_path) == {"pid": os.getpid(), "running": 0}
    drain.cancel(tmp_path, pid=os.getpid())
    watch.poll()
    assert not watch.draining


def test_a_worker_abort_ends_its_requests_and_forget_removes_its_files(tmp_path):
    ended = []
    watch = DrainWatch(tmp_path, model="tiny", running=lambda: 0, on_abort=lambda: ended.append(1))
    drain.request(tmp_path, drain.DRAIN, pid=os.getpid())
    drain.request(tmp_path, drain.ABORT, pid=os.getpid())
    watch.poll()
    assert watch.aborted and ended == [1]
    assert {p.name for p in tmp_path.iterdir()} >= {
        f"drain-pid-{os.getpid()}",
        f"abort-pid-{os.getpid()}",
    }
    drain.forget_worker(tmp_path, os.getpid())
    assert [p.name for p in tmp_path.iterdir()] == [f"worker-{os.getpid()}.json"]


def test_a_control_file_names_a_model_or_a_worker_not_both(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        drain.request(tmp_path, drain.DRAIN, model="tiny", pid=1)
