"""Marks each test by its folder (tests/unit → unit, ...); SIGTERM still tears fixtures down."""

import signal
from pathlib import Path

import pytest

KINDS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for kind in KINDS:
            if kind in parts:
                item.add_marker(getattr(pytest.mark, kind))


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # A CI time limit or `kill` sends SIGTERM; as KeyboardInterrupt, pytest still runs the
    # fixtures' finalizers, so servers and engines started by tests are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
