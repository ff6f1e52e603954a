"""Vertex AI's envelope on the handler's completion/chat path, behind the fake engine."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.unit.conftest import golden, make_context
from tsvllm.engine.base import Api
from tsvllm.errors import BadRequest
from tsvllm.urls import VERTEX_PREDICT
from tsvllm.worker.adapters import VERTEX, EngineRequest


def predict(handler, body, *, headers=None):
    ctx = make_context(VERTEX_PREDICT, request_id="vx")
    ctx.request_processor[0]._request_header.update(headers or {})
    reply = asyncio.run(handler.handle([{"body": body}], ctx))
    status, _ = ctx.get_response_status(0)
    return status, json.loads(reply[0])


def test_two_instances_are_answered_in_order_with_parameters_as_defaults(handler, engine):
    status, out = predict(
        handler,
        {
            "instances": [{"prompt": "first"}, {"prompt": "second", "max_tokens": 2}],
            "parameters": {"max_tokens": 8, "temperature": 0},
        },
    )
    assert status == 200
    assert out == {"predictions": [golden("completion.json")] * 2}
    calls = sorted(engine.calls, key=lambda c: c[2])
    assert [(c[0], c[2]) for c in calls] == [(Api.COMPLETIONS, "vx-0"), (Api.COMPLETIONS, "vx-1")]
    assert calls[0][1] == {"prompt": "first", "max_tokens": 8, "temperature": 0}
    assert calls[1][1] == {"prompt": "second", "max_tokens": 2, "temperature": 0}


def test_request_format_chat_completions_selects_chat(handler, engine):
    status, out = predict(
        handler,
        {
            "instances": [{"messages": [{"role": "user", "content": "hi"}]}, "plain text"],
            "parameters": {"@requestFormat": "chatCompletions"},
        },
    )
    assert status == 200
    assert out["predictions"] == [golden("chat_completion.json")] * 2
    bodies = {c[2]: c[1] for c in engine.calls}
    assert {c[0] for c in engine.calls} == {Api.CHAT}
    assert "@requestFormat" not in bodies["vx-0"]
    assert bodies["vx-1"] == {"messages": [{"role": "user", "content": "plain text"}]}


def test_predictions_keep_the_instance_order_when_answers_finish_out_of_order(handler, engine):
    async def slow_first(api, body, *, request_id):
        await asyncio.sleep(0.05 if body["prompt"] == "a" else 0)
        return {"echo": body["prompt"]}

    engine.generate = slow_first
    status, out = predict(handler, {"instances": ["a", "b", "c"]})
    assert status == 200
    assert [p["echo"] for p in out["predictions"]] == ["a", "b", "c"]


def test_a_failing_instance_fails_the_request_with_its_index_and_status(handler):
    status, out = predict(
        handler, {"instances": [{"prompt": "ok"}, {"prompt": "x", "model": "nope"}]}
    )
    assert status == 404
    assert out["error"]["message"].startswith("instances[1]: The model `nope` does not exist")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"parameters": {}}, "instances"),
        ({"instances": []}, "instances"),
        ({"instances": [1]}, "instances[0]"),
        ({"instances": ["x"], "parameters": [1]}, "parameters"),
        ({"instances": [{"prompt": "x", "stream": True}]}, "stream"),
    ],
)
def test_malformed_envelopes_are_400_naming_the_field(handler, body, field):
    status, out = predict(handler, body)
    assert status == 400
    assert field in out["error"]["message"]


def test_body_over_1_5_mb_is_413(handler, engine):
    big = {"instances": [{"prompt": "x" * 1_500_001}]}
    status, out = predict(handler, big)
    assert status == 413
    assert "1.5 MB" in out["error"]["message"] and "1500" in out["error"]["message"]
    assert engine.calls == []


def test_content_length_header_counts_when_present(handler, engine):
    status, out = predict(handler, {"instances": ["x"]}, headers={"Content-Length": "1600000"})
    assert status == 413
    status, _ = predict(handler, {"instances": ["x"]}, headers={"content-length": "1500000"})
    assert status == 200


def test_the_adapter_is_pure_translation():
    calls = VERTEX.to_engine({"instances": ["a", {"prompt": "b"}]})
    assert calls == [
        EngineRequest(Api.COMPLETIONS, {"prompt": "a"}),
        EngineRequest(Api.COMPLETIONS, {"prompt": "b"}),
    ]
    with pytest.raises(BadRequest):
        VERTEX.to_engine({"instances": "not a list"})


def test_a_non_object_envelope_is_400(handler):
    status, out = predict(handler, ["not", "an", "object"])
    assert status == 400
    assert "JSON object" in out["error"]["message"]


def test_an_envelope_past_the_deadline_is_504_and_its_engine_requests_are_cancelled(
    handler, engine
):
    handler.request_timeout_s = 0.1
    engine.delay_s = 5  # each instance takes far longer than the deadline
    cancelled = []
    generate = engine.generate

    async def tracking_generate(api, body, *, request_id):
        try:
            return await generate(api, body, request_id=request_id)
        except asyncio.CancelledError:  # vLLM aborts the engine request on cancellation
            cancelled.append(request_id)
            raise

    engine.generate = tracking_generate
    status, out = predict(handler, {"instances": ["a", "b"]})
    assert status == 504 and "request_timeout_s" in out["error"]["message"]
    assert sorted(cancelled) == ["vx-0", "vx-1"]


def test_usage_metrics_are_emitted_for_envelopes(handler, monkeypatch):
    from tsvllm.worker import ts_worker

    emitted = []
    monkeypatch.setattr(
        ts_worker, "emit_metrics", lambda ctx, counters, times_ms, **_: emitted.append(counters)
    )
    status, out = predict(handler, {"instances": ["a", "b", "c"]})
    assert status == 200
    usage = golden("completion.json")["usage"]
    counters = {name: value for name, value, _ in emitted[0]}
    assert counters["PromptTokens"] == 3 * usage["prompt_tokens"]
    assert counters["CompletionTokens"] == 3 * usage["completion_tokens"]
