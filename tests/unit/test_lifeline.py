"""The watchdog ends a dead parent's descendants, and only those."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import psutil

PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from tsvllm.worker.lifeline import start_reaper
    reaper = start_reaper()
    kids = [subprocess.Popen(["sleep", "300"]) for _ in range(2)]
    print(reaper.pid, *[k.pid for k in kids], flush=True)
    time.sleep(1.0)  # let the watchdog see the children
    os.kill(os.getpid(), 9)  # die as TorchServe kills a worker: no cleanup runs
    """
)


def test_children_of_a_killed_parent_are_ended():
    bystander = subprocess.Popen(["sleep", "300"])  # not a descendant: must survive
    try:
        out = subprocess.run(
            [sys.executable, "-c", PARENT], capture_output=True, text=True, timeout=60
        )
        reaper, *kids = (int(p) for p in out.stdout.split())
        procs = []
        for pid in kids + [reaper]:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=15)
        assert alive == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_watching_a_missing_pid_returns_at_once():
    from tsvllm.worker.lifeline import watch

    assert watch(2**22 + 12345) == 0  # above Linux's pid_max: never a live process
