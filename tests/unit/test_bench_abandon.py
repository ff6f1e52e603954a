"""tsvllm bench abandon: each side's running count is read where that side reports it."""

from __future__ import annotations

from types import SimpleNamespace

import httpx

from tsvllm.bench import abandon

METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 7.0
"""


def test_vllms_server_reports_it_on_metrics_and_ours_on_health(monkeypatch):
    asked = []

    def get(url, **_):
        asked.append(url)
        if url.endswith("/metrics"):
            return SimpleNamespace(text=METRICS)
        return SimpleNamespace(json=lambda: {"status": "ok", "running_requests": 2})

    monkeypatch.setattr(httpx, "get", get)
    assert abandon.running_requests("http://127.0.0.1:9/v1", "a") == 3  # running, not waiting
    assert abandon.running_requests("http://127.0.0.1:8/predictions/bench/1.0/v1", "b") == 2
    assert asked == [
        "http://127.0.0.1:9/metrics",
        "http://127.0.0.1:8/predictions/bench/1.0/health",
    ]
