"""Helpers for test_torchserve_features.py: archives built the TorchServe way, the
management API over TCP, and the vLLM processes under a worker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.e2e.conftest import REPO
from tsvllm.config import dump_model_config, load_model_config, validate_model_config
from tsvllm.host.archive import build_archive
from tsvllm.host.torchserve import TorchServe

ARCHIVER = Path(sys.executable).parent / "torch-model-archiver"
HANDLER = REPO / "handlers" / "vllm_handler.py"


def model_config_yaml(model: Path, served_name: str, *, path: Path, **engine) -> Path:
    """model-config.yaml as a TorchServe user writes it: the shipped tiny-cpu.yaml with
    the model's absolute path and its served name (``engine``: vllm_engine_config keys)."""
    text = (REPO / "model_configs" / "tiny-cpu.yaml").read_text()
    assert "model_path: models/tiny\n" in text and "served_model_name: [tiny]\n" in text
    text = text.replace("model_path: models/tiny\n", f"model_path: {model}\n")
    text = text.replace("served_model_name: [tiny]\n", f"served_model_name: [{served_name}]\n")
    for key, value in engine.items():
        head, sep, tail = text.partition(f"    {key}: ")
        assert sep, key
        text = head + sep + json.dumps(value) + "\n" + tail.split("\n", 1)[1]
    path.write_text(text)
    return path


def cli_archive(
    config: Path,
    *,
    name: str,
    version: str,
    fmt: str,
    export: Path,
    cwd: Path,
    extra_files: list[Path] = (),
) -> Path:
    """Run the torch-model-archiver CLI with TorchServe's own flags; return the artifact."""
    export.mkdir(parents=True, exist_ok=True)
    extra = ["--extra-files", ",".join(map(str, extra_files))] if extra_files else []
    subprocess.run(
        [
            str(ARCHIVER),
            "--model-name",
            name,
            "--version",
            version,
            "--handler",
            str(HANDLER),
            "--config-file",
            str(config),
            "--archive-format",
            fmt,
            "--export-path",
            str(export),
            *extra,
        ],
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return export / (name if fmt == "no-archive" else f"{name}.mar")


def versioned_archive(
    model: Path, *, store: Path, name: str, version: str, dir_name: str, **handler_cfg
) -> Path:
    """A no-archive artifact of tiny-cpu.yaml for ``name`` at ``version``, as
    ``store/dir_name`` (two versions of one name need two folders)."""
    cfg = load_model_config(REPO / "model_configs" / "tiny-cpu.yaml")
    data = cfg.model_dump(mode="json", exclude_none=True, by_alias=True)
    data["handler"].update(model_path=str(model), **handler_cfg)
    staging = store.parent / f"staging-{dir_name}"
    config = dump_model_config(validate_model_config(data), store.parent / f"{dir_name}.yaml")
    built = build_archive(
        config, name=name, version=version, export_path=staging, fmt="no-archive", force=True
    )
    store.mkdir(parents=True, exist_ok=True)
    target = store / dir_name
    built.rename(target)
    return target


def management(ts: TorchServe, *, timeout: float = 600) -> httpx.Client:
    """The management API: on its TCP port, or on the Unix socket of a server whose
    handler checks the keys (``auth="key"``)."""
    socket = ts.management_socket
    if socket is not None:
        transport = httpx.HTTPTransport(uds=str(socket))
        return httpx.Client(base_url="http://localhost", transport=transport, timeout=timeout)
    return httpx.Client(base_url=f"http://127.0.0.1:{ts.ports.management}", timeout=timeout)


def register(ts: TorchServe, url: str, name: str) -> tuple[httpx.Response, float]:
    """Synchronous registration with one worker, query parameters only (no JSON content
    type: TorchServe would parse the empty body as JSON). Returns (reply, seconds)."""
    start = time.monotonic()
    with management(ts) as api:
        reply = api.post(
            "/models",
            params={
                "url": url,
                "model_name": name,
                "initial_workers": "1",
                "synchronous": "true",
            },
        )
    return reply, time.monotonic() - start


def describe(ts: TorchServe, path: str, *, timeout: float = 600) -> list[dict]:
    with management(ts, timeout=timeout) as api:
        reply = api.get(f"/models/{path}")
    reply.raise_for_status()
    return reply.json()


def worker_pids(ts: TorchServe, model: str) -> list[int]:
    return [w["pid"] for w in describe(ts, model)[0]["workers"]]


def engines_under(pid: int) -> list[psutil.Process]:
    """vLLM's processes (VLLM::EngineCore, VLLM::Worker) under process ``pid``."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in children:
        try:
            if "VLLM::" in proc.name() + " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def subtree_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and every descendant."""
    total = 0.0
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def wait_engine_idle(pid: int, *, timeout: float = 600, window: float = 2.0) -> None:
    """Until worker ``pid`` has its engine processes and they use < 25% CPU over a window
    (the engine finished starting)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if len(engines_under(pid)) >= 2:
            before = subtree_cpu(pid)
            time.sleep(window)
            if subtree_cpu(pid) - before < 0.25 * window:
                return
        else:
            time.sleep(1)
    raise AssertionError(f"the engine of worker {pid} did not settle within {timeout}s")


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return alive


def wait_probe(ts: TorchServe, model: str, version: str, timeout: float = 900) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ts.probe(model, version=version):
            return
        time.sleep(1)
    raise AssertionError(f"{model}/{version} not ready after {timeout}s")


def stream_outcome(url: str, body: dict, progress: dict, index: int, timeout: float = 300) -> dict:
    """Stream ``body``; record what the client saw: status, content chunks, [DONE], an
    OpenAI error event (``error_event``: its ``error`` object), the exception if any, the
    tail of the body, the last finish reason, and ``tokens``: the usage chunk's completion
    tokens (when the body asks for it with ``stream_options``). ``runs``: how many
    generations the chunks came from (their distinct ``created`` values). ``timeout``: the
    longest wait for the next bytes."""
    seen = {"status": None, "chunks": 0, "done": False, "error": None, "tail": "", "runs": 0}
    seen |= {"error_event": None, "tokens": None, "finish_reason": None}
    progress[index] = seen
    text = ""
    started: set[int] = set()
    try:
        with httpx.stream("POST", url, json=body, timeout=timeout) as reply:
            seen["status"] = reply.status_code
            for line in reply.iter_lines():
                text += line + "\n"
                if line == "data: [DONE]":
                    seen["done"] = True
                elif line.startswith("data: "):
                    event = json.loads(line.removeprefix("data: "))
                    if "error" in event:
                        seen["error_event"] = event["error"]
                    elif event.get("usage") and not event["choices"]:
                        seen["tokens"] = event["usage"]["completion_tokens"]
                    else:
                        seen["chunks"] += 1
                        started.add(event["created"])
                        seen["runs"] = len(started)
                        reason = event["choices"][0].get("finish_reason")
                        seen["finish_reason"] = reason or seen["finish_reason"]
    except Exception as exc:  # a reset or a protocol error is an outcome too
        seen["error"] = f"{type(exc).__name__}: {exc}"
    seen["tail"] = text[-400:]
    return seen
