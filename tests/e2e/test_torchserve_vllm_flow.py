"""TorchServe's own vLLM end-to-end flow (pytorch/serve test/pytest/test_example_vllm.py),
run against tsvllm on CPU: its model-config.yaml (LoRA keys, served_model_name inside
vllm_engine_config, chat_template as a file shipped with --extra-files, an adapter),
archived with the torch-model-archiver CLI, registered through the management API, then
its completions (streamed and not, base model and adapter), chat and POST v1/models.

Only what cannot hold on a CPU machine changes: deviceType cpu, no parallelType /
parallelLevel / tensor_parallel_size, the tiny model and an adapter made here instead of
Llama 3.1 8B and its downloaded adapter, so the expected texts are the tiny model's own
(greedy: the same every time; a stream adds up to the full answer).
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from tests.e2e import ts_features as tf
from tests.e2e.lora import build_lora
from tsvllm.host.torchserve import TorchServe

NAME = "Meta-Llama-31-8B"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def yaml_config(model, adapter) -> str:
    """TorchServe's YAML_CONFIG, CPU edition (see the module docstring)."""
    return f"""
# TorchServe frontend parameters
minWorkers: 1
maxWorkers: 1
batchSize: 1
maxBatchDelay: 100
responseTimeout: 1200
deviceType: "cpu"
asyncCommunication: true

handler:
    model_path: "{model}"
    vllm_engine_config:
        enable_lora: true
        max_loras: 4
        max_lora_rank: 32
        max_cpu_loras: 4
        max_num_seqs: 16
        max_model_len: 250
        served_model_name:
            - "{NAME}"

    chat_template: "chat_template.txt"

    adapters:
        adapter_1: "{adapter}"
"""


@pytest.fixture(scope="module")
def registered(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("ts-vllm-flow")
    work = root / "work"
    work.mkdir()
    adapter = build_lora(tiny_model, root / "adapter")
    (work / "model-config.yaml").write_text(yaml_config(tiny_model, adapter))
    (work / "chat_template.txt").write_text(CHAT_TEMPLATE)
    store = root / "model_store"
    store.mkdir()
    ts = TorchServe(
        workdir=root / "ts",
        model_store=store,
        models=[],
        auth="off",
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},  # vLLM would reserve ~14 GiB of RAM
        config_extra={"enable_model_api": "true"},
    )
    try:
        ts.start()
        wait_for_management(ts)
        tf.cli_archive(
            work / "model-config.yaml",
            name=NAME,
            version="1.0",
            fmt="no-archive",
            export=store,
            cwd=work,
            extra_files=[work / "chat_template.txt"],
        )
        reply, _ = tf.register(ts, NAME, NAME)
        assert reply.status_code == 200, reply.text
        tf.wait_probe(ts, NAME, "1.0")
        yield ts
    finally:
        ts.stop()


def wait_for_management(ts: TorchServe, *, timeout: float = 180) -> None:
    """The frontend serves no model yet: wait until its management API answers."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with tf.management(ts) as api:
                if api.get("/models").status_code == 200:
                    return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise AssertionError(f"TorchServe's management API did not answer; see {ts.log_path}")


def url(ts: TorchServe, path: str) -> str:
    return f"{ts.inference_url}/predictions/{NAME}/1.0/v1/{path}"


def texts(reply: httpx.Response, field: str) -> str:
    """The text of a (streamed or whole) completion/chat reply."""
    if reply.headers.get("content-type", "").startswith("text/event-stream"):
        out = ""
        for line in reply.text.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choice = json.loads(line[6:])["choices"][0]
                out += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
        return out
    choice = reply.json()["choices"][0]
    return choice["text"] if field == "text" else choice["message"]["content"]


def post(ts: TorchServe, path: str, body: dict) -> httpx.Response:
    reply = httpx.post(url(ts, path), json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    if body.get("stream"):
        assert reply.headers["transfer-encoding"] == "chunked"
    return reply


def test_vllm_lora_prompts_stream_and_the_adapter_changes_the_answer(registered):
    prompt = {"prompt": "Paris is,", "logprobs": 1, "max_tokens": 20, "temperature": 0.0}
    prompt.update(top_p=0.1, seed=42, stream=True)
    base = texts(post(registered, "completions", {**prompt, "model": NAME}), "text")
    tuned = texts(post(registered, "completions", {**prompt, "model": "adapter_1"}), "text")
    again = texts(post(registered, "completions", {**prompt, "model": NAME}), "text")
    assert len(base) > 1 and len(tuned) > 1
    assert base == again  # greedy: the same answer every time
    assert tuned != base  # the adapter is applied


@pytest.mark.parametrize("stream", [True, False])
def test_openai_api_completions(registered, stream):
    """Streamed: the chunks add up to the whole answer. Whole: a valid OpenAI completion
    whose text is exactly its tokens (logprobs), as many as its usage counts."""
    body = {"model": NAME, "prompt": "Hello world", "temperature": 0.0, "max_tokens": 16}
    whole = post(registered, "completions", {**body, "stream": False, "logprobs": 1})
    if stream:
        streamed = texts(post(registered, "completions", {**body, "stream": True}), "text")
        assert len(streamed) > 0 and streamed == texts(whole, "text")
        return
    out = Completion.model_validate(whole.json())
    tokens = out.choices[0].logprobs.tokens
    assert len(out.choices[0].text) > 0 and "".join(tokens) == out.choices[0].text
    assert len(tokens) == out.usage.completion_tokens


@pytest.mark.parametrize("stream", [True, False])
def test_openai_api_chat_completions(registered, stream):
    """As for completions, with chat's own logprobs (``logprobs: true``)."""
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Who won the world series in 2020?"},
        {"role": "assistant", "content": "The Los Angeles Dodgers won the World Series in 2020."},
        {"role": "user", "content": "Where was it played?"},
    ]
    body = {"model": NAME, "messages": messages, "temperature": 0.0, "max_tokens": 50}
    whole = post(registered, "chat/completions", {**body, "stream": False, "logprobs": True})
    if stream:
        streamed = texts(post(registered, "chat/completions", {**body, "stream": True}), "chat")
        assert len(streamed) > 0 and streamed == texts(whole, "chat")
        return
    out = ChatCompletion.model_validate(whole.json())
    tokens = [t.token for t in out.choices[0].logprobs.content]
    assert len(out.choices[0].message.content) > 0
    assert "".join(tokens) == out.choices[0].message.content
    assert len(tokens) == out.usage.completion_tokens


def test_openai_api_models(registered):
    reply = httpx.post(url(registered, "models"), timeout=60)
    models = [m["id"] for m in reply.json()["data"]]
    assert NAME in models and "adapter_1" in models
