"""Load generator for ``tsvllm bench serve``: runs in its own process, prints JSON.

    python -m tsvllm.bench.load --base-url URL/v1 --model NAME --requests 64 \\
        --concurrency 16 --max-tokens 32 [--api completions|chat|embeddings] [--stream] \\
        [--api-key KEY]

Completions and chat: sends the same fixed prompts with ``ignore_eos`` (so every request
makes exactly ``max_tokens`` tokens), counts tokens from ``usage`` (never from chunks: vLLM
coalesces deltas), and measures latency, time to first token, inter-token latency (a
request's mean; p50 and p99 over requests) and the chunks streamed (events with choices).
Embeddings (``v1/embeddings``, never streamed): each request embeds ``--max-tokens`` texts
(the load shape's third number is the batch), and the tokens counted are the input tokens
(``usage.prompt_tokens``): tok/s is input tokens embedded per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from typing import Any

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a refrigerator works.",
    "List some facts about the moon.",
    "Describe a busy market in the morning.",
]
#: the APIs a load can drive, and each one's path under the base URL
APIS = {"completions": "completions", "chat": "chat/completions", "embeddings": "embeddings"}


def body_for(api: str, model: str, i: int, *, max_tokens: int) -> dict[str, Any]:
    """Request ``i``'s body: the same prompts for every side (``max_tokens`` is the batch of
    texts for embeddings; the texts differ from request to request, never from side to side)."""
    prompt = PROMPTS[i % len(PROMPTS)]
    if api == "embeddings":
        texts = [f"{PROMPTS[(i + k) % len(PROMPTS)]} (text {i}.{k})" for k in range(max_tokens)]
        return {"model": model, "input": texts}
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
    }
    if api == "chat":
        return {**body, "messages": [{"role": "user", "content": prompt}]}
    return {**body, "prompt": prompt}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def summarize(samples: list[dict[str, Any]], *, wall_s: float) -> dict[str, Any]:
    """Per-run metrics from per-request samples (``latency_s``, ``tokens``, ``ttft_s``...)."""
    ok = [s for s in samples if s.get("error") is None]
    tokens = sum(s["tokens"] for s in ok)
    lat = [s["latency_s"] * 1000 for s in ok]
    ttft = [s["ttft_s"] * 1000 for s in ok if s.get("ttft_s") is not None]
    itl = [s["itl_s"] * 1000 for s in ok if s.get("itl_s") is not None]
    return {
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "tokens": tokens,
        "wall_s": round(wall_s, 3),
        "tok_per_s": round(tokens / wall_s, 1) if wall_s else 0.0,
        "req_per_s": round(len(ok) / wall_s, 2) if wall_s else 0.0,
        "latency_p50_ms": round(percentile(lat, 50), 1),
        "latency_p99_ms": round(percentile(lat, 99), 1),
        "ttft_p50_ms": round(percentile(ttft, 50), 1) if ttft else None,
        "ttft_p99_ms": round(percentile(ttft, 99), 1) if ttft else None,
        "itl_p50_ms": round(statistics.median(itl), 2) if itl else None,
        "itl_p99_ms": round(percentile(itl, 99), 2) if itl else None,
        "chunks": sum(s.get("chunks", 0) for s in ok),
    }


async def _one(client: Any, url: str, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        if not stream:
            resp = await client.post(url, json=body)
            resp.raise_for_status()
            usage = resp.json()["usage"]
            return {
                "latency_s": time.perf_counter() - start,
                # embeddings generate nothing: their work is the input tokens
                "tokens": usage.get("completion_tokens") or usage["prompt_tokens"],
            }
        first = last = None
        tokens = chunks = 0
        async with client.stream(
            "POST", url, json={**body, "stream": True, "stream_options": {"include_usage": True}}
        ) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                now = time.perf_counter()
                if chunk.get("choices"):
                    first = first or now
                    last = now
                    chunks += 1
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        end = time.perf_counter()
        itl = (last - first) / (tokens - 1) if first and last and tokens > 1 else None
        return {
            "latency_s": end - start,
            "tokens": tokens,
            "ttft_s": (first - start) if first else None,
            "itl_s": itl,
            "chunks": chunks,
        }
    except Exception as exc:  # counted, reported, never hidden
        return {"latency_s": time.perf_counter() - start, "tokens": 0, "error": repr(exc)}


async def run(
    *,
    base_url: str,
    model: str,
    requests: int,
    concurrency: int,
    max_tokens: int,
    stream: bool,
    api_key: str | None = None,
    api: str = "completions",
) -> dict[str, Any]:
    import httpx

    if api not in APIS:
        raise ValueError(f"unknown api {api!r}; choose from {', '.join(APIS)}")
    if stream and api == "embeddings":
        raise ValueError("embeddings are not streamed")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    url = f"{base_url}/{APIS[api]}"

    async with httpx.AsyncClient(headers=headers, timeout=600, limits=limits) as client:

        async def go(i: int) -> dict[str, Any]:
            body = body_for(api, model, i, max_tokens=max_tokens)
            async with gate:
                return await _one(client, url, body, stream=stream)

        start = time.perf_counter()
        samples = await asyncio.gather(*(go(i) for i in range(requests)))
        wall = time.perf_counter() - start
    report = summarize(list(samples), wall_s=wall)
    errors = [s["error"] for s in samples if s.get("error")]
    if errors:
        report["first_error"] = errors[0]
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--api", choices=list(APIS), default="completions")
    p.add_argument("--api-key")
    a = p.parse_args(argv)
    report = asyncio.run(
        run(
            base_url=a.base_url,
            model=a.model,
            requests=a.requests,
            concurrency=a.concurrency,
            max_tokens=a.max_tokens,
            stream=a.stream,
            api_key=a.api_key,
            api=a.api,
        )
    )
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
