"""Disconnects, an engine crash, worker death and --stop: nothing but the request at fault
is lost, and no vLLM process outlives its worker.

Uses its own TorchServe (serving a ``.mar`` artifact, ``request_timeout_s`` 20) because it
kills things. The tests run in file order and share the server.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import psutil
import pytest
from openai import OpenAI

from tests.e2e.conftest import archive, base_url, wait_for
from tsvllm.host.torchserve import TorchServe

GONE_WITHIN = 15.0
DEADLINE_S = 20
#: a readiness poll with no answer within this long waited for the engine (which takes
#: 25-60 s to start here): probes must answer while it starts, not when it is done. The
#: tests check that with the answers' content (a 503 while loading), not with their time.
HANG_S = 10


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
    archive(
        "tiny-cpu.yaml",
        model=tiny_model,
        store=store,
        name="lifecycle",
        fmt="mar",
        request_timeout_s=DEADLINE_S,
    )
    ts = TorchServe(workdir=root / "ts", model_store=store, models=["lifecycle.mar"])
    try:
        ts.start()  # `torchserve --start`
        ts.startup = watch_startup(ts, "lifecycle")
        ts.wait_ready("lifecycle", timeout=60)
        yield ts
    finally:
        ts.stop()


@dataclass
class Poll:
    """One look at the server while it starts: /ping, describe-model's worker status and
    GET v1/models (its status and its error's type), each asked with a client timeout of
    ``HANG_S``. ``None`` everywhere: the frontend did not listen yet; ``unanswered``: a
    request that got no answer within ``HANG_S``; ``took``: the poll's seconds."""

    ping: int | None
    ready: bool | None
    models: int | None
    error: str | None
    unanswered: str | None = None
    took: float = 0.0


def watch_startup(ts: TorchServe, model: str, *, timeout: float = 600) -> list[Poll]:
    """Poll once a second from ``torchserve --start`` until v1/models answers 200."""
    from tests.e2e.ts_features import describe

    polls: list[Poll] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            ping = httpx.get(f"{ts.inference_url}/ping", headers=auth(ts), timeout=HANG_S)
        except httpx.ConnectError:
            polls.append(Poll(None, None, None, None))  # the frontend does not listen yet
            time.sleep(max(0.0, 1 - (time.monotonic() - t0)))
            continue
        except httpx.TimeoutException:
            polls.append(Poll(None, None, None, None, unanswered="/ping"))
            continue
        try:
            workers = describe(ts, model, timeout=HANG_S)[0]["workers"]
            ready = any(w["status"] == "READY" for w in workers)
            reply = httpx.get(f"{base_url(ts, model)}/models", headers=auth(ts), timeout=HANG_S)
        except httpx.TimeoutException as exc:
            polls.append(Poll(ping.status_code, None, None, None, str(exc.request.url)))
            continue
        models, error = reply.status_code, reply.json().get("error", {}).get("type")
        polls.append(Poll(ping.status_code, ready, models, error, took=time.monotonic() - t0))
        if models == 200:
            return polls
        time.sleep(max(0.0, 1 - (time.monotonic() - t0)))
    raise AssertionError(f"{model} did not serve within {timeout} s: {polls}")


def test_torchserves_signals_say_ready_only_when_the_model_serves(own_server):
    """From `torchserve --start` until v1/models is 200, once a second: /ping (Healthy) and
    describe-model (READY) never say ready while v1/models is not 200, and every request
    is answered while the engine starts, not once it is done: before a worker is READY,
    v1/models gets an OpenAI-style 503 (tsvllm's frontend plugin; TorchServe alone would
    hold it in its queue until a worker is READY)."""
    polls = own_server.startup
    print(f"{len(polls)} polls: " + ", ".join(f"{p.ping}/{p.ready}/{p.models}" for p in polls))
    print(f"slowest poll: {max(p.took for p in polls):.2f} s")
    assert [p.unanswered for p in polls if p.unanswered] == [], polls  # none waited
    listening = [p for p in polls if p.ping is not None]
    said_ready = [p for p in listening if p.ping == 200 or p.ready]
    assert all(p.models == 200 for p in said_ready), polls  # never a lie
    loading = [p for p in listening if p.models != 200]
    assert loading, polls  # it did load while polled
    assert all(p.models == 503 and p.error == "ServiceUnavailableError" for p in loading), polls
    assert polls[-1].models == 200


def auth(ts: TorchServe) -> dict[str, str]:
    return {"Authorization": f"Bearer {ts.keys()['inference']}"}


def health(ts: TorchServe) -> httpx.Response:
    url = f"{ts.inference_url}/predictions/lifecycle/1.0/health"
    return httpx.get(url, headers=auth(ts), timeout=60)


def metric_total(ts: TorchServe, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{ts.ports.metrics}/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and 'ModelName="lifecycle"' in line
    )


def long_stream_body(i: int) -> dict:
    return {
        "model": "tiny",
        "prompt": f"go on {i}",
        "max_tokens": 1900,
        "ignore_eos": True,
        "stream": True,
    }


def test_abandoned_streams_free_the_engine_at_once(own_server):
    """vLLM's own server aborts a request whose client disconnects; TorchServe never tells
    its worker. tsvllm's frontend plugin does: 32 clients hang up after the first event of
    a 1,900-token stream, and the engine is idle again within 10 s (their deadline,
    request_timeout_s 20, would take longer); each is counted as a client disconnect, none
    as a timeout; the next request is served."""
    ts = own_server
    url = f"{base_url(ts, 'lifecycle')}/completions"
    n = 32

    async def drop_all() -> None:
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(headers=auth(ts), timeout=300, limits=limits) as client:

            async def drop(i: int) -> None:
                async with client.stream("POST", url, json=long_stream_body(i)) as reply:
                    async for line in reply.aiter_lines():
                        if line.startswith("data: "):
                            return  # leaving the block closes the connection mid-stream

            await asyncio.gather(*(drop(i) for i in range(n)))

    disconnects, timeouts = (metric_total(ts, m) for m in ("ClientDisconnects", "RequestTimeouts"))
    asyncio.run(drop_all())
    left = time.monotonic()
    assert wait_for(lambda: health(ts).json()["running_requests"] == 0, timeout=10)
    idle_after = time.monotonic() - left
    assert wait_for(lambda: metric_total(ts, "ClientDisconnects") - disconnects == n, timeout=30)
    assert metric_total(ts, "RequestTimeouts") == timeouts
    t0 = time.monotonic()
    assert chat_ok(ts)
    print(
        f"{n} abandoned streams: engine idle {idle_after:.1f} s after the last client left; "
        f"the next request took {time.monotonic() - t0:.2f} s"
    )


def test_the_frontend_forgets_a_request_once_it_is_answered(own_server):
    """TorchServe 0.12 keeps a request in its async worker's ``jobs_in_backend`` until a
    reply says ``ts_stream_next: false``, which only a stream's last part says: every
    non-streamed request stayed for good (the frontend's heap grew with each), and the
    client watch marked each as gone once its client closed the connection. 16 requests are
    answered on connections that then close; a stream abandoned after them is marked and
    counted (so the watch has swept since); once it has ended, no mark is left."""
    ts = own_server
    url = f"{base_url(ts, 'lifecycle')}/completions"
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    for _ in range(16):  # each on its own connection, closed on return
        assert httpx.post(url, json=body, headers=auth(ts), timeout=120).status_code == 200
    disconnects = metric_total(ts, "ClientDisconnects")
    with httpx.stream("POST", url, json=long_stream_body(0), headers=auth(ts), timeout=120) as r:
        next(line for line in r.iter_lines() if line.startswith("data: "))
    assert wait_for(lambda: metric_total(ts, "ClientDisconnects") == disconnects + 1, timeout=30)
    gone = ts.control_dir / "gone"
    assert wait_for(lambda: not any(gone.iterdir()), timeout=10), sorted(gone.iterdir())


def vertex_predict(ts: TorchServe, body: dict) -> httpx.Response:
    url = f"{ts.inference_url}/predictions/lifecycle/1.0/vertex/predict"
    return httpx.post(url, json=body, headers=auth(ts), timeout=300)


def test_a_vertex_envelope_has_usage_metrics(own_server):
    ts = own_server
    before = metric_total(ts, "PromptTokens"), metric_total(ts, "CompletionTokens")
    body = {"instances": ["one", "two"], "parameters": {"model": "tiny", "max_tokens": 4}}
    reply = vertex_predict(ts, body)
    assert reply.status_code == 200, reply.text
    usages = [p["usage"] for p in reply.json()["predictions"]]
    prompt = sum(u["prompt_tokens"] for u in usages)
    completion = sum(u["completion_tokens"] for u in usages)
    assert wait_for(
        lambda: (
            (metric_total(ts, "PromptTokens"), metric_total(ts, "CompletionTokens"))
            == (before[0] + prompt, before[1] + completion)
        ),
        timeout=60,
    )


def test_a_vertex_envelope_past_the_deadline_is_504_and_its_generations_are_aborted(own_server):
    """256 instances of 2,000 tokens are minutes of work: the deadline (20 s) answers 504
    and aborts every one of them, so the engine is idle again long before the work would
    have finished (15 s against > 60 s of work left)."""
    ts = own_server
    params = {"model": "tiny", "max_tokens": 2000, "ignore_eos": True}
    body = {"instances": [f"go on {i}" for i in range(256)], "parameters": params}
    before = metric_total(ts, "RequestTimeouts")
    reply = vertex_predict(ts, body)
    assert reply.status_code == 504, reply.text
    assert "request_timeout_s" in reply.json()["error"]["message"]
    assert wait_for(lambda: health(ts).json()["running_requests"] == 0, timeout=15)
    assert wait_for(lambda: metric_total(ts, "RequestTimeouts") - before == 1, timeout=60)


def _stream_outcome(status: int, text: str) -> str:
    """What one streamed reply amounts to: "success", "error event" (the stream ends with
    one OpenAI error event of code 503, then [DONE]) or "broken: ..." (anything else)."""
    if status != 200:
        return f"broken: stream answered {status}: {text[:300]}"
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return f"broken: stream cut short (no [DONE]): ...{text[-300:]}"
    try:
        chunks = [json.loads(e) for e in events[:-1]]
    except ValueError:
        return f"broken: a stream event is not JSON: ...{text[-300:]}"
    errors = [i for i, c in enumerate(chunks) if "error" in c]
    if not errors:
        return "success"
    if errors == [len(chunks) - 1] and chunks[-1]["error"].get("code") == 503:
        return "error event"
    return f"broken: unexpected error events: ...{text[-300:]}"


def _full_outcome(status: int, text: str) -> str:
    """What one non-streamed reply amounts to: "success", "503" (OpenAI error body, code
    503) or "broken: ..."."""
    try:
        body = json.loads(text)
    except ValueError:
        return f"broken: {status} with a body that is not JSON: {text[:300]}"
    if status == 200 and body.get("usage", {}).get("completion_tokens"):
        return "success"
    if status == 503 and body.get("error", {}).get("code") == 503:
        return "503"
    return f"broken: {status}: {text[:300]}"


def test_a_killed_engine_fails_requests_in_flight_with_503_and_its_worker_restarts(own_server):
    """Every request started is counted exactly once: each of them is in flight when the
    engine dies, so each ends as a 503 (non-streamed) or a 503 error event (streamed, the
    headers went out with the first chunk); a stream cut short or a request that raises or
    hangs is counted as broken. Then the worker exits and TorchServe restarts it: it is not
    READY (describe-model, /ping) until its new engine serves, and READY means served."""
    ts = own_server
    worker = worker_process(ts)
    old_engine = engine_processes(ts)
    core = next(p for p in old_engine if "EngineCore" in p.name() + " ".join(p.cmdline()))
    url = f"{base_url(ts, 'lifecycle')}/completions"
    started_n = 6
    outcomes: dict[int, str] = {}

    def in_flight(i: int) -> None:
        body = long_stream_body(i)
        try:
            if i % 2:
                reply = httpx.post(
                    url, json={**body, "stream": False}, headers=auth(ts), timeout=120
                )
                outcomes[i] = _full_outcome(reply.status_code, reply.text)
                return
            with httpx.stream("POST", url, json=body, headers=auth(ts), timeout=120) as reply:
                text = reply.read().decode(errors="replace")
                outcomes[i] = _stream_outcome(reply.status_code, text)
        except BaseException as exc:  # a reset or timeout is an outcome too
            outcomes[i] = f"broken: {type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=in_flight, args=(i,)) for i in range(started_n)]
    for t in threads:
        t.start()
    assert wait_for(lambda: health(ts).json()["running_requests"] >= started_n, timeout=120)
    core.send_signal(signal.SIGKILL)
    for t in threads:
        t.join(timeout=180)
    for i, t in enumerate(threads):
        if t.is_alive():
            outcomes.setdefault(i, "broken: still waiting 180 s after the kill")
    # one outcome per request started, none lost
    assert sorted(outcomes) == list(range(started_n)), outcomes
    counts = Counter(o if not o.startswith("broken") else "broken" for o in outcomes.values())
    assert sum(counts.values()) == started_n
    # all were running when the engine died: none may succeed, none may be cut or raise
    assert counts == {"503": started_n // 2, "error event": started_n // 2}, outcomes
    # the worker exits with its engine; TorchServe starts a new one, READY once it serves
    assert wait_gone([worker, *old_engine], GONE_WITHIN) == []
    seen = watch_readiness(ts, "lifecycle")
    assert ("not ready", 503) in seen, seen  # it stopped showing READY ...
    assert seen[-1] == ("READY", 200), seen  # ... until its new engine served
    assert chat_ok(ts)  # right after READY: served
    assert worker_process(ts).pid != worker.pid


def watch_readiness(ts: TorchServe, model: str, *, timeout: float = 600) -> list[tuple]:
    """Poll describe-model and /ping every 0.5 s until the model's worker is READY; then
    send a request at once, which must be served. Returns the distinct (worker status,
    /ping status) pairs seen, in order. A poll with no answer within ``HANG_S`` fails."""
    from tests.e2e.ts_features import describe

    seen: list[tuple] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        workers = describe(ts, model, timeout=HANG_S)[0]["workers"]
        ping = httpx.get(f"{ts.inference_url}/ping", headers=auth(ts), timeout=HANG_S).status_code
        ready = any(w["status"] == "READY" for w in workers)
        pair = ("READY" if ready else "not ready", ping)
        if not seen or seen[-1] != pair:
            seen.append(pair)
        if ready or ping == 200:
            assert chat_ok(ts), seen  # the very next request is served
            return seen
        time.sleep(0.5)
    raise AssertionError(f"not READY within {timeout} s: {seen}")


def test_engine_dies_with_a_killed_worker_and_the_worker_comes_back(own_server):
    ts = own_server
    ts.wait_ready("lifecycle", timeout=600)  # the test before kills an engine too
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
