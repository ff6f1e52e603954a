"""A LeaderWorkerSet group's pods as processes: the image's ENTRYPOINT plus each pod's args,
with ``$(VAR)`` expanded the way Kubernetes expands it, and the pod's literal environment.

Used by the two-host test (``test_multinode_lws.py``) to run exactly what a generated
``leaderworkerset.yaml`` says, and by a unit test that checks the argv it builds.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsvllm.deploy.common import plain_env

REPO = Path(__file__).resolve().parents[2]
_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass(frozen=True)
class Pod:
    argv: list[str]
    env: dict[str, str]


def image_entrypoint(dockerfile: Path = REPO / "docker" / "Dockerfile.cpu") -> list[str]:
    """The image's ENTRYPOINT without tini (PID 1 in a container; not needed in a test),
    with this venv's Python for ``python3``."""
    line = next(x for x in dockerfile.read_text().splitlines() if x.startswith("ENTRYPOINT"))
    argv = json.loads(line.removeprefix("ENTRYPOINT"))
    if argv[:2] == ["tini", "--"]:
        argv = argv[2:]
    return [sys.executable if a == "python3" else a for a in argv]


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)``: replaced when VAR is in the container's environment."""
    return _REF.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def pod(
    lws: dict[str, Any],
    role: str,
    *,
    index: int,
    leader_address: str,
    pod_ip: str,
    env_here: dict[str, str] | None = None,
) -> Pod:
    """The process of pod ``index`` of a group (``role``: leaderTemplate or workerTemplate):
    what the LWS controller injects, the container's literal env, status.podIP, then
    ``env_here`` (what differs on this machine), and the args expanded in that env."""
    lwt = lws["spec"]["leaderWorkerTemplate"]
    container = lwt[role]["spec"]["containers"][0]
    env = {
        "LWS_LEADER_ADDRESS": leader_address,
        "LWS_GROUP_SIZE": str(lwt["size"]),
        "LWS_WORKER_INDEX": str(index),
        **plain_env(container),
    }
    for item in container.get("env") or []:
        if _get(item, "valueFrom", "fieldRef", "fieldPath") == "status.podIP":
            env[item["name"]] = pod_ip
    env.update(env_here or {})
    args = [expand(a, env) for a in container.get("args") or []]
    return Pod(argv=[*image_entrypoint(), *args], env=env)


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data
