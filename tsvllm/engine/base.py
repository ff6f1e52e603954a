"""The engine seam: what the handler needs from an inference engine, in stable names.

The handler, hooks and tests speak only this protocol. Exactly one module
(:mod:`tsvllm.engine.vllm_engine`) imports vLLM and adapts it; when vLLM moves its
modules again, that module is the only one to change.

Requests and responses are OpenAI-shaped JSON (``dict``): the engine validates a body
against its own schema and either returns the full response body, or an async
iterator of :class:`StreamEvent` for ``"stream": true``. Per-request failures are raised
as :mod:`tsvllm.errors` exceptions carrying their HTTP status.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable


class Api(str, Enum):
    """The generation APIs hooks see (``RequestContext.api``).

    ``COMPLETIONS`` and ``CHAT`` go through :meth:`Engine.generate`; ``RESPONSES`` and
    ``MESSAGES`` (OpenAI's Responses API, Anthropic's Messages API) through
    :meth:`Engine.call`, with the hooks still applied.
    """

    COMPLETIONS = "completions"
    CHAT = "chat"
    RESPONSES = "responses"
    MESSAGES = "messages"


@dataclass(frozen=True)
class EngineRoute:
    """One HTTP route the engine serves through :meth:`Engine.call`."""

    #: the path template without the leading slash, e.g. ``v1/responses/{response_id}``
    template: str
    methods: frozenset[str]


@dataclass
class EngineReply:
    """What :meth:`Engine.call` answered: a whole body, or a stream of body chunks."""

    status: int
    content_type: str
    body: bytes = b""
    #: set for a streamed reply (server-sent events); closing it aborts the request
    chunks: AsyncIterator[bytes] | None = None


@dataclass
class StreamEvent:
    """One server-sent event of a streamed response.

    ``data`` is the raw JSON text after ``data: `` (never ``[DONE]``: the end of the
    iterator is the end of the stream). ``payload`` parses it on first use, so chunks that
    no hook looks at are forwarded without a JSON round trip. Setting ``payload`` (or
    assigning a new dict) makes :meth:`encode` re-serialise it.
    """

    data: str
    _payload: dict[str, Any] | None = field(default=None, repr=False)
    _dirty: bool = field(default=False, repr=False)
    #: the SSE ``event:`` name, where the API names its events (Responses, Messages)
    event: str | None = None

    @property
    def payload(self) -> dict[str, Any]:
        """The parsed chunk (a ``chat.completion.chunk`` / ``text_completion`` dict)."""
        if self._payload is None:
            self._payload = json.loads(self.data)
            # A caller that asks for the dict may mutate it: re-encode to be safe.
            self._dirty = True
        return self._payload

    @payload.setter
    def payload(self, value: dict[str, Any]) -> None:
        self._payload = value
        self._dirty = True

    @classmethod
    def from_payload(cls, payload: dict[str, Any], *, event: str | None = None) -> StreamEvent:
        return cls(data="", _payload=payload, _dirty=True, event=event)

    @classmethod
    def parse(cls, text: str) -> StreamEvent | None:
        """One SSE event's text (``event:``/``data:`` lines); None for ``[DONE]`` or none."""
        event, data = None, []
        for line in text.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if not data or data == ["[DONE]"]:
            return None
        return cls("\n".join(data), event=event)

    def encode(self) -> str:
        """The event as SSE text: ``data: {...}\\n\\n``."""
        if self._dirty and self._payload is not None:
            self.data = json.dumps(self._payload, separators=(",", ":"))
            self._dirty = False
        if self.event is not None:
            return f"event: {self.event}\ndata: {self.data}\n\n"
        return f"data: {self.data}\n\n"


class EngineCannotStart(Exception):
    """The engine cannot start with this configuration; no retry would fix it (engine args
    the engine rejects, a model it cannot serve for text generation). Other start failures
    are taken as transient."""


class EngineStartTimeout(Exception):
    """The engine did not start within its bound (``startupTimeout``) and what the start
    had launched was ended. Transient: a retry may succeed (e.g. once a missing worker node
    of a multi-node engine is back). The message says what the engine waited for."""

    def __init__(self, message: str, *, timeout_s: float):
        super().__init__(message)
        self.timeout_s = timeout_s


def worker_nodes_hint(*, nnodes: int, master_addr: Any, master_port: Any) -> str:
    """What an engine over ``nnodes`` hosts waits for and how its worker nodes join, for the
    messages of a start that waits (the handler's 503) or timed out (the engine's error)."""
    where = f"{master_addr}:{master_port}"
    ranks = "1" if nnodes == 2 else f"1..{nnodes - 1}"
    return (
        f"it spans nnodes {nnodes} and waits for every worker node to join at "
        f"master_addr:master_port {where} (start `tsvllm worker-node --config "
        f"model-config.yaml --node-rank {ranks}` on each worker host, one rank each, and "
        f"check it reaches {where})"
    )


#: ``generate`` returns the full body, or the stream of events.
GenerateResult = dict[str, Any] | AsyncIterator[StreamEvent]


@runtime_checkable
class Engine(Protocol):
    """An OpenAI-compatible generation engine.

    Lifecycle: build (engine-specific factory) → ``generate``/``abort``/``models``/
    ``health`` any number of times, concurrently → ``shutdown`` once.
    """

    async def generate(
        self, api: Api, body: Mapping[str, Any], *, request_id: str
    ) -> GenerateResult:
        """Validate ``body`` for ``api`` and run it.

        Returns the response body (non-streaming) or an async iterator of events
        (``"stream": true``). Closing the iterator early aborts the generation.
        Raises a :class:`tsvllm.errors.TsVllmError` for a bad request or a dead engine.
        """
        ...

    def routes(self) -> Sequence[EngineRoute]:
        """Every other route the engine serves (tokenize, Responses, pooling, ...)."""
        ...

    def route_for(self, path: str) -> EngineRoute | None:
        """The route serving ``path`` (no leading slash), or None."""
        ...

    async def call(
        self, route: EngineRoute, path: str, body: bytes, *, request_id: str
    ) -> EngineReply:
        """Serve ``path`` on ``route`` with the raw JSON ``body`` (empty: none).

        The reply is the engine's own (its status, its OpenAI-style error bodies).
        Cancelling the call, or closing a streamed reply's chunks, aborts the request.
        """
        ...

    async def abort(self, request_id: str) -> None:
        """Stop generating for ``request_id`` (no-op when it already finished)."""
        ...

    async def models(self) -> dict[str, Any]:
        """The OpenAI ``/v1/models`` list body: served names and LoRA adapters."""
        ...

    async def health(self) -> None:
        """Return when the engine can serve; raise ``EngineUnavailable`` otherwise."""
        ...

    @property
    def generates(self) -> bool:
        """Whether :meth:`generate` serves (False for a pooling model: only :meth:`call`)."""
        ...

    @property
    def dead(self) -> bool:
        """True once the engine has failed for good (e.g. its process died): build another."""
        ...

    def running_requests(self) -> int:
        """Requests the engine has accepted and not finished yet."""
        ...

    def metrics_text(self) -> str:
        """The engine's Prometheus metrics text (what ``vllm serve`` shows on /metrics)."""
        ...

    def shutdown(self) -> None:
        """Stop the engine and every process it started. Safe to call twice."""
        ...
