"""Where the user's text and the model's text are, in each API's bodies and stream events.

Hooks that read or rewrite text (guards, retrieval) use these accessors, so one hook serves
OpenAI's completions, chat and Responses APIs and Anthropic's Messages API alike. Each
accessor returns ``(get, put)`` pairs: ``get()`` the text, ``put(text)`` replaces it in
place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tsvllm.engine.base import Api, StreamEvent

Get = Callable[[], str]
Put = Callable[[str], None]


def user_texts(body: dict[str, Any], api: Api) -> list[tuple[Get, Put]]:
    """Every user-written text in a request body."""
    if api in (Api.CHAT, Api.MESSAGES):
        return _message_texts(body.get("messages"))
    if api is Api.RESPONSES:
        if isinstance(body.get("input"), str):
            return [(lambda: body["input"], _setter(body, "input"))]
        return _message_texts(body.get("input"))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [(lambda: body["prompt"], _setter(body, "prompt"))]
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return [(lambda i=i: prompt[i], _item_setter(prompt, i)) for i in range(len(prompt))]
    return []


def _message_texts(messages: Any) -> list[tuple[Get, Put]]:
    """User messages' texts: ``content`` as a string, or its parts' ``text``."""
    pairs: list[tuple[Get, Put]] = []
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            pairs.append((lambda m=message: m["content"], _setter(message, "content")))
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    pairs.append((lambda p=part: p["text"], _setter(part, "text")))
    return pairs


def last_user_text(body: dict[str, Any], api: Api) -> str:
    """The last user text (the retrieval query, the judge's user turn), or ""."""
    texts = [get() for get, _ in user_texts(body, api)]
    return texts[-1] if texts else ""


def with_context(body: dict[str, Any], api: Api, block: str) -> dict[str, Any]:
    """``body`` with a context ``block`` right after the system prompt (which stays first,
    so the engine's prefix cache keeps hitting); completions: before the prompt."""
    body = dict(body)
    if api is Api.CHAT:
        messages = list(body["messages"])
        first = messages[0] if messages else None
        first_system = isinstance(first, dict) and first.get("role") in ("system", "developer")
        messages.insert(1 if first_system else 0, {"role": "system", "content": block})
        body["messages"] = messages
    elif api in (Api.MESSAGES, Api.RESPONSES):
        key = "system" if api is Api.MESSAGES else "instructions"
        system = body.get(key)
        if isinstance(system, list):  # Messages' system as text blocks
            body[key] = [*system, {"type": "text", "text": block}]
        else:
            body[key] = f"{system}\n\n{block}" if system else block
    elif isinstance(body["prompt"], str):
        body["prompt"] = block + "\n\n" + body["prompt"]
    else:  # a batch of prompts: each gets the context of the last one's query
        body["prompt"] = [block + "\n\n" + p for p in body["prompt"]]
    return body


def output_texts(body: dict[str, Any], api: Api) -> list[tuple[Get, Put]]:
    """The model's texts in a full Responses or Messages body."""
    if api is Api.RESPONSES:
        parts = [
            part
            for item in body.get("output") or ()
            if isinstance(item, dict) and item.get("type") == "message"
            for part in item.get("content") or ()
            if isinstance(part, dict) and part.get("type") == "output_text"
        ]
    elif api is Api.MESSAGES:
        parts = [b for b in body.get("content") or () if isinstance(b, dict) and "text" in b]
    else:
        return []
    return [(lambda p=p: p.get("text") or "", _setter(p, "text")) for p in parts]


def mark_filtered(body: dict[str, Any], api: Api) -> None:
    """Say in the body's own terms that a guard replaced its text."""
    if api is Api.RESPONSES:
        body["status"] = "incomplete"
        body["incomplete_details"] = {"reason": "content_filter"}
    elif api is Api.MESSAGES:
        body["stop_reason"] = "refusal"


def stream_delta(payload: dict[str, Any], api: Api) -> tuple[Any, Get, Put] | None:
    """A Responses/Messages stream event's new text: ``(key, get, put)``, or None."""
    kind = payload.get("type")
    if api is Api.RESPONSES and kind == "response.output_text.delta":
        key = (payload.get("output_index"), payload.get("content_index"))
        return key, lambda: payload.get("delta") or "", _setter(payload, "delta")
    if api is Api.MESSAGES and kind == "content_block_delta":
        delta = payload.get("delta") or {}
        if delta.get("type") == "text_delta":
            return payload.get("index"), lambda: delta.get("text") or "", _setter(delta, "text")
    return None


def stream_text_ends(payload: dict[str, Any], api: Api) -> Any:
    """The key of the text a Responses/Messages event closes (None: it closes none)."""
    kind = payload.get("type")
    if api is Api.RESPONSES and kind == "response.output_text.done":
        return payload.get("output_index"), payload.get("content_index")
    if api is Api.MESSAGES and kind == "content_block_stop":
        return payload.get("index")
    return None


def stream_full_texts(payload: dict[str, Any], api: Api) -> list[tuple[Any, Put]]:
    """Responses events that repeat a whole text once it is done (``output_text.done``,
    ``content_part.done``, ``output_item.done``, ``response.completed``): ``(key, put)`` for
    each, so a guard can put there exactly the text it let through."""
    if api is not Api.RESPONSES:
        return []
    kind = payload.get("type")
    out: list[tuple[Any, Put]] = []
    if kind == "response.output_text.done":
        out.append(
            ((payload.get("output_index"), payload.get("content_index")), _setter(payload, "text"))
        )
    elif kind == "response.content_part.done" and isinstance(payload.get("part"), dict):
        key = (payload.get("output_index"), payload.get("content_index"))
        out.append((key, _setter(payload["part"], "text")))
    else:
        items: list[tuple[int, Any]] = []
        if kind == "response.output_item.done":
            items = [(payload.get("output_index"), payload.get("item"))]
        elif kind in ("response.completed", "response.incomplete"):
            items = list(enumerate((payload.get("response") or {}).get("output") or ()))
        for index, item in items:
            for c, part in enumerate((item or {}).get("content") or ()):
                if isinstance(part, dict) and part.get("type") == "output_text":
                    out.append(((index, c), _setter(part, "text")))
    return out


def delta_event(api: Api, key: Any, text: str, *, like: dict[str, Any]) -> StreamEvent:
    """A Responses/Messages text-delta event carrying ``text`` for the text ``key``
    (``like``: the event it goes before, for the ids)."""
    if api is Api.RESPONSES:
        output_index, content_index = key
        payload = {
            "type": "response.output_text.delta",
            "item_id": like.get("item_id"),
            "output_index": output_index,
            "content_index": content_index,
            "delta": text,
            "sequence_number": like.get("sequence_number"),
        }
        return StreamEvent.from_payload(payload, event=payload["type"])
    payload = {
        "type": "content_block_delta",
        "index": key,
        "delta": {"type": "text_delta", "text": text},
    }
    return StreamEvent.from_payload(payload, event=payload["type"])


def _setter(obj: dict[str, Any], key: str) -> Put:
    def put(value: str) -> None:
        obj[key] = value

    return put


def _item_setter(items: list[Any], index: int) -> Put:
    def put(value: str) -> None:
        items[index] = value

    return put
