"""Protocol adapters: they only translate bodies, the request core does everything else.

An adapter turns a decoded request body into the engine requests it stands for, and the
engine's answers into the reply body. Auth, limits, hooks, the deadline, metrics and
error mapping are the same for every adapter (:mod:`tsvllm.worker.core`).

* :data:`OPENAI`: the OpenAI routes; the body *is* the engine request (pass-through) and
  may stream.
* :data:`VERTEX`: Vertex AI's prediction envelope. Vertex AI posts
  ``{"instances": [...], "parameters": {...}}`` and expects ``{"predictions": [...]}``,
  one prediction per instance, in order. Each instance is one OpenAI request:
  ``parameters`` are defaults every instance may override (``max_tokens``, ...);
  ``parameters["@requestFormat"] == "chatCompletions"`` selects chat completions (an
  instance is ``{"messages": [...]}`` or a plain string, the user's message); anything
  else selects completions (an instance is ``{"prompt": ...}`` or a plain string); each
  prediction is the full OpenAI response body of its instance. Instances run
  concurrently (the engine batches them); if one fails, the request fails with that
  instance's status and its index in the message. Bodies over Vertex's own 1.5 MB limit
  get HTTP 413.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from tsvllm.engine.base import Api
from tsvllm.errors import BadRequest, TsVllmError


@dataclass(frozen=True)
class EngineRequest:
    """One request for the engine: which API, and its OpenAI body."""

    api: Api
    body: dict[str, Any]


class Adapter(Protocol):
    """Translates one protocol's bodies to engine requests and back."""

    #: whether a request may ask for a stream (``"stream": true``)
    streams: bool
    #: the body limit in bytes, or None for ``handler.max_body_bytes``
    max_body_bytes: int | None
    #: how the limit is named in a 413's message
    limit_name: str

    def to_engine(self, body: dict[str, Any], *, api: Api | None) -> list[EngineRequest]:
        """The engine requests ``body`` stands for (``api``: the route's, if it has one)."""
        ...

    def to_reply(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        """The reply body for the engine's (hooked) response bodies, in request order."""
        ...

    def request_error(self, index: int, exc: BaseException) -> BaseException:
        """The error to answer with when engine request ``index`` failed with ``exc``."""
        ...


class OpenAIAdapter:
    """The OpenAI routes: one engine request, the body unchanged."""

    streams = True
    max_body_bytes = None
    limit_name = "handler.max_body_bytes"

    def to_engine(self, body: dict[str, Any], *, api: Api | None) -> list[EngineRequest]:
        if api is None:
            raise TypeError("an OpenAI route names its API")
        return [EngineRequest(api, body)]

    def to_reply(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        return results[0]

    def request_error(self, index: int, exc: BaseException) -> BaseException:
        return exc


class VertexAdapter:
    """Vertex AI's ``{"instances": [...], "parameters": {...}}`` envelope (module docstring)."""

    streams = False
    #: Vertex AI refuses larger online prediction requests; so do we, with a clear 413
    max_body_bytes = 1_500_000
    limit_name = "Vertex AI's 1.5 MB limit: send fewer instances per request"
    REQUEST_FORMAT = "@requestFormat"
    CHAT_FORMAT = "chatCompletions"

    def to_engine(self, body: dict[str, Any], *, api: Api | None = None) -> list[EngineRequest]:
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise BadRequest(
                "'instances' must be a non-empty list, e.g. "
                '{"instances": [{"prompt": "Hello"}], "parameters": {"max_tokens": 16}}',
                param="instances",
            )
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest("'parameters' must be a JSON object", param="parameters")
        params = dict(params)
        chat = params.pop(self.REQUEST_FORMAT, None) == self.CHAT_FORMAT
        api = Api.CHAT if chat else Api.COMPLETIONS
        return [
            EngineRequest(api, self._instance(i, instance, params, api))
            for i, instance in enumerate(instances)
        ]

    def _instance(self, i: int, instance: Any, params: dict[str, Any], api: Api) -> dict:
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
        body.pop(self.REQUEST_FORMAT, None)
        if body.get("stream"):
            raise BadRequest(
                f"instances[{i}]: stream is not available through Vertex AI's predict "
                "route; remove it (or use the OpenAI routes)",
                param="stream",
            )
        return body

    def to_reply(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        return {"predictions": results}

    def request_error(self, index: int, exc: BaseException) -> BaseException:
        if isinstance(exc, TsVllmError):
            exc.message = f"instances[{index}]: {exc.message}"
            exc.args = (exc.message,)
        return exc


OPENAI = OpenAIAdapter()
VERTEX = VertexAdapter()
