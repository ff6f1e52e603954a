"""The hook contract: call order, rewrites, refusals, held-back and ended streams."""

from __future__ import annotations

import asyncio
import json

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.unit.conftest import make_context
from tsvllm.engine.base import StreamEvent
from tsvllm.errors import ContentFiltered
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
