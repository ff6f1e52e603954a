"""``StartWatchdog``: bound an engine start that may block, by ending what it started.

An engine start can block in a place that has no timeout (vLLM 0.32 waits for its
EngineCore's READY in a synchronous poll loop; a multi-node engine whose worker node never
joins waits there for ever). A thread can still end the processes the start created; the
blocked wait then fails on their exit. Used by :meth:`tsvllm.engine.vllm_engine.VllmEngine.start`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)


class StartWatchdog:
    """Ends the processes a start created when the start runs past ``timeout_s``.

    A thread: it must end vLLM's blocking wait, wherever it runs. Once fired it ends every new
    descendant of this process (not in ``before``), and again each second for any started
    later, until :meth:`stop`; :meth:`stop` ends and reaps what is left after a firing, and
    otherwise only cancels the watchdog.
    """

    #: seconds between two sweeps once fired
    SWEEP_S = 1.0

    def __init__(self, timeout_s: float, *, before: set[int], me: Any = None):
        import psutil

        self.timeout_s = timeout_s
        self._before = set(before)
        self._me = me if me is not None else psutil.Process()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.fired = False
        #: the processes the watchdog ended
        self.killed: list[Any] = []
        self._thread = threading.Thread(target=self._run, name="tsvllm-start-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._done.wait(self.timeout_s):
            return
        with self._lock:
            if self._done.is_set():
                return
            self.fired = True
        logger.error(
            "tsvllm: the engine did not start within %gs; ending the processes it started",
            self.timeout_s,
        )
        while True:
            self._sweep()
            if self._done.wait(self.SWEEP_S):
                return

    def _new_processes(self) -> list[Any]:
        import psutil

        try:
            children = self._me.children(recursive=True)
        except psutil.Error:
            return []
        return [p for p in children if p.pid not in self._before]

    def _sweep(self) -> list[Any]:
        import psutil

        procs = self._new_processes()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
                if proc not in self.killed:
                    self.killed.append(proc)
        return procs

    def stop(self) -> None:
        """The start has finished, either way: cancel, or end and reap what is left."""
        import psutil

        with self._lock:
            self._done.set()
        self._thread.join()
        if self.fired:
            psutil.wait_procs(self._sweep(), timeout=10)
