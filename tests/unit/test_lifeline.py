"""The watchdog ends a dead parent's descendants, and only those."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import psutil

PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from subprocess import DEVNULL
    from tsvllm.worker.lifeline import start_reaper

    def switches(pid):  # the watchdog blocks once per sleep between its scans
        with open(f"/proc/{pid}/status") as f:
            line = next(l for l in f if l.startswith("voluntary_ctxt_switches:"))
        return int(line.split()[1])

    def sleeping(pid):  # in the sleep between two scans (not importing, not scanning)
        with open(f"/proc/{pid}/wchan") as f:
            return f.read().strip() == "hrtimer_nanosleep"

    reaper = start_reaper()
    kids = [subprocess.Popen(["sleep", "300"], stdout=DEVNULL, stderr=DEVNULL) for _ in range(2)]
    print(reaper.pid, *[k.pid for k in kids], flush=True)
    # poll until the watchdog has finished a scan that began after the children existed:
    # two more sleeps than now, and asleep again
    before = switches(reaper.pid)
    deadline = time.monotonic() + 30
    while not (switches(reaper.pid) >= before + 2 and sleeping(reaper.pid)):
        if time.monotonic() > deadline:
            sys.exit("the watchdog never scanned within 30 s")
        time.sleep(0.01)
    os.kill(os.getpid(), 9)  # die as TorchServe kills a worker: no cleanup runs
    """
)


def test_children_of_a_killed_parent_are_ended():
    bystander = subprocess.Popen(["sleep", "300"])  # not a descendant: must survive
    procs: list[psutil.Process] = []
    try:
        out = subprocess.run(
            [sys.executable, "-c", PARENT], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == -9, out.stderr  # it killed itself after the watchdog scanned
        reaper, *kids = (int(p) for p in out.stdout.split())
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
        for proc in procs:  # what the watchdog failed to end, if it failed
            if proc.is_running():
                proc.kill()


def test_watching_a_missing_pid_returns_at_once():
    from tsvllm.worker.lifeline import watch

    assert watch(2**22 + 12345) == 0  # above Linux's pid_max: never a live process
