"""The hook contract: call order, rewrites, refusals, held-back and ended streams; the
request view, case-insensitive headers, the errors a hook raises, hook latency."""

from __future__ import annotations

import asyncio
import json
import textwrap

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.unit.conftest import make_context
from tsvllm.engine.base import Api, StreamEvent
from tsvllm.errors import BadRequest, ClientError, ContentFiltered, to_error_body
from tsvllm.worker.handler import VLLMHandler
from tsvllm.worker.hooks import EndStream, Hooks, overrides


class Recording(VLLMHandler):
    def __init__(self, engine):
        super().__init__()
        self.engine = engine
        self.calls: list[str] = []

    async def on_request(self, body, ctx):
        self.calls.append("on_request")
        if "forbidden" in json.dumps(body):
            raise ContentFiltered("input blocked", categories=["deny.term"])
        ctx.metadata["seen"] = True
        return {**body, "max_tokens": 3}

    async def on_response(self, body, ctx):
        self.calls.append("on_response")
        body["choices"][0]["message"]["content"] = "[rewritten]"
        return body

    async def on_chunk(self, event, ctx):
        self.calls.append("on_chunk")
        choices = event.payload["choices"]
        if choices and choices[0]["delta"].get("content") == "Paris":
            if ctx.metadata.get("end"):
                raise EndStream("content_filter")
            ctx.metadata["held"] = event
            return []
        return [event]

    async def on_stream_end(self, ctx):
        self.calls.append("on_stream_end")
        return [ctx.metadata["held"], StreamEvent.from_payload({"citations": ["doc.md"]})]


def run(handler, body, route="v1/chat/completions"):
    ctx = make_context(route)
    reply = asyncio.run(handler.handle([{"body": body}], ctx))[0]
    return ctx, reply


def test_request_rewrite_reaches_the_engine_and_response_is_rewritten(engine):
    h = Recording(engine)
    ctx, reply = run(h, {"messages": []})
    assert engine.calls[0][1]["max_tokens"] == 3
    assert ChatCompletion.model_validate_json(reply).choices[0].message.content == "[rewritten]"
    assert h.calls == ["on_request", "on_response"]


def test_refusal_is_a_400_content_filter_with_categories(engine):
    h = Recording(engine)
    ctx, reply = run(h, {"messages": [{"role": "user", "content": "forbidden"}]})
    err = json.loads(reply)["error"]
    assert ctx.get_response_status(0)[0] == 400
    assert (err["code"], err["categories"]) == ("content_filter", ["deny.term"])
    assert engine.calls == []  # the engine never saw it


def test_held_back_chunk_is_sent_at_stream_end_before_done(engine):
    h = Recording(engine)
    ctx, last = run(h, {"messages": [], "stream": True})
    sent = [json.loads(p[6:]) for p in ctx.cl_socket.payloads()]
    texts = [c["choices"][0]["delta"].get("content") for c in sent if c["choices"]]
    assert "Paris" not in texts  # held back
    tail = [e for e in last.decode().split("\n\n") if e]
    assert ChatCompletionChunk.model_validate_json(tail[0][6:]).choices[0].delta.content == "Paris"
    assert json.loads(tail[1][6:]) == {"citations": ["doc.md"]}
    assert tail[2] == "data: [DONE]"
    assert h.calls[-1] == "on_stream_end"


def test_end_stream_closes_cleanly_and_aborts(engine):
    h = Recording(engine)

    async def mark(body, ctx):
        ctx.metadata["end"] = True
        return body

    h.on_request = mark
    ctx, last = run(h, {"messages": [], "stream": True})
    final, done = last.decode().split("\n\n")[:2]
    chunk = ChatCompletionChunk.model_validate_json(final[6:])
    assert chunk.choices[0].finish_reason == "content_filter"
    assert chunk.id == "chatcmpl-golden"  # same id as the stream's own chunks
    assert done == "data: [DONE]"
    assert engine.closed_streams == 1
    assert "on_stream_end" not in h.calls


def test_plain_handler_skips_the_chunk_hook():
    assert not overrides(VLLMHandler(), "on_chunk")
    assert overrides(Recording(None), "on_chunk")
    assert Hooks.on_request.__doc__ and Hooks.on_chunk.__doc__


# -- the request view: what vLLM 0.32 will read ---------------------------------------


def view(api, body):
    from tsvllm.worker.hooks import RequestContext

    return RequestContext(request_id="r", route="v1/x", api=api, body=body).request


@pytest.mark.parametrize(
    ("body", "field", "cap"),
    [
        ({}, "max_tokens", None),
        ({"max_tokens": 7}, "max_tokens", 7),
        ({"max_completion_tokens": 9}, "max_completion_tokens", 9),
        ({"max_completion_tokens": 9, "max_tokens": 700}, "max_completion_tokens", 9),
        ({"max_completion_tokens": None, "max_tokens": 700}, "max_tokens", 700),
        ({"max_completion_tokens": "12"}, "max_completion_tokens", 12),
    ],
)
def test_chat_cap_follows_vllm_precedence(body, field, cap):
    request = view(Api.CHAT, {"messages": [{"role": "user", "content": "hi"}], **body})
    assert (request.max_output_tokens_field, request.max_output_tokens) == (field, cap)
    assert request.messages == ({"role": "user", "content": "hi"},) and request.prompt is None


def test_the_view_agrees_with_vllms_own_request_models():
    """The precedence above is vLLM's own: its request models read the same cap."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    model_config = type("ModelConfig", (), {"max_model_len": 2048})()
    for api, request_model, base in (
        (Api.CHAT, ChatCompletionRequest, {"model": "m", "messages": []}),
        (Api.COMPLETIONS, CompletionRequest, {"model": "m", "prompt": "hi"}),
    ):
        for caps in (
            {},
            {"max_tokens": 7},
            {"max_completion_tokens": 9, "max_tokens": 700},
            {"max_completion_tokens": None, "max_tokens": 700},
            {"max_tokens": None},
        ):
            if api is Api.COMPLETIONS and "max_completion_tokens" in caps:
                continue
            body = {**base, **caps}
            theirs = request_model(**body).build_tok_params(model_config).max_output_tokens
            assert (view(api, body).max_output_tokens or 0) == theirs, (api, caps)


@pytest.mark.parametrize(
    ("api", "body", "field", "cap"),
    [
        (Api.COMPLETIONS, {"prompt": "hi"}, "max_tokens", 16),  # vLLM's default
        (Api.COMPLETIONS, {"prompt": "hi", "max_tokens": None}, "max_tokens", 16),
        (Api.COMPLETIONS, {"prompt": "hi", "max_tokens": 3}, "max_tokens", 3),
        (Api.RESPONSES, {"input": "hi", "max_output_tokens": 5}, "max_output_tokens", 5),
        (Api.RESPONSES, {"input": "hi", "max_tokens": 5}, "max_output_tokens", None),
        (Api.MESSAGES, {"messages": [], "max_tokens": 8}, "max_tokens", 8),
    ],
)
def test_other_apis_cap_fields(api, body, field, cap):
    request = view(api, body)
    assert (request.max_output_tokens_field, request.max_output_tokens) == (field, cap)


def test_view_fields_and_raw_access_are_read_only():
    body = {"model": "tiny", "prompt": "hi", "stream": True, "seed": 3}
    request = view(Api.COMPLETIONS, body)
    assert (request.model, request.prompt, request.stream, request.messages) == (
        "tiny",
        "hi",
        True,
        None,
    )
    assert request.body["seed"] == 3  # what the view does not cover
    with pytest.raises(TypeError):
        request.body["seed"] = 4
    with pytest.raises(AttributeError):
        request.model = "other"
    body["model"] = "lora-a"  # the view reads the body as it stands
    assert request.model == "lora-a"
    responses = view(Api.RESPONSES, {"input": [{"role": "user", "content": "x"}]})
    assert responses.messages == ({"role": "user", "content": "x"},) and responses.prompt is None


@pytest.mark.parametrize("bad", [-1, "ten", 2.5, True, [3]])
def test_a_cap_vllm_would_refuse_is_a_400_naming_the_field(bad):
    with pytest.raises(BadRequest) as err:
        _ = view(Api.CHAT, {"max_completion_tokens": bad}).max_output_tokens
    assert err.value.param == "max_completion_tokens"


@pytest.mark.parametrize(
    ("api", "body", "expected"),
    [
        (Api.CHAT, {}, {"max_completion_tokens": 5}),
        (Api.CHAT, {"max_tokens": 900}, {"max_tokens": 5, "max_completion_tokens": 5}),
        (Api.CHAT, {"max_tokens": None}, {"max_tokens": None, "max_completion_tokens": 5}),
        (Api.COMPLETIONS, {}, {"max_tokens": 5}),
        (Api.RESPONSES, {}, {"max_output_tokens": 5}),
        (Api.MESSAGES, {"max_tokens": 900}, {"max_tokens": 5}),
    ],
)
def test_set_max_output_tokens_writes_what_vllm_reads(api, body, expected):
    from tsvllm.worker.hooks import RequestContext

    ctx = RequestContext(request_id="r", route="v1/x", api=api, body={})
    ctx.set_max_output_tokens(body, 5)
    assert body == expected
    assert ctx.request.max_output_tokens == 5  # the view now reads this body
    with pytest.raises(ValueError):
        ctx.set_max_output_tokens(body, 0)


def test_the_view_sees_the_body_on_request_returned(engine):
    seen = {}

    class Capper(VLLMHandler):
        async def on_request(self, body, ctx):
            seen["before"] = ctx.request.max_output_tokens
            body = {**body}  # a new dict: the view follows it after the hook
            ctx.set_max_output_tokens(body, 4)
            return body

        async def on_response(self, body, ctx):
            seen["after"] = ctx.request.max_output_tokens
            return body

    h = Capper()
    h.engine = engine
    run(h, {"messages": [], "max_completion_tokens": 1000})
    assert seen == {"before": 1000, "after": 4}
    assert engine.calls[0][1]["max_completion_tokens"] == 4


# -- headers ----------------------------------------------------------------------------


def test_headers_are_case_insensitive_in_the_hook_context(engine):
    seen = []

    class Reader(VLLMHandler):
        async def on_request(self, body, ctx):
            seen.append((ctx.headers.get("x-team"), "X-TEAM" in ctx.headers, ctx.headers["X-Team"]))
            return body

    h = Reader()
    h.engine = engine
    for spelling in ("x-team", "X-Team", "X-TEAM"):
        ctx = make_context("v1/chat/completions", headers={spelling: "a"})
        asyncio.run(h.handle([{"body": {"messages": []}}], ctx))
    assert seen == [("a", True, "a")] * 3


def test_headers_mapping():
    from tsvllm.headers import Headers

    headers = Headers({"Content-Length": "3", "Authorization": "Bearer secret"})
    assert headers.get("content-length") == headers["CONTENT-LENGTH"] == "3"
    assert list(headers) == ["content-length", "authorization"] and len(headers) == 2
    assert 3 not in headers and "x-team" not in headers
    assert "secret" not in repr(headers)  # names only in logs
    assert dict(headers) == {"content-length": "3", "authorization": "Bearer secret"}


# -- errors a hook raises -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "headers"),
    [
        (401, "AuthenticationError", {"WWW-Authenticate": 'Bearer realm="tsvllm"'}),
        (403, "PermissionDeniedError", {}),
        (404, "NotFoundError", {}),
        (409, "ConflictError", {}),
        (413, "PayloadTooLargeError", {}),
        (422, "UnprocessableEntityError", {}),
        (429, "RateLimitError", {"Retry-After": "7"}),
    ],
)
def test_a_client_error_from_a_hook_is_the_reply(engine, status, error_type, headers):
    class Refuser(VLLMHandler):
        async def on_request(self, body, ctx):
            raise ClientError(status, "no", code="my_code", param="x-team", headers=headers)

    h = Refuser()
    h.engine = engine
    for stream in (False, True):
        ctx, reply = run(h, {"messages": [], "stream": stream})
        assert ctx.get_response_status(0)[0] == status
        assert ctx.get_response_content_type(0) == "application/json"
        assert json.loads(reply) == {
            "error": {"message": "no", "type": error_type, "param": "x-team", "code": "my_code"}
        }
        for name, value in headers.items():
            assert ctx.get_response_headers(0)[name] == value
    assert engine.calls == []


def test_client_error_refuses_what_it_cannot_send():
    with pytest.raises(ValueError):
        ClientError(500, "not a client error")
    with pytest.raises(ValueError):
        ClientError(429, "x", headers={"Content-Length": "0"})
    err = ClientError(418, "teapot")
    assert (err.error_type, to_error_body(err)[1]["error"]["code"]) == ("ImATeapotError", 418)


def test_a_failing_hook_is_a_500_naming_it_and_fails_only_its_request(engine, caplog):
    class Broken(VLLMHandler):
        async def on_request(self, body, ctx):
            if body.get("break"):
                raise KeyError("oops")
            return body

    h = Broken()
    h.engine = engine

    async def both():
        bad, good = make_context("v1/chat/completions"), make_context("v1/chat/completions")
        replies = await asyncio.gather(
            h.handle([{"body": {"messages": [], "break": True}}], bad),
            h.handle([{"body": {"messages": []}}], good),
        )
        return (bad, replies[0][0]), (good, replies[1][0])

    (bad, bad_reply), (good, good_reply) = asyncio.run(both())
    assert bad.get_response_status(0)[0] == 500
    message = json.loads(bad_reply)["error"]["message"]
    assert "Broken.on_request" in message and "oops" not in message
    assert "Broken.on_request" in caplog.text and "KeyError: 'oops'" in caplog.text
    assert good.get_response_status(0)[0] == 200
    ChatCompletion.model_validate_json(good_reply)


def test_a_failing_chunk_hook_ends_the_stream_with_an_error_naming_it(engine, caplog):
    class Broken(VLLMHandler):
        async def on_chunk(self, event, ctx):
            raise RuntimeError("bug")

    h = Broken()
    h.engine = engine
    ctx, last = run(h, {"messages": [], "stream": True})
    error, done = [e for e in last.decode().split("\n\n") if e]
    assert "Broken.on_chunk" in json.loads(error[6:])["error"]["message"]
    assert done == "data: [DONE]"
    assert "Broken.on_chunk" in caplog.text


# -- hook latency ---------------------------------------------------------------------


def metric_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("[METRICS]")]


def with_metrics(ctx):
    from pathlib import Path

    import ts
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    ctx.metrics = MetricsCacheYamlImpl(str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    ctx.metrics.model_name = ctx.model_name
    return ctx


def test_each_overridden_hook_is_timed_once_per_request_by_stage(engine, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="ts.metrics")
    h = Recording(engine)
    ctx = with_metrics(make_context("v1/chat/completions"))
    asyncio.run(h.handle([{"body": {"messages": [], "stream": True}}], ctx))
    hooks = [ln for ln in metric_lines(caplog) if ln.startswith("[METRICS]HookLatency.Seconds:")]
    stages = sorted(ln.split("#Stage:")[1].split(",")[0] for ln in hooks)
    assert stages == ["on_chunk", "on_request", "on_stream_end"]  # one line for all chunks
    for line in hooks:
        assert "|#type:HISTOGRAM|" in line and ",ModelName:tiny,Level:Model|" in line
        assert float(line.split(":", 1)[1].split("|")[0]) >= 0

    caplog.clear()
    ctx = with_metrics(make_context("v1/chat/completions"))
    asyncio.run(VLLMHandler.handle(_plain(engine), [{"body": {"messages": []}}], ctx))
    assert not [ln for ln in metric_lines(caplog) if "HookLatency" in ln]  # no hook, no time


def _plain(engine):
    h = VLLMHandler()
    h.engine = engine
    return h


def test_setup_is_timed_outside_any_request(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="ts.metrics")

    class Slow(VLLMHandler):
        async def build_engine(self, *, model_dir):
            from tests.unit.conftest import FakeEngine

            return FakeEngine()

        async def setup(self, *, engine, model_dir):
            return None

    h = Slow()
    h._context = with_metrics(make_context(None))
    h._context.request_ids = None  # as at initialize: no request
    asyncio.run(h._start_once())
    (line,) = [ln for ln in metric_lines(caplog) if "HookLatency" in ln]
    assert "#Stage:setup,ModelName:tiny,Level:Model|#type:HISTOGRAM|" in line


# -- the Hooks docstring's example runs -------------------------------------------------


def test_the_hooks_docstring_example_runs(engine):
    source = Hooks.__doc__.split("Example:", 1)[1].split("::", 1)[1]
    namespace: dict = {}
    exec(compile(textwrap.dedent(source), "Hooks.__doc__", "exec"), namespace)
    h = namespace["TeamHandler"]()
    h.engine = engine
    ctx, reply = run(h, {"messages": [], "max_completion_tokens": 1000})
    assert ctx.get_response_status(0)[0] == 401
    assert ctx.get_response_headers(0)["WWW-Authenticate"] == 'Team realm="tsvllm"'
    ctx = make_context("v1/chat/completions", headers={"X-Team": "a"})
    asyncio.run(h.handle([{"body": {"messages": [], "max_completion_tokens": 1000}}], ctx))
    assert ctx.get_response_status(0)[0] == 200
    assert engine.calls[0][1]["max_completion_tokens"] == 256
