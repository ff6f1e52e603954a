"""Every route `vllm serve` has, through TorchServe: Responses, Messages, tokenize, version,
with the official clients (openai, anthropic) against the session server's tiny model;
runtime LoRA's routes exist only when ``handler.runtime_lora`` is on (test_runtime_lora.py).
vLLM's own benchmark client runs in tests/e2e/test_torchserve_features.py, on a server
without keys (it sends none to /tokenize)."""

from __future__ import annotations

import httpx


def url(server, path: str, model: str = "tiny") -> str:
    return f"{server.inference_url}/predictions/{model}/1.0/{path}"


def post(server, key, path: str, body: dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(url(server, path), json=body, headers=headers, timeout=120)


def test_responses_api_with_the_openai_sdk(tiny):
    response = tiny.responses.create(model="tiny", input="hello", max_output_tokens=8)
    assert response.object == "response" and response.model == "tiny"
    assert response.output_text  # noise from the tiny model, but text
    assert response.usage.output_tokens == 8


def test_responses_api_streams_with_the_openai_sdk(tiny):
    events = list(tiny.responses.create(model="tiny", input="hi", max_output_tokens=6, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text
    assert events[-1].response.usage.output_tokens == 6


def test_messages_api_with_the_anthropic_sdk(server, key):
    from anthropic import Anthropic

    client = Anthropic(base_url=url(server, ""), api_key=key, max_retries=0)
    message = client.messages.create(
        model="tiny", max_tokens=8, messages=[{"role": "user", "content": "hello"}]
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 8
    count = client.messages.count_tokens(
        model="tiny", messages=[{"role": "user", "content": "hello"}]
    )
    assert count.input_tokens == message.usage.input_tokens


def test_tokenize_and_detokenize_round_trip(server, key):
    text = "The quick brown fox"
    tokens = post(server, key, "tokenize", {"model": "tiny", "prompt": text})
    assert tokens.status_code == 200, tokens.text
    ids = tokens.json()["tokens"]
    assert ids and tokens.json()["count"] == len(ids)
    back = post(server, key, "detokenize", {"model": "tiny", "tokens": ids})
    assert back.status_code == 200 and text in back.json()["prompt"]


def test_version_and_an_unknown_route_that_lists_every_route(server, key):
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(url(server, "version"), headers=headers, timeout=30).json()["version"]
    missing = httpx.get(url(server, "v1/nope"), headers=headers, timeout=30)
    assert missing.status_code == 404
    message = missing.json()["error"]["message"]
    for route in ("/v1/responses", "/v1/messages", "/tokenize", "/detokenize", "/version"):
        assert route in message


def test_guards_apply_on_the_responses_api(rag):
    """The rag model's output guard denies "Paris": on v1/responses too, full and streamed."""
    ask = {"model": "smollm2", "input": "What is the capital of France?", "temperature": 0}
    response = rag.responses.create(max_output_tokens=24, **ask)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "content_filter"
    assert "Paris" not in response.output_text
    events = list(rag.responses.create(max_output_tokens=24, stream=True, **ask))
    assert events[-1].type == "response.incomplete"
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "Paris" not in streamed


def test_without_runtime_lora_the_routes_do_not_exist(server, key):
    reply = httpx.post(
        url(server, "v1/load_lora_adapter"),
        json={"lora_name": "x", "lora_path": "/nope"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert reply.status_code == 404
