"""The container entrypoint on CPU, as Azure ML and Vertex AI would start it.

Each class starts ``python -m tsvllm.host.entrypoint`` (real TorchServe + real vLLM, tiny model)
with a platform's environment, talks to it with the official ``openai`` client and plain
HTTP, and ends it with SIGTERM, checking that no process it started survives (on Azure ML's,
while streams run: it drains them first). Servers bind
127.0.0.1 (TSVLLM_BIND), not the container's 0.0.0.0.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.e2e.launched import GONE_WITHIN, free_port_block
from tests.e2e.streams import STOP_MARGIN, TOKENS, finished_whole, join, start_streams
from tsvllm.contract import (
    LIVENESS_ROUTE,
    OPENAI_BASE,
    READINESS_ROUTE,
    VERTEX_PREDICT_ROUTE,
)

STARTUP = 900
VLLM_ARGS = "--max-model-len 2048 --enforce-eager --max-num-seqs 16 --dtype bfloat16"


class Entrypoint:
    """The entrypoint in the foreground, as a container runtime runs it."""

    def __init__(self, tmp: Path, *, port_var: str = "PORT", **env: str):
        self.port = free_port_block()
        self.log = tmp / "entrypoint.log"
        self.env = {
            **os.environ,
            port_var: str(self.port),
            "TSVLLM_BIND": "127.0.0.1",  # tests never listen beyond loopback
            "TSVLLM_WORKDIR": str(tmp / "work"),
            "TSVLLM_DEVICE": "cpu",
            "SERVED_MODEL_NAME": "tiny",
            "VLLM_ARGS": VLLM_ARGS,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "TSVLLM_STARTUP_TIMEOUT": str(STARTUP),
            "TSVLLM_DISABLE_TOKEN_AUTH": "1",  # both platforms authenticate
            **env,
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tsvllm.host.entrypoint"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP
        while time.monotonic() < deadline:
            if "tsvllm-entrypoint: ready." in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(1)
        raise AssertionError(f"entrypoint not ready:\n{self.log.read_text(errors='replace')}")

    def probe(self, kind: str) -> int:
        return subprocess.run(
            [sys.executable, "-m", "tsvllm.host.entrypoint", "--probe", kind],
            env=self.env,
            timeout=60,
            check=False,
        ).returncode

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> list[int]:
        """SIGTERM, as a container runtime sends it; returns the PIDs still alive after."""
        everything = self.tree()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
        _, alive = psutil.wait_procs(everything, timeout=GONE_WITHIN)
        for p in alive:  # only what this test started, by PID
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return [p.pid for p in alive]


def started(entry: Entrypoint) -> Iterator[Entrypoint]:
    try:
        entry.wait_ready()
        yield entry
    finally:
        entry.stop()


def chat(entry: Entrypoint) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=entry.url + OPENAI_BASE, api_key="unused", max_retries=0, timeout=120)
    out = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert out.choices[0].message.role == "assistant"
    assert out.usage.completion_tokens >= 1


@pytest.fixture(scope="class")
def azure(tmp_path_factory, tiny_model) -> Iterator[Entrypoint]:
    tmp = tmp_path_factory.mktemp("azure")
    shutil.copytree(tiny_model, tmp / "mount" / "tiny-weights" / "1" / "weights")
    yield from started(Entrypoint(tmp, AZUREML_MODEL_DIR=str(tmp / "mount")))


class TestAzureML:
    """AZUREML_MODEL_DIR points at the mount; the model folder is somewhere under it."""

    def test_openai_chat(self, azure):
        chat(azure)

    def test_liveness_and_readiness_routes(self, azure):
        assert httpx.get(azure.url + LIVENESS_ROUTE, timeout=30).status_code == 200
        models = httpx.get(azure.url + READINESS_ROUTE, timeout=30)
        assert models.status_code == 200
        assert [m["id"] for m in models.json()["data"]] == ["tiny"]
        assert azure.probe("ready") == 0 and azure.probe("alive") == 0

    def test_only_inference_is_served(self, azure):
        """Management and metrics answer on loopback (or their Unix socket) and nowhere else:
        a TCP connect to their ports on a non-loopback address of this machine is refused."""
        listening = {c.laddr.port for p in azure.tree() for c in _listening(p)}
        assert azure.port in listening
        props = _properties(Path(azure.env["TSVLLM_WORKDIR"]) / "ts" / "config.properties")
        management, metrics = props["management_address"], props["metrics_address"]
        # they do answer where they should, so the refusals below mean something
        if management.startswith("unix:"):
            transport = httpx.HTTPTransport(uds=management.removeprefix("unix:"))
            with httpx.Client(transport=transport) as client:
                models = client.get("http://localhost/models", timeout=30)
            tcp_ports = {"metrics": _port(metrics)}
        else:
            models = httpx.get(f"{_loopback(management)}/models", timeout=30)
            tcp_ports = {"management": _port(management), "metrics": _port(metrics)}
        assert models.status_code == 200, models.text
        assert [m["modelName"] for m in models.json()["models"]] != []
        scraped = httpx.get(f"{_loopback(metrics)}/metrics", timeout=30)
        assert scraped.status_code == 200
        with non_loopback_ipv4() as address:
            for name, port in tcp_ports.items():
                assert port in listening, (name, port, listening)
                assert _refused(address, port), f"{name} port {port} answers on {address}"
            # nothing of the tree listens beyond loopback but the inference port (on
            # 127.0.0.1 here, as TSVLLM_BIND says: no wildcard or other address at all)
            outside = {
                (c.laddr.ip, c.laddr.port)
                for p in azure.tree()
                for c in _listening(p)
                if not _is_loopback(c.laddr.ip)
            }
            assert outside == set(), outside

    def test_sigterm_drains_every_stream_and_leaves_nothing(self, azure):
        url = azure.url + OPENAI_BASE + "/chat/completions"
        running = start_streams(url, model="tiny")
        tree = azure.tree()
        azure.proc.send_signal(signal.SIGTERM)
        streams = join(running, timeout=120)
        code = azure.proc.wait(timeout=30 + STOP_MARGIN)
        log = azure.log.read_text(errors="replace")
        finished_whole(streams, TOKENS, log=log)
        assert code == 0, log
        assert "drain done in" in log
        print([ln for ln in log.splitlines() if "drain" in ln or "stopped" in ln])
        _, alive = psutil.wait_procs(tree, timeout=GONE_WITHIN)
        assert alive == []
        assert azure.stop() == []


def _listening(proc: psutil.Process) -> list:
    try:
        return [c for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _is_loopback(ip: str) -> bool:
    """Loopback, also as an IPv4-mapped IPv6 address (Java's sockets show ::ffff:127.0.0.1)."""
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _properties(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(ln.split("=", 1) for ln in lines if "=" in ln and not ln.startswith("#"))


def _port(address: str) -> int:
    port = urlsplit(address).port
    assert port is not None, address
    return port


def _loopback(address: str) -> str:
    """``http://HOST:PORT`` reached over loopback (a wildcard bind answers there too)."""
    return f"http://127.0.0.1:{_port(address)}"


def _refused(address: str, port: int) -> bool:
    """True if a TCP connect to ``address:port`` is refused (a timeout is not a refusal)."""
    try:
        with socket.create_connection((address, port), timeout=10):
            return False
    except ConnectionRefusedError:
        return True


TEST_IF = "tsvllmtest0"
TEST_ADDRESS = "10.231.0.1"


@contextlib.contextmanager
def non_loopback_ipv4() -> Iterator[str]:
    """A non-loopback IPv4 address of this machine; with none, one on an interface created
    for the test (a dummy, or a veth pair where the kernel has no dummy driver; needs root,
    as in CI) and removed afterwards, also when the test fails."""
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not _is_loopback(a.address):
                yield a.address
                return
    ip = shutil.which("ip") or "ip"
    made = subprocess.run([ip, "link", "add", TEST_IF, "type", "dummy"], check=False)
    if made.returncode != 0:
        peer = ["peer", "name", TEST_IF + "p"]
        subprocess.run([ip, "link", "add", TEST_IF, "type", "veth", *peer], check=True)
    try:
        subprocess.run([ip, "addr", "add", f"{TEST_ADDRESS}/24", "dev", TEST_IF], check=True)
        subprocess.run([ip, "link", "set", TEST_IF, "up"], check=True)
        yield TEST_ADDRESS
    finally:
        subprocess.run([ip, "link", "del", TEST_IF], check=False)  # takes a veth peer along


@pytest.fixture(scope="class")
def fake_gcs(tiny_model) -> Iterator[str]:
    """A GCS emulator on loopback holding the tiny model under gs://models/tiny."""
    from gcp_storage_emulator.server import create_server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    port = free_port_block(1)
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="models")
    server.start()
    host = f"http://127.0.0.1:{port}"
    try:
        with pytest.MonkeyPatch.context() as mp:  # restores any value it had before
            mp.setenv("STORAGE_EMULATOR_HOST", host)  # the client reads it when it is built
            client = storage.Client(project="test", credentials=AnonymousCredentials())
            bucket = client.bucket("models")
            for path in sorted(p for p in Path(tiny_model).rglob("*") if p.is_file()):
                bucket.blob(f"tiny/{path.relative_to(tiny_model)}").upload_from_filename(str(path))
        yield host
    finally:
        server.stop()


@pytest.fixture(scope="class")
def vertex(tmp_path_factory, fake_gcs) -> Iterator[Entrypoint]:
    tmp = tmp_path_factory.mktemp("vertex")
    entry = Entrypoint(
        tmp,
        port_var="AIP_HTTP_PORT",
        AIP_PREDICT_ROUTE=VERTEX_PREDICT_ROUTE,
        AIP_HEALTH_ROUTE=READINESS_ROUTE,
        AIP_STORAGE_URI="gs://models/tiny",
        STORAGE_EMULATOR_HOST=fake_gcs,
    )
    yield from started(entry)


class TestVertexAI:
    """AIP_* variables as Vertex AI sets them; the weights come from a (fake) gs:// bucket."""

    def test_weights_were_downloaded_from_gcs(self, vertex):
        cache = Path(vertex.env["TSVLLM_WORKDIR"]) / "models"
        assert list(cache.rglob("config.json")), "nothing downloaded"
        assert "downloading gs://models/tiny" in vertex.log.read_text()

    def test_envelope_with_two_instances_is_answered_in_order(self, vertex):
        body = {
            "instances": [{"prompt": "one", "max_tokens": 3}, {"prompt": "two", "max_tokens": 7}],
            "parameters": {"temperature": 0, "ignore_eos": True},
        }
        r = httpx.post(vertex.url + vertex.env["AIP_PREDICT_ROUTE"], json=body, timeout=120)
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        assert [p["object"] for p in predictions] == ["text_completion"] * 2
        assert [p["usage"]["completion_tokens"] for p in predictions] == [3, 7]

    def test_chat_request_format(self, vertex):
        body = {
            "instances": ["hi", {"messages": [{"role": "user", "content": "yo"}]}],
            "parameters": {"@requestFormat": "chatCompletions", "max_tokens": 2},
        }
        r = httpx.post(vertex.url + vertex.env["AIP_PREDICT_ROUTE"], json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert [p["object"] for p in r.json()["predictions"]] == ["chat.completion"] * 2

    def test_health_route_and_openai_chat(self, vertex):
        assert httpx.get(vertex.url + vertex.env["AIP_HEALTH_ROUTE"], timeout=30).status_code == 200
        chat(vertex)

    def test_sigterm_leaves_nothing(self, vertex):
        assert vertex.stop() == []


def test_wrong_vertex_route_stops_before_starting_anything(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tsvllm.host.entrypoint"],
        env={
            **os.environ,
            "AIP_PREDICT_ROUTE": "/predict",
            "MODEL_PATH": str(tmp_path),
            "TSVLLM_WORKDIR": str(tmp_path / "w"),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "AIP_PREDICT_ROUTE=/predict" in out.stderr and VERTEX_PREDICT_ROUTE in out.stderr
