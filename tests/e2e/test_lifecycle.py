"""vLLM's engine processes never outlive the TorchServe worker: worker death and --stop.

Uses its own TorchServe (serving a ``.mar`` artifact) because it kills things.
"""

from __future__ import annotations

import time

import psutil
import pytest
from openai import OpenAI

from tests.e2e.conftest import archive, base_url, started
from tsvllm.serve import TorchServe

GONE_WITHIN = 15.0


def engine_processes(ts: TorchServe) -> list[psutil.Process]:
    procs = []
    for pid in ts.process_tree():
        try:
            proc = psutil.Process(pid)
            if proc.name().startswith("VLLM::") or "VLLM::" in " ".join(proc.cmdline()):
                procs.append(proc)
        except psutil.NoSuchProcess:
            pass
    return procs


def worker_process(ts: TorchServe) -> psutil.Process:
    for pid in ts.process_tree():
        proc = psutil.Process(pid)
        if "model_service_worker.py" in " ".join(proc.cmdline()):
            return proc
    raise AssertionError("no TorchServe worker found")


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return alive


def chat_ok(ts: TorchServe) -> bool:
    client = OpenAI(
        base_url=base_url(ts, "lifecycle"), api_key=ts.keys()["inference"], max_retries=0
    )
    out = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    return out.choices[0].message.role == "assistant"


@pytest.fixture(scope="module")
def own_server(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("lifecycle")
    store = root / "model_store"
    archive("tiny-cpu.yaml", model=tiny_model, store=store, name="lifecycle", fmt="mar")
    ts = TorchServe(workdir=root / "ts", model_store=store, models=["lifecycle.mar"])
    try:
        yield started(ts, ["lifecycle"])
    finally:
        ts.stop()


def test_engine_dies_with_a_killed_worker_and_the_worker_comes_back(own_server):
    ts = own_server
    assert chat_ok(ts)
    engines = engine_processes(ts)
    assert len(engines) >= 2  # EngineCore + Worker
    worker_process(ts).kill()
    assert wait_gone(engines, GONE_WITHIN) == []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not engine_processes(ts):
        time.sleep(1)
    ts.wait_ready("lifecycle", timeout=600)
    assert chat_ok(ts)


def test_torchserve_stop_leaves_no_engine_process(own_server):
    ts = own_server
    engines = engine_processes(ts)
    assert engines
    everything = [psutil.Process(pid) for pid in ts.process_tree()]
    ts.send_stop()
    assert wait_gone(engines, GONE_WITHIN) == []
    assert wait_gone(everything, GONE_WITHIN) == []
