"""The host gives up at once when the worker says its engine can never start.

A tiny HTTP server on 127.0.0.1 stands in for TorchServe's frontend: it answers the
readiness probe (``GET /predictions/<model>/<version>/v1/models``) with a fixed status and
body. TorchServe's process is a fake whose ``poll()`` says it is still running.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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
    """What the fake frontend answers, and the paths it was asked for."""

    def __init__(self) -> None:
        self.status = 500
        self.body = FAILED_BODY
        self.paths: list[str] = []
        self.port = 0


@pytest.fixture
def frontend() -> Iterator[Frontend]:
    state = Frontend()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.paths.append(self.path)
            data = state.body.encode()
            self.send_response(state.status)
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
    monkeypatch.setattr(ep, "prepare", lambda env: (Config(), tmp_path / "model-config.yaml"))
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
