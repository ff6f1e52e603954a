"""`tsvllm launch` as a user runs it, in the foreground, and the checks that nothing it
started outlives it."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

#: seconds the processes of a stopped server may take to exit
GONE_WITHIN = 30.0


def free_port_block(size: int = 5) -> int:
    for _ in range(100):
        base = random.randrange(20_000, 40_000)
        try:
            socks = []
            for port in range(base, base + size):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def session_left(session: int) -> list[psutil.Process]:
    """Processes of the launcher's session (it leads it: start_new_session) still alive
    after GONE_WITHIN seconds."""
    procs = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == session:
                procs.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    _, alive = psutil.wait_procs(procs, timeout=GONE_WITHIN)
    return alive


class Launch:
    """The launcher as a user runs it, in the foreground, read line by line."""

    def __init__(self, tmp_path: Path, model: Path, *extra: str):
        self.port = free_port_block()
        self.store = tmp_path / "store"
        self.lines: list[str] = []
        cmd = [
            sys.executable,
            "-m",
            "tsvllm.host.launcher",
            "--model-id",
            str(model),
            "--model-name",
            "launched",
            "--model-store",
            str(self.store),
            "--port",
            str(self.port),
            *extra,
        ]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, needle: str, timeout: float = 900) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if needle in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"launcher never printed {needle!r}:\n" + "\n".join(self.lines))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/predictions/launched/1.0/v1"

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def sigterm_and_check_nothing_left(self) -> None:
        everything = self.tree()
        assert any("VLLM::" in " ".join(p.cmdline()) for p in everything)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        _, alive = psutil.wait_procs(everything, timeout=GONE_WITHIN)
        assert alive == [], [p.pid for p in alive]

    def kill(self) -> None:
        if self.proc.poll() is None:
            for p in reversed(self.tree()):
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
