"""How the suite is spread over pytest-xdist workers (scripts/test.sh runs 2).

- An e2e file is one unit of work: its tests share the servers its module- and class-scoped
  fixtures start, and some rely on file order (lifecycle, features, launch).
- The e2e files that use the session server (tests/e2e/conftest.py ``server``: five
  engines) form one unit together, so that a run starts it once: :data:`SESSION_SERVER_FILES`.
  A test that uses it elsewhere stops the run with the fix (:func:`check_session_server`).
- Units go out costliest first (:data:`COSTLIEST_FIRST`, measured: docs/TESTING.md), so
  that the longest start at once and the multi-node test's idle waits overlap other work;
  the unit and integration test files (one unit each, so a module-scoped fixture such as
  an integration test's vLLM engine starts once) then fill both workers.

pytest-xdist's own ``xdist_group`` mark is not used: with pytest 9 it no longer reaches
the scheduler (xdist 3.8 rewrites ``item._nodeid``, which pytest 9 does not read).
"""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

#: e2e files whose tests use the session server
SESSION_SERVER_FILES = frozenset(
    {
        "test_hook_contract.py",
        "test_openai_api.py",
        "test_rag_guards.py",
        "test_reliability.py",
        "test_vllm_routes.py",
    }
)
SESSION_SERVER_UNIT = "e2e:session-server"

#: e2e units, costliest first; an unlisted e2e file comes after these
COSTLIEST_FIRST = (
    SESSION_SERVER_UNIT,
    "e2e:test_multinode.py",
    "e2e:test_container.py",
    "e2e:test_torchserve_features.py",
    "e2e:test_launch.py",
    "e2e:test_lifecycle.py",
    "e2e:test_container_lws.py",
    "e2e:test_torchserve_vllm_flow.py",
    "e2e:test_vllm_parity.py",
    "e2e:test_audit.py",
    "e2e:test_engine_metrics.py",
    "e2e:test_runtime_lora.py",
    "e2e:test_embeddings.py",
    "e2e:test_quickstart_key.py",
)


def unit_of(nodeid: str) -> str:
    """The unit of work a test belongs to: its e2e group, else its file."""
    path = PurePosixPath(nodeid.split("::", 1)[0])
    if "e2e" not in path.parts:
        return str(path)
    if path.name in SESSION_SERVER_FILES:
        return SESSION_SERVER_UNIT
    return f"e2e:{path.name}"


def rank(nodeid: str) -> int:
    """Sort key: listed e2e units in their order, then other e2e files, then the rest."""
    unit = unit_of(nodeid)
    if unit in COSTLIEST_FIRST:
        return COSTLIEST_FIRST.index(unit)
    return len(COSTLIEST_FIRST) + (0 if unit.startswith("e2e:") else 1)


def check_session_server(items: list[pytest.Item]) -> None:
    """Refuse a run in which a test outside :data:`SESSION_SERVER_FILES` uses the session
    server: under xdist it would start a second one."""
    for item in items:
        uses = "server" in getattr(item, "fixturenames", ())
        if uses and unit_of(item.nodeid) != SESSION_SERVER_UNIT:
            raise pytest.UsageError(
                f"{item.nodeid} uses the session server: move it into one of "
                f"{sorted(SESSION_SERVER_FILES)}, or add its file to SESSION_SERVER_FILES "
                "in tests/scheduling.py"
            )


class XdistPlugin:
    """Registered by tests/conftest.py when pytest-xdist is loaded: every distributed run of
    this suite (``-n 2``) schedules by :func:`unit_of`."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log):
        if config.getvalue("dist") not in ("load", "loadscope", "loadfile", "loadgroup"):
            return None
        from xdist.scheduler import LoadScopeScheduling

        class SuiteScheduling(LoadScopeScheduling):
            """Scope scheduling with :func:`unit_of` as the scope, handing out the units
            in collection order (which :func:`rank` sets), not by test count."""

            def _split_scope(self, nodeid: str) -> str:
                return unit_of(nodeid)

        config.option.loadscopereorder = False
        return SuiteScheduling(config, log)
