"""Engine start failures: the host gives up at once when the worker says its engine can
never start, and a start that runs past its bound (``startupTimeout``) is ended, reported
and retried.

A tiny HTTP server on 127.0.0.1 stands in for TorchServe's frontend: it answers the
readiness probe (``GET /predictions/<model>/<version>/v1/models``) with a fixed status and
body. TorchServe's process is a fake whose ``poll()`` says it is still running.

The bounded start: vLLM's own wait for its engine is a synchronous loop that returns only
when an engine process it watches exits; here a fake of ``AsyncLLM.from_vllm_config`` spawns
a real child (``sleep``) and blocks in ``wait()`` on it (in the thread the start builds
AsyncLLM in), so only the watchdog can end the start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from tsvllm.errors import ENGINE_START_FAILED
from tsvllm.host import entrypoint as ep
from tsvllm.host import launcher
from tsvllm.host.torchserve import Ports, ServeError, TorchServe, engine_start_failure

REASON = "the engine cannot start: max_model_len 99999 exceeds the model's 2048"
FAILED_BODY = json.dumps(
    {
        "error": {
            "message": REASON,
            "type": "EngineStartError",
            "param": None,
            "code": ENGINE_START_FAILED,
        }
    }
)
LOADING_BODY = json.dumps({"code": 503, "type": "ServiceUnavailableException"})


class Frontend:
    """What the fake frontend answers, and the paths it was asked for (``/ping`` apart:
    tsvllm's frontend plugin answers it, 200 once the model has a READY worker)."""

    def __init__(self) -> None:
        self.status = 500
        self.body = FAILED_BODY
        self.paths: list[str] = []
        self.ping_status = 200
        self.pings = 0
        self.port = 0


@pytest.fixture
def frontend() -> Iterator[Frontend]:
    state = Frontend()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, data = state.status, state.body.encode()
            if self.path == "/ping":
                state.pings += 1
                status = state.ping_status
                data = json.dumps({"status": "Healthy" if status == 200 else "Unhealthy"})
                data = data.encode()
            else:
                state.paths.append(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class Running:
    """A TorchServe process that never exits on its own."""

    returncode = None

    def poll(self) -> None:
        return None


class FakeTorchServe(TorchServe):
    """The real probe and wait_ready against the fake frontend; start/stop only recorded."""

    def __init__(self, workdir: Path, port: int) -> None:
        super().__init__(
            workdir=workdir,
            model_store=workdir / "store",
            models=["tiny"],
            ports=Ports(port, port + 1, port + 2, port + 3, port + 4),
            auth="off",
        )
        self.stopped = 0

    def start(self) -> None:
        self.process = Running()  # type: ignore[assignment]

    def stop(self, *, timeout: float = 60) -> None:
        self.stopped += 1
        self.process = None


def test_wait_ready_raises_at_once_with_the_reason(frontend, tmp_path):
    ts = FakeTorchServe(tmp_path, frontend.port)
    ts.start()
    waits: list[float] = []
    start = time.monotonic()
    with pytest.raises(ServeError) as info:
        ts.wait_ready("tiny", timeout=30, on_wait=waits.append)
    assert time.monotonic() - start < 5  # not the 30 s startup timeout
    assert frontend.paths == ["/predictions/tiny/1.0/v1/models"]  # one probe was enough
    assert waits == []
    message = str(info.value)
    assert "'tiny'" in message  # names the model
    assert REASON in message  # the worker's reason, verbatim
    assert str(tmp_path / "logs") in message  # where the worker log is


def test_probe_raises_too(frontend, tmp_path):
    ts = FakeTorchServe(tmp_path, frontend.port)
    with pytest.raises(ServeError, match="max_model_len 99999"):
        ts.probe("tiny")


def test_a_503_while_loading_keeps_waiting_until_the_timeout(frontend, tmp_path):
    frontend.status, frontend.body = 503, LOADING_BODY
    ts = FakeTorchServe(tmp_path, frontend.port)
    ts.start()
    assert ts.probe("tiny") is False
    waits: list[float] = []
    start = time.monotonic()
    with pytest.raises(ServeError) as info:
        ts.wait_ready("tiny", timeout=1.5, on_wait=waits.append)
    assert time.monotonic() - start >= 1.5
    assert "not ready after 2s" in str(info.value)  # the timeout, not the engine failure
    assert "cannot start" not in str(info.value)
    assert len(frontend.paths) >= 3 and waits  # probed again and again


def test_no_request_is_sent_to_a_model_with_no_ready_worker(frontend, tmp_path):
    """It would wait in TorchServe's queue: ``/ping`` (503 until a worker is READY) first."""
    frontend.ping_status = 503
    frontend.status, frontend.body = 200, json.dumps({"object": "list", "data": []})
    ts = FakeTorchServe(tmp_path, frontend.port)
    ts.start()
    with pytest.raises(ServeError, match="not ready after 1s"):
        ts.wait_ready("tiny", timeout=1.2)
    assert frontend.pings >= 2 and frontend.paths == []
    frontend.ping_status = 200
    ts.wait_ready("tiny", timeout=5)
    assert frontend.paths == ["/predictions/tiny/1.0/v1/models"]


def test_a_200_is_ready(frontend, tmp_path):
    frontend.status, frontend.body = 200, json.dumps({"object": "list", "data": []})
    ts = FakeTorchServe(tmp_path, frontend.port)
    ts.start()
    ts.wait_ready("tiny", timeout=5)
    assert ts.probe("tiny") is True


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, FAILED_BODY, REASON),
        (503, FAILED_BODY, None),  # the code only counts on a 500
        (500, json.dumps({"error": {"message": "boom", "code": 500}}), None),
        (500, json.dumps({"code": 500, "type": "InternalServerException"}), None),
        (500, "Worker died.", None),  # TorchServe's own text
        (500, "[1, 2]", None),
        (500, json.dumps({"error": "engine_start_failed"}), None),
        (500, json.dumps({"error": {"code": ENGINE_START_FAILED}}), "the engine cannot start"),
    ],
)
def test_only_the_engine_start_reply_counts(status, body, expected):
    assert engine_start_failure(status, body) == expected


def test_launch_prints_the_reason_stops_torchserve_and_exits_1(
    frontend, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(launcher.signal, "signal", lambda *args: None)  # keep pytest's
    ts = FakeTorchServe(tmp_path, frontend.port)
    ready: list[bool] = []
    start = time.monotonic()
    code = launcher.serve_foreground(
        ts, model="tiny", startup_timeout=30, on_ready=lambda: ready.append(True), prog="tsvllm"
    )
    assert code == 1
    assert time.monotonic() - start < 5
    assert ts.stopped == 1 and ts.process is None
    assert ready == []
    err = capsys.readouterr().err
    assert f"tsvllm: model 'tiny': {REASON}" in err
    assert "loading the model" not in err


def test_the_container_entrypoint_stops_torchserve_and_exits_non_zero(
    frontend, tmp_path, monkeypatch, capsys
):
    class Config:
        startupTimeout = 30

        class handler:  # noqa: N801 - stands for ModelConfig.handler
            drain_timeout_s = None

    monkeypatch.setattr(launcher.signal, "signal", lambda *args: None)
    ts = FakeTorchServe(tmp_path, frontend.port)
    monkeypatch.setattr(ep, "prepare", lambda env, **kw: (Config(), tmp_path / "model-config.yaml"))
    monkeypatch.setattr(ep, "_server", lambda env, models: ts)
    frontend_model = "/predictions/vllm/1.0/v1/models"
    code = ep.main([], env={"TSVLLM_WORKDIR": str(tmp_path)})
    assert code != 0
    assert frontend.paths == [frontend_model]
    assert ts.stopped == 1 and ts.process is None
    assert f"{ep.PROG}: model 'vllm': {REASON}" in capsys.readouterr().err


def test_the_container_ready_probe_fails_with_the_reason(frontend, tmp_path, capsys):
    env = {"TSVLLM_WORKDIR": str(tmp_path), "PORT": str(frontend.port)}
    assert ep.main(["--probe", "ready"], env=env) == 1
    assert REASON in capsys.readouterr().err
    frontend.status, frontend.body = 200, "{}"
    assert ep.main(["--probe", "ready"], env=env) == 0


# -- a bounded engine start ------------------------------------------------------------------

ENGINE_2_NODES = {
    "enforce_eager": True,
    "tensor_parallel_size": 2,
    "nnodes": 2,
    "master_addr": "10.0.0.1",
    "master_port": 29500,
}


def _model_config(startup_timeout: int, **engine: object):
    from tsvllm.config import validate_model_config

    return validate_model_config(
        {
            "deviceType": "cpu",
            "asyncCommunication": True,
            "startupTimeout": startup_timeout,
            "handler": {
                "model_path": "/models/tiny",
                "served_model_name": ["tiny"],
                "vllm_engine_config": {"max_model_len": 512, **ENGINE_2_NODES, **engine},
            },
        }
    )


def _args(**over: object) -> argparse.Namespace:
    return argparse.Namespace(**{**ENGINE_2_NODES, **over})


def _new_children(before: set[int]) -> list[psutil.Process]:
    me = psutil.Process()
    return [p for p in me.children(recursive=True) if p.pid not in before and _alive(p)]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class FakeEngineArgs:
    """What the start reads of vLLM's ``AsyncEngineArgs``."""

    enable_log_requests = False
    aggregate_engine_logging = False
    disable_log_stats = True

    def create_engine_config(self, *, usage_context):
        return argparse.Namespace(shutdown_timeout=7)


def fake_async_llm(monkeypatch, build) -> None:
    """``AsyncLLM.from_vllm_config`` is ``build(**kwargs)``; engine args are faked."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    monkeypatch.setattr(AsyncLLM, "from_vllm_config", classmethod(lambda cls, **kw: build(**kw)))
    monkeypatch.setattr(
        AsyncEngineArgs, "from_cli_args", classmethod(lambda cls, args: FakeEngineArgs())
    )


@pytest.fixture
def blocking_vllm(monkeypatch):
    """vLLM's AsyncLLM construction, faked: it starts an "engine process" (a real child
    ``sleep``) and blocks until that process exits, then raises as vLLM's
    ``wait_for_engine_startup`` does (the child exits by itself after 60 s, so a broken
    watchdog fails the test instead of hanging it). Yields the children it started."""
    started: list[subprocess.Popen] = []

    def build(**kwargs):
        proc = subprocess.Popen(["sleep", "60"])  # a broken watchdog: a failure, not a hang
        started.append(proc)
        proc.wait()  # synchronous, like vLLM's zmq poll
        raise RuntimeError(f"Engine core initialization failed. Failed core proc(s): {proc.pid}")

    fake_async_llm(monkeypatch, build)
    yield started
    for proc in started:  # only if a test failed: never leave a sleep behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_start_timeout_message_names_the_worker_nodes_and_the_fix():
    from tsvllm.engine.vllm_engine import start_timeout_message

    two = start_timeout_message(_args(), 150)
    assert "did not start within 150 s (the model's startupTimeout)" in two
    assert "nnodes 2" in two and "10.0.0.1:29500" in two
    assert "tsvllm worker-node --config model-config.yaml --node-rank 1`" in two
    four = start_timeout_message(_args(nnodes=4, tensor_parallel_size=4), 60)
    assert "--node-rank 1..3" in four
    one = start_timeout_message(_args(nnodes=1), 60)
    assert "worker node" not in one and "did not start within 60 s (the model's startupT" in one


def test_the_watchdog_ends_the_processes_a_start_created_past_its_bound():
    from tsvllm.engine.start_watchdog import StartWatchdog

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    t0 = time.monotonic()
    watchdog = StartWatchdog(0.5, before=before)
    try:
        proc = subprocess.Popen(["sleep", "600"])  # the start's engine process
        proc.wait(timeout=60)  # what vLLM's wait does: returns only when it exits
    finally:
        watchdog.stop()
    assert watchdog.fired
    assert proc.returncode == -signal.SIGKILL
    assert 0.4 < time.monotonic() - t0 < 30  # ended by the bound, not the 600 s sleep
    assert _new_children(before) == []


def test_a_watchdog_stopped_in_time_ends_nothing():
    from tsvllm.engine.start_watchdog import StartWatchdog

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    watchdog = StartWatchdog(30, before=before)
    proc = subprocess.Popen(["sleep", "600"])  # a started engine's process: it must live
    try:
        watchdog.stop()
        assert not watchdog.fired and watchdog.killed == []
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


async def _ticking(work, gaps: list[float]) -> object:
    """``await work``; ``gaps`` gets how long the event loop went without running each time
    (whether the work returns or raises)."""
    last = time.monotonic()

    async def tick():
        nonlocal last
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.ensure_future(tick())
    try:
        return await work
    finally:
        ticker.cancel()


def test_a_start_past_its_bound_raises_the_timeout_and_leaves_nothing(blocking_vllm):
    from tsvllm.engine.base import EngineStartTimeout
    from tsvllm.engine.vllm_engine import VllmEngine

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    gaps: list[float] = []
    t0 = time.monotonic()
    with pytest.raises(EngineStartTimeout) as info:
        asyncio.run(_ticking(VllmEngine.start(_args(), timeout_s=1), gaps))
    took = time.monotonic() - t0
    assert 0.9 < took < 50  # ended by the bound, not by the "engine" exiting after 60 s
    # the event loop ran during the blocked start (the first gap: vLLM's imports, before it)
    assert len(gaps) > 10 and max(gaps[1:]) < 0.5
    assert info.value.timeout_s == 1
    message = str(info.value)
    assert "within 1 s (the model's startupTimeout)" in message and "10.0.0.1:29500" in message
    assert "worker-node" in message
    assert isinstance(info.value.__cause__, RuntimeError)  # vLLM's own failure, chained
    assert [p.returncode for p in blocking_vllm] == [-signal.SIGKILL]
    assert _new_children(before) == []


@pytest.mark.parametrize(
    "failure, raised",
    [  # a failure within the bound is not called a timeout; vLLM's config checks (raised
        # in the thread that builds AsyncLLM) are EngineArgsError, final
        (RuntimeError("Engine core initialization failed: out of memory"), RuntimeError),
        (ValueError("max_model_len 99999 exceeds the model's 2048"), "EngineArgsError"),
    ],
)
def test_a_start_failure_within_the_bound_is_vllms_own(monkeypatch, failure, raised):
    from tsvllm.engine import vllm_engine

    def build(**kwargs):
        raise failure

    fake_async_llm(monkeypatch, build)
    raised = getattr(vllm_engine, raised) if isinstance(raised, str) else raised
    with pytest.raises(raised, match=str(failure)[-10:]):
        asyncio.run(vllm_engine.VllmEngine.start(_args(), timeout_s=30))


class FakeAsyncLLM:
    """What :func:`engine_client` does with the AsyncLLM it built."""

    def __init__(self, kwargs: dict) -> None:
        self.kwargs = kwargs
        self.vllm_config = kwargs["vllm_config"]
        self.built_in = threading.get_ident()
        self.handler_started_in: int | None = None
        self.handler_loop = None
        self.mm_cache_reset = False
        self.shutdowns: list[float] = []

    def _run_output_handler(self) -> None:
        self.handler_started_in = threading.get_ident()
        self.handler_loop = asyncio.get_running_loop()  # raises outside a running loop

    async def reset_mm_cache(self) -> None:
        self.mm_cache_reset = True

    def shutdown(self, timeout=None) -> None:
        self.shutdowns.append(timeout)


def test_the_engine_client_is_built_in_a_thread_while_the_loop_runs(monkeypatch):
    """vLLM's AsyncLLM construction blocks (its wait for READY): in a thread, the event loop
    keeps running; the output handler is started on the loop; shut down on exit."""
    from tsvllm.engine.vllm_engine import engine_client

    built: list[FakeAsyncLLM] = []

    def build(**kwargs):
        time.sleep(1.0)  # the blocking wait for the EngineCore's READY
        built.append(FakeAsyncLLM(kwargs))
        return built[-1]

    fake_async_llm(monkeypatch, build)

    async def run():
        @contextlib.asynccontextmanager
        async def held():
            async with engine_client(FakeEngineArgs()) as client:
                assert client.shutdowns == []
                yield client

        async def enter():
            async with held() as client:
                return client, threading.get_ident(), asyncio.get_running_loop()

        return await _ticking(enter(), gaps)

    gaps: list[float] = []
    client, loop_thread, loop = asyncio.run(run())
    assert len(gaps) > 10 and max(gaps[1:]) < 0.5  # the loop ran during the 1 s build
    assert client.built_in != loop_thread
    assert client.handler_started_in == loop_thread and client.handler_loop is loop
    assert client.mm_cache_reset
    assert client.shutdowns == [7]  # vllm_config.shutdown_timeout, as vLLM does
    kwargs = client.kwargs
    assert kwargs["client_addresses"] == {} and kwargs["client_count"] == 1
    assert kwargs["client_index"] == 0 and kwargs["disable_log_stats"] is True


class ServingAsyncLLM(FakeAsyncLLM):
    """An AsyncLLM the rest of the start goes on with (vLLM's app is built on it)."""

    model_config = "the model config"
    errored = False

    async def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)


def test_vllms_app_is_built_in_a_thread_and_its_state_on_the_loop(monkeypatch):
    """``build_app`` is synchronous (vLLM's routers, their imports, middleware): it runs in a
    thread while the loop keeps running; ``init_app_state`` (a coroutine that binds vLLM's
    serving objects to the engine client) runs on the loop, on the app that was built."""
    from vllm.entrypoints.launchers import app as vllm_app
    from vllm.entrypoints.launchers.api_server import app_state

    from tsvllm.engine.vllm_engine import VllmEngine

    ran: dict[str, tuple] = {}

    def build_app(args, tasks, model_config):
        time.sleep(1.0)  # a slow build: the loop must keep running meanwhile
        ran["build_app"] = (threading.get_ident(), args, tasks, model_config)
        return argparse.Namespace(state=argparse.Namespace(), routes=[])

    async def init_app_state(client, state, args, tasks):
        ran["init_app_state"] = (threading.get_ident(), asyncio.get_running_loop(), client)
        state.openai_serving_chat = "chat"  # what vLLM builds for a generating model

    monkeypatch.setattr(vllm_app, "build_app", build_app)
    monkeypatch.setattr(app_state, "init_app_state", init_app_state)
    fake_async_llm(monkeypatch, lambda **kwargs: ServingAsyncLLM(kwargs))
    args = _args(nnodes=1)

    async def run():
        gaps: list[float] = []
        engine = await _ticking(VllmEngine.start(args), gaps)
        try:
            return engine, gaps, threading.get_ident(), asyncio.get_running_loop()
        finally:
            await engine._exit_stack.aclose()

    engine, gaps, loop_thread, loop = asyncio.run(run())
    built_in, built_args, tasks, model_config = ran["build_app"]
    assert built_in != loop_thread  # in a thread ...
    assert len(gaps) > 10 and max(gaps[1:]) < 0.5  # ... while the loop ran (1 s build)
    assert (built_args, tasks, model_config) == (args, ("generate",), "the model config")
    state_in, state_loop, client = ran["init_app_state"]
    assert (state_in, state_loop, client) == (loop_thread, loop, engine._client)
    assert engine.generates and client.shutdowns == [7]


def _call(handler, route: str, body=None):
    from tests.unit.conftest import make_context

    async def run():
        ctx = make_context(route)
        reply = await handler.handle([{"body": body}], ctx)
        return ctx.get_response_status(0)[0], json.loads(reply[0])

    return run()


def test_a_start_past_its_bound_fails_the_load_with_the_reason(blocking_vllm, monkeypatch):
    """The handler's own build_engine passes what is left of startupTimeout; the start
    blocks past it (the worker node is missing): the load fails (TorchServe restarts the
    worker) naming the worker nodes, and nothing of the start is left running."""
    from tsvllm.engine import vllm_engine
    from tsvllm.engine.base import EngineCannotStart, EngineStartTimeout
    from tsvllm.worker.handler import EngineLoadFailed, VLLMHandler

    monkeypatch.setattr(vllm_engine, "parse_engine_args", lambda argv: _args())
    real_start = vllm_engine.VllmEngine.start.__func__
    timeouts: list[float | None] = []

    async def start(cls, args, *, timeout_s=None):
        timeouts.append(timeout_s)
        return await real_start(cls, args, timeout_s=timeout_s)

    monkeypatch.setattr(vllm_engine.VllmEngine, "start", classmethod(start))
    handler = VLLMHandler()
    handler.config = _model_config(startup_timeout=2)

    with pytest.raises(EngineLoadFailed) as info:
        asyncio.run(handler._start_engine())
    message = str(info.value)
    assert timeouts == [1.0]  # half of startupTimeout: the load began just now
    assert "EngineStartTimeout" in message and "nnodes 2" in message
    assert "worker-node" in message and "10.0.0.1:29500" in message
    assert handler.engine is None
    assert [p.returncode for p in blocking_vllm] == [-signal.SIGKILL]
    assert not issubclass(EngineStartTimeout, EngineCannotStart)  # transient


def test_a_dead_multinode_engine_says_a_worker_node_may_have_gone():
    from tests.unit.conftest import FakeEngine
    from tsvllm.errors import EngineUnavailable
    from tsvllm.worker.handler import VLLMHandler

    handler = VLLMHandler()
    handler.config = _model_config(startup_timeout=150)
    handler.engine = FakeEngine()
    handler.engine.dead = True

    with pytest.raises(EngineUnavailable) as info:
        handler.serving_engine()
    message = str(info.value)
    assert message.startswith("the engine died; this worker restarts")
    assert "nnodes 2" in message and "worker node may have gone" in message
    assert "10.0.0.1:29500" in message and message.endswith("retry shortly")
    assert handler.engine_died is info.value  # every later request gets the same 503
