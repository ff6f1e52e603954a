"""handlers/example_hooks_handler.py: the example hooks turn bad input into 400s."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

from tsvllm.engine.base import Api
from tsvllm.errors import BadRequest
from tsvllm.worker.hooks import RequestContext

EXAMPLE = Path(__file__).resolve().parents[2] / "handlers" / "example_hooks_handler.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("example_hooks_handler", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_request(example, body):
    handler = example.TeamCapHandler()
    ctx = RequestContext(
        request_id="r1", route="v1/chat/completions", api=Api.CHAT, headers={"x-team": "search"}
    )
    return asyncio.run(handler.on_request(body, ctx))


@pytest.mark.parametrize("bad", ["abc", -5, 0, [64], {"n": 1}, True, 1.5])
def test_a_bad_max_tokens_is_a_400_naming_max_tokens(example, bad):
    with pytest.raises(BadRequest) as err:
        on_request(example, {"messages": [], "max_tokens": bad})
    assert err.value.param == "max_tokens"
    assert "max_tokens" in err.value.message and "positive integer" in err.value.message


@pytest.mark.parametrize(("given", "sent"), [(None, 64), (10, 10), (500, 64), ("12", 12), (64, 64)])
def test_max_tokens_is_capped(example, given, sent):
    body = {"messages": []}
    if given is not None:
        body["max_tokens"] = given
    assert on_request(example, body)["max_tokens"] == sent
