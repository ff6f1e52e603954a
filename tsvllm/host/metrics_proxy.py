"""The one Prometheus scrape endpoint of a TorchServe we own: its metrics plus every engine's.

TorchServe's metrics endpoint shows what handlers emit through ``context.metrics`` (our
hook metrics: PromptTokens, GuardDecisions, ...). vLLM's own ``vllm:*`` series live in
each worker's process (:mod:`tsvllm.worker.engine_metrics`), which write them, labelled
``ts_model``/``ts_version``/``ts_worker``, to files in ``TSVLLM_METRICS_DIR``.
:class:`MetricsProxy` serves ``GET /metrics`` on the address clients scrape (the metrics
port: :class:`tsvllm.host.torchserve.TorchServe` moves TorchServe's own endpoint to an
internal loopback port) and answers TorchServe's text followed by the workers' files,
each metric family once (its ``# HELP``/``# TYPE`` lines once, all its samples together).
Files of workers that are gone (no such pid, or a zombie) are deleted; files not rewritten
for :data:`STALE_S` (a stuck worker) are left out.

Standalone, for a TorchServe started by hand with ``TSVLLM_METRICS_DIR`` in its
environment::

    python -m tsvllm.host.metrics_proxy --dir DIR --upstream http://127.0.0.1:8082/metrics \\
        --listen 127.0.0.1:9090
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tsvllm.metrics_files import FILE_GLOB, pid_of

logger = logging.getLogger(__name__)

#: a worker file older than this is left out (workers rewrite theirs every 2 s)
STALE_S = 30.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UPSTREAM_TIMEOUT_S = 5.0


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def worker_texts(
    directory: Path, *, stale_s: float = STALE_S, now: float | None = None
) -> list[str]:
    """The live workers' metric files' texts; files of dead workers are deleted."""
    now = time.time() if now is None else now
    texts = []
    for path in sorted(directory.glob(FILE_GLOB)):
        pid = pid_of(path)
        if pid is None:
            continue
        if not _alive(pid):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        try:
            if now - path.stat().st_mtime > stale_s:
                continue
            texts.append(path.read_text(encoding="utf-8"))
        except OSError:
            continue  # replaced or removed while we looked
    return texts


def _sample_name(line: str) -> str:
    end = len(line)
    for stop in ("{", " "):
        i = line.find(stop)
        if i != -1:
            end = min(end, i)
    return line[:end]


def merge(texts: Iterable[str]) -> str:
    """Prometheus texts as one: each family's HELP and TYPE once, then all its samples."""
    families: dict[str, dict[str, Any]] = {}

    def family(name: str) -> dict[str, Any]:
        return families.setdefault(name, {"help": None, "type": None, "samples": []})

    for text in texts:
        current = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith(("# HELP ", "# TYPE ")):
                parts = line.split(" ", 3)
                if len(parts) < 3:
                    continue
                current = parts[2]
                key = "help" if parts[1] == "HELP" else "type"
                if family(current)[key] is None:
                    family(current)[key] = line
                continue
            if line.startswith("#"):
                continue
            name = _sample_name(line)
            owner = current if current is not None and name.startswith(current) else name
            family(owner)["samples"].append(line)
    out = []
    for fam in families.values():
        out += [line for line in (fam["help"], fam["type"]) if line is not None]
        out += fam["samples"]
    return "\n".join(out) + "\n" if out else ""


class MetricsProxy:
    """``GET /metrics`` on ``host:port``: ``upstream``'s text merged with ``directory``'s
    worker files. Runs in a daemon thread; :meth:`stop` ends it."""

    def __init__(
        self,
        *,
        directory: str | Path,
        upstream: str | None,
        host: str = "127.0.0.1",
        port: int,
        stale_s: float = STALE_S,
    ):
        self.directory = Path(directory)
        self.upstream = upstream
        self.host = host
        self.port = port
        self.stale_s = stale_s
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/metrics"

    def _upstream_text(self) -> tuple[str, str]:
        """TorchServe's metrics text, and a comment line when it did not answer."""
        if not self.upstream:
            return "", ""
        try:
            with urllib.request.urlopen(self.upstream, timeout=UPSTREAM_TIMEOUT_S) as resp:
                return resp.read().decode("utf-8", errors="replace"), ""
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
            return "", f"# tsvllm: TorchServe's metrics endpoint did not answer: {exc}\n"

    def scrape(self) -> str:
        """The merged text a scrape gets."""
        upstream, note = self._upstream_text()
        return note + merge([upstream, *worker_texts(self.directory, stale_s=self.stale_s)])

    def start(self) -> MetricsProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics is served here")
                    return
                body = proxy.scrape().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # a scrape every few seconds: no access log

        self.directory.mkdir(parents=True, exist_ok=True)
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="tsvllm-metrics", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tsvllm.host.metrics_proxy", description=__doc__)
    p.add_argument("--dir", required=True, help="the workers' TSVLLM_METRICS_DIR")
    p.add_argument(
        "--upstream", help="TorchServe's metrics URL (e.g. http://127.0.0.1:8082/metrics)"
    )
    p.add_argument("--listen", default="127.0.0.1:9090", help="HOST:PORT to serve /metrics on")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    proxy = MetricsProxy(
        directory=args.dir, upstream=args.upstream, host=host or "127.0.0.1", port=int(port)
    ).start()
    print(f"serving {proxy.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        proxy.stop()


if __name__ == "__main__":
    raise SystemExit(main())
