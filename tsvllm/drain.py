"""The drain protocol between the host (launcher, container entrypoint) and the workers.

TorchServe has no way to tell a worker "stop taking requests, finish the running ones":
it kills workers. So the host and the workers share a *control directory*, named to the
workers by ``TSVLLM_CONTROL_DIR`` (TorchServe's workers inherit the frontend's
environment):

* the host creates ``drain`` (every model) or ``drain@<model>`` (one model, e.g. before
  unregistering it): each worker of that model answers new requests (and its readiness
  probe) 503 with ``Retry-After``, keeps serving the running ones, and writes its status
  to ``worker-<pid>.json`` (``{"pid": .., "running": n}``) several times a second, for as
  long as it drains (a cancelled drain removes it);
* the host creates ``drain-pid-<pid>`` to drain one worker process only (``tsvllm scale``
  drains the workers TorchServe is about to remove, the others keep serving);
* the host creates ``abort`` (``abort@<model>``, ``abort-pid-<pid>``) once the drain
  timeout has passed:
  each worker ends what is still
  running (a stream gets an error event and ``[DONE]``, a plain request 503) and the
  engine aborts it;
* the host waits until every worker reports ``running: 0``, then stops TorchServe, or
  removes the ``drain`` file (:func:`cancel`) to let a worker that was not aborted take
  requests again.

* tsvllm's frontend plugin creates ``gone/<request id>`` when a request's client has closed
  its connection: the worker running it ends it (:func:`gone_requests`).

Files, not signals: a worker polls one ``stat`` every :data:`POLL_S`, and the host can
read every worker's state without asking through the frontend (which routes a request to
one worker of its choice).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

CONTROL_DIR_ENV = "TSVLLM_CONTROL_DIR"
DRAIN = "drain"
ABORT = "abort"
#: the folder where tsvllm's frontend plugin marks requests whose client has gone
GONE = "gone"
#: how often a worker looks for the control files
POLL_S = 0.1
#: the Retry-After (seconds) a draining worker answers with
RETRY_AFTER_S = 5


def control_dir(environ: Mapping[str, str]) -> Path | None:
    """The control directory named by ``TSVLLM_CONTROL_DIR``, or None."""
    value = environ.get(CONTROL_DIR_ENV)
    return Path(value) if value else None


def _name(what: str, model: str | None = None, *, pid: int | None = None) -> str:
    """The control file's name: every model, one ``model``, or one worker ``pid`` (``-``
    is not ``@``: no model name can take a worker's file)."""
    if what not in (DRAIN, ABORT):
        raise ValueError(f"what must be {DRAIN!r} or {ABORT!r}, not {what!r}")
    if model is not None and pid is not None:
        raise ValueError("name a model or a worker pid, not both")
    if pid is not None:
        return f"{what}-pid-{pid}"
    return what if model is None else f"{what}@{model}"


def request(
    directory: Path, what: str, *, model: str | None = None, pid: int | None = None
) -> None:
    """Host side: ask the workers (of ``model``, or the worker ``pid``, else all) to
    ``DRAIN`` or to ``ABORT``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / _name(what, model, pid=pid)).touch()


def cancel(directory: Path, *, model: str | None = None, pid: int | None = None) -> None:
    """Host side: end a drain that was not aborted (the workers take requests again),
    e.g. after a scale-down that kept some of a model's workers."""
    (directory / _name(DRAIN, model, pid=pid)).unlink(missing_ok=True)


def forget_worker(directory: Path, pid: int) -> None:
    """Host side: remove what was asked of worker ``pid`` (its drain and abort files)."""
    for what in (DRAIN, ABORT):
        (directory / _name(what, pid=pid)).unlink(missing_ok=True)


def requested(directory: Path, *, model: str, pid: int | None = None) -> tuple[bool, bool]:
    """Worker side: ``(drain, abort)`` as the host asked, for all models, ``model`` or
    this worker (``pid``)."""

    def asked(what: str) -> bool:
        names = [what, _name(what, model)]
        if pid is not None:
            names.append(_name(what, pid=pid))
        return any((directory / name).exists() for name in names)

    return asked(DRAIN), asked(ABORT)


def gone_requests(directory: Path) -> set[str]:
    """Worker side: the ids of requests whose client has gone, as tsvllm's frontend plugin
    marks them (``gone/<request id>``, removed once the request has left the worker)."""
    try:
        with os.scandir(directory / GONE) as entries:
            return {entry.name for entry in entries}
    except FileNotFoundError:
        return set()


def status_path(directory: Path, pid: int) -> Path:
    """Where worker ``pid`` writes its status while it drains."""
    return directory / f"worker-{pid}.json"


def write_status(directory: Path, *, pid: int, running: int) -> None:
    """Worker side: this worker's running count, replaced atomically."""
    path = status_path(directory, pid)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": pid, "running": running}))
    os.replace(tmp, path)


def clear_status(directory: Path, *, pid: int) -> None:
    """Worker side: this worker no longer drains (the drain was cancelled): its status goes,
    so that the next drain waits for a fresh one instead of reading this one's last count."""
    status_path(directory, pid).unlink(missing_ok=True)


def running(
    directory: Path, pids: Iterable[int], *, since: float | None = None
) -> dict[int, int | None]:
    """Host side: each worker's last reported running count (None: not reported yet, or,
    with ``since`` (wall clock), not since then)."""
    out: dict[int, int | None] = {}
    for pid in pids:
        path = status_path(directory, pid)
        try:
            if since is not None and path.stat().st_mtime < since:
                raise ValueError("an older status")
            out[pid] = int(json.loads(path.read_text())["running"])
        except (OSError, ValueError, KeyError, TypeError):
            out[pid] = None
    return out
