"""The route table: which path is served how.

A route is either a *generation* route (an adapter turns its body into engine requests,
and every hook runs, see :class:`tsvllm.worker.hooks.Hooks`) or a *probe* (no body, no
hooks, answered from the engine's state at once). :func:`resolve` is the only lookup;
an unknown path is a 404 that lists what this model serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from tsvllm import urls
from tsvllm.engine.base import Api
from tsvllm.errors import NotFound
from tsvllm.worker.adapters import OPENAI, VERTEX, Adapter


class Probe(str, Enum):
    """Routes answered from the engine's state (never waiting for it to start)."""

    MODELS = "models"
    HEALTH = "health"


@dataclass(frozen=True)
class Route:
    path: str
    #: the adapter translating a generation route's bodies (None for a probe)
    adapter: Adapter | None = None
    #: the engine API the route's requests go to (None: the adapter decides per body)
    api: Api | None = None
    probe: Probe | None = None


ROUTES: dict[str, Route] = {
    r.path: r
    for r in (
        Route(urls.COMPLETIONS, adapter=OPENAI, api=Api.COMPLETIONS),
        Route(urls.CHAT_COMPLETIONS, adapter=OPENAI, api=Api.CHAT),
        Route(urls.VERTEX_PREDICT, adapter=VERTEX),
        Route(urls.MODELS, probe=Probe.MODELS),
        Route(urls.HEALTH, probe=Probe.HEALTH),
    )
}


def resolve(url_path: str | None) -> Route:
    """The route for TorchServe's ``url_path`` header (query string ignored)."""
    path = (url_path or "").split("?")[0].strip("/")
    route = ROUTES.get(path)
    if route is None:
        raise NotFound(
            f"unknown route {path or '(none)'!r}; this model serves "
            + ", ".join(f"/{p}" for p in ROUTES)
        )
    return route
