"""The quick start's key keeps working for as long as its server runs.

README command 1 (scripts/quickstart.sh) used to print a request with the key of TorchServe's
own token auth, which TorchServe 0.12 lets expire (``token_expiration_min``, 60 minutes by
default); the same request then got a 400 ``InvalidKeyException``. The quick start now starts
its plain ``torchserve --start`` with the config :func:`write_handler_auth_config` writes
(TorchServe's token auth off, the management API on a Unix socket in a private folder) and
``TSVLLM_API_KEY_FILE`` naming the key file ``tsvllm key --new`` wrote: the handler checks the
key, which has no lifetime.

Here the same server on free ports, serving the tiny model, with TorchServe's key lifetime
set to 6 s. A bare TorchServe with its own token auth and the same lifetime shows that the
setting bites there (its key gets the frontend's 400 once expired) and that the fix
``tsvllm key`` names for it (TorchServe's token API) gives a key that works again. Every
server here is started as the quick start starts it (``torchserve --start``, which returns
at once) and stopped by the PID TorchServe wrote in its pid file.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import random
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import STARTUP_TIMEOUT, archive
from tsvllm.auth import inference_key
from tsvllm.cli import main as tsvllm
from tsvllm.host.launcher import write_handler_auth_config
from tsvllm.host.torchserve import Ports, ts_config_text

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("demo_requests", REPO / "scripts/demo_requests.py")
demo = importlib.util.module_from_spec(_spec)  # the quick start's readiness wait
_spec.loader.exec_module(demo)
#: TorchServe's key lifetime in these servers (token_expiration_min: minutes, a decimal)
LIFETIME_MIN = 0.1
LIFETIME_S = LIFETIME_MIN * 60


@dataclass
class Started:
    """A TorchServe started with ``torchserve --start`` in ``run`` (its cwd and TMPDIR)."""

    run: Path
    ports: Ports
    env: dict[str, str]
    started_at: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    def pid(self) -> int | None:
        """The frontend's PID, from the pid file ``torchserve --start`` writes in TMPDIR."""
        try:
            return int((self.run / "tmp" / ".model_server.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """End the frontend and every process under it (workers, engines), by PID."""
        pid = self.pid()
        if pid is None:
            return
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            root.terminate()  # as `torchserve --stop` does: the frontend stops its workers
        for proc in psutil.wait_procs(tree, timeout=30)[1]:  # then what is left, at once
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def torchserve_start(
    run: Path, *, config: Path, ports: Ports, store: Path, models: list[str], env=None
) -> Started:
    """``torchserve --start --ncs --model-store STORE [--models ...] --ts-config CONFIG`` as
    the quick start runs it, from ``run`` with a TMPDIR of its own (its pid file, vLLM's
    sockets); returns once the frontend has been spawned. ``ports``: the config's."""
    tmp = run / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    environ = {
        **os.environ,
        **(env or {}),
        "TMPDIR": str(tmp),
        "LOG_LOCATION": str(run / "logs"),
        "METRICS_LOCATION": str(run / "logs"),
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [str(Path(sys.executable).parent / "torchserve"), "--start", "--ncs"]
    cmd += ["--model-store", str(store), "--ts-config", str(config)]
    if models:
        cmd += ["--models", *models]
    with (run / "torchserve.out").open("ab") as log:
        subprocess.run(cmd, cwd=run, env=environ, stdout=log, stderr=log, check=True, timeout=60)
    return Started(run=run, ports=ports, env=environ, started_at=time.monotonic())


def request(url: str, *, key: str | None, method: str = "GET") -> tuple[int, dict]:
    """One request with a 5 s timeout: (status, JSON body)."""
    req = urllib.request.Request(url, method=method)
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def poll(what: str, answer, *, until, timeout: float = 30.0):
    """Ask ``answer()`` once every 0.2 s until ``until(result)``; the last result, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        result = answer()
        if until(result):
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s; last answer {result}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, tiny_model) -> Iterator[Started]:
    """The quick start's server, started first: its engine loads while the first test runs."""
    work = tmp_path_factory.mktemp("quickstart")
    store = work / "model_store"
    store.mkdir()
    archive("tiny-cpu.yaml", model=tiny_model, store=store, name="vllm")
    run = work / "run"
    run.mkdir()
    key_file = run / "key_file.json"
    # the quick start's two steps before `torchserve --start`
    subprocess.run(
        [sys.executable, "-m", "tsvllm.cli", "key", "--new", "--file", str(key_file)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    ports = Ports.free()
    config = write_handler_auth_config(
        run / ".tsvllm" / "quickstart",
        model_store=store,
        ports=ports,
        extra={
            "token_expiration_min": str(LIFETIME_MIN),  # would bite if TorchServe's auth were on
            "initial_worker_port": str(random.randrange(10_000, 60_000, 100)),
        },
    )
    server = torchserve_start(
        run,
        config=config,
        ports=ports,
        store=store,
        models=["vllm"],
        env={"TSVLLM_API_KEY_FILE": str(key_file)},
    )
    try:
        yield server
    finally:
        server.stop()


def test_torchserves_own_key_expires_to_a_400_and_the_named_fix_gives_a_working_key(
    quickstart, tmp_path
):
    """The setting bites where TorchServe checks keys, and ``tsvllm key`` names the way out.

    TorchServe 0.12 checks its keys in ``TokenAuthorizationHandler``, ahead of every
    inference endpoint, and answers a refused one with 400 ``InvalidKeyException``
    (``HttpRequestHandler``): no handler or plugin runs before it, so this body stays.
    """
    config = tmp_path / "config.properties"
    ports = Ports.free()
    config.write_text(
        ts_config_text(
            ports=ports,
            model_store=tmp_path,
            initial_worker_port=random.randrange(10_000, 60_000, 100),
            extra={"token_expiration_min": str(LIFETIME_MIN)},
        )
    )
    bare = torchserve_start(tmp_path, config=config, ports=ports, store=tmp_path, models=[])
    try:
        key_file = tmp_path / "key_file.json"
        predict = f"{bare.url}/predictions/none/1.0/v1/models"
        # TorchServe creates the file, then writes it: wait until it parses
        first = poll("TorchServe's key file", lambda: _json(key_file), until=bool, timeout=120)
        # past its lifetime, the key TorchServe wrote at start is refused with its own 400
        status, body = poll(
            "the first key's expiry",
            lambda: _ask(predict, first["inference"]["key"]),
            until=lambda answer: answer[0] == 400,
            timeout=120,
        )
        assert body["type"] == "InvalidKeyException"
        assert "expired" in body["message"] and "error" not in body  # not OpenAI's shape
        # tsvllm key says it expired and how to get a new one: TorchServe's token API
        with pytest.raises(ValueError, match="expired") as caught:
            inference_key(key_file)
        fix = next(ln for ln in str(caught.value).splitlines() if ln.strip().startswith("curl"))
        fix = fix.replace("127.0.0.1:8081", f"127.0.0.1:{ports.management}")
        subprocess.run(shlex.split(fix), check=True, capture_output=True, timeout=30)
        renewed = inference_key(key_file)
        assert renewed != first["inference"]["key"]
        status, body = _ask(predict, renewed)
        assert status == 404, body  # past the key check: there is no model "none"
    finally:
        bare.stop()


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ask(url: str, key: str) -> tuple[int, dict]:
    try:
        return request(url, key=key)
    except OSError as exc:  # the frontend not listening yet
        return 0, {"error": str(exc)}


@pytest.fixture(scope="module")
def served(quickstart) -> Started:
    """The quick start's server once its model serves (the quick start's own wait)."""
    url = f"{quickstart.url}/predictions/vllm/1.0/v1"
    demo.wait_ready(url, key_file=quickstart.run / "key_file.json", timeout=STARTUP_TIMEOUT)
    return quickstart


def test_the_printed_request_works_after_torchserves_key_lifetime(served, capsys):
    # the lifetime TorchServe's token auth would give the key has passed (the model's load
    # takes longer; if it did not, wait out the rest, with 20 s for the frontend to boot)
    time.sleep(max(0.0, served.started_at + LIFETIME_S + 20 - time.monotonic()))
    url = f"{served.url}/predictions/vllm/1.0/v1"
    # the key as the quick start reads it, and the request exactly as it prints it
    assert tsvllm(["key", "--file", str(served.run / "key_file.json")]) == 0
    key = capsys.readouterr().out.strip()
    script = (REPO / "scripts" / "quickstart.sh").read_text()
    printed = next(ln.strip() for ln in script.splitlines() if ln.strip().startswith("curl $URL"))
    cmd = shlex.split(printed.replace("$URL", url).replace("$KEY", key))
    out = subprocess.run(cmd + ["-sS"], capture_output=True, text=True, timeout=60, check=True)
    assert [m["id"] for m in json.loads(out.stdout)["data"]] == ["tiny"], out.stdout


def test_keys_are_the_handlers_openai_401s_that_name_the_fix(served, capsys):
    key_file = served.run / "key_file.json"
    url = f"{served.url}/predictions/vllm/1.0/v1/models"
    status, body = request(url, key=None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key", body
    # an operator gives a key a lifetime (TorchServe's own field): once over, a 401 says so
    data = json.loads(key_file.read_text())
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    data["keys"] = {"visitor": {"key": "visitor-key-1", "expiration time": past}}
    key_file.write_text(json.dumps(data))
    status, body = poll(
        "the expired key's 401",
        lambda: request(url, key="visitor-key-1"),
        until=lambda answer: "expired" in json.dumps(answer[1]),
    )
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    assert body["error"]["type"] == "AuthenticationError"
    assert "'visitor' expired at" in body["error"]["message"]
    assert "`tsvllm key`" in body["error"]["message"]
    # tsvllm key --new replaces the key while the server runs: the old one is told the fix
    old = data["inference"]["key"]
    assert tsvllm(["key", "--new", "--file", str(key_file)]) == 0
    new = capsys.readouterr().out.strip()
    status, body = poll(
        "the replaced key's 401",
        lambda: request(url, key=old),
        until=lambda answer: answer[0] == 401,
    )
    assert "incorrect API key provided" in body["error"]["message"]
    assert "`tsvllm key`" in body["error"]["message"]
    assert request(url, key=new)[0] == 200


def test_the_management_api_is_a_unix_socket_only_its_owner_reaches(served):
    run = served.run / ".tsvllm" / "quickstart"
    assert (run.stat().st_mode & 0o777) == 0o700
    with socket.socket() as s:  # nothing listens on the config's management TCP port
        assert s.connect_ex(("127.0.0.1", served.ports.management)) != 0
    conn = http.client.HTTPConnection("localhost", timeout=10)
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.settimeout(10)
    conn.sock.connect(str(run / "management.sock"))
    conn.request("GET", "/models")
    reply = conn.getresponse()
    assert reply.status == 200
    assert [m["modelName"] for m in json.loads(reply.read())["models"]] == ["vllm"]
    conn.close()
