"""Marks each test by its folder (tests/unit → unit, ...); spreads the suite over pytest-xdist
workers so that each server starts once (tests/scheduling.py); builds the demo models once
per run; SIGTERM still tears fixtures down; the run reports where its time went and fails
if it left a server process behind (tests/suite_report.py)."""

import os
import signal
from pathlib import Path

import pytest

from tests import scheduling
from tests.suite_report import (  # noqa: F401 - pytest hooks
    mark_run,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

KINDS = ("unit", "integration", "e2e")
REPO = Path(__file__).resolve().parents[1]


def models_dir() -> Path:
    """Where the demo models are built, once per run (and kept for the next run):
    ``TSVLLM_MODELS_DIR``, else ``models/`` in the repo. Builds are cached and locked
    (tsvllm.demo_models), so xdist workers share one build."""
    return Path(os.environ.get("TSVLLM_MODELS_DIR", REPO / "models"))


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from tsvllm.demo_models import build_tiny

    return build_tiny(models_dir() / "tiny")


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    from tsvllm.demo_models import build_smollm2

    return build_smollm2(models_dir() / "smollm2")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for kind in KINDS:
            if kind in parts:
                item.add_marker(getattr(pytest.mark, kind))
    scheduling.check_session_server(items)
    items.sort(key=lambda item: scheduling.rank(item.nodeid))  # stable: file order kept


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    mark_run()  # before anything starts a process (tests/suite_report.py)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(scheduling.XdistPlugin(), "tsvllm-scheduling")
    # A CI time limit or `kill` sends SIGTERM; as KeyboardInterrupt, pytest still runs the
    # fixtures' finalizers, so servers and engines started by tests are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
