"""The worker's side of the drain protocol (:mod:`tsvllm.drain`).

:class:`DrainWatch` polls the control directory on the worker's event loop. Once the host
asks for a drain (of every model, this worker's model, or this worker process alone),
:attr:`DrainWatch.draining` turns true (the request core then answers
new requests and probes 503 with ``Retry-After``) and the worker reports its running
count; once the host asks to abort, ``on_abort`` ends what still runs. Requests whose
client has gone (marked by tsvllm's frontend plugin) are passed to ``on_gone``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from tsvllm import drain

logger = logging.getLogger(__name__)


class DrainWatch:
    def __init__(
        self,
        directory: Path,
        *,
        model: str,
        running: Callable[[], int],
        on_abort: Callable[[], None],
        on_gone: Callable[[set[str]], None] = lambda ids: None,
    ):
        self.directory = directory
        self.model = model
        self._running = running
        self._on_abort = on_abort
        self._on_gone = on_gone
        self.pid = os.getpid()
        self.draining = False
        self.aborted = False

    async def run(self) -> None:
        """Poll until the worker ends (a failed poll is logged and retried)."""
        while True:
            try:
                self.poll()
            except Exception:
                logger.exception("tsvllm: reading the drain control dir %s failed", self.directory)
            await asyncio.sleep(drain.POLL_S)

    def poll(self) -> None:
        """One look at the control files (six ``stat`` calls and one folder listing while
        nothing is asked)."""
        gone = drain.gone_requests(self.directory)
        if gone:
            self._on_gone(gone)
        asked_drain, asked_abort = drain.requested(self.directory, model=self.model, pid=self.pid)
        if not (asked_drain or asked_abort or self.draining):
            return
        if self.draining and not asked_drain and not self.aborted:
            self.draining = False
            drain.clear_status(self.directory, pid=self.pid)
            logger.info("tsvllm: drain cancelled: taking requests again")
            return
        if asked_drain and not self.draining:
            self.draining = True
            logger.info("tsvllm: draining: new requests get 503; %d running", self._running())
        if asked_abort and not self.aborted:
            self.aborted = self.draining = True
            logger.warning("tsvllm: drain timeout: ending %d running requests", self._running())
            self._on_abort()
        drain.write_status(self.directory, pid=self.pid, running=self._running())
