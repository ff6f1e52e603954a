"""``tsvllm bench abandon``: what clients that leave cost, on vLLM's own server (side a) and
on TorchServe + VLLMHandler (side b), in one run.

For each side: the latency of a request on the idle server; then ``--streams`` clients
each open a long stream (``--tokens`` tokens, ``ignore_eos``) and hang up after its first
event; reported: how long until the engine runs no request (side a: vLLM's
``vllm:num_requests_running`` on ``/metrics``; side b: the handler's ``health`` route,
the same engine count), and the latency of a request sent right then, against the idle
one. vLLM's server aborts a request whose client disconnects; through TorchServe, tsvllm's
frontend plugin tells the worker (docs/TORCHSERVE.md). Both sides stop at the end.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from tsvllm.bench.serve import bench_config, first_token_s, start_side


def running_requests(url: str, side: str) -> int:
    """Requests the side's engine runs now."""
    import httpx

    if side == "a":
        text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=10).text
        return int(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("vllm:num_requests_running{")
            )
        )
    return int(
        httpx.get(url.removesuffix("/v1") + "/health", timeout=10).json()["running_requests"]
    )


def request_s(url: str, served: str, *, tokens: int) -> float:
    """Seconds one completion of ``tokens`` tokens takes."""
    import httpx

    body = {"model": served, "prompt": "hello", "max_tokens": tokens, "ignore_eos": True}
    t0 = time.monotonic()
    httpx.post(f"{url}/completions", json=body, timeout=300).raise_for_status()
    return time.monotonic() - t0


async def _abandon(url: str, served: str, *, streams: int, tokens: int) -> None:
    import httpx

    body = {
        "model": served,
        "prompt": "go on",
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
    }
    limits = httpx.Limits(max_connections=streams)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def one() -> None:
            async with client.stream("POST", f"{url}/completions", json=body) as reply:
                async for line in reply.aiter_lines():
                    if line.startswith("data: "):
                        return  # leaving the block closes the connection mid-stream

        await asyncio.gather(*(one() for _ in range(streams)))


def measure(
    url: str, served: str, side: str, *, streams: int, tokens: int, probe_tokens: int
) -> dict[str, Any]:
    idle = statistics.median(request_s(url, served, tokens=probe_tokens) for _ in range(3))
    asyncio.run(_abandon(url, served, streams=streams, tokens=tokens))
    left = time.monotonic()
    busy_s = None
    while time.monotonic() - left < 120:
        if running_requests(url, side) == 0:
            busy_s = time.monotonic() - left
            break
        time.sleep(0.1)
    after = request_s(url, served, tokens=probe_tokens)
    return {
        "engine_busy_after_leave_s": None if busy_s is None else round(busy_s, 2),
        "idle_request_s": round(idle, 3),
        "request_after_leave_s": round(after, 3),
        "after_over_idle": round(after / idle, 2),
    }


def run(
    *,
    model_dir: Path,
    config: Path,
    workdir: Path,
    streams: int,
    tokens: int,
    probe_tokens: int,
    progress: Any = print,
) -> dict[str, Any]:
    cfg, served = bench_config(config, model_dir=model_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"streams": streams, "tokens": tokens, "probe_tokens": probe_tokens}
    for name in ("a", "b"):  # one at a time: each side has the machine to itself
        progress(f"bench abandon: starting side {name}")
        start = time.monotonic()
        side = start_side(name, cfg, workdir=workdir)
        try:
            first_token_s(side.url, served, start=start, proc=side.proc)
            report[name] = measure(
                side.url, served, name, streams=streams, tokens=tokens, probe_tokens=probe_tokens
            )
        finally:
            side.stop()
    return report


def main(
    *,
    model_dir: str,
    config: str,
    workdir: str,
    streams: int,
    tokens: int,
    probe_tokens: int,
    json_path: str | None,
) -> int:
    report = run(
        model_dir=Path(model_dir).resolve(),
        config=Path(config),
        workdir=Path(workdir).resolve(),
        streams=streams,
        tokens=tokens,
        probe_tokens=probe_tokens,
    )
    print(json.dumps(report, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    return 0
