"""The vLLM adapter on a real engine (no TorchServe): args, generation, abort."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.engines import running_engine
from tsvllm.engine.base import Api
from tsvllm.engine.vllm_engine import (
    EngineArgsError,
    engine_argv,
    parse_engine_args,
)
from tsvllm.errors import BadRequest, NotFound

ENGINE_ARGS = {"max_model_len": 1024, "enforce_eager": True, "dtype": "bfloat16"}


def test_vllm_parser_rejects_a_misspelled_engine_arg():
    with pytest.raises(EngineArgsError, match="max-modle-len|max_modle_len"):
        parse_engine_args(engine_argv(model="/m", engine_args={"max_modle_len": 1}))


def test_vllm_parser_rejects_a_bad_value():
    with pytest.raises(EngineArgsError, match="dtype"):
        parse_engine_args(engine_argv(model="/m", engine_args={"dtype": "float13"}))


def test_vllm_parser_accepts_known_args():
    args = parse_engine_args(engine_argv(model="/m", engine_args=ENGINE_ARGS))
    assert (args.max_model_len, args.enforce_eager) == (1024, True)


@pytest.fixture(scope="module")
def engine(tiny_model):
    with running_engine(tiny_model, engine_args=ENGINE_ARGS) as running:
        yield running


def test_generate_full_and_stream(engine):
    eng, loop = engine
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 5, "ignore_eos": True}
    full = loop.run_until_complete(eng.generate(Api.COMPLETIONS, body, request_id="r1"))
    assert full["usage"]["completion_tokens"] == 5

    async def stream():
        events = await eng.generate(Api.COMPLETIONS, {**body, "stream": True}, request_id="r2")
        return [e.payload async for e in events]

    chunks = loop.run_until_complete(stream())
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_schema_and_model_errors_are_ours(engine):
    eng, loop = engine
    with pytest.raises(BadRequest):
        loop.run_until_complete(eng.generate(Api.CHAT, {"model": "tiny"}, request_id="r3"))
    with pytest.raises(NotFound):
        loop.run_until_complete(
            eng.generate(Api.COMPLETIONS, {"model": "x", "prompt": "a"}, request_id="r4")
        )


def test_a_schema_error_is_written_as_vllm_serve_writes_it(engine):
    """The message vLLM's own handler writes (pydantic's error type included); the e2e
    parity test compares whole bodies with a running ``vllm serve``."""
    eng, loop = engine
    body = {"model": "tiny", "prompt": "a", "seed": 2**64}
    with pytest.raises(BadRequest) as info:
        loop.run_until_complete(eng.generate(Api.COMPLETIONS, body, request_id="r6"))
    err = info.value
    assert (err.error_type, err.param) == ("Bad Request", "body.seed")
    assert err.message.startswith("1 validation error:\n  {'type': 'less_than_equal', ")
    assert "'loc': 'body.seed'" in err.message


def test_closing_a_stream_early_aborts_the_engine_request(engine):
    eng, loop = engine
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 1000, "ignore_eos": True, "stream": True}

    async def run():
        events = await eng.generate(Api.COMPLETIONS, body, request_id="r5")
        async for _ in events:
            break
        assert eng.running_requests() == 1
        await events.aclose()
        for _ in range(100):
            if eng.running_requests() == 0:
                return True
            await asyncio.sleep(0.05)
        return False

    assert loop.run_until_complete(run())
    assert loop.run_until_complete(eng.health()) is None


def test_vllm_parser_rejects_a_prefix_of_a_real_arg():
    """argparse would take max_num_seq for max_num_seqs; a typo must be an error."""
    with pytest.raises(EngineArgsError, match="max-num-seq"):
        parse_engine_args(engine_argv(model="/m", engine_args={"max_num_seq": 4}))
