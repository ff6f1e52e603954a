"""The audit log and named API keys on a real TorchServe whose model has two workers (two
tiny engines) writing one log file at once."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import STARTUP_TIMEOUT, archive, base_url, started
from tests.e2e.ts_features import describe
from tsvllm.host.torchserve import TorchServe

MARKER = "zanzibar-quokka"  # a prompt word that must never reach the log
N = 40
KEYS = {"team-a": "key-of-team-a-0123456789", "team-b": "key-of-team-b-0123456789"}


@pytest.fixture(scope="module")
def audited(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("audit")
    log = root / "audit" / "audit.jsonl"
    store = root / "model_store"
    archive(
        "tiny-cpu.yaml",
        model=tiny_model,
        store=store,
        name="audited",
        frontend={"minWorkers": 2, "maxWorkers": 2},
        audit_log={"path": str(log)},
    )
    ts = TorchServe(workdir=root / "ts", model_store=store, models=["audited"])
    try:
        started(ts, ["audited"])  # serving: one worker READY; the tests need both
        both_workers_ready(ts, "audited")
        add_named_keys(ts, log, KEYS)
        yield ts, log
    finally:
        ts.stop()


def both_workers_ready(ts: TorchServe, model: str, *, timeout: float = STARTUP_TIMEOUT) -> None:
    """Until describe-model shows two READY workers (READY means the engine serves)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = describe(ts, model)[0]["workers"]
        if [w["status"] for w in workers] == ["READY", "READY"]:
            return
        time.sleep(1)
    raise AssertionError(f"not both workers READY after {timeout:.0f} s: {workers}")


def add_named_keys(ts: TorchServe, log: Path, keys: dict[str, str]) -> None:
    """Edit the running server's keys file as an operator would (no restart), then poll
    until both workers answer as it says; return once the audit log holds the polls' lines."""
    data = json.loads(ts.key_file.read_text())
    removed = [key for name, key in (data.get("keys") or {}).items() if name not in keys]
    data["keys"] = keys
    lines = len(read_lines(log, 0))
    ts.key_file.write_text(json.dumps(data))
    # the workers look at the file at most once per second
    expect = {**{key: {200} for key in keys.values()}, **{key: {401} for key in removed}}
    deadline = time.monotonic() + 10
    sent = 0
    while True:
        got = statuses(ts, list(expect))
        sent += sum(len(codes) for codes in got.values())
        if got == expect or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == expect, got
    read_lines(log, lines + sent)  # every poll is logged (a 401 too)


#: concurrent requests per key in :func:`statuses`: enough for both workers to answer
PER_KEY = 4


def statuses(ts: TorchServe, keys: list[str]) -> dict[str, set[int]]:
    """Per key, the statuses of :data:`PER_KEY` concurrent requests (both workers answer)."""
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 1}
    sent = [key for key in keys for _ in range(PER_KEY)]
    with ThreadPoolExecutor(len(sent)) as pool:
        codes = list(pool.map(lambda key: post(ts, key, body).status_code, sent))
    out: dict[str, set[int]] = {key: set() for key in keys}
    for key, code in zip(sent, codes, strict=True):
        out[key].add(code)
    return out


def post(ts: TorchServe, key: str, body: dict) -> httpx.Response:
    url = f"{base_url(ts, 'audited')}/completions"
    return httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300)


def read_lines(log, count: int, *, timeout: float = 60) -> list[dict]:
    """The log's lines once there are ``count`` (written by the workers' threads)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = log.read_text() if log.exists() else ""
        if text.count("\n") >= count:
            return [json.loads(line) for line in text.splitlines()]  # fails on a torn line
        time.sleep(0.2)
    raise AssertionError(f"{log} has {text.count(chr(10))} lines, expected {count}")


def test_n_requests_from_two_workers_give_n_lines_with_key_names_and_no_prompt(audited):
    ts, log = audited
    before = len(read_lines(log, 0))
    jobs = [
        (name, {"model": "tiny", "prompt": f"{MARKER} {i}", "max_tokens": 8 + i % 5})
        for i in range(N)
        for name in [("team-a", "team-b")[i % 2]]
    ]
    with ThreadPoolExecutor(16) as pool:  # concurrent: both workers serve at once
        replies = list(pool.map(lambda job: post(ts, KEYS[job[0]], job[1]), jobs))
    assert [r.status_code for r in replies] == [200] * N
    entries = read_lines(log, before + N)[before:]
    assert len(entries) == N
    assert MARKER not in log.read_text()
    assert len({e["worker"] for e in entries}) == 2  # two workers wrote the one file
    for name in KEYS:
        sent = [r.json()["usage"] for (k, _), r in zip(jobs, replies, strict=True) if k == name]
        logged = [e for e in entries if e["key"] == name]
        assert len(logged) == len(sent) == N // 2
        for field in ("prompt_tokens", "completion_tokens"):
            assert sum(e[field] for e in logged) == sum(u[field] for u in sent)
    assert {e["status"] for e in entries} == {200}
    assert {e["model"] for e in entries} == {"audited"} and {e["version"] for e in entries} == {
        "1.0"
    }


def test_a_key_removed_from_the_file_is_refused_without_a_restart(audited):
    ts, log = audited
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    assert post(ts, KEYS["team-b"], body).status_code == 200
    add_named_keys(ts, log, {"team-a": KEYS["team-a"]})
    # every worker has reloaded: concurrent requests reach both
    got = statuses(ts, [KEYS["team-b"], KEYS["team-a"]])
    assert got == {KEYS["team-b"]: {401}, KEYS["team-a"]: {200}}
