"""Host side of a drain: stop taking requests, let the running ones finish, then stop.

TorchServe kills its workers on ``torchserve --stop``, on a scale-down and on an
unregister, failing every request in flight. The workers drain instead when the host asks
through the control directory (:mod:`tsvllm.drain`): new requests get 503 with
``Retry-After``, running ones finish, each worker reports its running count. This module
asks, watches the counts and decides when to give up:

* :func:`drain` — the whole sequence: ``drain``, wait until every worker reports 0 or the
  drain timeout passes, then ``abort`` (streams end with an error event and ``[DONE]``)
  and a short bounded wait (:data:`ABORT_WAIT_S`). A second signal stops the wait at once.
* :func:`drain_server` — :func:`drain` on a running :class:`~tsvllm.host.torchserve.TorchServe`
  (its control dir, its worker processes); ``serve_foreground`` calls it on SIGTERM.
* :func:`drain_model` — ``tsvllm drain``: one model (or all) of a server that keeps
  running, before an operator unregisters or scales it down.

Exit codes (``tsvllm launch``, the container entrypoint, ``tsvllm drain``):
:data:`EXIT_CLEAN` 0 — every request finished; :data:`EXIT_REQUESTS_ENDED` 3 — requests had
to be ended (drain timeout, a second signal) or, for ``tsvllm drain``, still run at the
timeout; 1 — a failure (TorchServe exited on its own, nothing reports).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsvllm import drain as protocol

DRAIN_TIMEOUT_ENV = "TSVLLM_DRAIN_TIMEOUT_S"
DEFAULT_DRAIN_TIMEOUT_S = 30.0
#: after ``abort``: how long the workers get to end what still runs and report 0
ABORT_WAIT_S = 10.0
#: the shortest watch: a worker sees the drain within POLL_S and reports within another
#: POLL_S, so a 0 read sooner may predate the drain
SETTLE_S = 3 * protocol.POLL_S
#: a worker with no status this long after the drain began does not drain (another handler)
SILENT_S = 5.0
#: seconds between "draining: N requests running" lines
PROGRESS_S = 5.0
#: after the last request ended: time for its final bytes to pass the worker's sender
#: thread and the frontend before ``torchserve --stop`` closes the connections
FLUSH_S = 0.5
#: a bound on TorchServe.stop after a drain (``torchserve --stop``, the frontend's exit, the
#: engine processes'); measured 6.7-8 s with the tiny model on 2 busy cores (docs/DEPLOY.md)
STOP_S = 15
EXIT_CLEAN = 0
EXIT_FAILED = 1
EXIT_REQUESTS_ENDED = 3
WORKER_SCRIPT = "model_service_worker.py"

Say = Callable[[str], None]


# -- the drain timeout ------------------------------------------------------------------


def parse_drain_timeout(raw: str, *, source: str) -> float:
    """Seconds from ``raw`` (``source`` names the flag or variable in the message)."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{source}={raw!r}: give the drain timeout in seconds, a number >= 0 "
            f"(default {DEFAULT_DRAIN_TIMEOUT_S:.0f}; 0 ends running requests at once)"
        )
    return value


def drain_timeout(
    env: Mapping[str, str], *, flag: str | None = None, configured: float | None = None
) -> float:
    """``--drain-timeout`` if given, else ``TSVLLM_DRAIN_TIMEOUT_S``, else the model
    config's ``handler.drain_timeout_s`` (``configured``), else the default."""
    if flag is not None:
        return parse_drain_timeout(flag, source="--drain-timeout")
    raw = env.get(DRAIN_TIMEOUT_ENV, "").strip()
    if raw:
        return parse_drain_timeout(raw, source=DRAIN_TIMEOUT_ENV)
    return DEFAULT_DRAIN_TIMEOUT_S if configured is None else configured


def shutdown_bound(drain_timeout_s: float) -> int:
    """Seconds a SIGTERM may take at most: drain, abort wait, stop (whole seconds)."""
    return math.ceil(max(drain_timeout_s, SETTLE_S) + ABORT_WAIT_S + STOP_S)


# -- watching the workers -----------------------------------------------------------------


@dataclass
class _Watch:
    """The running count over the workers, from their status files."""

    directory: Path
    workers: Callable[[], Iterable[int]]
    say: Say
    started: float = field(default_factory=time.monotonic)
    silent: set[int] = field(default_factory=set)

    def running(self) -> int | None:
        """Requests running over the workers that report; None while one has not yet."""
        total, waiting = 0, False
        for pid, count in protocol.running(self.directory, self.workers()).items():
            if count is not None:
                total += count
            elif time.monotonic() - self.started < SILENT_S:
                waiting = True
            elif pid not in self.silent:
                self.silent.add(pid)
                self.say(
                    f"worker {pid} reports no status after {SILENT_S:.0f} s (a handler "
                    "without drain support?): not waiting for it"
                )
        return None if waiting else total

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _requests(count: int | None) -> str:
    if count is None:
        return "an unknown number of requests"
    return f"{count} request{'' if count == 1 else 's'}"


def _wait_zero(
    watch: _Watch,
    *,
    until: float,
    give_up: Callable[[], bool],
    interval: float,
    label: str = "draining",
) -> int | None:
    """Poll until the count is 0 (not before SETTLE_S), ``until`` or ``give_up()``;
    returns the last count. Prints progress every PROGRESS_S."""
    shown = -math.inf
    while True:
        count = watch.running()
        if count == 0 and watch.elapsed() >= SETTLE_S:
            return 0
        if time.monotonic() >= until or give_up():
            return count
        if count is not None and watch.elapsed() - shown >= PROGRESS_S:
            shown = watch.elapsed()
            watch.say(f"{label}: {_requests(count)} running")
        time.sleep(interval)


# -- draining a server we stop ----------------------------------------------------------


@dataclass(frozen=True)
class DrainResult:
    """How a drain ended: ``clean`` (every request finished), ``ended`` (the count still
    running when the wait stopped), ``failed`` (TorchServe exited during it)."""

    clean: bool
    seconds: float
    ended: int | None = 0
    failed: bool = False

    @property
    def exit_code(self) -> int:
        if self.failed:
            return EXIT_FAILED
        return EXIT_CLEAN if self.clean else EXIT_REQUESTS_ENDED


def drain(
    directory: Path,
    *,
    timeout_s: float,
    workers: Callable[[], Iterable[int]],
    interrupted: Callable[[], bool],
    alive: Callable[[], bool],
    say: Say,
    abort_wait_s: float = ABORT_WAIT_S,
    interval: float = protocol.POLL_S / 2,
) -> DrainResult:
    """Drain every model's workers; abort what still runs after ``timeout_s``.

    ``workers()`` lists the worker PIDs now; ``interrupted()`` is True once a second
    signal came (stop waiting at once); ``alive()`` is False once TorchServe exited.
    """
    protocol.request(directory, protocol.DRAIN)
    watch = _Watch(directory, workers, say)
    say(f"draining (up to {timeout_s:g} s; a second signal stops at once)")

    def give_up() -> bool:
        return interrupted() or not alive()

    count = _wait_zero(
        watch, until=watch.started + max(timeout_s, SETTLE_S), give_up=give_up, interval=interval
    )
    if count == 0:
        say(f"drain done in {watch.elapsed():.1f} s")
        return DrainResult(clean=True, seconds=watch.elapsed())
    if not alive():
        say("TorchServe exited during the drain")
        return DrainResult(clean=False, seconds=watch.elapsed(), ended=count, failed=True)
    if interrupted():
        say(f"second signal: stopping at once, ending {_requests(count)}")
        return DrainResult(clean=False, seconds=watch.elapsed(), ended=count)
    say(f"drain timeout: ending {_requests(count)}")
    protocol.request(directory, protocol.ABORT)
    aborted = time.monotonic()
    left = _wait_zero(
        watch, until=aborted + abort_wait_s, give_up=give_up, interval=interval, label="ending"
    )
    if left == 0:
        say(f"ended them in {time.monotonic() - aborted:.1f} s")
    else:
        say(f"{_requests(left)} still running after {abort_wait_s:g} s: stopping anyway")
    return DrainResult(clean=False, seconds=watch.elapsed(), ended=count)


def worker_pids(ts: Any) -> list[int]:
    """The TorchServe worker processes (``model_service_worker.py``) in ``ts``'s tree."""
    import psutil

    pids = []
    for pid in ts.process_tree():
        try:
            cmdline = psutil.Process(pid).cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(arg.endswith(WORKER_SCRIPT) for arg in cmdline):
            pids.append(pid)
    return pids


def drain_server(
    ts: Any, *, timeout_s: float, interrupted: Callable[[], bool], say: Say
) -> DrainResult:
    """:func:`drain` on a running TorchServe (its control dir, its workers)."""

    def alive() -> bool:
        return ts.process is not None and ts.process.poll() is None

    result = drain(
        ts.control_dir,
        timeout_s=timeout_s,
        workers=lambda: worker_pids(ts),
        interrupted=interrupted,
        alive=alive,
        say=say,
    )
    if not interrupted() and alive():
        time.sleep(FLUSH_S)
    return result


# -- draining one model of a server that keeps running (tsvllm drain) -------------------


def _reporting(directory: Path, *, since: float) -> list[int]:
    """Live workers whose status file was written since ``since`` (wall clock)."""
    pids = []
    for path in directory.glob("worker-*.json"):
        try:
            pid = int(path.stem.removeprefix("worker-"))
            fresh = path.stat().st_mtime >= since
        except (ValueError, OSError):
            continue
        if fresh and _pid_alive(pid):
            pids.append(pid)
    return pids


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def drain_model(
    directory: Path,
    *,
    model: str | None,
    timeout_s: float,
    say: Say,
    interval: float = protocol.POLL_S,
) -> int:
    """``tsvllm drain``: drain ``model`` (None: every model) and wait until its workers
    report 0, at most ``timeout_s``. Returns an exit code (module docstring)."""
    if not directory.is_dir():
        raise ValueError(
            f"{directory}: no such control directory (the server's TSVLLM_CONTROL_DIR; "
            "tsvllm launch prints it, the container uses $TSVLLM_WORKDIR/ts/control)"
        )
    since = time.time() - 1  # mtimes may be coarse: a status written as we start counts
    protocol.request(directory, protocol.DRAIN, model=model)
    watch = _Watch(directory, lambda: _reporting(directory, since=since), say)
    what = f"model {model!r}" if model else "every model"
    say(f"draining {what} (up to {timeout_s:g} s)")
    while not _reporting(directory, since=since) and watch.elapsed() < SILENT_S:
        time.sleep(interval)
    if not _reporting(directory, since=since):
        say(
            f"no worker reported within {SILENT_S:.0f} s: is {directory} the control "
            "directory of the running server" + (f", and {model!r} its model?" if model else "?")
        )
        return EXIT_FAILED
    count = _wait_zero(
        watch, until=watch.started + timeout_s, give_up=lambda: False, interval=interval
    )
    if count == 0:
        say(f"drained in {watch.elapsed():.1f} s: no request running on {what}")
        return EXIT_CLEAN
    say(f"{_requests(count)} still running after {timeout_s:g} s")
    return EXIT_REQUESTS_ENDED
