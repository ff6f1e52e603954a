"""What a benchmarked server's processes use: CPU time per role and peak RSS (psutil).

**CPU per request** (:class:`CpuMeter`): the CPU time (user + system) a side's process tree
used during a load, divided by the requests served, split by role: the *engine* (vLLM's
``VLLM::EngineCore`` and ``VLLM::Worker`` processes, the same on every side), the
*frontend* (TorchServe's Java process) and the *server* (vLLM's API server process on a;
our worker and TorchServe's launcher on b and c). ``serving`` = frontend + server: what the
HTTP/OpenAI layer costs.
"""

from __future__ import annotations

import threading
from typing import Any


class PeakRss:
    """Samples the summed RSS of a process tree in a thread; ``peak`` in MB."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
                total = sum(p.memory_info().rss for p in procs if p.is_running())
                self.peak = max(self.peak, total / 2**20)
            except psutil.Error:
                pass
            self._stop.wait(0.5)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


#: CPU roles of a side's processes (see the module doc)
ROLES = ("server", "frontend", "engine")


def process_role(proc: Any) -> str:
    """``engine`` for vLLM's engine processes (``VLLM::EngineCore``, ``VLLM::Worker``...,
    which retitle themselves), ``frontend`` for TorchServe's Java process, else ``server``."""
    name = proc.name()
    if name.startswith("VLLM::"):
        return "engine"
    argv = proc.cmdline()
    if argv and argv[0].startswith("VLLM::"):
        return "engine"
    if name == "java":
        return "frontend"
    return "server"


def process_tree(pid: int) -> list[Any]:
    """The process ``pid`` and all its descendants (psutil processes; [] once it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_snapshot(procs: list[Any]) -> dict[tuple[int, float], tuple[str, float]]:
    """``{(pid, create_time): (role, user + system seconds)}``; processes that vanish while
    read are left out. (pid, create_time) tells a new process from a reused pid.
    Children's times are not added: an engine's children are in ``procs`` themselves."""
    import psutil

    out = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
            out[(proc.pid, proc.create_time())] = (process_role(proc), times.user + times.system)
        except psutil.Error:
            continue
    return out


def cpu_used(
    before: dict[tuple[int, float], tuple[str, float]],
    after: dict[tuple[int, float], tuple[str, float]],
) -> dict[str, float]:
    """CPU seconds each role used between two snapshots. A process started in between
    counts from zero; one that ended in between is not counted (its last interval is lost:
    the servers start no processes per request)."""
    used = dict.fromkeys(ROLES, 0.0)
    for key, (role, seconds) in after.items():
        used[role] += max(0.0, seconds - before.get(key, (role, 0.0))[1])
    return used


def cpu_ms_per_request(
    used: dict[str, float], requests: int, *, chunks: int = 0
) -> dict[str, float]:
    """``cpu_ms_per_req_<role>``, ``cpu_ms_per_req_serving`` (frontend + server) and
    ``cpu_ms_per_req_total`` (every role); with ``chunks`` (a stream's events),
    ``cpu_ms_per_chunk_serving`` too."""
    if requests <= 0:
        return {}
    out = {f"cpu_ms_per_req_{role}": round(used[role] * 1000 / requests, 3) for role in ROLES}
    serving = used["server"] + used["frontend"]
    out["cpu_ms_per_req_serving"] = round(serving * 1000 / requests, 3)
    out["cpu_ms_per_req_total"] = round(sum(used.values()) * 1000 / requests, 3)
    if chunks > 0:
        out["cpu_ms_per_chunk_serving"] = round(serving * 1000 / chunks, 4)
    return out


class CpuMeter:
    """CPU seconds per role that the process tree of ``pid`` used inside the ``with``
    block (:func:`cpu_used`); the tree is listed again at the end, so processes started
    meanwhile count too."""

    def __init__(self, pid: int):
        self.pid = pid
        self.used: dict[str, float] = dict.fromkeys(ROLES, 0.0)

    def __enter__(self) -> CpuMeter:
        self._before = cpu_snapshot(process_tree(self.pid))
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = cpu_used(self._before, cpu_snapshot(process_tree(self.pid)))
