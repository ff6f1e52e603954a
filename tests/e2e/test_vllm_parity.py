"""tsvllm through TorchServe beside `vllm serve`, same model, same engine arguments: the same
validation errors, byte for byte; a reply of ~100 MB delivered whole (TorchServe's frontend
drops a worker whose reply frame is over ``max_response_size``); an OpenAI 413 for a body
over the handler's limit or over the frontend's own.

SmolLM2 with ``max_logprobs: -1`` (the whole vocabulary), so that ``prompt_logprobs: -1``
makes a chat reply of ~100 MB, as vLLM's own test of it does.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import STARTUP_TIMEOUT, archive, base_url, client, started
from tests.e2e.ts_features import describe
from tsvllm import contract
from tsvllm.bench.serve import first_token_s, start_side
from tsvllm.config import load_model_config
from tsvllm.host.torchserve import TorchServe

MODEL = "smollm2"
ENGINE_ARGS = {
    **load_model_config(
        Path(__file__).parents[2] / "model_configs" / "smollm2-cpu.yaml"
    ).handler.vllm_engine_config,
    "max_logprobs": -1,
}


@pytest.fixture(scope="module")
def sides(tmp_path_factory, smollm2_model) -> Iterator[dict]:
    """``{"a": vllm serve's /v1 URL, "ts": the TorchServe, "key": its key}``."""
    root = tmp_path_factory.mktemp("parity")
    store = root / "model_store"
    archive(
        "smollm2-cpu.yaml",
        model=smollm2_model,
        store=store,
        name=MODEL,
        vllm_engine_config=ENGINE_ARGS,
    )
    cfg = load_model_config(store.parent / f"{MODEL}-config.yaml")
    ts = TorchServe(workdir=root / "ts", model_store=store, models=[MODEL])
    vllm_serve = None
    try:
        start = time.monotonic()
        vllm_serve = start_side("a", cfg, workdir=root)  # starts while TorchServe loads
        started(ts, [MODEL])
        first_token_s(
            vllm_serve.url, MODEL, start=start, proc=vllm_serve.proc, timeout=STARTUP_TIMEOUT
        )
        yield {"a": vllm_serve.url, "ts": ts, "key": ts.keys()["inference"]}
    finally:
        if vllm_serve is not None:
            vllm_serve.stop()
        ts.stop()


#: bodies vLLM's request schemas reject, per route
BAD_BODIES = [
    ("completions", {"model": MODEL, "prompt": "hi", "seed": 2**64}),
    ("completions", {"model": MODEL, "prompt": "hi", "seed": -(2**63) - 1}),
    ("completions", {"model": MODEL, "prompt": "hi", "max_tokens": "many"}),
    ("completions", {"model": MODEL, "prompt": "hi", "temperature": "hot"}),
    ("completions", {"model": MODEL}),
    ("completions", {"model": MODEL, "prompt": "hi", "stream_options": {"include_usage": 1}}),
    ("chat/completions", {"model": MODEL}),
    ("chat/completions", {"model": MODEL, "messages": "hi"}),
    ("chat/completions", {"model": MODEL, "messages": [{"content": "hi"}]}),
    ("chat/completions", {"model": MODEL, "messages": [], "top_p": "high"}),
    (
        "chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "seed": 2**64},
    ),
    (
        "chat/completions",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "bogus"},
        },
    ),
]


@pytest.mark.parametrize(("route", "body"), BAD_BODIES, ids=lambda v: json.dumps(v)[:60])
def test_a_validation_error_is_the_one_vllm_serve_writes(sides, route, body):
    theirs = httpx.post(f"{sides['a']}/{route}", json=body, timeout=60)
    ours = httpx.post(
        f"{base_url(sides['ts'], MODEL)}/{route}",
        json=body,
        headers={"Authorization": f"Bearer {sides['key']}"},
        timeout=60,
    )
    assert theirs.status_code == 400, theirs.text  # the body is one vLLM refuses
    assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json())


def _stream(llm: openai.OpenAI, i: int) -> tuple[str | None, str, int | None]:
    """A stream's finish reason, text and usage (its last chunk: the stream ended whole).
    The engine may hand out several tokens in one chunk while the worker is busy."""
    chunks = llm.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"Count from {i} to 400."}],
        max_tokens=200,
        stream=True,
        stream_options={"include_usage": True},
    )
    finish, text, tokens = None, "", None
    for chunk in chunks:
        if chunk.choices:
            finish = chunk.choices[0].finish_reason or finish
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return finish, text, tokens


def test_a_100_mb_reply_arrives_whole_while_4_streams_finish(sides):
    """The reply is over the frontend's max_response_size: before tsvllm sent it in frames,
    the frontend dropped the worker (TooLongFrameException), the worker restarted and the
    client got nothing."""
    ts = sides["ts"]
    [before] = describe(ts, MODEL)[0]["workers"]
    llm = client(ts, sides["key"], MODEL)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 2,
        "prompt_logprobs": -1,
    }
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        big = pool.submit(
            httpx.post,
            f"{base_url(ts, MODEL)}/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {sides['key']}"},
            timeout=600,
        )
        streams = [pool.submit(_stream, llm, i) for i in range(4)]
        reply = big.result()
        outcomes = [s.result() for s in streams]

    assert reply.status_code == 200, reply.text[:500]
    assert len(reply.content) > contract.MAX_RESPONSE_BYTES  # over one frame's limit
    result = json.loads(reply.content)
    prompt_logprobs = result["prompt_logprobs"]
    del reply
    assert len(prompt_logprobs) == result["usage"]["prompt_tokens"]
    assert prompt_logprobs[0] is None  # the first token has no logprob, then the vocabulary
    assert all(len(p) >= 49152 for p in prompt_logprobs[1:])
    for finish, text, tokens in outcomes:
        assert finish in ("stop", "length") and text and tokens, outcomes

    [after] = describe(ts, MODEL)[0]["workers"]
    assert (after["pid"], after["status"]) == (before["pid"], "READY")
    log = (ts.workdir / "logs" / "ts_log.log").read_text(errors="replace")
    assert "TooLongFrameException" not in log and "Worker disconnected" not in log


@pytest.mark.parametrize(
    ("size", "setting"),
    [(2 << 20, "handler.max_body_bytes"), (10 << 20, "max_request_size")],
    ids=["over-the-handler-limit", "over-the-frontend-limit"],
)
def test_a_body_over_a_limit_gets_an_openai_413(sides, size, setting):
    assert contract.MAX_BODY_BYTES < 2 << 20 < contract.MAX_REQUEST_BYTES < 10 << 20
    llm = client(sides["ts"], sides["key"], MODEL)
    with pytest.raises(openai.APIStatusError) as info:
        llm.completions.create(model=MODEL, prompt="x" * size, max_tokens=1)
    assert info.value.status_code == 413
    error = info.value.body
    assert error["type"] == "PayloadTooLargeError" and error["code"] == 413
    assert setting in error["message"]
