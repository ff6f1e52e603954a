"""``tsvllm scale``: change a model's worker count on a running TorchServe, losing nothing.

TorchServe scales down by killing workers: the newest ones (``WorkLoadManager`` removes
from the end of the model's worker list, the order describe-model shows). Their streams
would be cut, or handed to a kept worker, which refuses a stream another worker began
(:mod:`tsvllm.worker.stream_marks`). So for a scale-down from M to N workers,
:func:`scale`:

1. reads the model's workers (describe-model) and asks the last M - N of them, by pid, to
   drain (:mod:`tsvllm.drain`: ``drain-pid-<pid>``): they answer new requests 503 with
   ``Retry-After`` and finish their running ones, while the N kept workers serve as usual;
2. waits until they report no running request, at most the timeout, then asks them to
   abort what still runs (streams end with an error event and ``[DONE]``), as a drain does;
3. calls the management API ``PUT /models/M?min_worker=N&max_worker=N&synchronous=true``;
4. removes the drain files (on a failure too: the workers it did not remove serve again,
   unless they were aborted).

A scale-up only calls the management API synchronously: it returns once the new workers
serve (their load ends when their engine serves).

The server is found from TorchServe's working folder (``--workdir``): its
``config.properties`` gives the management address (a TCP URL or ``unix:<socket>``, as
``tsvllm launch`` and the container set it), its ``control`` folder is the drain control
directory, and its ``key_file.json`` the management key when TorchServe's token auth is
on. A scale-down needs the control directory the server's workers were started with
(``TSVLLM_CONTROL_DIR``); without one it refuses, saying so.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsvllm import drain as protocol
from tsvllm.host.shutdown import (
    ABORT_WAIT_S,
    EXIT_CLEAN,
    EXIT_FAILED,
    EXIT_REQUESTS_ENDED,
    FLUSH_S,
    PROGRESS_S,
    SETTLE_S,
    SILENT_S,
)

#: TorchServe's default management address (``config.properties`` may set another)
DEFAULT_MANAGEMENT = "http://127.0.0.1:8081"
#: a synchronous scale-up returns once the new engines serve: minutes for a large model
API_TIMEOUT_S = 1800.0

Say = Callable[[str], None]


class ScaleError(Exception):
    """What stops ``tsvllm scale`` before it changes anything (exit status 2)."""


@dataclass(frozen=True)
class Server:
    """Where a running TorchServe takes management calls and drain requests."""

    management: str
    control_dir: Path | None
    management_key: str | None = None


def find_server(
    *,
    workdir: str | None,
    management: str | None,
    control_dir: str | None,
    environ: Mapping[str, str],
) -> Server:
    """The server from the options: ``workdir`` (TorchServe's working folder), else the
    container's (``$TSVLLM_WORKDIR/ts``), else ``tsvllm launch``'s default
    (``model_store/.torchserve``) when it exists; ``management`` and ``control_dir``
    override what the folder says. Raises :class:`ScaleError` when nothing names one."""
    folder = _workdir(workdir, environ, default=management is None)
    if folder is None and management is None:
        raise ScaleError(
            "which server? give --workdir DIR: TorchServe's working folder (tsvllm launch: "
            "MODEL_STORE/.torchserve; the container: $TSVLLM_WORKDIR/ts), or --management "
            "URL (http://127.0.0.1:8081, unix:/path/management.sock) with --control-dir"
        )
    props = _properties(folder / "config.properties") if folder else {}
    address = management or props.get("management_address") or DEFAULT_MANAGEMENT
    control = Path(control_dir) if control_dir else None
    if control is None and folder is not None and (folder / "control").is_dir():
        control = folder / "control"
    if control is None:
        control = protocol.control_dir(environ)
    key = _management_key(folder / "key_file.json") if folder else None
    return Server(management=address, control_dir=control, management_key=key)


def _workdir(workdir: str | None, environ: Mapping[str, str], *, default: bool) -> Path | None:
    """``workdir``, else (when ``default``) the container's or tsvllm launch's, if found."""
    if workdir:
        folder = Path(workdir)
        if not folder.is_dir():
            raise ScaleError(f"--workdir {workdir}: no such folder")
        return folder
    if not default:
        return None
    root = environ.get("TSVLLM_WORKDIR", "").strip()
    for folder in ([Path(root) / "ts"] if root else []) + [Path("model_store/.torchserve")]:
        if (folder / "config.properties").is_file():
            return folder
    return None


def _properties(path: Path) -> dict[str, str]:
    """``key=value`` lines of a Java properties file (what TorchServe's config needs)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    props = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith(("#", "!")):
            props[key.strip()] = value.strip().replace("\\:", ":").replace("\\=", "=")
    return props


def _management_key(path: Path) -> str | None:
    """TorchServe's management key from its ``key_file.json`` (token auth), if any."""
    try:
        return json.loads(path.read_text())["management"]["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- the management API ---------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (``tsvllm launch`` puts the management API on one)."""

    def __init__(self, path: str, *, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class ManagementApi:
    """TorchServe's management API at ``address`` (``http://host:port`` or ``unix:path``)."""

    def __init__(self, address: str, *, key: str | None = None, timeout_s: float = API_TIMEOUT_S):
        self.address = address
        self.key = key
        self.timeout_s = timeout_s

    def _connection(self) -> http.client.HTTPConnection:
        if self.address.startswith("unix:"):
            return _UnixConnection(self.address.removeprefix("unix:"), timeout=self.timeout_s)
        url = urllib.parse.urlsplit(self.address)
        if url.scheme == "https":
            return http.client.HTTPSConnection(url.netloc, timeout=self.timeout_s)
        return http.client.HTTPConnection(url.netloc, timeout=self.timeout_s)

    def call(self, method: str, path: str, **params: Any) -> tuple[int, str]:
        """``(status, body)``; raises ScaleError when the API cannot be reached."""
        query = urllib.parse.urlencode(params)
        target = urllib.parse.quote(path) + (f"?{query}" if query else "")
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        conn = self._connection()
        try:
            conn.request(method, target, headers=headers)
            reply = conn.getresponse()
            return reply.status, reply.read().decode(errors="replace")
        except OSError as exc:
            raise ScaleError(f"the management API at {self.address}: {exc}") from exc
        finally:
            conn.close()

    def workers(self, model: str) -> list[dict[str, Any]]:
        """The workers of ``model``'s default version, in TorchServe's order."""
        status, body = self.call("GET", f"/models/{model}")
        if status != 200:
            raise ScaleError(f"describe model {model!r}: {status} {body.strip()}")
        try:
            return list(json.loads(body)[0]["workers"])
        except (ValueError, LookupError, TypeError) as exc:
            raise ScaleError(f"describe model {model!r}: unexpected reply {body[:200]}") from exc

    def set_workers(self, model: str, workers: int) -> tuple[int, str]:
        """Scale ``model`` to exactly ``workers``, returning when it is done."""
        return self.call(
            "PUT", f"/models/{model}", min_worker=workers, max_worker=workers, synchronous="true"
        )


# -- scaling -----------------------------------------------------------------------------


def scale(
    server: Server,
    *,
    model: str,
    workers: int,
    timeout_s: float,
    say: Say,
    api: ManagementApi | None = None,
    interval: float = protocol.POLL_S / 2,
) -> int:
    """Scale ``model`` to ``workers``, draining the workers a scale-down removes first.
    Returns an exit status: 0 done, 3 done but running requests had to be ended at the
    timeout, 1 failed (nothing removed). Raises ScaleError when it cannot start."""
    if workers < 0:
        raise ScaleError(f"--workers {workers}: give 0 or more")
    api = api or ManagementApi(server.management, key=server.management_key)
    now = api.workers(model)
    if workers == len(now):
        say(f"model {model!r} has {workers} worker(s) already")
        return EXIT_CLEAN
    if workers > len(now):
        say(f"scaling {model!r} up from {len(now)} to {workers} workers")
        return _set(api, model, workers, say)
    leaving = [int(w["pid"]) for w in now[workers:]]
    running = [pid for pid in leaving if pid > 0]  # a worker restarting has no process
    if server.control_dir is None or not server.control_dir.is_dir():
        raise ScaleError(
            f"cannot drain the workers a scale-down removes ({_pids(leaving)}): no control "
            f"directory{f' {server.control_dir}' if server.control_dir else ''}. Give "
            "--workdir (a server started by tsvllm launch or the container) or --control-dir "
            "DIR, where DIR is the TSVLLM_CONTROL_DIR the server was started with (its "
            "workers read it); or scale through the management API directly, and the streams "
            "on the removed workers end"
        )
    directory = server.control_dir
    say(f"scaling {model!r} down from {len(now)} to {workers}: draining {_pids(leaving)}")
    scaled = False
    try:
        code = _drain(directory, running, timeout_s=timeout_s, say=say, interval=interval)
        if code != EXIT_FAILED:
            tail = [int(w["pid"]) for w in api.workers(model)[workers:]]
            if tail != leaving:
                say(f"the workers changed during the drain (now leaving: {_pids(tail)}); rerun")
                code = EXIT_FAILED
        if code != EXIT_FAILED:
            time.sleep(FLUSH_S)  # the last replies pass the worker's sender and the frontend
            scaled = _set(api, model, workers, say) == EXIT_CLEAN
            code = code if scaled else EXIT_FAILED
    finally:
        for pid in running:
            protocol.forget_worker(directory, pid)
        if not scaled:
            say(f"drain cancelled: {_pids(leaving)} take requests again (unless aborted)")
    return code


def _set(api: ManagementApi, model: str, workers: int, say: Say) -> int:
    started = time.monotonic()
    status, body = api.set_workers(model, workers)
    took = time.monotonic() - started
    if status != 200:
        say(f"the management API answered {status} after {took:.1f} s: {body.strip()}")
        return EXIT_FAILED
    say(f"{model!r} has {workers} worker(s), serving ({took:.1f} s)")
    return EXIT_CLEAN


def _drain(directory: Path, pids: list[int], *, timeout_s: float, say: Say, interval: float) -> int:
    """Drain the workers ``pids``; abort what still runs after ``timeout_s``. Returns
    EXIT_CLEAN, EXIT_REQUESTS_ENDED (aborted) or EXIT_FAILED (a worker does not report)."""
    since = time.time() - 1  # mtimes may be coarse: a status written as we start counts
    started = time.monotonic()
    for pid in pids:
        protocol.request(directory, protocol.DRAIN, pid=pid)
    shown = started
    while True:
        counts = protocol.running(directory, pids, since=since)
        silent = [pid for pid, count in counts.items() if count is None]
        elapsed = time.monotonic() - started
        if silent and elapsed >= SILENT_S:
            say(
                f"{_pids(silent)} report no status after {SILENT_S:.0f} s: they do not read "
                f"{directory} (the server's TSVLLM_CONTROL_DIR?); not scaling down"
            )
            return EXIT_FAILED
        total = sum(count or 0 for count in counts.values())
        if not silent and total == 0 and elapsed >= SETTLE_S:
            say(f"drained in {elapsed:.1f} s")
            return EXIT_CLEAN
        if elapsed >= timeout_s and not silent:
            break
        if time.monotonic() - shown >= PROGRESS_S:
            shown = time.monotonic()
            say(f"draining: {total} request(s) running on the leaving workers")
        time.sleep(interval)
    say(f"drain timeout: ending {total} request(s) still running on {_pids(pids)}")
    for pid in pids:
        protocol.request(directory, protocol.ABORT, pid=pid)
    end = time.monotonic() + ABORT_WAIT_S
    while time.monotonic() < end:
        if sum(c or 0 for c in protocol.running(directory, pids, since=since).values()) == 0:
            break
        time.sleep(interval)
    return EXIT_REQUESTS_ENDED


def _pids(pids: list[int]) -> str:
    return ("worker " if len(pids) == 1 else "workers ") + ", ".join(map(str, pids))
