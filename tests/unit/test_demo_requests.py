"""scripts/demo_requests.py --wait (the quick start's readiness wait) against a local HTTP server.

The quick start must stop with the reason, sending no request, when the model never becomes
ready: an engine that can never start, or a deadline that passes.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo_requests.py"
KEY = "k-123"


def _load():
    spec = importlib.util.spec_from_file_location("demo_requests", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load()


class Frontend:
    """A stand-in for TorchServe's inference API: answers each request with the next reply."""

    def __init__(self, replies: list[tuple[int, dict]]):
        self.replies = list(replies)
        self.requests: list[tuple[str, str, str | None]] = []
        frontend = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                frontend.requests.append(
                    (self.command, self.path, self.headers.get("Authorization"))
                )
                status, body = frontend.replies[0]
                if len(frontend.replies) > 1:
                    frontend.replies.pop(0)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/predictions/vllm/1.0/v1"

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.requests]


@pytest.fixture
def frontend(request) -> Iterator[Frontend]:
    fe = Frontend(request.param)
    thread = threading.Thread(target=fe.server.serve_forever, daemon=True)
    thread.start()
    yield fe
    fe.server.shutdown()
    fe.server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key_file.json"
    path.write_text(json.dumps({"inference": {"key": KEY}}))
    return path


def _error(status: int, message: str, code: str | None = None) -> tuple[int, dict]:
    return status, {"error": {"message": message, "type": "X", "param": None, "code": code}}


STARTING = _error(503, "the engine is starting (3 s of startupTimeout 600 s)")
NEVER = _error(500, "vLLM rejected the engine args: max_model_len 100000", "engine_start_failed")
READY = (200, {"object": "list", "data": [{"id": "smollm2"}]})


@pytest.mark.parametrize("frontend", [[STARTING, STARTING, NEVER]], indirect=True)
def test_an_engine_that_can_never_start_stops_the_wait_at_once_with_the_reason(
    frontend: Frontend, key_file: Path
):
    start = time.monotonic()
    with pytest.raises(demo.NotReady, match="never start: vLLM rejected the engine args"):
        demo.wait_ready(frontend.url, key_file=key_file, timeout=60, interval=0.01)
    assert time.monotonic() - start < 30  # not the 60 s deadline
    assert frontend.requests == [("GET", "/predictions/vllm/1.0/v1/models", f"Bearer {KEY}")] * 3


@pytest.mark.parametrize("frontend", [[STARTING]], indirect=True)
def test_a_model_still_starting_at_the_deadline_names_the_last_answer(
    frontend: Frontend, key_file: Path
):
    with pytest.raises(demo.NotReady, match=r"not ready after 0 s; last answer: HTTP 503: the e"):
        demo.wait_ready(frontend.url, key_file=key_file, timeout=0.3, interval=0.01)
    assert len(frontend.requests) >= 1


def test_no_key_file_and_no_server_names_the_key_file(tmp_path: Path):
    missing = tmp_path / "key_file.json"
    with pytest.raises(demo.NotReady, match=f"no key in {missing}"):
        demo.wait_ready("http://127.0.0.1:9/v1", key_file=missing, timeout=0.1, interval=0.01)


@pytest.mark.parametrize("frontend", [[STARTING, STARTING, READY]], indirect=True)
def test_a_ready_model_returns_the_key(frontend: Frontend, key_file: Path):
    assert demo.wait_ready(frontend.url, key_file=key_file, timeout=60, interval=0.01) == KEY
    assert len(frontend.requests) == 3


@pytest.mark.parametrize("frontend", [[NEVER]], indirect=True)
def test_main_exits_1_and_asks_nothing_when_the_model_never_becomes_ready(
    frontend: Frontend, key_file: Path, capsys: pytest.CaptureFixture[str]
):
    argv = ["--url", frontend.url, "--key-file", str(key_file), "--wait", "60"]
    assert demo.main(argv) == 1
    assert "the model never became ready: the engine can never start" in capsys.readouterr().err
    assert frontend.paths() == ["/predictions/vllm/1.0/v1/models"]  # no question was sent


WRONG_KEY = _error(401, "incorrect API key provided; run `tsvllm key`", "invalid_api_key")
#: TorchServe 0.12's own token auth refusing a key (wrong or expired): its body, not OpenAI's
TS_EXPIRED = (
    400,
    {
        "code": 400,
        "type": "InvalidKeyException",
        "message": "Token Authorization failed. Token either incorrect, expired, or not provided "
        "correctly",
    },
)


@pytest.mark.parametrize(
    ("frontend", "reason"),
    [
        ([STARTING, WRONG_KEY], "the server refused the key in .*: incorrect API key"),
        ([TS_EXPIRED], r"TorchServe's own token auth refused the key .* expired .*tsvllm key"),
    ],
    indirect=["frontend"],
)
def test_a_refused_key_stops_the_wait_at_once_and_says_how_to_get_the_current_one(
    frontend: Frontend, key_file: Path, reason: str
):
    start = time.monotonic()
    with pytest.raises(demo.NotReady, match=reason):
        demo.wait_ready(frontend.url, key_file=key_file, timeout=60, interval=0.01)
    assert time.monotonic() - start < 30  # not the 60 s deadline
