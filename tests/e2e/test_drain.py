"""SIGTERM while streams run: they all finish (or end cleanly), new requests get 503.

``tsvllm launch`` and the container entrypoint drain on SIGTERM (tsvllm.host.shutdown):
the workers answer new requests 503 with Retry-After, the running streams finish with
``[DONE]`` and exact usage, then everything stops and nothing is left in the session. With
a drain timeout shorter than the streams, they end with an error event and ``[DONE]``
and the exit status says the drain was not clean (3).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field

import httpx
import psutil
import pytest

from tests.e2e.test_entrypoint import Entrypoint
from tests.e2e.test_launch import GONE_WITHIN, Launch, session_left
from tsvllm.contract import OPENAI_BASE

STREAMS = 12
TOKENS = 400
LONG = 1500  # tokens: streams that last well over 10 s here
STOP_MARGIN = 30  # abort wait + stop, on top of the drain timeout


@dataclass
class Stream:
    """One streamed chat completion read in a thread: its events, usage, how it ended."""

    url: str
    max_tokens: int
    model: str
    events: list[dict] = field(default_factory=list)
    done: bool = False
    error: BaseException | None = None
    started: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": self.max_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            with httpx.stream("POST", self.url, json=body, timeout=300) as resp:
                assert resp.status_code == 200, resp.read()
                for line in resp.iter_lines():
                    self._line(line)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc
        finally:
            self.started.set()

    def _line(self, line: str) -> None:
        if not line.startswith("data: "):
            return
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            self.done = True
            return
        self.events.append(json.loads(data))
        self.started.set()

    @property
    def usage(self) -> dict | None:
        return next((e["usage"] for e in self.events if e.get("usage")), None)

    @property
    def errors(self) -> list[dict]:
        return [e["error"] for e in self.events if "error" in e]


def start_streams(url: str, *, model: str, max_tokens: int = TOKENS) -> list[tuple]:
    streams = [Stream(url, max_tokens, model) for _ in range(STREAMS)]
    threads = [threading.Thread(target=s.run, daemon=True) for s in streams]
    for t in threads:
        t.start()
    for s in streams:  # every stream runs (has a first event) before the signal
        assert s.started.wait(120), "a stream never started"
        assert s.error is None, s.error
    return list(zip(streams, threads, strict=True))


def join(running: list[tuple], *, timeout: float) -> list[Stream]:
    deadline = time.monotonic() + timeout
    for _, t in running:
        t.join(max(0.0, deadline - time.monotonic()))
    return [s for s, _ in running]


def request_after_sigterm(url: str, *, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(url, json=body, timeout=60)


@pytest.fixture
def launched(tmp_path, tiny_model):
    started: list[Launch] = []

    def run(*extra: str) -> Launch:
        started.append(Launch(tmp_path, tiny_model, "--disable_token_auth", *extra))
        started[-1].wait_for("ready.")
        return started[-1]

    yield run
    for la in started:
        la.kill()


def test_sigterm_drains_every_stream_and_refuses_new_requests(launched):
    la = launched()  # default drain timeout: 30 s
    url = f"{la.url}/chat/completions"
    session = la.proc.pid
    running = start_streams(url, model="launched")
    sent = time.monotonic()
    la.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    late = request_after_sigterm(url, model="launched")
    assert late.status_code == 503, late.text
    assert int(late.headers["Retry-After"]) > 0
    streams = join(running, timeout=120)
    code = la.proc.wait(timeout=max(1.0, 30 + STOP_MARGIN - (time.monotonic() - sent)))
    took = time.monotonic() - sent
    out = "\n".join(la.lines)
    for s in streams:
        assert s.error is None and s.done, (s.error, s.events[-3:], out)
        assert s.errors == [], s.errors
        assert s.usage is not None and s.usage["completion_tokens"] == TOKENS, s.usage
    assert code == 0, out
    assert "drain done in" in out and "draining: " in out, out
    assert session_left(session) == []
    shown = [ln for ln in la.lines if "drain" in ln or "stopped" in ln]
    print(f"drain + stop took {took:.1f} s; {shown}")


def test_a_drain_timeout_ends_the_streams_cleanly_and_exits_3(launched):
    la = launched("--drain-timeout", "1")
    url = f"{la.url}/chat/completions"
    session = la.proc.pid
    running = start_streams(url, model="launched", max_tokens=LONG)  # far longer than 1 s
    sent = time.monotonic()
    la.proc.send_signal(signal.SIGTERM)
    streams = join(running, timeout=120)
    code = la.proc.wait(timeout=max(1.0, 1 + STOP_MARGIN - (time.monotonic() - sent)))
    out = "\n".join(la.lines)
    ended = [s for s in streams if s.errors]
    for s in streams:
        assert s.error is None and s.done, (s.error, s.events[-3:], out)
    assert ended, "no stream was ended: they were not longer than the drain timeout"
    for s in ended:
        assert "error" in s.events[-1] or s.events[-1].get("usage"), s.events[-2:]
    assert code == 3, out
    assert "drain timeout: ending" in out, out
    assert session_left(session) == []
    print([ln for ln in la.lines if "drain" in ln or "ended" in ln or "stopped" in ln])


def test_the_entrypoint_drains_on_sigterm(tmp_path, tiny_model):
    tmp = tmp_path
    shutil.copytree(tiny_model, tmp / "mount" / "tiny-weights" / "1" / "weights")
    entry = Entrypoint(tmp, AZUREML_MODEL_DIR=str(tmp / "mount"))
    try:
        entry.wait_ready()
        url = entry.url + OPENAI_BASE + "/chat/completions"
        running = start_streams(url, model="tiny")
        tree = entry.tree()
        entry.proc.send_signal(signal.SIGTERM)
        streams = join(running, timeout=120)
        code = entry.proc.wait(timeout=30 + STOP_MARGIN)
        log = entry.log.read_text(errors="replace")
        for s in streams:
            assert s.error is None and s.done and s.errors == [], (s.error, s.events[-2:], log)
            assert s.usage["completion_tokens"] == TOKENS
        assert code == 0, log
        assert "drain done in" in log
        print([ln for ln in log.splitlines() if "drain" in ln or "stopped" in ln])
        _, alive = psutil.wait_procs(tree, timeout=GONE_WITHIN)
        assert alive == []
    finally:
        entry.stop()


def test_tsvllm_drain_drains_one_model_of_a_running_server(launched):
    """``tsvllm drain --model``: running streams finish, new requests get 503, the server
    keeps running (the operator unregisters or scales down next)."""
    import subprocess
    import sys

    la = launched()
    url = f"{la.url}/chat/completions"
    control = la.store / ".torchserve" / "control"
    # long enough to outlast the CLI's start on 2 busy cores
    running = start_streams(url, model="launched", max_tokens=LONG)
    out = subprocess.run(
        [sys.executable, "-m", "tsvllm.cli", "drain", "--control-dir", str(control)]
        + ["--model", "launched", "--timeout", "120"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "drained in" in out.stdout and "models/launched" in out.stdout, out.stdout
    assert re.search(r"draining: [1-9]\d* requests? running", out.stdout), out.stdout
    streams = join(running, timeout=60)
    for s in streams:
        assert s.error is None and s.done and s.errors == [], (s.error, s.events[-2:])
        assert s.usage["completion_tokens"] == LONG
    late = request_after_sigterm(url, model="launched")
    assert late.status_code == 503 and "Retry-After" in late.headers, late.text
    assert la.proc.poll() is None  # still serving (503s) until the operator acts
    print(out.stdout)
    la.sigterm_and_check_nothing_left()
    assert la.proc.returncode == 0
