"""The engine's lifecycle in the handler: start, bounded retries, final failures, set-up,
replacement, and probes that never wait (behind fake engines; no TorchServe, no vLLM)."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from tests.unit.conftest import FakeEngine, make_context, until
from tsvllm.config import ConfigError
from tsvllm.engine.base import EngineCannotStart
from tsvllm.worker import handler as handler_module
from tsvllm.worker.handler import VLLMHandler


def make(engine: FakeEngine, *, failures: list[Exception] = (), setup_error=None):
    """A handler whose engine start raises ``failures`` in turn, then returns ``engine``."""

    class Handler(VLLMHandler):
        attempts = 0

        async def build_engine(self, *, model_dir):
            Handler.attempts += 1
            await asyncio.sleep(0.05)  # a slow start: the behaviour the probes are timed against
            if Handler.attempts <= len(failures):
                raise failures[Handler.attempts - 1]
            return engine

        async def setup(self, *, engine, model_dir):
            if setup_error is not None:
                raise setup_error

    return Handler()


def start(handler: VLLMHandler) -> None:
    handler._starting = asyncio.ensure_future(handler._start_engine())


async def call(handler: VLLMHandler, route: str, body=None):
    ctx = make_context(route)
    reply = await handler.handle([{"body": body}], ctx)
    return ctx.get_response_status(0)[0], json.loads(reply[0])


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(handler_module, "FIRST_RETRY_DELAY_S", 0.001)


def test_generation_requests_during_start_wait_for_the_engine(engine):
    handler = make(engine)

    async def run():
        start(handler)
        return await call(handler, "v1/completions", {"prompt": "x"})

    status, body = asyncio.run(run())
    assert status == 200 and body["object"] == "text_completion"


@pytest.mark.parametrize("route", ["v1/models", "health"])
def test_probes_answer_503_at_once_while_the_engine_starts(engine, route):
    handler = make(engine)

    async def run():
        start(handler)
        answer = await asyncio.wait_for(call(handler, route), 0.04)  # the start takes 0.05
        await handler._starting
        return answer, await call(handler, route)

    (status, body), (later, _) = asyncio.run(run())
    assert status == 503 and "starting" in body["error"]["message"]
    assert later == 200


def test_a_transient_start_failure_is_503_then_retried(engine, monkeypatch):
    monkeypatch.setattr(handler_module, "FIRST_RETRY_DELAY_S", 0.2)
    handler = make(engine, failures=[RuntimeError("engine core died")])

    async def run():
        start(handler)
        await until(
            lambda: handler.start_error is not None and handler._attempt is None,
            what="the first attempt has failed",
        )
        first = await call(handler, "v1/completions", {"prompt": "x"})
        await handler._starting
        return first, await call(handler, "v1/completions", {"prompt": "x"})

    (status, body), (later, _) = asyncio.run(run())
    assert status == 503 and "retrying" in body["error"]["message"]
    assert later == 200 and type(handler).attempts == 2


def test_transient_failures_are_retried_a_bounded_number_of_times(engine, fast_retries):
    failures = [RuntimeError(f"engine core died #{i}") for i in range(10)]
    handler = make(engine, failures=failures)

    async def run():
        start(handler)
        await asyncio.wait_for(handler._starting, 5)
        return await call(handler, "v1/completions", {"prompt": "x"})

    status, body = asyncio.run(run())
    assert type(handler).attempts == handler_module.START_ATTEMPTS
    assert status == 500 and body["error"]["code"] == "engine_start_failed"
    assert f"gave up after {handler_module.START_ATTEMPTS} attempts" in body["error"]["message"]


@pytest.mark.parametrize(
    "failure",
    [
        EngineCannotStart("vLLM rejected the engine args: unrecognized arguments: --max-modle-len"),
        ConfigError("model-config.yaml", ["handler.guards.judge.categories: unknown S99"]),
    ],
)
def test_a_failure_no_retry_can_fix_is_final_and_every_route_says_why(engine, failure):
    handler = make(engine, failures=[failure, failure])

    async def run():
        start(handler)
        await asyncio.wait_for(handler._starting, 5)
        return [await call(handler, r, {"prompt": "x"}) for r in ("v1/completions", "v1/models")]

    answers = asyncio.run(run())
    assert type(handler).attempts == 1  # not retried
    for status, body in answers:
        assert status == 500
        assert body["error"]["code"] == "engine_start_failed"
        assert body["error"]["type"] == "EngineStartError"
        assert str(failure).splitlines()[-1].strip() in body["error"]["message"]


def test_a_setup_failure_shuts_down_the_engine_it_started(engine):
    error = ConfigError("model-config.yaml", ["handler.guards.deny.terms: a blank term"])
    handler = make(engine, setup_error=error)

    async def run():
        start(handler)
        await asyncio.wait_for(handler._starting, 5)

    asyncio.run(run())
    assert engine.shut_down  # nothing left running
    assert handler.engine is None and type(handler).attempts == 1  # a ConfigError is final


def test_a_dead_engine_is_shut_down_off_the_event_loop(engine):
    handler = make(FakeEngine())
    handler.engine = engine
    handler._starting = object()  # initialized
    threads = []
    engine.shutdown = lambda: threads.append(threading.current_thread())
    engine.dead = True

    async def run():
        status, _ = await call(handler, "v1/completions", {"prompt": "x"})
        await asyncio.wait_for(handler._starting, 5)
        return status

    assert asyncio.run(run()) == 503
    assert threads and threads[0] is not threading.main_thread()


def test_a_cancelled_request_is_a_503_not_a_timeout(handler, engine):
    engine.delay_s = 10

    async def run():
        ctx = make_context("v1/completions")
        task = asyncio.ensure_future(handler.handle([{"body": {"prompt": "x"}}], ctx))
        await until(lambda: engine.running == 1, what="the request reaches the engine")
        task.cancel()
        reply = await task
        return ctx.get_response_status(0)[0], json.loads(reply[0])

    status, body = asyncio.run(run())
    assert status == 503
    assert "cancelled" in body["error"]["message"] and body["error"]["code"] == 503


# -- the event loop is free during a start: probes say what it does, waits are bounded ------

MULTINODE = {"nnodes": 2, "tensor_parallel_size": 2, "master_addr": "10.0.0.1"}


def model_config(startup_timeout: int = 150, **engine_config):
    from tsvllm.config import validate_model_config

    return validate_model_config(
        {
            "deviceType": "cpu",
            "asyncCommunication": True,
            "startupTimeout": startup_timeout,
            "handler": {
                "model_path": "/models/tiny",
                "served_model_name": ["tiny"],
                "vllm_engine_config": {"max_model_len": 512, **engine_config},
            },
        }
    )


def gated(engine: FakeEngine, *, config=None, failures: list[Exception] = ()):
    """A handler whose engine start waits for ``Handler.go`` (an asyncio.Event), as a real
    start waits for its engine (in a thread: the event loop runs); the first starts raise
    ``failures`` in turn once let go."""

    class Handler(VLLMHandler):
        attempts = 0
        go: asyncio.Event

        async def build_engine(self, *, model_dir):
            Handler.attempts += 1
            await Handler.go.wait()
            if Handler.attempts <= len(failures):
                Handler.go.clear()  # the next attempt waits again
                raise failures[Handler.attempts - 1]
            return engine

    handler = Handler()
    handler.config = config if config is not None else model_config()
    return handler


async def _timed(work) -> tuple[float, tuple[int, dict]]:
    t0 = asyncio.get_running_loop().time()
    answer = await work
    return asyncio.get_running_loop().time() - t0, answer


@pytest.mark.parametrize("route", ["v1/models", "health"])
def test_a_probe_during_a_start_is_503_at_once_with_the_start_status(engine, route):
    handler = gated(engine)

    async def run():
        type(handler).go = asyncio.Event()
        start(handler)
        await until(lambda: type(handler).attempts == 1, what="the attempt runs")
        took, answer = await _timed(asyncio.wait_for(call(handler, route), 1))
        type(handler).go.set()
        await asyncio.wait_for(handler._starting, 5)
        return took, answer, await call(handler, route)

    took, (status, body), (later, _) = asyncio.run(run())
    message = body["error"]["message"]
    assert took < 0.1 and status == 503, body
    assert body["error"]["type"] == "ServiceUnavailableError"
    assert message == "the engine is starting (0 s of startupTimeout 150 s)"
    assert later == 200


def test_a_multinode_start_says_it_waits_for_every_worker_node(engine):
    handler = gated(engine, config=model_config(startup_timeout=90, **MULTINODE, master_port=29600))

    async def run():
        type(handler).go = asyncio.Event()
        start(handler)
        await until(lambda: type(handler).attempts == 1, what="the attempt runs")
        answer = await asyncio.wait_for(call(handler, "v1/models"), 1)
        type(handler).go.set()
        await asyncio.wait_for(handler._starting, 5)
        return answer

    status, body = asyncio.run(run())
    message = body["error"]["message"]
    assert status == 503
    assert message.startswith("the engine is starting (0 s of startupTimeout 90 s); ")
    assert "nnodes 2" in message and "every worker node" in message
    assert "master_addr:master_port 10.0.0.1:29600" in message
    assert "`tsvllm worker-node --config model-config.yaml --node-rank 1`" in message


def test_a_request_whose_deadline_passes_while_the_engine_starts_is_503_not_504(engine):
    handler = gated(engine, config=model_config(**MULTINODE))
    handler.request_timeout_s = 0.2

    async def run():
        type(handler).go = asyncio.Event()
        start(handler)
        took, answer = await _timed(call(handler, "v1/completions", {"prompt": "x"}))
        type(handler).go.set()
        await asyncio.wait_for(handler._starting, 5)
        return took, answer, await call(handler, "v1/completions", {"prompt": "x"})

    took, (status, body), (later, _) = asyncio.run(run())
    message = body["error"]["message"]
    assert 0.15 < took < 1  # its own deadline, not the start's
    assert status == 503 and body["error"]["code"] == 503, body  # it never ran: not a 504
    assert message.startswith("the engine is starting (0 s of startupTimeout 150 s)")
    assert "nnodes 2" in message and "10.0.0.1:29501" in message  # vLLM's default port
    assert later == 200


def test_a_request_during_a_retry_waits_for_it_and_the_probe_names_the_attempt(engine, monkeypatch):
    monkeypatch.setattr(handler_module, "FIRST_RETRY_DELAY_S", 0.01)
    handler = gated(engine, failures=[RuntimeError("engine core died")])

    async def run():
        go = type(handler).go = asyncio.Event()
        start(handler)
        await until(lambda: type(handler).attempts == 1, what="the first attempt runs")
        go.set()  # the first attempt fails
        await until(lambda: type(handler).attempts == 2, what="the second attempt runs")
        probe = await call(handler, "v1/models")
        waiting = asyncio.ensure_future(call(handler, "v1/completions", {"prompt": "x"}))
        await until(lambda: handler._attempt_end is not None, what="the request waits")
        assert not waiting.done()  # it waits for the running attempt
        go.set()
        return probe, await asyncio.wait_for(waiting, 5)

    (status, body), (served, _) = asyncio.run(run())
    assert status == 503
    assert body["error"]["message"] == (
        "the engine is starting (0 s of startupTimeout 150 s, attempt 2 of 5 after RuntimeError)"
    )
    assert served == 200
