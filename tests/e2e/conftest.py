"""End-to-end fixtures: real TorchServe (Java frontend) + real vLLM engines on CPU.

One session server (:func:`server`) serves five models built with no hub (the run's
demo models, tests/conftest.py): ``tiny`` (random weights, fast, aliased as
``tiny-alias``), ``smollm2`` (the real SmolLM2-135M-Instruct), ``rag`` (SmolLM2 with RAG
and guards), ``team`` (the example hooks handler) and ``judged`` (an LLM judge). Every test
that uses it runs in one xdist worker (tests/conftest.py), so a run starts it once. Every
server a fixture starts is stopped in its ``finally``, whatever the tests did.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.scripted_judge import build_scripted_judge
from tsvllm.config import dump_model_config, load_model_config, validate_model_config
from tsvllm.host.archive import build_archive
from tsvllm.host.torchserve import TorchServe

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 900


def archive(
    config: str,
    *,
    model: Path,
    store: Path,
    name: str,
    fmt: str = "no-archive",
    handler: str | None = None,
    frontend: dict | None = None,
    **handler_cfg,
) -> Path:
    """Archive a shipped config pointed at ``model`` into ``store`` as ``name``.

    ``handler_cfg`` replaces keys of the config's ``handler:`` section, ``frontend`` its
    top-level (TorchServe frontend) keys, e.g. ``{"minWorkers": 2}`` (plain data).
    """
    cfg = load_model_config(REPO / "model_configs" / config)
    data = cfg.model_dump(mode="json", exclude_none=True, by_alias=True)
    data.update(frontend or {})
    data["handler"].update(model_path=str(model), **handler_cfg)
    path = dump_model_config(validate_model_config(data), store.parent / f"{name}-config.yaml")
    handler_file = REPO / "handlers" / handler if handler else None
    return build_archive(
        path, name=name, fmt=fmt, export_path=store, handler=handler_file, force=True
    )


def started(ts: TorchServe, models: list[str]) -> TorchServe:
    ts.start()
    for model in models:
        ts.wait_ready(model, timeout=STARTUP_TIMEOUT)
    return ts


@pytest.fixture(scope="session")
def rag_index(tmp_path_factory) -> Path:
    from tsvllm.rag import build_index

    out = tmp_path_factory.mktemp("rag") / "index"
    build_index(REPO / "examples" / "corpus", out, progress=False)
    return out


#: guards of the "rag" model in tests: the shipped ones, plus "Paris" denied in outputs,
#: so that a greedy answer about France trips a guard mid-stream
RAG_GUARDS = {
    "pii": {"mode": "redact", "stages": ["input", "output"]},
    "secrets": {"mode": "block", "stages": ["input", "context", "output"]},
    "injection": {"mode": "block", "stages": ["input", "context"]},
    "deny": {"terms": ["Paris"], "mode": "block", "stages": ["output"]},
}


@pytest.fixture(scope="session")
def server(tmp_path_factory, tiny_model, smollm2_model, rag_index) -> Iterator[TorchServe]:
    """tiny (aliased), smollm2 (plain), rag (smollm2 + RAG + guards), team (example hooks),
    judged (a scripted tiny judge model + LLM judge on the same engine)."""
    root = tmp_path_factory.mktemp("session-server")
    store = root / "model_store"
    archive(
        "tiny-cpu.yaml",
        model=tiny_model,
        store=store,
        name="tiny",
        served_model_name=["tiny", "tiny-alias"],
    )
    archive("smollm2-cpu.yaml", model=smollm2_model, store=store, name="smollm2")
    archive(
        "smollm2-rag-cpu.yaml",
        model=smollm2_model,
        store=store,
        name="rag",
        handler="rag_guard_handler.py",
        guards=RAG_GUARDS,
        rag={"index": str(rag_index), "k": 3, "min_score": 0.25},
    )
    archive(
        "tiny-cpu.yaml",
        model=tiny_model,
        store=store,
        name="team",
        handler="example_hooks_handler.py",
    )
    # the Llama Guard judge on its own served engine: a tiny model scripted to answer the
    # judge's prompt with "safe", or "unsafe S1" when the text says "kill"
    # (tests/e2e/scripted_judge.py), so the client sees the judge's own verdict
    archive(
        "tiny-cpu.yaml",
        model=build_scripted_judge(tiny_model, root / "scripted-judge"),
        store=store,
        name="judged",
        handler="rag_guard_handler.py",
        guards={"judge": {"stages": ["input"], "timeout": 60}},
    )
    models = ["tiny", "smollm2", "rag", "team", "judged"]
    ts = TorchServe(workdir=root / "ts", model_store=store, models=models)
    try:
        yield started(ts, models)
    finally:
        ts.stop()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the session server after the last test that uses it, not when this xdist
    worker's session ends: its five engines hold about 12 GB, and the worker's next units
    start their own servers beside it (a run with both thrashed for memory). The tests
    that use it run together, one unit (tests/scheduling.py); the fixture's own finalizer
    then finds it stopped."""
    if "server" not in item.fixturenames:
        return
    if nextitem is not None and "server" in nextitem.fixturenames:
        return
    ts = item.funcargs.get("server")
    if ts is not None:
        ts.stop()


def wait_for(predicate, *, timeout: float = 600) -> bool:
    """Poll ``predicate`` every 0.5 s until it holds (True) or ``timeout`` passes (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def base_url(ts: TorchServe, model: str) -> str:
    return f"{ts.inference_url}/predictions/{model}/1.0/v1"


@pytest.fixture(scope="session")
def key(server) -> str:
    return server.keys()["inference"]


@pytest.fixture(scope="session")
def tiny(server, key):
    return client(server, key, "tiny")


def client(server, key, model: str):
    from openai import OpenAI

    return OpenAI(base_url=base_url(server, model), api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def smollm2(server, key):
    return client(server, key, "smollm2")


@pytest.fixture(scope="session")
def rag(server, key):
    return client(server, key, "rag")


@pytest.fixture(scope="session")
def image() -> str:
    """The CPU image, built by scripts/image.sh (once per xdist worker that needs it; the
    layer cache makes a second build seconds)."""
    from tests.e2e.containers import build_image

    return build_image()
