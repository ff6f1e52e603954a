"""The OpenAI API through real TorchServe + real vLLM, with the official client and curl."""

from __future__ import annotations

import asyncio
import json
import subprocess

import httpx
import openai
import pytest

from tests.e2e.conftest import base_url

CHAT = [{"role": "user", "content": "Say something."}]


def test_models_list(tiny):
    ids = [m.id for m in tiny.models.list()]
    assert ids == ["tiny", "tiny-alias"]


def test_completion(tiny):
    out = tiny.completions.create(
        model="tiny", prompt="hello", max_tokens=7, extra_body={"ignore_eos": True}
    )
    assert out.object == "text_completion"
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 7 and out.usage.prompt_tokens > 0


def test_chat_completion_by_alias(tiny):
    out = tiny.chat.completions.create(
        model="tiny-alias", messages=CHAT, max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert out.model == "tiny"  # vLLM answers with the first served name
    assert out.choices[0].message.role == "assistant"
    assert out.usage.completion_tokens == 5


def test_vllm_request_fields_pass_through(tiny):
    """n, logprobs, stop and seed reach vLLM's own OpenAI layer unchanged."""
    out = tiny.completions.create(
        model="tiny",
        prompt="a b c",
        max_tokens=4,
        n=2,
        logprobs=2,
        seed=1,
        temperature=1.0,
        stop=["zzzz"],
        extra_body={"ignore_eos": True},
    )
    assert len(out.choices) == 2
    assert all(len(c.logprobs.tokens) == 4 for c in out.choices)
    assert out.usage.completion_tokens == 8


def test_streamed_chat_with_usage(tiny):
    stream = tiny.chat.completions.create(
        model="tiny",
        messages=CHAT,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_streamed_completion(tiny):
    text = "".join(
        c.choices[0].text
        for c in tiny.completions.create(
            model="tiny",
            prompt="hello",
            max_tokens=6,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        if c.choices
    )
    assert text


def test_curl_sees_event_stream_and_done(server, key):
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 3, "stream": True}
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-i",
            "-N",
            f"{base_url(server, 'tiny')}/completions",
            "-H",
            f"Authorization: Bearer {key}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    head, _, sse = out.stdout.partition("\n\n")  # text mode turned \r\n into \n
    assert head.startswith("HTTP/1.1 200")
    assert "content-type: text/event-stream" in head.lower()
    events = [e for e in sse.split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert sse.count("[DONE]") == 1


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "nope", "prompt": "x"}, 404, "does not exist"),
        ({"model": "tiny"}, 400, "prompt"),
        ({"model": "tiny", "prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "x", "temperature": -1}, 400, "temperature"),
        ({"model": "tiny", "prompt": "word " * 3000, "max_tokens": 4}, 400, "context length"),
    ],
)
def test_bad_requests_get_openai_errors(tiny, body, status, needle):
    extra = {k: v for k, v in body.items() if k not in ("model", "prompt")}
    with pytest.raises(openai.APIStatusError) as info:
        tiny.completions.create(
            model=body["model"], prompt=body.get("prompt", openai.NOT_GIVEN), extra_body=extra
        )
    assert info.value.status_code == status
    err = info.value.body
    assert isinstance(err, dict) and set(err) >= {"message", "type", "code"}
    assert needle in err["message"].lower()


def test_malformed_json_and_unknown_route(server, key):
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    url = base_url(server, "tiny")
    bad = httpx.post(f"{url}/chat/completions", content=b"{not json", headers=headers)
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    missing = httpx.post(f"{url}/embeddings", json={"input": "x"}, headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFoundError"


BAD_BODIES = [
    b"{not json",
    b"[1, 2, 3]",
    json.dumps({"model": "tiny"}).encode(),  # no messages
    json.dumps({"model": "nope", "messages": CHAT}).encode(),
    json.dumps({"model": "tiny", "messages": CHAT, "max_tokens": -5}).encode(),
    json.dumps({"model": "tiny", "messages": CHAT, "temperature": "hot"}).encode(),
    json.dumps({"model": "tiny", "messages": "not a list"}).encode(),
    json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "w " * 3000}]}).encode(),
]


def test_malformed_requests_do_not_disturb_concurrent_streams(server, key):
    """16 good streams and 16 bad requests at once: 16 errors, 16 intact streams."""
    from openai import AsyncOpenAI

    url = base_url(server, "tiny")

    async def good(client: AsyncOpenAI) -> tuple[int, str | None]:
        stream = await client.chat.completions.create(
            model="tiny",
            messages=CHAT,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        usage, finish = None, None
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        return usage, finish

    async def bad(http: httpx.AsyncClient, body: bytes) -> httpx.Response:
        return await http.post(f"{url}/chat/completions", content=body)

    async def run():
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with (
            AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=300) as client,
            httpx.AsyncClient(headers=headers, timeout=300) as http,
        ):
            goods = [good(client) for _ in range(16)]
            bads = [bad(http, BAD_BODIES[i % len(BAD_BODIES)]) for i in range(16)]
            return await asyncio.gather(*goods, *bads)

    results = asyncio.run(run())
    assert results[:16] == [(24, "length")] * 16
    for resp in results[16:]:
        assert 400 <= resp.status_code < 500, resp.text
        assert set(resp.json()["error"]) >= {"message", "type", "code"}


def test_smollm2_knows_the_capital_of_france(smollm2):
    out = smollm2.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=30,
        temperature=0,
    )
    assert "Paris" in out.choices[0].message.content
