"""The audit log: one JSON line per request, off the event loop, safe with several workers.

Each line says who asked what and what it cost, never the text unless asked
(``handler.audit_log.log_content``)::

    {"time": "2026-12-02T08:10:00.123Z", "request_id": "...", "route": "v1/chat/completions",
     "model": "tiny", "version": "1.0", "worker": 4242, "key": "team-a", "status": 200,
     "prompt_tokens": 12, "completion_tokens": 32, "latency_ms": 210.4, "ttft_ms": 35.1,
     "finish_reasons": ["stop"], "guards": [...], "sources": ["history.md"]}

The token counts are the reply's ``usage``: completions, chat, Vertex's envelope, Responses,
Messages, and the pooling routes (embeddings, score, rerank, classify, pooling: prompt tokens
only; :data:`tsvllm.worker.routes.POOLING`).

Lines are queued by the request (a ``put``, nothing else on the loop) and written by one
thread per worker. Every line is one ``write`` to a file opened with ``O_APPEND``, under an
exclusive ``flock`` on ``<path>.lock`` that every worker takes, so workers never tear each
other's lines and rotation (``<path>.1`` … ``<path>.<backups>``, by size) happens once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, path: Path, *, max_bytes: int, backups: int):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._fd: int | None = None
        self._thread: threading.Thread | None = None

    def write(self, entry: dict[str, Any]) -> None:
        """Queue one line (called on the event loop: never blocks)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tsvllm-audit", daemon=True)
            self._thread.start()
        self._queue.put(entry)

    def flush(self) -> None:
        """Block until every queued line is written (tests, shutdown)."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            try:
                line = json.dumps(entry, separators=(",", ":"), default=str) + "\n"
                self._append(line.encode())
            except Exception:  # the audit log must never take the worker down
                logger.exception("tsvllm: writing the audit log %s failed", self.path)
            finally:
                self._queue.task_done()

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            fd = self._current_fd()
            if os.fstat(fd).st_size and os.fstat(fd).st_size + len(data) > self.max_bytes:
                self._rotate()
                fd = self._current_fd()
            os.write(fd, data)

    def _current_fd(self) -> int:
        """Our descriptor for ``path``, reopened when another worker rotated the file."""
        if self._fd is not None:
            try:
                same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return self._fd
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return self._fd

    def _rotate(self) -> None:
        for i in range(self.backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
        if self.backups > 0:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.truncate(self.path, 0)
