"""GPU placement through a real TorchServe 0.12 frontend, on CPU, with no vLLM: an
integration test of the frontend and the handler's placement, not an end-to-end test of
vLLM (no engine runs, so it lives in tests/integration).

A fake ``nvidia-smi`` first on PATH answers the queries the frontend makes (``SystemInfo``,
``CudaUtil``: ``--query-gpu=index,gpu_name`` to count, ``index,gpu_name,utilization.gpu,
utilization.memory,memory.used`` for metrics) so that it counts FAKE_GPUS GPUs. The models are
served by tests/integration/device_report_handler.py: VLLMHandler with an engine that only reports
the CUDA_VISIBLE_DEVICES the handler set (no vLLM). Every worker writes its report; the test
matches them to the management API's worker list and asks the inference API too.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tsvllm.config import dump_model_config, validate_model_config
from tsvllm.host.archive import build_archive
from tsvllm.host.torchserve import TorchServe

HANDLER = Path(__file__).with_name("device_report_handler.py")
TIMEOUT = 300

FAKE_SMI = r"""#!/bin/sh
# fake nvidia-smi: FAKE_GPUS GPUs (default 4), for the queries TorchServe's frontend makes
n="${FAKE_GPUS:-4}"
query=""
for arg in "$@"; do
  case "$arg" in
    --query-gpu=*) query="${arg#--query-gpu=}" ;;
    -L)
      i=0
      while [ "$i" -lt "$n" ]; do echo "GPU $i: Fake GPU (UUID: GPU-fake-$i)"; i=$((i+1)); done
      exit 0 ;;
  esac
done
if [ -z "$query" ]; then echo "fake nvidia-smi: only --query-gpu and -L" >&2; exit 2; fi
echo "$query" | sed 's/gpu_name/name/; s/,/, /g'
i=0
while [ "$i" -lt "$n" ]; do
  row=""
  for field in $(echo "$query" | tr ',' ' '); do
    case "$field" in
      index) v="$i" ;;
      gpu_name|name) v="Fake GPU" ;;
      memory.total) v=81920 ;;
      *) v=0 ;;
    esac
    row="${row:+$row, }$v"
  done
  echo "$row"
  i=$((i+1))
done
"""


def model(*, workers: int, tp: int, custom: bool) -> dict:
    data = {
        "minWorkers": workers,
        "maxWorkers": workers,
        "deviceType": "gpu",
        "asyncCommunication": True,
        "startupTimeout": 120,
        "handler": {
            "model_path": "test/device-report",  # a hub id: never loaded by this engine
            "vllm_engine_config": {"tensor_parallel_size": tp},
        },
    }
    if custom:
        data.update(parallelType="custom", parallelLevel=tp)
    return data


@pytest.fixture
def fake_smi(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    return bin_dir


def start(root: Path, models: dict[str, dict], env: dict[str, str]) -> tuple[TorchServe, Path]:
    store = root / "model_store"
    reports = root / "reports"
    reports.mkdir(parents=True)
    for name, data in models.items():
        path = dump_model_config(validate_model_config(data), root / f"{name}-config.yaml")
        build_archive(
            path, name=name, fmt="no-archive", export_path=store, handler=HANDLER, force=True
        )
    ts = TorchServe(
        workdir=root / "ts",
        model_store=store,
        models=list(models),
        auth="off",
        env={**env, "DEVICE_REPORT_DIR": str(reports)},
    )
    ts.start()
    return ts, reports


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def workers_of(ts: TorchServe, reports: Path, name: str, count: int) -> list[dict]:
    """Every worker's report, once ``count`` workers run and each has reported."""
    mgmt = f"http://127.0.0.1:{ts.ports.management}/models/{name}"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert ts.process is not None and ts.process.poll() is None, "TorchServe exited"
        try:
            status, body = get(mgmt)
        except (OSError, ValueError):
            status, body = 0, {}
        pids = {w.get("pid") for w in body[0]["workers"]} if status == 200 else set()
        found = {
            r["pid"]: r for r in (json.loads(p.read_text()) for p in reports.glob(f"{name}-*.json"))
        }
        if len(pids) == count and pids <= set(found):
            return [found[pid] for pid in sorted(pids)]
        time.sleep(1)
    raise AssertionError(f"{name}: {count} workers did not all report within {TIMEOUT}s")


def ask(ts: TorchServe, name: str) -> tuple[int, dict]:
    return get(f"{ts.inference_url}/predictions/{name}/1.0/v1/models")


def served_devices(ts: TorchServe, name: str) -> str:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        status, body = ask(ts, name)
        if status == 200:
            return body["data"][0]["devices"]
        time.sleep(1)
    raise AssertionError(f"{name} never answered 200")


def test_four_gpus(tmp_path, fake_smi):
    """2 workers × parallelLevel 2: disjoint pairs; 4 workers × 1 GPU (no parallelType):
    4 distinct devices; 3 workers × parallelLevel 2: the frontend itself starts only 2
    (disjoint pairs, the handler warns); 5 workers × 1 GPU would share one: refused, and
    every request says why."""
    ts, reports = start(
        tmp_path,
        {
            "pairs": model(workers=2, tp=2, custom=True),
            "singles": model(workers=4, tp=1, custom=False),
            "toomany": model(workers=3, tp=2, custom=True),
            "crowded": model(workers=5, tp=1, custom=False),
        },
        {"PATH": f"{fake_smi}{os.pathsep}{os.environ['PATH']}", "FAKE_GPUS": "4"},
    )
    try:
        pairs = workers_of(ts, reports, "pairs", 2)
        assert sorted(r["torchserve_visible"] for r in pairs) == ["0,1", "2,3"]  # logical
        assert sorted(r["devices"] for r in pairs) == ["0,1", "2,3"]
        assert all(r["error"] is None for r in pairs)
        assert served_devices(ts, "pairs") in ("0,1", "2,3")

        singles = workers_of(ts, reports, "singles", 4)
        assert all(r["torchserve_visible"] is None for r in singles)  # TorchServe sets none
        assert sorted(r["devices"] for r in singles) == ["0", "1", "2", "3"]
        assert all(r["devices"] == str(r["gpu_id"]) for r in singles)

        # ModelManager.updateModel caps a parallelLevel model at 4 // 2 workers
        toomany = workers_of(ts, reports, "toomany", 2)
        assert sorted(r["devices"] for r in toomany) == ["0,1", "2,3"]

        crowded = workers_of(ts, reports, "crowded", 5)
        assert len({r["gpu_id"] for r in crowded}) == 4  # two of them got the same GPU
        for r in crowded:
            assert r["devices"] is None
            assert "minWorkers: 5 worker(s) × 1 GPU(s) per worker" in r["error"]
        for _ in range(5):  # whichever worker answers
            status, body = ask(ts, "crowded")
            assert status == 500, body
            assert body["error"]["code"] == "engine_start_failed"
            msg = body["error"]["message"]
            assert "= 5 GPUs, but 4 are available" in msg, msg
            assert "lower minWorkers and maxWorkers to 4" in msg, msg
    finally:
        ts.stop()
    assert "Number of GPUs: 4" in (tmp_path / "ts" / "torchserve.out").read_text()
    model_log = (tmp_path / "ts" / "logs" / "model_log.log").read_text()
    assert "TorchServe runs only 2 worker(s); set minWorkers and maxWorkers to 2" in model_log


def test_frontend_under_cuda_visible_devices_4567(tmp_path, fake_smi):
    """8 GPUs, the frontend runs under CUDA_VISIBLE_DEVICES=4,5,6,7: TorchServe hands out
    logical ids 0–3, the engines get physical 4–7 (custom pairs and single GPUs)."""
    ts, reports = start(
        tmp_path,
        {
            "pairs": model(workers=2, tp=2, custom=True),
            "singles": model(workers=4, tp=1, custom=False),
        },
        {
            "PATH": f"{fake_smi}{os.pathsep}{os.environ['PATH']}",
            "FAKE_GPUS": "8",
            "CUDA_VISIBLE_DEVICES": "4,5,6,7",
        },
    )
    try:
        pairs = workers_of(ts, reports, "pairs", 2)
        # TorchServe wrote its logical ids over the frontend's value ...
        assert sorted(r["torchserve_visible"] for r in pairs) == ["0,1", "2,3"]
        # ... the handler read the frontend's own value and maps them to physical GPUs
        assert sorted(r["devices"] for r in pairs) == ["4,5", "6,7"]
        assert served_devices(ts, "pairs") in ("4,5", "6,7")

        singles = workers_of(ts, reports, "singles", 4)
        assert all(r["torchserve_visible"] == "4,5,6,7" for r in singles)  # inherited
        assert sorted(r["gpu_id"] for r in singles) == [0, 1, 2, 3]
        assert sorted(r["devices"] for r in singles) == ["4", "5", "6", "7"]
        assert all(r["devices"] == str(4 + r["gpu_id"]) for r in singles)
    finally:
        ts.stop()
    assert "Number of GPUs: 4" in (tmp_path / "ts" / "torchserve.out").read_text()
