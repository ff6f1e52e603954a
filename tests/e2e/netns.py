"""Two "hosts" on one machine: network namespaces joined by a veth pair (needs root).

Every name carries the test run's tag; :func:`two_hosts` deletes what it made, also when the
test fails. :func:`inside` moves the *calling thread* into a namespace (``setns``), so the
test's own HTTP clients and the processes it starts from that thread live there.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Host:
    netns: str
    ifname: str
    addr: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextmanager
def two_hosts(tag: str, subnet: int) -> Iterator[tuple[Host, Host]]:
    """Namespaces ``mnA<tag>``/``mnB<tag>`` with 10.231.<subnet>.1 and .2 on a veth pair."""
    a = Host(f"mnA{tag}", f"mva{tag}", f"10.231.{subnet}.1")
    b = Host(f"mnB{tag}", f"mvb{tag}", f"10.231.{subnet}.2")
    made: list[str] = []
    try:
        for h in (a, b):
            _ip("netns", "add", h.netns)
            made.append(h.netns)
        _ip("link", "add", a.ifname, "type", "veth", "peer", "name", b.ifname)
        for h in (a, b):
            _ip("link", "set", h.ifname, "netns", h.netns)
            _ip("-n", h.netns, "addr", "add", f"{h.addr}/24", "dev", h.ifname)
            _ip("-n", h.netns, "link", "set", "lo", "up")
            _ip("-n", h.netns, "link", "set", h.ifname, "up")
        yield a, b
    finally:
        for name in made:  # deleting a namespace deletes its veth end (and so the pair)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run the calling thread in ``netns``; back to its own namespace afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back failed")
    finally:
        os.close(target)
        os.close(own)


def pids_in(netns: str) -> list[int]:
    out = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=30
    ).stdout
    return [int(p) for p in out.split()]
