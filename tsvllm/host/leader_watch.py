"""``LeaderWatch``: a follower host notices that its leader's engine is gone.

vLLM's headless workers on a follower host wait for the leader's next message for ever once
the leader's engine stops (measured: still running 60 s after the leader exited), and vLLM
cannot take a node back into a running engine. So the follower ends itself when the leader
goes: its supervisor (systemd, Kubernetes) starts it again, and it joins the leader's next
engine.

The sign of life is the leader's ``master_addr:master_port``: rank 0 of a multi-node engine
serves torch.distributed's TCP store there for the engine's whole life
(``vllm.distributed.parallel_state``: ``nnodes > 1`` → ``tcp://master_addr:master_port``).
A connection that is accepted and closed at once is all the watch sends.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: seconds between two looks at the leader's port
POLL_S = 2.0
#: refused looks in a row, after the leader was seen, that mean it is gone
MISSES = 3


def reachable(host: str, port: int, *, timeout: float) -> bool:
    """Whether a TCP connection to ``host:port`` is accepted within ``timeout``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class LeaderWatch(threading.Thread):
    """Calls ``on_gone`` once, when the leader's port, reachable before, stops answering
    :data:`MISSES` times in a row. Until the leader is first seen (a follower usually starts
    first), nothing counts."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        on_gone: Callable[[], None],
        poll_s: float = POLL_S,
        misses: int = MISSES,
    ):
        super().__init__(name="tsvllm-leader-watch", daemon=True)
        self.host, self.port = host, port
        self._on_gone = on_gone
        self._poll_s = poll_s
        self._misses = misses
        self._halt = threading.Event()
        #: the leader answered at least once
        self.seen = False
        #: the leader went away (``on_gone`` was called)
        self.gone = False

    def run(self) -> None:
        missed = 0
        while not self._halt.wait(self._poll_s):
            if reachable(self.host, self.port, timeout=self._poll_s):
                if not self.seen:
                    logger.info(
                        "tsvllm worker-node: the leader at %s:%d is up", self.host, self.port
                    )
                self.seen, missed = True, 0
                continue
            if not self.seen:
                continue
            missed += 1
            if missed >= self._misses:
                self.gone = True
                logger.error(
                    "tsvllm worker-node: the leader at %s:%d went away (refused %d times in a "
                    "row); this node's part of the engine cannot go on: ending it, start it "
                    "again to join the leader's next engine",
                    self.host,
                    self.port,
                    missed,
                )
                self._on_gone()
                return

    def stop(self) -> None:
        self._halt.set()
