"""The engines' vllm:* series: each worker writes its labelled file, the host serves them
merged with TorchServe's own metrics on one scrape endpoint."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import httpx

from tsvllm.host import metrics_proxy
from tsvllm.host.metrics_proxy import MetricsProxy, merge, worker_texts
from tsvllm.metrics_files import METRICS_DIR_ENV
from tsvllm.worker import engine_metrics
from tsvllm.worker.engine_metrics import EngineMetrics, labels_for, relabel, worker_id

VLLM_TEXT = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 123.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 2.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="tiny"} 64.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="tiny"} 0.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny"} 4.0
# HELP http_requests_total Total number of requests by method, status and handler.
# TYPE http_requests_total counter
http_requests_total{handler="/v1/models"} 1.0
"""

TS_TEXT = """\
# HELP ts_inference_requests_total Total number of inference requests.
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{uuid="x",model_name="a",model_version="default",} 3.0
# HELP PromptTokens Prompt tokens
# TYPE PromptTokens counter
PromptTokens{ModelName="a",Level="Model",Hostname="h",} 12.0
"""

LABELS = {"ts_model": "a", "ts_version": "1.0", "ts_worker": "W-9000"}


def test_relabel_keeps_only_vllm_families_and_adds_the_labels_to_every_sample():
    text = relabel(VLLM_TEXT, LABELS)
    assert "python_gc" not in text and "http_requests_total" not in text
    assert text.count("# HELP ") == 3 and text.count("# TYPE ") == 3
    samples = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert len(samples) == 4
    assert all(ln.startswith("vllm:") for ln in samples)
    assert all(
        '{ts_model="a",ts_version="1.0",ts_worker="W-9000",engine="0"' in ln for ln in samples
    )
    assert samples[1].endswith("} 64.0")


def test_relabel_of_a_sample_without_labels_and_with_odd_values():
    text = relabel("vllm:x 1.0\nvllm:y{} 2\n", {"ts_model": 'a"b\\c\nd'})
    assert text.splitlines() == [
        'vllm:x{ts_model="a\\"b\\\\c\\nd"} 1.0',
        'vllm:y{ts_model="a\\"b\\\\c\\nd"} 2',
    ]
    assert relabel("other 1\n", LABELS) == ""


def test_worker_id_is_torchserves_worker_name_else_the_pid():
    argv = [
        "ts/model_service_worker.py",
        "--sock-type",
        "unix",
        "--sock-name",
        "/tmp/.ts.sock.9012",
    ]
    assert worker_id(argv) == "W-9012"
    assert worker_id(["w.py", "--sock-type", "tcp", "--port", "9100"]) == "W-9100"
    assert worker_id(["w.py"], pid=42) == "pid-42"


def test_labels_come_from_the_context():
    ctx = SimpleNamespace(
        model_name="a", manifest={"model": {"modelName": "a", "modelVersion": "2.0"}}
    )
    labels = labels_for(ctx)
    assert (labels["ts_model"], labels["ts_version"]) == ("a", "2.0")
    assert labels["ts_worker"]


class FakeEngine:
    dead = False

    def metrics_text(self) -> str:
        return VLLM_TEXT


def test_the_file_is_written_while_the_engine_serves_and_removed_otherwise(tmp_path):
    holder = SimpleNamespace(engine=None)
    writer = EngineMetrics(tmp_path, engine=lambda: holder.engine, labels=LABELS, pid=4242)
    assert writer.write_once() is False and not writer.path.exists()
    holder.engine = FakeEngine()
    assert writer.write_once() is True
    assert writer.path.name == "worker-4242.prom"
    assert 'ts_worker="W-9000"' in writer.path.read_text()
    holder.engine.dead = True  # a crashed engine: its series go
    assert writer.write_once() is False and not writer.path.exists()
    holder.engine = object()  # an engine without metrics_text (a custom build_engine)
    assert writer.write_once() is False


def test_start_runs_only_with_the_directory_and_writes_on_the_loop(tmp_path):
    handler = SimpleNamespace(engine=FakeEngine())
    ctx = SimpleNamespace(model_name="a", manifest={"model": {"modelVersion": "1.0"}})
    assert engine_metrics.start(handler, ctx, environ={}) is None

    async def main():
        writer = engine_metrics.start(handler, ctx, environ={METRICS_DIR_ENV: str(tmp_path)})
        for _ in range(50):
            if writer.path.exists():
                break
            await asyncio.sleep(0.02)
        assert 'ts_model="a"' in writer.path.read_text()
        for task in list(engine_metrics._TASKS):
            task.cancel()
        await asyncio.sleep(0.05)
        return writer

    writer = asyncio.run(main())
    assert not writer.path.exists()  # removed when the writer ends


def test_merge_gives_each_family_its_help_and_type_once_with_all_samples_together():
    a = relabel(VLLM_TEXT, LABELS)
    b = relabel(VLLM_TEXT, {**LABELS, "ts_model": "b", "ts_worker": "W-9001"})
    text = merge([TS_TEXT, a, b])
    lines = text.splitlines()
    for family in ("vllm:num_requests_running", "vllm:time_to_first_token_seconds", "PromptTokens"):
        assert sum(ln.startswith(f"# TYPE {family} ") for ln in lines) == 1
        assert sum(ln.startswith(f"# HELP {family} ") for ln in lines) == 1
    # the samples of one family are adjacent, right after its TYPE line
    i = lines.index("# TYPE vllm:time_to_first_token_seconds histogram")
    assert all(ln.startswith("vllm:time_to_first_token_seconds_") for ln in lines[i + 1 : i + 5])
    assert sum('ts_model="b"' in ln for ln in lines) == 4
    assert lines[0].startswith("# HELP ts_inference_requests_total")


def test_files_of_dead_workers_are_deleted_and_stale_ones_left_out(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"worker-{dead.pid}.prom").write_text("vllm:x 1\n")
    (tmp_path / f"worker-{os.getpid()}.prom").write_text("vllm:y 1\n")
    (tmp_path / "worker-1.prom.tmp").write_text("vllm:z 1\n")  # not a worker file
    assert worker_texts(tmp_path) == ["vllm:y 1\n"]
    assert not (tmp_path / f"worker-{dead.pid}.prom").exists()
    assert worker_texts(tmp_path, now=time.time() + metrics_proxy.STALE_S + 1) == []


class _Upstream(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = TS_TEXT.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_proxy_serves_torchserves_metrics_and_the_workers_files(tmp_path):
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    (tmp_path / f"worker-{os.getpid()}.prom").write_text(relabel(VLLM_TEXT, LABELS))
    proxy = MetricsProxy(
        directory=tmp_path,
        upstream=f"http://127.0.0.1:{upstream.server_address[1]}/metrics",
        port=0,
    ).start()
    try:
        reply = httpx.get(proxy.url, timeout=10)
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert (
            "PromptTokens{" in reply.text and 'vllm:num_requests_running{ts_model="a"' in reply.text
        )
        assert httpx.get(proxy.url.replace("/metrics", "/other"), timeout=10).status_code == 404
    finally:
        proxy.stop()
        upstream.shutdown()
        upstream.server_close()
    # TorchServe down: the engines' series are still served, with a comment saying why
    lone = MetricsProxy(directory=tmp_path, upstream="http://127.0.0.1:1/metrics", port=0).start()
    try:
        text = httpx.get(lone.url, timeout=10).text
        assert "did not answer" in text and "vllm:generation_tokens_total{" in text
    finally:
        lone.stop()
