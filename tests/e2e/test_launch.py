"""`tsvllm launch` (python -m tsvllm.host.launcher): serves, authenticates, drains and stops
cleanly.

On SIGTERM the launcher drains (tsvllm.host.shutdown): the workers answer new requests 503
with Retry-After, the running streams finish with ``[DONE]`` and exact usage, then
everything stops and nothing is left in its session. With a drain timeout shorter than the
streams, they end with an error event and ``[DONE]`` and the exit status says the drain was
not clean (3). ``tsvllm drain --model`` drains one model of a running server, and
``--cancel`` undoes it.

Each class shares one launched server (an engine start costs a minute on 2 cores); its
tests run in file order and the last one stops the server with SIGTERM.
"""

from __future__ import annotations

import contextlib
import io
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.launched import Launch, session_left
from tests.e2e.streams import (
    LONG,
    STOP_MARGIN,
    TOKENS,
    finished_whole,
    join,
    poll_status,
    short_request,
    start_streams,
)
from tsvllm.bench.serve import bench_config
from tsvllm.config import dump_model_config

CONFIG = Path(__file__).parents[2] / "model_configs" / "tiny-cpu.yaml"
#: the null engine's steps per second for the keyed server: one token per stream per step
PACE = 100
CHAT = {"model": "launched", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def launched(tmp_path_factory, model, *extra: str) -> Iterator[Launch]:
    la = Launch(tmp_path_factory.mktemp("launch"), model, *extra)
    try:
        la.wait_for("ready.")
        yield la
    finally:
        la.kill()


def drain_cli(la: Launch, *args: str) -> tuple[int, str]:
    """``tsvllm drain --model launched ARGS`` on the server's control directory: exit code
    and output. Called in-process, so that the drain is asked while the streams surely run
    (a new interpreter's start on 2 busy cores once outlasted them)."""
    from tsvllm.cli import main

    control = la.store / ".torchserve" / "control"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["drain", "--control-dir", str(control), "--model", "launched", *args])
    return code, out.getvalue()


@pytest.fixture(scope="class")
def open_launch(tmp_path_factory, tiny_model) -> Iterator[Launch]:
    yield from launched(tmp_path_factory, tiny_model, "--disable-token-auth")


class TestWithoutTokenAuth:
    def test_launch_without_token_auth_serves(self, open_launch):
        from openai import OpenAI

        la = open_launch
        assert any("token auth is off" in line for line in la.lines)
        client = OpenAI(base_url=la.url, api_key="unused", max_retries=0, timeout=120)
        out = client.chat.completions.create(**CHAT)
        assert out.choices[0].message.role == "assistant"

    def test_sigterm_drains_every_stream_and_refuses_new_requests(self, open_launch):
        """The default drain timeout (30 s) outlasts the streams: all finish, exit 0, nothing
        of the launcher's session is left and its artifacts are removed."""
        la = open_launch
        url = f"{la.url}/chat/completions"
        session = la.proc.pid
        running = start_streams(url, model="launched")
        sent = time.monotonic()
        la.proc.send_signal(signal.SIGTERM)
        late = poll_status(url, 503, model="launched")  # the workers see the drain at once
        assert late.status_code == 503, late.text
        assert int(late.headers["Retry-After"]) > 0
        streams = join(running, timeout=120)
        code = la.proc.wait(timeout=max(1.0, 30 + STOP_MARGIN - (time.monotonic() - sent)))
        took = time.monotonic() - sent
        out = "\n".join(la.lines)
        finished_whole(streams, TOKENS, log=out)
        assert code == 0, out
        assert "drain done in" in out and "draining: " in out, out
        assert session_left(session) == []
        assert not (la.store / "launched").exists()  # artifacts removed (no --keep-artifacts)
        shown = [ln for ln in la.lines if "drain" in ln or "stopped" in ln]
        print(f"drain + stop took {took:.1f} s; {shown}")


@pytest.fixture(scope="class")
def keyed_launch(tmp_path_factory, tiny_model) -> Iterator[Launch]:
    """Token auth on; a drain timeout of 0 (end what runs at once), for the class's last
    test; and the bench's null engine at :data:`PACE` steps a second (the real TorchServe,
    worker, AsyncLLM and EngineCore; no forward pass), so that a LONG stream lasts 15 s
    here. Both drain tests need streams still running when the drain comes, and on an idle
    machine the tiny model finished 1,500-token streams in the engine within a second or
    two (the frontend was still sending them to their clients)."""
    cfg, _ = bench_config(CONFIG, model_dir=tiny_model, engine="null", null_tokens_per_s=PACE)
    cfg = cfg.model_copy(
        update={"handler": cfg.handler.model_copy(update={"served_model_name": ["launched"]})}
    )
    config = dump_model_config(cfg, tmp_path_factory.mktemp("keyed") / "model-config.yaml")
    yield from launched(
        tmp_path_factory, tiny_model, "--config", str(config), "--drain-timeout", "0"
    )


def key_of(la: Launch) -> str:
    line = la.wait_for("inference key")
    return line.split("inference key ", 1)[1].split(")", 1)[0]


class TestWithTokenAuth:
    def test_launch_with_token_auth_needs_the_printed_key(self, keyed_launch):
        from openai import AuthenticationError, OpenAI

        la = keyed_launch
        key = key_of(la)
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
            models = mgmt.get("http://localhost/models").json()["models"]
            assert models[0]["modelName"] == "launched"

    def test_tsvllm_drain_drains_one_model_of_a_running_server(self, keyed_launch):
        """``tsvllm drain --model``: running streams finish, new requests get 503, the server
        keeps running (the operator unregisters or scales down next); ``--cancel`` undoes
        the drain and the model serves again."""
        la = keyed_launch
        url = f"{la.url}/chat/completions"
        auth = {"Authorization": f"Bearer {key_of(la)}"}
        # long enough to outlast the CLI's start on 2 busy cores
        running = start_streams(url, model="launched", max_tokens=LONG, headers=auth)
        code, out = drain_cli(la, "--timeout", "120")
        assert code == 0, out
        assert "drained in" in out and "models/launched" in out, out
        assert re.search(r"draining: [1-9]\d* requests? running", out), out
        streams = join(running, timeout=60)
        finished_whole(streams, LONG)
        late = short_request(url, model="launched", headers=auth)
        assert late.status_code == 503 and "Retry-After" in late.headers, late.text
        assert la.proc.poll() is None  # still serving (503s) until the operator acts
        print(out)
        code, out = drain_cli(la, "--cancel")
        assert code == 0, out
        back = poll_status(url, 200, model="launched", headers=auth)
        assert back.status_code == 200, back.text

    def test_a_drain_timeout_ends_the_streams_cleanly_and_exits_3(self, keyed_launch):
        la = keyed_launch
        url = f"{la.url}/chat/completions"
        auth = {"Authorization": f"Bearer {key_of(la)}"}
        session = la.proc.pid
        running = start_streams(url, model="launched", max_tokens=LONG, headers=auth, count=4)
        sent = time.monotonic()
        la.proc.send_signal(signal.SIGTERM)
        streams = join(running, timeout=120)
        code = la.proc.wait(timeout=max(1.0, 1 + STOP_MARGIN - (time.monotonic() - sent)))
        out = "\n".join(la.lines)
        ended = [s for s in streams if s.errors]
        for s in streams:
            assert s.error is None and s.done, (s.error, s.events[-3:], out)
        assert ended, f"no stream was ended: they were not longer than the drain timeout\n{out}"
        for s in ended:
            assert "error" in s.events[-1] or s.events[-1].get("usage"), s.events[-2:]
        assert code == 3, out
        assert "drain timeout: ending" in out, out
        assert session_left(session) == []
        print([ln for ln in la.lines if "drain" in ln or "ended" in ln or "stopped" in ln])


def test_missing_model_path_is_a_clear_error(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tsvllm.host.launcher",
            "--model-id",
            str(tmp_path / "nope"),
            "--model-store",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "no model folder there" in out.stderr


def test_an_engine_that_can_never_start_stops_the_launcher_at_once_with_the_reason(
    tmp_path, tiny_model
):
    """vLLM rejects max_model_len 100000 for the tiny model (2,048 positions) only when the
    engine starts, inside the worker: no retry fixes that, so the worker gives up at once
    and the launcher prints vLLM's reason and stops, far sooner than --startup_timeout."""
    # ts.llm_launcher's spellings (aliases of --disable-token-auth, --vllm-engine.*)
    never = ("--vllm_engine.max_model_len", "100000")
    la = Launch(tmp_path, tiny_model, "--disable_token_auth", *never)
    try:
        session = la.proc.pid  # the launcher leads its own session (start_new_session)
        la.proc.wait(timeout=600)  # half of --startup_timeout (1200 s): it must not wait that out
        out = "\n".join(la.lines)
        assert la.proc.returncode == 1, out
        assert "the engine cannot start" in out and "max_model_len" in out, out
        assert "100000" in out, out
        alive = session_left(session)
        assert alive == [], [" ".join(p.cmdline()) for p in alive]
    finally:
        la.kill()
