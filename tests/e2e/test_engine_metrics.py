"""vLLM's own metrics through one TorchServe serving two models at once.

Both archives serve the same tiny model under the same served name ("tiny"), so vLLM's
own labels (``model_name``, ``engine``) cannot tell them apart: only the labels the
workers add (``ts_model``, ``ts_version``, ``ts_worker``) can. The documented scrape target
is TorchServe's metrics port (docs/DEPLOY.md, "Metrics and autoscaling"): it must hold each
engine's ``vllm:*`` series and, in the same text, our hook metrics (PromptTokens).
"""

from __future__ import annotations

import re
import time

import httpx
import psutil
import pytest

from tests.e2e.conftest import archive, started
from tsvllm.host.torchserve import TorchServe

MODELS = ("ma", "mb")
REQUESTS = 3
SERIES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:generation_tokens_total",
)
_SAMPLE = re.compile(r"^(?P<name>[^{\s]+)\{(?P<labels>.*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = dict(_LABEL.findall(match.group("labels")))
            out.append((match.group("name"), labels, float(match.group("value"))))
    return out


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("engine-metrics")
    store = root / "model_store"
    for name in MODELS:
        archive("tiny-cpu.yaml", model=tiny_model, store=store, name=name)
    ts = TorchServe(workdir=root / "ts", model_store=store, models=list(MODELS))
    try:
        yield started(ts, list(MODELS))
    finally:
        ts.stop()


def scrape(ts: TorchServe) -> str:
    reply = httpx.get(f"http://127.0.0.1:{ts.ports.metrics}/metrics", timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.text


def test_each_engines_vllm_series_and_the_hook_metrics_share_one_scrape_target(two_models):
    ts = two_models
    headers = {"Authorization": f"Bearer {ts.keys()['inference']}"}
    for name in MODELS:
        for i in range(REQUESTS):
            reply = httpx.post(
                f"{ts.inference_url}/predictions/{name}/1.0/v1/completions",
                json={"model": "tiny", "prompt": f"hello {i}", "max_tokens": 8},
                headers=headers,
                timeout=120,
            )
            assert reply.status_code == 200, reply.text

    def generated(text: str) -> dict[str, float]:
        return {
            labels.get("ts_model"): value
            for name, labels, value in samples(text)
            if name == "vllm:generation_tokens_total"
        }

    def prompt_tokens(text: str) -> dict[str, float]:
        return {
            labels.get("ModelName"): value
            for name, labels, value in samples(text)
            if name == "PromptTokens" and value > 0
        }

    def complete(text: str) -> bool:  # every request's tokens counted, in both series
        tokens = generated(text)
        return all(tokens.get(m, 0) >= REQUESTS and prompt_tokens(text).get(m) for m in MODELS)

    deadline = time.monotonic() + 60  # workers rewrite their files every 2 s
    text = scrape(ts)
    while time.monotonic() < deadline and not complete(text):
        time.sleep(1)
        text = scrape(ts)

    parsed = samples(text)
    workers = {}
    for model in MODELS:
        for series in SERIES:
            found = [lb for name, lb, _ in parsed if name == series and lb.get("ts_model") == model]
            assert found, f"no {series} for {model}:\n{text[-3000:]}"
            assert all(lb["ts_version"] == "1.0" and lb["model_name"] == "tiny" for lb in found)
        workers[model] = {lb["ts_worker"] for name, lb, _ in parsed if lb.get("ts_model") == model}
        assert len(workers[model]) == 1, workers
        assert generated(text)[model] >= REQUESTS * 1, text[-3000:]
    assert workers["ma"] != workers["mb"]  # two workers, told apart
    # both histograms a dashboard needs are there, per model
    for hist in (
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
    ):
        assert {lb.get("ts_model") for name, lb, _ in parsed if name == hist} >= set(MODELS)
    # the same text holds TorchServe's own metrics: our hook metrics
    hooks = "\n".join(ln for ln in text.splitlines() if "Tokens" in ln)
    assert set(prompt_tokens(text)) >= set(MODELS), hooks
    # a valid exposition: each family's HELP and TYPE once
    types = [ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE ")]
    assert len(types) == len(set(types))


def test_a_worker_that_dies_leaves_no_series_behind(two_models):
    ts = two_models
    files = sorted(ts.metrics_dir.glob("worker-*.prom"))
    assert len(files) == 2, files
    # kill model mb's worker (TorchServe restarts it): its file is dropped at the next
    # scrape, and the new worker's engine writes a new one once it serves again
    text = scrape(ts)
    old = {lb["ts_worker"] for name, lb, _ in samples(text) if lb.get("ts_model") == "mb"}
    pid = next(int(f.stem.split("-")[1]) for f in files if 'ts_model="mb"' in f.read_text())
    psutil.Process(pid).kill()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (ts.metrics_dir / f"worker-{pid}.prom").exists():
        scrape(ts)
        time.sleep(0.5)
    assert not (ts.metrics_dir / f"worker-{pid}.prom").exists()
    assert old  # the series were there before the kill
