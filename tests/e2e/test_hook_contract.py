"""The hook contract through real TorchServe + vLLM, with handlers/example_hooks_handler.py
(the session server's ``team`` model, on the tiny model).

The example caps the output at 64 tokens whichever field the client uses, finds its team
header in any spelling, answers a team over its quota with the public 429, and every
overridden hook is timed in the ``HookLatency`` histogram.
"""

from __future__ import annotations

import json
import re
import runpy
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import base_url, client

EXAMPLE = Path(__file__).resolve().parents[2] / "handlers" / "example_hooks_handler.py"
HI = [{"role": "user", "content": "hi"}]
#: without the cap the tiny model would run to 1000 tokens: it never stops on its own
LONG = {"max_completion_tokens": 1000, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def example() -> dict:
    """The example handler's settings (its module's globals)."""
    return runpy.run_path(str(EXAMPLE))


def team_client(server, key, team: str):
    """The official client for ``team``, sending the team header as Python's urllib spells it."""
    return client(server, key, "team").with_options(default_headers={"X-Team": team})


def fresh_team(name: str) -> str:
    """A team of its own per test: each team has its own quota."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_max_completion_tokens_cannot_bypass_the_cap(server, key, example):
    cap = example["MAX_TOKENS_CAP"]
    team = team_client(server, key, fresh_team("cap"))
    reply = team.chat.completions.create(model="tiny", messages=HI, **LONG)
    assert reply.usage.completion_tokens == cap
    assert reply.choices[0].finish_reason == "length"
    assert reply.model_extra["x_tsvllm_example"]["max_tokens_cap"] == cap

    chunks = list(
        team.chat.completions.create(
            model="tiny",
            messages=HI,
            stream=True,
            stream_options={"include_usage": True},
            **LONG,
        )
    )
    assert chunks[-1].usage.completion_tokens == cap
    finished = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finished[-1] == "length"


@pytest.mark.parametrize("spelling", ["x-team", "X-Team", "X-TEAM"])
def test_the_team_header_is_found_in_any_spelling(server, key, spelling):
    team = fresh_team("spelling")
    reply = httpx.post(
        f"{base_url(server, 'team')}/chat/completions",
        json={"model": "tiny", "messages": HI, "max_tokens": 2},
        headers={"Authorization": f"Bearer {key}", spelling: team},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["x_tsvllm_example"]["team"] == team


class EagerStream(threading.Thread):
    """Reads a streamed chat reply as fast as it comes, noting when each event arrived."""

    def __init__(self, url: str, headers: dict[str, str], body: dict):
        super().__init__(daemon=True)
        self.url, self.headers, self.body = url, headers, body
        self.status: int | None = None
        self.events: list[tuple[float, str]] = []
        self.first = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST", self.url, json=self.body, headers=self.headers, timeout=120
            ) as resp:
                self.status = resp.status_code
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        self.events.append((time.monotonic(), line[6:]))
                        self.first.set()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.first.set()


def test_a_team_over_its_quota_gets_429_while_a_stream_completes_whole(server, key, example):
    url = f"{base_url(server, 'team')}/chat/completions"
    auth = {"Authorization": f"Bearer {key}"}
    busy = {**auth, "X-Team": fresh_team("quota")}
    short = {"model": "tiny", "messages": HI, "max_tokens": 1}
    for _ in range(example["TEAM_REQUESTS_PER_MINUTE"]):
        assert httpx.post(url, json=short, headers=busy, timeout=120).status_code == 200

    stream = EagerStream(
        url,
        {**auth, "X-Team": fresh_team("streaming")},
        {
            "model": "tiny",
            "messages": HI,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        },
    )
    stream.start()
    assert stream.first.wait(120) and stream.error is None and stream.status == 200
    refused = httpx.post(url, json=short, headers=busy, timeout=120)
    refused_at = time.monotonic()
    stream.join(120)
    assert not stream.is_alive() and stream.error is None

    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"].startswith("application/json")
    retry_after = refused.headers["Retry-After"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("RateLimitError", "rate_limit_exceeded")
    assert "retry in" in error["message"]

    # the stream was still running when the 429 came back, and it is whole
    assert stream.events[-1][0] > refused_at
    assert stream.events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in stream.events[:-1]]
    assert all("error" not in c for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == example["MAX_TOKENS_CAP"]
    finished = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finished[-1] == "length"


def test_hook_latency_reaches_prometheus_by_stage(server, key):
    team = team_client(server, key, fresh_team("timed"))
    team.chat.completions.create(model="tiny", messages=HI, max_tokens=2)
    url = f"http://127.0.0.1:{server.ports.metrics}/metrics"
    deadline = time.monotonic() + 30
    while True:  # the frontend reads the worker's metric lines as they are logged
        lines = httpx.get(url, timeout=30).text.splitlines()
        counts = {  # this model's series (other models on the server time their hooks too)
            stage: [
                ln
                for ln in lines
                if ln.startswith("HookLatency_count") and stage in ln and 'ModelName="team"' in ln
            ]
            for stage in ('Stage="on_request"', 'Stage="on_response"')
        }
        if all(counts.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for stage, found in counts.items():
        assert found, f"no HookLatency_count of model team with {stage}"
        assert float(found[0].rsplit(" ", 1)[1]) >= 1
    buckets = [ln for ln in lines if ln.startswith("HookLatency_bucket")]
    assert any('le="0.005"' in ln for ln in buckets)  # seconds, in Prometheus' default buckets
    labels = {name for ln in buckets for name in re.findall(r'(\w+)="', ln)}
    assert labels == {"Stage", "ModelName", "Level", "Hostname", "le"}  # never the request
