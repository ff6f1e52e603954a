"""The bench's null engine on vLLM's real engine path (tsvllm's VllmEngine, AsyncLLM, the
EngineCore process and its scheduler; no model): completions and chat, whole and streamed,
come back as the detokenized text of the token ids it emits, longer than their cycle."""

from __future__ import annotations

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.integration.engines import running_engine
from tsvllm.engine.base import Api
from tsvllm.engine.null_tokens import EXECUTOR, NullTokens

ENGINE_ARGS = {
    "max_model_len": 1024,
    "enforce_eager": True,
    "dtype": "bfloat16",
    "distributed_executor_backend": EXECUTOR,
}
TOKENS = 90  # more than the cycle of token ids: it wraps


@pytest.fixture(scope="module")
def engine(tiny_model):
    with running_engine(tiny_model, engine_args=ENGINE_ARGS) as running:
        yield running


@pytest.fixture(scope="module")
def expected_text(tiny_model) -> str:
    from transformers import AutoTokenizer

    from tsvllm.engine.null_executor import token_ids

    ids = token_ids(str(tiny_model))
    assert len(ids) < TOKENS
    return AutoTokenizer.from_pretrained(str(tiny_model)).decode(
        NullTokens(token_ids=ids).expected_ids(TOKENS)
    )


def test_a_completion_is_the_detokenized_cycle(engine, expected_text):
    eng, loop = engine
    body = {"model": "tiny", "prompt": "hello there", "max_tokens": TOKENS}
    full = Completion.model_validate(
        loop.run_until_complete(eng.generate(Api.COMPLETIONS, body, request_id="n1"))
    )
    assert full.choices[0].text == expected_text
    assert full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == TOKENS


def test_a_streamed_chat_is_the_same_text_in_chunks(engine, expected_text):
    eng, loop = engine
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    async def stream():
        events = await eng.generate(Api.CHAT, body, request_id="n2")
        return [ChatCompletionChunk.model_validate(e.payload) async for e in events]

    chunks = loop.run_until_complete(stream())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text
    assert chunks[-1].usage.completion_tokens == TOKENS
    whole = ChatCompletion.model_validate(
        loop.run_until_complete(
            eng.generate(
                Api.CHAT, {**body, "stream": False, "stream_options": None}, request_id="n3"
            )
        )
    )
    assert whole.choices[0].message.content == expected_text
