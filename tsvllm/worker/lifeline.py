"""No orphans: the engine's processes die with the process that started them.

TorchServe stops a worker without running its Python cleanup (``torchserve --stop``,
worker crash, unregister), and vLLM's ``EngineCore``/``Worker`` processes then live on,
burning CPU. A worker calls :func:`start_reaper` before it starts the engine: a small
watchdog process, in its own session, that records the worker's descendants while the
worker lives and, once it is gone, terminates them (SIGTERM, then SIGKILL after a grace
period). The watchdog exits by itself after that.

Run as ``python -m tsvllm.worker.lifeline PID``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_SECONDS = 0.2
GRACE_SECONDS = 3.0


def start_reaper(*, pid: int | None = None) -> subprocess.Popen:
    """Start the watchdog for ``pid`` (default: this process). Returns its handle."""
    target = os.getpid() if pid is None else pid
    return subprocess.Popen(
        [sys.executable, "-m", "tsvllm.worker.lifeline", str(target)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # not killed with the worker's process group
        close_fds=True,
    )


def watch(pid: int, *, poll: float = POLL_SECONDS, grace: float = GRACE_SECONDS) -> int:
    """Block until ``pid`` exits, then end every descendant seen. Returns how many."""
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return 0
    me = os.getpid()  # we are one of the parent's children ourselves
    seen: dict[int, psutil.Process] = {}
    while True:
        try:
            if parent.status() == psutil.STATUS_ZOMBIE:
                break
            for child in parent.children(recursive=True):
                if child.pid != me:
                    seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(poll)
    # psutil.Process remembers each process's start time, so a reused pid is never hit.
    alive = [p for p in seen.values() if p.is_running()]
    late = []  # children that appeared after the last poll (e.g. a worker's own workers)
    for proc in alive:
        try:
            late += [c for c in proc.children(recursive=True) if c.pid not in seen and c.pid != me]
        except psutil.NoSuchProcess:
            pass
    alive += late
    for proc in alive:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, still = psutil.wait_procs(alive, timeout=grace)
    for proc in still:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return len(alive)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m tsvllm.worker.lifeline PID", file=sys.stderr)
        return 2
    watch(int(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
