"""What one test run cost, and what it left behind (hooks imported by ``tests/conftest.py``).

- **Where the time went**: at the end of the run, the wall time and, per folder (unit,
  integration, e2e) and per e2e file, the seconds its tests spent in setup, call and
  teardown (fixtures included), so a regression shows in the CI log. Under ``pytest-xdist``
  the folders overlap in time: their sum is more than the wall time.
- **Nothing left behind**: the processes a run may start (TorchServe's Java frontend and
  Python workers, vLLM's engine processes, ``tsvllm`` launchers and follower hosts) that are
  still alive at its end fail the run; they are listed, then ended by PID. A process counts
  as this run's when it inherited the run's mark (:data:`RUN_ENV` in its environment, set
  before any test starts anything), so an orphan that lost its parent is found too, and
  servers of other runs or users on the machine are never touched. Only the controlling
  process checks (the xdist workers have ended by then).
"""

from __future__ import annotations

import os
import time
import uuid
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

#: command-line fragments of the processes a test run may start
SERVING = (
    "org.pytorch.serve.ModelServer",
    "model_service_worker.py",
    "VLLM::",
    "tsvllm.host.",
    "tsvllm.cli",
    "vllm.entrypoints",
)
#: how long the processes of the last fixtures' teardown may take to exit
LEFTOVER_GRACE_S = 60.0
#: the environment variable that marks every process this run starts (inherited)
RUN_ENV = "TSVLLM_TEST_RUN"

_started = time.monotonic()
_by_kind: dict[str, float] = defaultdict(float)
_by_e2e_file: dict[str, float] = defaultdict(float)
#: the processes left behind, for the terminal summary
_LEFT = pytest.StashKey[dict[int, str]]()


def mark_run() -> None:
    """Mark this run's processes (called before any test; xdist workers inherit the
    controller's mark)."""
    os.environ.setdefault(RUN_ENV, uuid.uuid4().hex)


def serving_processes(run: str) -> dict[int, str]:
    """PID → command line of every process of run ``run`` whose command line names a
    :data:`SERVING` part."""
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline", "name"]):
        try:
            line = " ".join(proc.info["cmdline"] or [proc.info["name"] or ""])
            if not any(part in line for part in SERVING) or proc.info["pid"] == os.getpid():
                continue
            if proc.environ().get(RUN_ENV) == run:
                found[proc.info["pid"]] = line
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    parts = Path(report.fspath).parts
    kind = next((k for k in ("unit", "integration", "e2e") if k in parts), "other")
    _by_kind[kind] += report.duration
    if kind == "e2e":
        _by_e2e_file[Path(report.fspath).name] += report.duration


def _leftovers() -> dict[int, str]:
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while True:
        left = serving_processes(os.environ[RUN_ENV])
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _controller(session.config) or session.config.getoption("collectonly", False):
        return
    left = _leftovers()
    session.config.stash[_LEFT] = left
    if left:
        for pid in left:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _controller(config) or not _by_kind:
        return
    tr = terminalreporter
    tr.section("where the time went")
    tr.write_line(f"wall time: {time.monotonic() - _started:.0f} s")
    for kind in ("unit", "integration", "e2e", "other"):
        if kind in _by_kind:
            tr.write_line(f"  {kind:<12} {_by_kind[kind]:7.0f} s in tests (fixtures included)")
    for name, seconds in sorted(_by_e2e_file.items(), key=lambda kv: -kv[1]):
        tr.write_line(f"    e2e/{name:<34} {seconds:6.0f} s")
    left = config.stash.get(_LEFT, {})
    if left:
        tr.section("processes left behind (ended now; the run fails)", red=True)
        for pid, line in left.items():
            tr.write_line(f"  {pid}: {line[:200]}", red=True)
