"""Routes the engine serves itself (Engine.call): listing, passthrough, hooks on Responses,
and what a handler with hooks refuses to serve (behind the fake engine)."""

from __future__ import annotations

import asyncio
import json

from tests.unit.conftest import make_context
from tsvllm.engine.base import Api
from tsvllm.errors import ContentFiltered
from tsvllm.worker.handler import VLLMHandler
from tsvllm.worker.hooks import EndStream


def serve(handler, url_path, body=None):
    ctx = make_context(url_path)
    reply = asyncio.run(handler.handle([{"body": body}], ctx))[0]
    return ctx.get_response_status(0)[0], ctx.get_response_content_type(0), reply, ctx


def test_an_engine_route_is_served_as_the_engine_answers(handler, engine):
    status, ctype, reply, _ = serve(handler, "tokenize", {"model": "tiny", "prompt": "hi"})
    assert status == 200 and ctype == "application/json"
    assert json.loads(reply)["echo"] == {"model": "tiny", "prompt": "hi"}
    assert engine.calls[-1][0] == "tokenize"


def test_a_route_without_a_body_is_called_without_one(handler, engine):
    status, _, reply, _ = serve(handler, "version")
    assert status == 200 and json.loads(reply) == {"version": "0.32.0"}
    assert engine.calls[-1][1] is None


def test_unknown_route_lists_ours_and_the_engines(handler):
    status, _, reply, _ = serve(handler, "v1/nope", {})
    error = json.loads(reply)["error"]
    assert status == 404
    # OpenAI's error shape, plus the routes as a list a client can read
    assert set(error) == {"message", "type", "param", "code", "routes"}
    assert (error["type"], error["code"], error["param"]) == ("NotFoundError", 404, None)
    routes = error["routes"]
    assert routes[:5] == [
        "/v1/completions",
        "/v1/chat/completions",
        "/vertex/predict",
        "/v1/models",
        "/health",
    ]  # ours first
    for route in ("/tokenize", "/version", "/v1/responses"):
        assert route in routes
    assert len(routes) == len(set(routes))
    assert error["message"].endswith("this model serves " + ", ".join(routes))


def test_an_engine_path_while_the_engine_starts_is_503_not_404():
    handler = VLLMHandler()
    handler._starting = object()  # initialized, engine not up yet
    status, _, reply, _ = serve(handler, "tokenize", {"prompt": "x"})
    assert status == 503 and "starting" in json.loads(reply)["error"]["message"]


class Guarded(VLLMHandler):
    """Refuses 'forbidden' on the way in, tags responses, ends streams on their 2nd event."""

    hook_apis = frozenset(Api)

    async def on_request(self, body, ctx):
        if "forbidden" in json.dumps(body):
            raise ContentFiltered("no", categories=["test"])
        return {**body, "seen_by": ctx.api.value}

    async def on_response(self, body, ctx):
        return {**body, "tagged": True}

    async def on_chunk(self, event, ctx):
        ctx.last_chunk = event.payload
        if event.payload["sequence_number"] == 1:
            raise EndStream("content_filter")
        return (event,)


def guarded(engine) -> Guarded:
    h = Guarded()
    h.engine = engine
    h.initialized = True
    return h


def test_responses_run_the_request_and_response_hooks(engine):
    h = guarded(engine)
    status, _, reply, _ = serve(h, "v1/responses", {"model": "tiny", "input": "hi"})
    body = json.loads(reply)
    assert status == 200 and body["tagged"] is True
    assert body["echo"]["seen_by"] == "responses"  # the engine got the hooked body
    status, _, reply, _ = serve(h, "v1/responses", {"input": "forbidden"})
    assert status == 400 and json.loads(reply)["error"]["code"] == "content_filter"


def test_a_responses_stream_ended_by_a_hook_closes_in_the_responses_api(engine):
    h = guarded(engine)
    status, ctype, last, ctx = serve(h, "v1/responses", {"input": "hi", "stream": True})
    sent = b"".join(ctx.cl_socket.payloads())
    assert status == 200 and ctype == "text/event-stream"
    assert b"event: response.created" in sent and b"output_text.delta" not in sent
    assert last.startswith(b"event: response.incomplete\ndata: ")
    payload = json.loads(last.split(b"data: ", 1)[1])
    assert payload["response"]["incomplete_details"] == {"reason": "content_filter"}
    assert b"[DONE]" not in last  # the Responses API has no [DONE]
    assert engine.closed_streams == 1  # the engine's stream was closed: aborted


def test_a_stream_no_hook_looks_at_is_relayed_byte_for_byte(handler, engine):
    status, _, last, ctx = serve(handler, "v1/responses", {"input": "hi", "stream": True})
    sent = b"".join(ctx.cl_socket.payloads()) + last
    assert status == 200 and sent.count(b"event: response.") == 3
    assert b"response.completed" in sent


def test_a_handler_with_hooks_does_not_serve_routes_its_hooks_cannot_see(engine, handler):
    h = guarded(engine)
    status, _, reply, _ = serve(h, "v1/chat/completions/batch", {"messages": []})
    assert (
        status == 404 and "/v1/chat/completions/batch" not in json.loads(reply)["error"]["message"]
    )
    status, _, _, _ = serve(handler, "v1/chat/completions/batch", {"messages": []})
    assert status == 200  # a handler without hooks serves it


def test_a_pooling_model_serves_no_generation_route_and_says_what_it_serves(handler, engine):
    engine.generates = False  # e.g. an embedding model: vLLM built no chat serving
    status, _, reply, _ = serve(handler, "v1/chat/completions", {"messages": []})
    error = json.loads(reply)["error"]
    assert status == 404 and "/v1/chat/completions," not in error["message"] + ","
    assert "/tokenize" in error["routes"] and "/v1/models" in error["routes"]
    assert "/v1/chat/completions" not in error["routes"]
    assert "/v1/completions" not in error["routes"]
    assert serve(handler, "tokenize", {"prompt": "x"})[0] == 200


def test_hooks_that_do_not_declare_responses_do_not_serve_it(engine):
    class ChatOnly(VLLMHandler):  # hook_apis left at its default: completions and chat
        async def on_request(self, body, ctx):
            return body

    h = ChatOnly()
    h.engine = engine
    h.initialized = True
    status, _, reply, _ = serve(h, "v1/responses", {"input": "hi"})
    message = json.loads(reply)["error"]["message"]
    assert status == 404 and "/v1/responses" not in message and "/tokenize" in message


def test_a_request_without_a_route_is_routed_by_its_body(handler, engine):
    """TorchServe's default-version URL (/predictions/<model>) carries no sub-path."""
    status, _, reply, _ = serve(handler, "", {"model": "tiny", "messages": []})
    assert status == 200 and json.loads(reply)["object"] == "chat.completion"
    status, _, reply, _ = serve(handler, None, {"model": "tiny", "prompt": "x"})
    assert status == 200 and json.loads(reply)["object"] == "text_completion"
    status, _, reply, _ = serve(handler, "", {"what": "?"})
    assert status == 404 and "(none)" in json.loads(reply)["error"]["message"]
