"""Vertex AI's prediction envelope, served through the OpenAI completion and chat paths.

Vertex AI posts ``{"instances": [...], "parameters": {...}}`` to the container's predict
route and expects ``{"predictions": [...]}``, one prediction per instance, in order.
Here each instance is one OpenAI request:

* ``parameters`` are defaults that every instance may override (``max_tokens``, ...);
* ``parameters["@requestFormat"] == "chatCompletions"`` selects chat completions (an
  instance is ``{"messages": [...]}`` or a plain string, the user's message); anything
  else selects completions (an instance is ``{"prompt": ...}`` or a plain string);
* each prediction is the full OpenAI response body of its instance.

Instances run concurrently (the engine batches them) through the handler's hooks and
engine, exactly like requests on ``v1/completions`` / ``v1/chat/completions``. If one
instance fails, the whole request fails with that instance's status and its index in the
message. Bodies over :data:`MAX_BODY_BYTES` (Vertex's own 1.5 MB limit) get HTTP 413.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tsvllm.engine.base import Api
from tsvllm.errors import BadRequest, TsVllmError
from tsvllm.worker.hooks import RequestContext

#: the handler route (after /predictions/<model>/<version>/) serving the envelope
ROUTE = "vertex/predict"
#: Vertex AI refuses larger online prediction requests; so do we, with a clear 413
MAX_BODY_BYTES = 1_500_000
LIMIT_NAME = "Vertex AI's 1.5 MB limit: send fewer instances per request"
REQUEST_FORMAT = "@requestFormat"
CHAT_FORMAT = "chatCompletions"


def to_openai(envelope: Any) -> tuple[Api, list[dict[str, Any]]]:
    """The API and one OpenAI request body per instance, in order."""
    if not isinstance(envelope, dict):
        raise BadRequest("the body must be a JSON object with an 'instances' list")
    instances = envelope.get("instances")
    if not isinstance(instances, list) or not instances:
        raise BadRequest(
            "'instances' must be a non-empty list, e.g. "
            '{"instances": [{"prompt": "Hello"}], "parameters": {"max_tokens": 16}}',
            param="instances",
        )
    params = envelope.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be a JSON object", param="parameters")
    params = dict(params)
    api = Api.CHAT if params.pop(REQUEST_FORMAT, None) == CHAT_FORMAT else Api.COMPLETIONS
    bodies = []
    for i, instance in enumerate(instances):
        if isinstance(instance, str):
            instance = (
                {"messages": [{"role": "user", "content": instance}]}
                if api is Api.CHAT
                else {"prompt": instance}
            )
        if not isinstance(instance, dict):
            raise BadRequest(
                f"instances[{i}] must be an object or a string, not {type(instance).__name__}",
                param=f"instances[{i}]",
            )
        body = {**params, **instance}
        body.pop(REQUEST_FORMAT, None)
        if body.get("stream"):
            raise BadRequest(
                f"instances[{i}]: stream is not available through Vertex AI's predict "
                "route; remove it (or use the OpenAI routes)",
                param="stream",
            )
        bodies.append(body)
    return api, bodies


async def predict(
    handler: Any, envelope: Any, *, request_id: str, headers: dict[str, str], route: str = ROUTE
) -> dict[str, Any]:
    """Serve ``envelope`` with ``handler``'s hooks and engine; ``{"predictions": [...]}``."""
    api, bodies = to_openai(envelope)
    engine = await handler.ready_engine()

    async def one(i: int, body: dict[str, Any]) -> dict[str, Any]:
        ctx = RequestContext(
            request_id=f"{request_id}-{i}", route=route, api=api, headers=headers, stream=False
        )
        body = await handler.on_request(body, ctx)
        result = await engine.generate(api, body, request_id=ctx.request_id)
        return await handler.on_response(result, ctx)

    results = await asyncio.gather(
        *(one(i, b) for i, b in enumerate(bodies)), return_exceptions=True
    )
    for i, result in enumerate(results):
        if isinstance(result, TsVllmError):
            result.message = f"instances[{i}]: {result.message}"
            result.args = (result.message,)
            raise result
        if isinstance(result, BaseException):
            raise result
    return {"predictions": list(results)}
