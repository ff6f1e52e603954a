"""Streamed chat completions read in threads while a server drains or stops: their events,
usage, and how each ended."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import httpx

STREAMS = 12
TOKENS = 400
LONG = 1500  # tokens: streams that last well over 10 s here
STOP_MARGIN = 30  # abort wait + stop, on top of the drain timeout


@dataclass
class Stream:
    """One streamed chat completion read in a thread: its events, usage, how it ended."""

    url: str
    max_tokens: int
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    done: bool = False
    error: BaseException | None = None
    started: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": self.max_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            with httpx.stream(
                "POST", self.url, json=body, headers=self.headers, timeout=300
            ) as resp:
                assert resp.status_code == 200, resp.read()
                for line in resp.iter_lines():
                    self._line(line)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc
        finally:
            self.started.set()

    def _line(self, line: str) -> None:
        if not line.startswith("data: "):
            return
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            self.done = True
            return
        self.events.append(json.loads(data))
        self.started.set()

    @property
    def usage(self) -> dict | None:
        return next((e["usage"] for e in self.events if e.get("usage")), None)

    @property
    def errors(self) -> list[dict]:
        return [e["error"] for e in self.events if "error" in e]


def start_streams(
    url: str,
    *,
    model: str,
    max_tokens: int = TOKENS,
    headers: dict[str, str] | None = None,
    count: int = STREAMS,
) -> list[tuple[Stream, threading.Thread]]:
    """``count`` streams, each running (with a first event) when this returns."""
    streams = [Stream(url, max_tokens, model, dict(headers or {})) for _ in range(count)]
    threads = [threading.Thread(target=s.run, daemon=True) for s in streams]
    for t in threads:
        t.start()
    for s in streams:
        assert s.started.wait(120), "a stream never started"
        assert s.error is None, s.error
    return list(zip(streams, threads, strict=True))


def join(running: list[tuple[Stream, threading.Thread]], *, timeout: float) -> list[Stream]:
    deadline = time.monotonic() + timeout
    for _, t in running:
        t.join(max(0.0, deadline - time.monotonic()))
    return [s for s, _ in running]


def finished_whole(streams: list[Stream], tokens: int, *, log: str = "") -> None:
    """Every stream ended with ``[DONE]``, no error event, and usage of ``tokens``."""
    for s in streams:
        assert s.error is None and s.done, (s.error, s.events[-3:], log)
        assert s.errors == [], (s.errors, log)
        assert s.usage is not None and s.usage["completion_tokens"] == tokens, s.usage


def short_request(url: str, *, model: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(url, json=body, headers=headers, timeout=60)


def poll_status(
    url: str,
    want: int,
    *,
    model: str,
    headers: dict[str, str] | None = None,
    within: float = 15.0,
) -> httpx.Response:
    """Short requests until one gets status ``want`` (a worker sees a drain file, or its
    removal, within a second or two), or ``within`` seconds pass: the last reply."""
    deadline = time.monotonic() + within
    while True:
        reply = short_request(url, model=model, headers=headers)
        if reply.status_code == want or time.monotonic() > deadline:
            return reply
        time.sleep(0.2)
