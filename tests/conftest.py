"""Marks each test by its folder (tests/unit → unit, ...) and puts the e2e tests that share a
server into one ``pytest-xdist`` group; SIGTERM still tears fixtures down; the run reports
where its time went and fails if it left a server process behind (tests/suite_report.py)."""

import os
import signal
from pathlib import Path

import pytest

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


#: e2e tests that use the session server (tests/e2e/conftest.py) run in one xdist worker,
#: so that a run starts it once; the other e2e files each start their own servers and
#: form one group per file
SESSION_SERVER_GROUP = "e2e-session-server"


#: the e2e groups, costliest first (measured: docs/TESTING.md). scripts/test.sh hands them
#: out in this order (``--no-loadscope-reorder``), so that the longest start first and the
#: multi-node test's idle waits overlap the others' work; unlisted groups come after them,
#: then the unit and integration tests fill both workers at the end.
COSTLIEST_FIRST = (
    SESSION_SERVER_GROUP,
    "e2e-test_multinode",
    "e2e-test_torchserve_features",
    "e2e-test_launch",
    "e2e-test_entrypoint",
    "e2e-test_lifecycle",
    "e2e-test_multinode_lws",
    "e2e-test_torchserve_vllm_flow",
    "e2e-test_audit",
    "e2e-test_engine_metrics",
    "e2e-test_runtime_lora",
    "e2e-test_embeddings",
)


def xdist_group(item: pytest.Item) -> str:
    if "server" in getattr(item, "fixturenames", ()):
        return SESSION_SERVER_GROUP
    return f"e2e-{Path(str(item.fspath)).stem}"


def _rank(item: pytest.Item) -> int:
    group = item.get_closest_marker("xdist_group")
    if group is None:
        return len(COSTLIEST_FIRST) + 1
    name = group.args[0]
    return COSTLIEST_FIRST.index(name) if name in COSTLIEST_FIRST else len(COSTLIEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for kind in KINDS:
            if kind in parts:
                item.add_marker(getattr(pytest.mark, kind))
        if "e2e" in parts:
            item.add_marker(pytest.mark.xdist_group(xdist_group(item)))
    items.sort(key=_rank)  # stable: file order within a group (some files rely on it)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    mark_run()  # before anything starts a process (tests/suite_report.py)
    # A CI time limit or `kill` sends SIGTERM; as KeyboardInterrupt, pytest still runs the
    # fixtures' finalizers, so servers and engines started by tests are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
