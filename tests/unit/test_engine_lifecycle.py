"""The engine's lifecycle in the handler: the start inside TorchServe's model load, final
and retryable failures, set-up, and the worker's exit when its engine dies (behind fake
engines; no TorchServe, no vLLM)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from types import SimpleNamespace

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
            await asyncio.sleep(0.05)  # a start takes time
            if Handler.attempts <= len(failures):
                raise failures[Handler.attempts - 1]
            return engine

        async def setup(self, *, engine, model_dir):
            if setup_error is not None:
                raise setup_error

    return Handler()


async def call(handler: VLLMHandler, route: str, body=None):
    ctx = make_context(route)
    reply = await handler.handle([{"body": body}], ctx)
    return ctx.get_response_status(0)[0], json.loads(reply[0])


CONFIG = {"asyncCommunication": True, "startupTimeout": 100, "handler": {"model_path": "m"}}


@pytest.fixture
def loaded(monkeypatch, tmp_path):
    """``initialize(context)`` as TorchServe's worker calls it (no running loop; the worker
    runs the same loop afterwards), without the worker-wide parts (socket path patch,
    process reaper, engine metrics). Returns a function that loads a handler and the loop."""
    from tsvllm.worker import engine_metrics, lifeline, ts_worker

    monkeypatch.setattr(ts_worker, "install_worker_path", lambda **_: None)
    monkeypatch.setattr(lifeline, "start_reaper", lambda: None)
    monkeypatch.setattr(engine_metrics, "start", lambda *_: None)
    monkeypatch.setattr(ts_worker, "await_load_timeout", _left_unanswered)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    context = SimpleNamespace(
        system_properties={"model_dir": str(tmp_path)}, model_yaml_config=CONFIG, model_name="m"
    )

    def load(handler: VLLMHandler) -> asyncio.AbstractEventLoop:
        handler.initialize(context)
        return loop

    yield load
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    asyncio.set_event_loop(None)
    loop.close()


class LoadLeftUnanswered(Exception):
    """What ts_worker.await_load_timeout does in these tests instead of waiting to be ended."""


def _left_unanswered(reason: str, *, left_s: float) -> None:
    raise LoadLeftUnanswered(reason, left_s)


def test_initialize_returns_once_the_engine_serves(engine, loaded):
    """TorchServe marks the worker READY when initialize returns: the engine serves by then."""
    handler = make(engine)
    loop = loaded(handler)
    assert handler.engine is engine and type(handler).attempts == 1
    status, body = loop.run_until_complete(call(handler, "v1/completions", {"prompt": "x"}))
    assert status == 200 and body["object"] == "text_completion"


def test_a_failed_start_is_retried_while_the_loads_time_lasts(engine, loaded, monkeypatch):
    monkeypatch.setattr(handler_module, "FIRST_RETRY_DELAY_S", 0.01)
    handler = make(engine, failures=[OSError("engine core died")])
    loaded(handler)
    assert handler.engine is engine and type(handler).attempts == 2


def test_a_start_with_no_time_left_leaves_the_load_to_torchserves_timeout(
    engine, loaded, monkeypatch
):
    """No failed LOAD reply (TorchServe 0.12 may lose a queued request on that path): the
    worker waits for the frontend to end the load at startupTimeout and start a new one."""
    monkeypatch.setattr(handler_module, "FIRST_RETRY_DELAY_S", 0.05)
    # 1 s of the load left: room for a retry on a loaded machine (0.3 s once had only one)
    monkeypatch.setattr(handler_module, "LOAD_MARGIN_S", CONFIG["startupTimeout"] - 1.0)
    handler = make(engine, failures=[OSError(f"engine core died #{i}") for i in range(99)])
    with pytest.raises(LoadLeftUnanswered) as info:
        loaded(handler)
    reason, left_s = info.value.args
    attempts = type(handler).attempts
    assert 2 <= attempts < 12  # retried, within the load's time
    last = f"OSError: engine core died #{attempts - 1}; attempt {attempts}"
    assert reason == f"the engine did not start ({last})"
    assert left_s < 1.0 and handler.engine is None


def test_a_final_failure_loads_so_that_every_request_gets_the_reason(engine, loaded):
    """Not a load failure: TorchServe would queue requests for a worker that never comes."""
    failure = EngineCannotStart("vLLM rejected the engine args: unrecognized --max-modle-len")
    handler = make(engine, failures=[failure])
    loop = loaded(handler)
    status, body = loop.run_until_complete(call(handler, "v1/models"))
    assert status == 500 and body["error"]["code"] == "engine_start_failed"
    assert "unrecognized --max-modle-len" in body["error"]["message"]


def test_the_start_has_what_is_left_of_startup_timeout(engine):
    handler = make(engine)
    handler.config = SimpleNamespace(startupTimeout=100)
    handler._created = time.monotonic() - 20  # TorchServe asked for the load 20 s ago
    assert 74 < handler.start_timeout_s() <= 100 - 20 - handler_module.LOAD_MARGIN_S
    handler._created = time.monotonic() - 99
    assert handler.load_time_left() < 0 and handler.start_timeout_s() == 1


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
        await handler._start_engine()
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

    assert asyncio.run(handler._start_engine()) is None
    assert engine.shut_down  # nothing left running
    assert handler.engine is None and type(handler).attempts == 1  # a ConfigError is final


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


# -- an engine that dies under a running worker ends the worker --------------------------


@pytest.fixture
def exits(monkeypatch):
    """The worker's exits (statuses), instead of ending the test process."""
    from tsvllm.worker import ts_worker

    statuses: list[int] = []
    monkeypatch.setattr(ts_worker, "exit_worker", statuses.append)
    monkeypatch.setattr(handler_module, "ENGINE_CHECK_S", 0.01)
    monkeypatch.setattr(handler_module, "EXIT_GRACE_S", 0.3)
    return statuses


def test_a_dead_engine_ends_the_worker_after_its_requests_got_503(handler, engine, exits):
    """TorchServe then restarts the worker: it is not READY until its new engine serves."""
    engine.delay_s = 30  # a request stuck on the dead engine
    threads = []
    engine.shutdown = lambda: threads.append(threading.current_thread())

    async def run():
        watch = asyncio.ensure_future(handler._watch_engine())
        stuck = asyncio.ensure_future(call(handler, "v1/completions", {"prompt": "x"}))
        await until(lambda: engine.running == 1, what="the request reaches the engine")
        engine.dead = True
        await until(lambda: handler.engine_died is not None, what="the death is seen")
        new = await call(handler, "v1/completions", {"prompt": "x"})  # 503 at once
        await asyncio.wait_for(watch, 5)
        return new, await stuck

    (status, body), (stuck, stuck_body) = asyncio.run(run())
    assert status == 503 and "the engine died; this worker restarts" in body["error"]["message"]
    assert stuck == 503, stuck_body  # ended within the grace, not left to its deadline
    assert exits == [handler_module.ENGINE_DIED_EXIT]
    assert threads and threads[0] is not threading.main_thread()  # shut down off the loop


def test_a_worker_whose_engine_runs_does_not_exit(handler, engine, exits):
    async def run():
        watch = asyncio.ensure_future(handler._watch_engine())
        answer = await call(handler, "v1/completions", {"prompt": "x"})
        await asyncio.sleep(0.1)  # ten checks of a running engine
        done = watch.done()
        watch.cancel()
        return answer, done

    (status, _), done = asyncio.run(run())
    assert status == 200 and not done and exits == []
