"""tsvllm scale (tsvllm.host.scale): a scale-down drains only the workers TorchServe removes,
then scales; the worker side is the real DrainWatch, the management API a stand-in."""

from __future__ import annotations

import http.server
import json
import os
import socketserver
import threading
from pathlib import Path

import pytest

from tests.unit.conftest import wait_until
from tsvllm import drain
from tsvllm.cli import main
from tsvllm.host import scale as sc
from tsvllm.worker.drain_watch import DrainWatch

KEPT = 1  # a pid that is not this process: the kept worker (it must never drain)


class Api:
    """TorchServe's management API as tsvllm scale uses it: describe, scale."""

    def __init__(self, pids: list[int], *, put_status: int = 200):
        self.pids = pids
        self.put_status = put_status
        self.puts: list[tuple[str, int]] = []
        self.on_put = lambda: None

    def workers(self, model):
        return [{"pid": pid, "status": "READY"} for pid in self.pids]

    def set_workers(self, model, workers):
        self.on_put()
        self.puts.append((model, workers))
        if self.put_status == 200:
            self.pids = self.pids[:workers]
        return self.put_status, "{}"


class Worker:
    """This process as the leaving worker: a DrainWatch polled in a thread."""

    def __init__(self, directory: Path, *, running: int):
        self.running = running
        self.watch = DrainWatch(
            directory, model="m", running=lambda: self.running, on_abort=self.abort
        )
        self.aborted = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def abort(self):
        self.aborted = True
        self.running = 0

    def _poll(self):
        while not self._stop.is_set():
            self.watch.poll()
            self._stop.wait(drain.POLL_S / 2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(sc, "FLUSH_S", 0.0)


def run(server, api, *, workers=1, timeout_s=30.0):
    said: list[str] = []
    code = sc.scale(
        server, model="m", workers=workers, timeout_s=timeout_s, say=said.append, api=api
    )
    return code, said


def test_a_scale_down_drains_the_removed_worker_waits_for_it_then_scales(tmp_path):
    api = Api([KEPT, os.getpid()])
    server = sc.Server(management="unused", control_dir=tmp_path)
    with Worker(tmp_path, running=2) as worker:
        seen = {}

        def finish_later():  # the two requests end while the drain waits
            seen["draining"] = worker.watch.draining
            worker.running = 0

        threading.Timer(0.5, finish_later).start()
        api.on_put = lambda: seen.setdefault("draining at the put", worker.watch.draining)
        code, said = run(server, api)
    assert code == sc.EXIT_CLEAN, said
    assert seen == {"draining": True, "draining at the put": True}
    assert api.puts == [("m", 1)] and not worker.aborted
    assert not (tmp_path / f"drain-pid-{KEPT}").exists()  # the kept worker never drained
    assert not list(tmp_path.glob("*-pid-*"))  # the drain files are gone


def test_requests_still_running_at_the_timeout_are_ended(tmp_path):
    api = Api([KEPT, os.getpid()])
    server = sc.Server(management="unused", control_dir=tmp_path)
    with Worker(tmp_path, running=1) as worker:
        code, said = run(server, api, timeout_s=0.5)
    assert code == sc.EXIT_REQUESTS_ENDED, said
    assert worker.aborted and api.puts == [("m", 1)]
    assert any("drain timeout: ending 1 request" in line for line in said), said
    assert not list(tmp_path.glob("*-pid-*"))


def test_a_failed_scale_down_lets_the_drained_worker_serve_again(tmp_path):
    api = Api([KEPT, os.getpid()], put_status=500)
    server = sc.Server(management="unused", control_dir=tmp_path)
    seen = {}
    with Worker(tmp_path, running=0) as worker:
        api.on_put = lambda: seen.setdefault("draining at the put", worker.watch.draining)
        code, said = run(server, api)
        wait_until(lambda: not worker.watch.draining, what="the worker takes requests again")
    assert code == sc.EXIT_FAILED and api.pids == [KEPT, os.getpid()]
    assert seen == {"draining at the put": True}
    assert any("take requests again" in line for line in said), said


def test_a_worker_replaced_during_the_drain_stops_the_scale_down(tmp_path):
    """TorchServe restarted the leaving worker (a new pid, not draining): nothing removed."""
    api = Api([KEPT, os.getpid()])
    server = sc.Server(management="unused", control_dir=tmp_path)
    with Worker(tmp_path, running=0):
        replaced = iter([[KEPT, os.getpid()], [KEPT, 99999]])
        api.workers = lambda model: [{"pid": pid} for pid in next(replaced)]
        code, said = run(server, api)
    assert code == sc.EXIT_FAILED and api.puts == []
    assert any("workers changed during the drain" in line for line in said), said
    assert not list(tmp_path.glob("*-pid-*"))


def test_a_worker_that_does_not_report_stops_the_scale_down(tmp_path, monkeypatch):
    monkeypatch.setattr(sc, "SILENT_S", 0.3)
    api = Api([KEPT, os.getpid()])
    code, said = run(sc.Server(management="unused", control_dir=tmp_path), api)
    assert code == sc.EXIT_FAILED and api.puts == []
    assert any("report no status" in line for line in said), said


def test_a_scale_down_without_a_control_dir_says_what_it_needs():
    api = Api([KEPT, os.getpid()])
    with pytest.raises(sc.ScaleError, match="TSVLLM_CONTROL_DIR"):
        run(sc.Server(management="unused", control_dir=None), api)
    assert api.puts == []


def test_a_scale_up_only_asks_the_management_api(tmp_path):
    api = Api([KEPT])
    code, _ = run(sc.Server(management="unused", control_dir=None), api, workers=2)
    assert code == sc.EXIT_CLEAN and api.puts == [("m", 2)]


def test_the_server_is_found_from_its_workdir(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:8080\nmanagement_address=unix:{tmp_path}/m.sock\n"
    )
    (tmp_path / "key_file.json").write_text(json.dumps({"management": {"key": "secret"}}))
    server = sc.find_server(workdir=str(tmp_path), management=None, control_dir=None, environ={})
    assert server == sc.Server(f"unix:{tmp_path}/m.sock", tmp_path / "control", "secret")
    env = {"TSVLLM_WORKDIR": str(tmp_path.parent)}
    (tmp_path.parent / "ts").mkdir()
    (tmp_path.parent / "ts" / "config.properties").write_text("management_address=http://h:1\n")
    found = sc.find_server(workdir=None, management=None, control_dir=None, environ=env)
    assert found.management == "http://h:1" and found.control_dir is None


class _Handler(http.server.BaseHTTPRequestHandler):
    calls: list[tuple[str, str, str | None]] = []

    def _reply(self):
        self.calls.append((self.command, self.path, self.headers.get("Authorization")))
        body = json.dumps([{"workers": [{"pid": 7}, {"pid": 8}]}]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = _reply

    def address_string(self):
        return "unix"

    def log_message(self, *args):
        pass


def test_the_management_api_on_a_unix_socket(tmp_path):
    path = str(tmp_path / "m.sock")
    with socketserver.UnixStreamServer(path, _Handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            api = sc.ManagementApi(f"unix:{path}", key="k", timeout_s=10)
            assert [w["pid"] for w in api.workers("m")] == [7, 8]
            assert api.set_workers("m", 1)[0] == 200
        finally:
            httpd.shutdown()
    assert _Handler.calls == [
        ("GET", "/models/m", "Bearer k"),
        ("PUT", "/models/m?min_worker=1&max_worker=1&synchronous=true", "Bearer k"),
    ]


def test_the_command_line_says_which_server_it_needs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TSVLLM_WORKDIR", raising=False)
    assert main(["scale", "--model", "m", "--workers", "1"]) == 2
    assert "--workdir" in capsys.readouterr().err
