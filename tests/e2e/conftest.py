"""End-to-end fixtures: real TorchServe (Java frontend) + real vLLM engines on CPU.

One session server serves two models built with no hub: ``tiny`` (random weights, fast,
aliased as ``tiny-alias``) and ``smollm2`` (the real SmolLM2-135M-Instruct). Every server
a fixture starts is stopped in its ``finally``, whatever the tests did.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tsvllm.archive import build_archive
from tsvllm.config import dump_model_config, load_model_config
from tsvllm.demo_models import build_smollm2, build_tiny
from tsvllm.serve import TorchServe

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("TSVLLM_MODELS_DIR", REPO / "models"))
STARTUP_TIMEOUT = 900


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return build_tiny(MODELS / "tiny")


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    return build_smollm2(MODELS / "smollm2")


def archive(
    config: str,
    *,
    model: Path,
    store: Path,
    name: str,
    fmt: str = "no-archive",
    aliases: list[str] | None = None,
) -> Path:
    """Archive a shipped config pointed at ``model`` into ``store`` as ``name``."""
    cfg = load_model_config(REPO / "model_configs" / config)
    handler = {"model_path": str(model)}
    if aliases:
        handler["served_model_name"] = aliases
    cfg = cfg.model_copy(update={"handler": cfg.handler.model_copy(update=handler)})
    path = dump_model_config(cfg, store.parent / f"{name}-config.yaml")
    return build_archive(path, name=name, fmt=fmt, export_path=store, force=True)


def started(ts: TorchServe, models: list[str]) -> TorchServe:
    ts.start()
    for model in models:
        ts.wait_ready(model, timeout=STARTUP_TIMEOUT)
    return ts


@pytest.fixture(scope="session")
def server(tmp_path_factory, tiny_model, smollm2_model) -> Iterator[TorchServe]:
    root = tmp_path_factory.mktemp("session-server")
    store = root / "model_store"
    archive("tiny-cpu.yaml", model=tiny_model, store=store, name="tiny",
            aliases=["tiny", "tiny-alias"])  # fmt: skip
    archive("smollm2-cpu.yaml", model=smollm2_model, store=store, name="smollm2")
    ts = TorchServe(workdir=root / "ts", model_store=store, models=["tiny", "smollm2"])
    try:
        yield started(ts, ["tiny", "smollm2"])
    finally:
        ts.stop()


def base_url(ts: TorchServe, model: str) -> str:
    return f"{ts.inference_url}/predictions/{model}/1.0/v1"


@pytest.fixture(scope="session")
def key(server) -> str:
    return server.keys()["inference"]


@pytest.fixture(scope="session")
def tiny(server, key):
    from openai import OpenAI

    return OpenAI(base_url=base_url(server, "tiny"), api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def smollm2(server, key):
    from openai import OpenAI

    return OpenAI(base_url=base_url(server, "smollm2"), api_key=key, max_retries=0, timeout=120)
