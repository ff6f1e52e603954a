"""The container image under podman, as a platform runs it: build once per run, start a
container with a platform's flags and environment, talk to it from outside over loopback,
stop it, and always remove what the test started (containers by the name it gave them).

podman runs with the repo's settings (scripts/containers.conf through CONTAINERS_CONF); the
image is built by scripts/image.sh, the script users run.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import random
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.e2e.launched import free_port_block

REPO = Path(__file__).resolve().parents[2]
STARTUP = 900
#: the container's engine: the tiny model's settings of the entrypoint tests
VLLM_ARGS = "--max-model-len 2048 --enforce-eager --max-num-seqs 16 --dtype bfloat16"


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": str(REPO / "scripts" / "containers.conf")}
    return subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, check=check
    )


def build_image(**settings: str) -> str:
    """scripts/image.sh with ``settings`` (its TSVLLM_* variables); the tag. Test files on
    other xdist workers build one after the other (a lock file), so that the later ones get
    the layer cache (seconds), not a second cold build beside the first."""
    lock = Path(tempfile.gettempdir()) / "tsvllm-test-image-build.lock"
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        out = subprocess.run(
            [str(REPO / "scripts" / "image.sh")],
            env={**os.environ, **settings},
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    match = re.search(r"^image: (\S+) built in", out.stdout, re.M)
    assert match, out.stdout[-2000:]
    return match.group(1)


@dataclass(frozen=True)
class Network:
    """A podman network the test made: its ``name`` and its /24."""

    name: str
    subnet: ipaddress.IPv4Network

    def address(self, host: int) -> str:
        return str(self.subnet[host])


@contextlib.contextmanager
def internal_network() -> Iterator[Network]:
    """A podman network with no way out (``--internal``: no NAT, no forwarding, no DNS) on
    a /24 of its own, removed at the end, also on failure. The host has no address on it
    (netavark gives an internal network's bridge none): reach its containers from inside
    one's network namespace (:meth:`Container.netns`)."""
    name = f"tsvllm-test-{uuid.uuid4().hex[:10]}"
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    refused = "every one tried is on a host route"
    for _ in range(20):
        subnet = ipaddress.IPv4Network(f"10.213.{random.randrange(1, 255)}.0/24")
        if str(subnet.network_address)[:-1] in routes:  # "10.213.N." on a host route
            continue
        made = podman(
            "network",
            "create",
            "--internal",
            "--disable-dns",
            f"--subnet={subnet}",
            name,
            check=False,
        )
        if made.returncode == 0:
            break
        refused = made.stderr
    else:
        raise AssertionError(f"no free 10.213.N.0/24 for a test network: {refused}")
    try:
        yield Network(name, subnet)
    finally:
        podman("network", "rm", "--force", name, check=False, timeout=180)


class Container:
    """One container of the image, started detached with ``flags`` and ``env``; its
    inference ``port`` published on 127.0.0.1 only, unless ``address`` is given (the
    container's own address on a test network, reached from inside a container's network
    namespace) or ``publish`` is false (a container in another one's network namespace, or
    in the host's, where it listens on ``port``)."""

    def __init__(
        self,
        image: str,
        *,
        env: dict[str, str],
        flags: tuple[str, ...] = (),
        port: int = 8080,
        publish: bool = True,
        address: str | None = None,
        command: tuple[str, ...] = (),
    ):
        self.name = f"tsvllm-test-{uuid.uuid4().hex[:10]}"
        publish = publish and address is None
        self.host_port = free_port_block(1) if publish else port
        self.url = f"http://{address or '127.0.0.1'}:{self.host_port}"
        env_flags = [f"--env={k}={v}" for k, v in env.items()]
        publish_flags = [f"--publish=127.0.0.1:{self.host_port}:{port}"] if publish else []
        podman(
            "run",
            "--detach",
            f"--name={self.name}",
            *publish_flags,
            *env_flags,
            *flags,
            image,
            *command,
        )

    def logs(self) -> str:
        out = podman("logs", self.name, check=False)
        return out.stdout + out.stderr

    def state(self) -> dict:
        out = podman("inspect", "--type=container", self.name, check=False)
        return json.loads(out.stdout)[0]["State"] if out.returncode == 0 else {}

    def wait_ready(self, *, timeout: float = STARTUP) -> None:
        """Until the entrypoint says ready (after its own readiness check); fail at once if
        the container stops first."""
        self.wait_for_log("tsvllm-entrypoint: ready.", timeout=timeout)

    def wait_for_log(self, text: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.logs():
                return
            if not self.state().get("Running", False):
                break
            time.sleep(0.5)
        raise AssertionError(f"container {self.name}: no {text!r}:\n{self.logs()[-6000:]}")

    def wait_exit(self, *, timeout: float) -> int | None:
        """The exit code once the container stopped, or None if it still runs at ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if state and not state.get("Running", False) and state.get("Status") == "exited":
                return int(state["ExitCode"])
            time.sleep(0.5)
        return None

    def netns(self) -> str:
        """The name of its network namespace (for :func:`tests.e2e.netns.inside`)."""
        out = podman("inspect", "--format={{.NetworkSettings.SandboxKey}}", self.name)
        return Path(out.stdout.strip()).name

    def exec(self, *args: str) -> str:
        return podman("exec", self.name, *args).stdout

    def key(self) -> str:
        """The inference key, as a user reads it: ``tsvllm key`` in the container, with the
        key file the entrypoint announced."""
        match = re.search(r"key in (\S+)\)", self.logs())
        assert match, self.logs()[-3000:]
        return self.exec("tsvllm", "key", "--file", match.group(1)).strip()

    def processes(self) -> list[str]:
        """The container's processes (podman top), empty once it has stopped."""
        out = podman("top", self.name, "pid,args", check=False)
        return out.stdout.splitlines()[1:] if out.returncode == 0 else []

    def remove(self) -> None:
        """Stop (SIGKILL after 10 s) and remove it. Retried while podman still cleans the
        container up (a removal during that fails: the last CI run left two stopped
        containers behind); an error if it is still there after 2 minutes."""
        deadline = time.monotonic() + 120
        while True:
            out = podman("rm", "--force", "--time=10", self.name, check=False, timeout=120)
            if podman("container", "exists", self.name, check=False).returncode != 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"podman cannot remove {self.name}: {out.stderr}")
            time.sleep(1)


def openai_client(container: Container, *, key: str = "unused"):
    from openai import OpenAI

    from tsvllm.contract import OPENAI_BASE

    return OpenAI(base_url=container.url + OPENAI_BASE, api_key=key, max_retries=0, timeout=120)


def get(container: Container, path: str) -> httpx.Response:
    return httpx.get(container.url + path, timeout=30)
