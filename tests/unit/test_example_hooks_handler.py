"""handlers/example_hooks_handler.py: the cost guard, the team header and the team quota."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

from tests.unit.conftest import make_context
from tsvllm.engine.base import Api
from tsvllm.errors import BadRequest, ClientError
from tsvllm.worker.hooks import RequestContext

EXAMPLE = Path(__file__).resolve().parents[2] / "handlers" / "example_hooks_handler.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("example_hooks_handler", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_request(example, body, *, api=Api.CHAT, team="search", handler=None):
    handler = handler or example.TeamCapHandler()
    ctx = RequestContext(
        request_id="r1", route="v1/chat/completions", api=api, headers={"X-Team": team}, body=body
    )
    return asyncio.run(handler.on_request(body, ctx)), ctx


@pytest.mark.parametrize("bad", ["abc", -5, [64], {"n": 1}, True, 1.5])
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_a_bad_cap_is_a_400_naming_its_field(example, bad, field):
    with pytest.raises(BadRequest) as err:
        on_request(example, {"messages": [], field: bad})
    assert err.value.param == field
    assert field in err.value.message and "positive integer" in err.value.message


@pytest.mark.parametrize(
    ("body", "cap"),
    [
        ({}, 64),
        ({"max_tokens": 10}, 10),
        ({"max_tokens": 500}, 64),
        ({"max_tokens": "12"}, 12),
        ({"max_completion_tokens": 1000}, 64),  # the bypass: vLLM reads this field first
        ({"max_completion_tokens": 1000, "max_tokens": 8}, 64),
        ({"max_completion_tokens": 8, "max_tokens": 1000}, 8),
        ({"max_completion_tokens": None, "max_tokens": 1000}, 64),
    ],
)
def test_chat_output_is_capped_whichever_field_the_client_used(example, body, cap):
    sent, ctx = on_request(example, {"messages": [], **body})
    assert ctx.request.max_output_tokens == cap
    # what vLLM 0.32 reads for chat: max_completion_tokens when set, else max_tokens
    given = sent.get("max_completion_tokens")
    given = sent.get("max_tokens") if given is None else given
    assert int(given) == cap


@pytest.mark.parametrize(
    ("body", "cap"), [({}, 16), ({"max_tokens": 500}, 64), ({"max_tokens": 9}, 9)]
)
def test_completions_output_is_capped(example, body, cap):
    sent, ctx = on_request(example, {"prompt": "hi", **body}, api=Api.COMPLETIONS)
    assert ctx.request.max_output_tokens == cap
    assert sent.get("max_tokens", 16) == cap  # vLLM's default for completions is 16


def test_the_team_header_is_found_in_any_spelling(example):
    for name in ("x-team", "X-Team", "X-TEAM"):
        handler = example.TeamCapHandler()
        ctx = RequestContext(
            request_id="r1", route="v1/chat/completions", api=Api.CHAT, headers={name: "a"}
        )
        asyncio.run(handler.on_request({"messages": []}, ctx))
        assert ctx.metadata["team"] == "a"


def test_no_team_header_is_a_400(example):
    with pytest.raises(BadRequest) as err:
        on_request(example, {"messages": []}, team="")
    assert err.value.param == "x-team"


def test_a_team_over_its_quota_gets_429_with_retry_after(example):
    handler = example.TeamCapHandler()
    for _ in range(example.TEAM_REQUESTS_PER_MINUTE):
        on_request(example, {"messages": []}, team="a", handler=handler)
    with pytest.raises(ClientError) as err:
        on_request(example, {"messages": []}, team="a", handler=handler)
    assert (err.value.status, err.value.error_type, err.value.code) == (
        429,
        "RateLimitError",
        "rate_limit_exceeded",
    )
    assert 1 <= int(err.value.headers["Retry-After"]) <= 60
    on_request(example, {"messages": []}, team="b", handler=handler)  # other teams go on


def test_the_quota_window_slides(example):
    handler = example.TeamCapHandler()
    handler.team_limit = 2
    assert handler.admit("a", now=100.0) == 0 and handler.admit("a", now=100.0) == 0
    assert handler.admit("a", now=130.0) == pytest.approx(30.0)  # both leave at 160
    assert handler.admit("b", now=130.0) == 0  # another team has its own count
    assert handler.admit("a", now=160.0) == 0 and handler.admit("a", now=160.0) == 0
    assert handler.admit("a", now=160.0) == pytest.approx(60.0)
    handler.MAX_TEAMS = 1
    handler.admit("c", now=1000.0)
    handler.admit("d", now=1000.0)
    assert set(handler.sent) == {"c", "d"}  # "a" and "b", idle for a window, were forgotten


def test_the_handler_file_defines_one_class_as_torchserve_requires(example):
    import inspect

    from ts.model_loader import TsModelLoader

    classes = [c for _, c in inspect.getmembers(example, inspect.isclass)]
    assert [c for c in classes if c.__module__ == example.__name__] == [example.TeamCapHandler]
    entry, _ = TsModelLoader()._get_class_entry_point(example)  # TorchServe's own check
    assert callable(entry)


def test_through_the_handler_the_429_is_the_reply_with_retry_after(example, engine):
    handler = example.TeamCapHandler()
    handler.engine = engine
    handler.initialized = True
    handler.team_limit = 1
    replies = []
    for _ in range(2):
        ctx = make_context("v1/chat/completions", headers={"X-Team": "a"})
        body = {"messages": [], "max_completion_tokens": 1000}
        replies.append((ctx, asyncio.run(handler.handle([{"body": body}], ctx))[0]))
    (ok_ctx, ok), (refused_ctx, refused) = replies
    assert ok_ctx.get_response_status(0)[0] == 200
    assert engine.calls[0][1]["max_completion_tokens"] == 64
    assert json.loads(ok)["x_tsvllm_example"] == {"team": "a", "max_tokens_cap": 64}
    assert refused_ctx.get_response_status(0)[0] == 429
    assert refused_ctx.get_response_headers(0)["Retry-After"].isdigit()
    error = json.loads(refused)["error"]
    assert (error["type"], error["code"]) == ("RateLimitError", "rate_limit_exceeded")
    assert len(engine.calls) == 1  # the refused request never reached the engine
