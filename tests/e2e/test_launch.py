"""`tsvllm launch` (python -m tsvllm.host.launcher): serves, authenticates, stops cleanly."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

GONE_WITHIN = 30.0


def free_port_block(size: int = 5) -> int:
    for _ in range(100):
        base = random.randrange(20_000, 40_000)
        try:
            socks = []
            for port in range(base, base + size):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def session_left(session: int) -> list[psutil.Process]:
    """Processes of the launcher's session (it leads it: start_new_session) still alive
    after GONE_WITHIN seconds."""
    procs = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == session:
                procs.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    _, alive = psutil.wait_procs(procs, timeout=GONE_WITHIN)
    return alive


class Launch:
    """The launcher as a user runs it, in the foreground, read line by line."""

    def __init__(self, tmp_path, model, *extra: str):
        self.port = free_port_block()
        self.store = tmp_path / "store"
        self.lines: list[str] = []
        cmd = [
            sys.executable,
            "-m",
            "tsvllm.host.launcher",
            "--model_id",
            str(model),
            "--model_name",
            "launched",
            "--model_store",
            str(self.store),
            "--port",
            str(self.port),
            *extra,
        ]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, needle: str, timeout: float = 900) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if needle in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"launcher never printed {needle!r}:\n" + "\n".join(self.lines))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/predictions/launched/1.0/v1"

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def sigterm_and_check_nothing_left(self) -> None:
        everything = self.tree()
        assert any("VLLM::" in " ".join(p.cmdline()) for p in everything)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        _, alive = psutil.wait_procs(everything, timeout=GONE_WITHIN)
        assert alive == [], [p.pid for p in alive]

    def kill(self) -> None:
        if self.proc.poll() is None:
            for p in reversed(self.tree()):
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass


@pytest.fixture
def launch(tmp_path, tiny_model):
    started = []

    def run(*extra: str) -> Launch:
        started.append(Launch(tmp_path, tiny_model, *extra))
        return started[-1]

    yield run
    for la in started:
        la.kill()


CHAT = {"model": "launched", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_launch_without_token_auth_serves_and_sigterm_leaves_nothing(launch):
    from openai import OpenAI

    la = launch("--disable_token_auth")
    la.wait_for("ready.")
    assert any("token auth is off" in line for line in la.lines)
    client = OpenAI(base_url=la.url, api_key="unused", max_retries=0, timeout=120)
    out = client.chat.completions.create(**CHAT)
    assert out.choices[0].message.role == "assistant"
    la.sigterm_and_check_nothing_left()
    assert not (la.store / "launched").exists()  # artifacts removed (no --keep-artifacts)


def test_launch_with_token_auth_needs_the_printed_key(launch):
    from openai import AuthenticationError, OpenAI

    la = launch()
    line = la.wait_for("inference key")
    key = line.split("inference key ", 1)[1].split(")", 1)[0]
    no_key = httpx.post(f"{la.url}/chat/completions", json=CHAT, timeout=60)
    assert no_key.status_code == 401, no_key.text
    assert no_key.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=la.url, api_key="wrong", max_retries=0).chat.completions.create(**CHAT)
    ok = OpenAI(base_url=la.url, api_key=key, max_retries=0, timeout=120)
    assert ok.chat.completions.create(**CHAT).choices[0].message.role == "assistant"
    # the management API is a Unix socket only its owner can reach
    sock = la.store / ".torchserve" / "management.sock"
    assert sock.is_socket() and not sock.stat().st_mode & 0o022
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as mgmt:
        assert mgmt.get("http://localhost/models").json()["models"][0]["modelName"] == "launched"
    la.sigterm_and_check_nothing_left()


def test_missing_model_path_is_a_clear_error(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tsvllm.host.launcher",
            "--model_id",
            str(tmp_path / "nope"),
            "--model_store",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "no model folder there" in out.stderr


def test_an_engine_that_can_never_start_stops_the_launcher_at_once_with_the_reason(launch):
    """vLLM rejects max_model_len 100000 for the tiny model (2,048 positions) only when the
    engine starts, inside the worker: no retry fixes that, so the worker gives up at once
    and the launcher prints vLLM's reason and stops, far sooner than --startup_timeout."""
    la = launch("--disable_token_auth", "--vllm_engine.max_model_len", "100000")
    session = la.proc.pid  # the launcher leads its own session (start_new_session)
    la.proc.wait(timeout=600)  # half of --startup_timeout (1200 s): it must not wait that out
    out = "\n".join(la.lines)
    assert la.proc.returncode == 1, out
    assert "the engine cannot start" in out and "max_model_len" in out, out
    assert "100000" in out, out

    alive = session_left(session)
    assert alive == [], [" ".join(p.cmdline()) for p in alive]
