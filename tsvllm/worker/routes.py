"""The route table: which path is served how.

Three kinds of route:

* *generation* routes of our own (completions, chat, Vertex's envelope): an adapter turns
  the body into engine requests on the typed fast path (:meth:`Engine.generate`), and every
  hook runs (see :class:`tsvllm.worker.hooks.Hooks`);
* *probes* (``v1/models``, ``health``): no body, no hooks, answered from the engine's state
  at once;
* *engine* routes: every other route the engine serves (vLLM's Responses and Messages APIs,
  tokenize, pooling, ...), listed by the engine itself (:meth:`Engine.routes`), so a vLLM
  upgrade that adds one needs no code here. Responses and Messages run the hooks
  (:data:`HOOKED`) and are served by a handler with hooks only if its hooks declare that
  they understand them (``Hooks.hook_apis``); the others are served as they are, except
  those that generate text hooks could not see (:data:`GENERATE_UNHOOKED`), which a
  handler with hooks does not serve (they would bypass its guards).

:func:`resolve` is the only lookup; an unknown path is a 404 that lists what this model
serves, in its message and as the list ``error.routes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from tsvllm import urls
from tsvllm.engine.base import Api, Engine, EngineRoute
from tsvllm.errors import EngineUnavailable, NotFound
from tsvllm.worker.adapters import OPENAI, VERTEX, Adapter


class Probe(str, Enum):
    """Routes answered from the engine's state (never waiting for it to start)."""

    MODELS = "models"
    HEALTH = "health"
    LOAD = "load"


@dataclass(frozen=True)
class Route:
    path: str
    #: the adapter translating a generation route's bodies (None for a probe)
    adapter: Adapter | None = None
    #: the API hooks see (None: the adapter decides per body, or no hooks run)
    api: Api | None = None
    probe: Probe | None = None
    #: an engine route (served by :meth:`Engine.call`)
    engine_route: EngineRoute | None = None


ROUTES: dict[str, Route] = {
    r.path: r
    for r in (
        Route(urls.COMPLETIONS, adapter=OPENAI, api=Api.COMPLETIONS),
        Route(urls.CHAT_COMPLETIONS, adapter=OPENAI, api=Api.CHAT),
        Route(urls.VERTEX_PREDICT, adapter=VERTEX),
        Route(urls.MODELS, probe=Probe.MODELS),
        Route(urls.HEALTH, probe=Probe.HEALTH),
        Route(urls.LOAD, probe=Probe.LOAD),
    )
}


#: engine routes whose bodies the hooks understand, and the API they see
HOOKED = {"v1/responses": Api.RESPONSES, "v1/messages": Api.MESSAGES}
#: engine routes that generate text the hooks cannot inspect: not served by a handler
#: that has hooks (they would bypass its guards)
GENERATE_UNHOOKED = frozenset(
    {
        "v1/chat/completions/batch",
        "inference/v1/generate",
        "invocations",
        "generative_scoring",
        "v1/systemone",
    }
)


#: engine routes that pool (embed, score, rerank, classify) and their aliases: their JSON
#: reply's ``usage`` counts in the token metrics and the audit log, as a generation's does
#: (``invocations``: SageMaker's route, which answers as the route its body is for)
POOLING = frozenset(
    {
        "v1/embeddings",
        "v2/embed",
        "pooling",
        "classify",
        "score",
        "v1/score",
        "rerank",
        "v1/rerank",
        "v2/rerank",
        "invocations",
    }
)


def resolve(
    url_path: str | None, *, engine: Engine | None, hook_apis: frozenset[Api] | None
) -> Route:
    """The route for TorchServe's ``url_path`` header (query string ignored).

    ``engine``: the serving engine, whose own routes are looked up after ours (None while
    it starts: an engine path is then a 503, not a 404). ``hook_apis``: the APIs whose
    bodies the handler's hooks understand, or None when it overrides no hook (then every
    route is served; else Responses/Messages only if listed, and no
    :data:`GENERATE_UNHOOKED` route).
    """
    path = (url_path or "").split("?")[0].strip("/")
    route = ROUTES.get(path)
    if route is not None and (route.adapter is None or engine is None or engine.generates):
        return route
    if engine is None:
        raise EngineUnavailable(f"the engine is starting; /{path} may be served once it runs")
    engine_route = engine.route_for(path)
    if engine_route is not None and _served(engine_route.template, hook_apis):
        template = engine_route.template
        return Route(template, api=HOOKED.get(template), engine_route=engine_route)
    paths = [f"/{p}" for p in served(engine, hook_apis=hook_apis)]
    raise NotFound(
        f"unknown route {path or '(none)'!r}; this model serves {', '.join(paths)}",
        routes=paths,
    )


def implied_path(body: object) -> str | None:
    """The route a request without one means, from its body: TorchServe's default-version
    URL (``/predictions/<model>``, after ``set-default``) can carry no sub-path."""
    if not isinstance(body, dict):
        return None
    for key, path in (
        ("messages", urls.CHAT_COMPLETIONS),
        ("prompt", urls.COMPLETIONS),
        ("instances", urls.VERTEX_PREDICT),
    ):
        if key in body:
            return path
    return None


def _served(template: str, hook_apis: frozenset[Api] | None) -> bool:
    if hook_apis is None:
        return True
    if template in HOOKED:
        return HOOKED[template] in hook_apis
    return template not in GENERATE_UNHOOKED


def served(engine: Engine, *, hook_apis: frozenset[Api] | None) -> list[str]:
    """Every route this model serves (ours first), for 404s and docs."""
    ours = [p for p, r in ROUTES.items() if r.adapter is None or engine.generates]
    extra = [
        r.template
        for r in engine.routes()
        if r.template not in ROUTES and _served(r.template, hook_apis)
    ]
    return [*ours, *extra]
