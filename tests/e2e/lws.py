"""A LeaderWorkerSet group's pods as a container runtime gets them: each pod's args, with
``$(VAR)`` expanded the way Kubernetes expands it, its environment, and the settings of its
pod spec that a ``podman run`` flag carries (user, capabilities, shared memory).

Used by the container test (``test_container_lws.py``) to run exactly what a generated
``leaderworkerset.yaml`` says, and by a unit test that checks what it builds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsvllm.config import dump_model_config, load_model_config
from tsvllm.deploy.common import plain_env

REPO = Path(__file__).resolve().parents[2]
#: the master port of :func:`two_node_config`'s engine
MASTER_PORT = 29555
_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass(frozen=True)
class Pod:
    """``args``: after the image's ENTRYPOINT; ``flags``: ``podman run`` flags for the pod
    spec's security context and its shared-memory volume."""

    args: list[str]
    env: dict[str, str]
    flags: list[str]


def image_entrypoint(dockerfile: Path = REPO / "docker" / "Dockerfile.cpu") -> list[str]:
    """The image's ENTRYPOINT, as the Dockerfile writes it."""
    line = next(x for x in dockerfile.read_text().splitlines() if x.startswith("ENTRYPOINT"))
    return json.loads(line.removeprefix("ENTRYPOINT"))


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
    """Pod ``index`` of a group (``role``: leaderTemplate or workerTemplate): what the LWS
    controller injects, the container's literal env, status.podIP, then ``env_here`` (what
    differs on this machine), and the args expanded in that env."""
    lwt = lws["spec"]["leaderWorkerTemplate"]
    spec = lwt[role]["spec"]
    container = spec["containers"][0]
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
    return Pod(args=args, env=env, flags=_run_flags(spec, container))


def _run_flags(spec: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """The pod's user and group, dropped capabilities, no privilege escalation, and its
    memory-backed /dev/shm volume's size."""
    pod_security = spec.get("securityContext") or {}
    flags = [f"--user={pod_security['runAsUser']}:{pod_security['runAsGroup']}"]
    security = container.get("securityContext") or {}
    flags += [f"--cap-drop={cap}" for cap in _get(security, "capabilities", "drop") or []]
    if security.get("allowPrivilegeEscalation") is False:
        flags.append("--security-opt=no-new-privileges")
    for volume in spec.get("volumes") or []:
        if _get(volume, "emptyDir", "medium") == "Memory":
            size = volume["emptyDir"]["sizeLimit"]  # Kubernetes' "400Mi": podman's "400m"
            flags.append(f"--shm-size={size.removesuffix('Mi')}m")
    return flags


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def two_node_config(
    directory: Path, *, model: Path | None = None, startup_timeout: int | None = None
) -> Path:
    """tiny-cpu.yaml as one engine over two nodes (tensor parallel 2, one rank per node),
    written to ``directory/mn.yaml``: what the LeaderWorkerSet tests deploy. ``model``: the
    weights folder (default: the config's own path). ``master_addr`` is a placeholder: each
    pod gets ``--master-addr $(LWS_LEADER_ADDRESS)``."""
    cfg = load_model_config(REPO / "model_configs" / "tiny-cpu.yaml")
    engine = {
        **cfg.handler.vllm_engine_config,
        "tensor_parallel_size": 2,
        "nnodes": 2,
        "master_addr": "10.0.0.1",
        "master_port": MASTER_PORT,
    }
    handler = {"vllm_engine_config": engine} | ({"model_path": str(model)} if model else {})
    update = {"handler": cfg.handler.model_copy(update=handler)}
    if startup_timeout is not None:
        update["startupTimeout"] = startup_timeout
    return dump_model_config(cfg.model_copy(update=update), directory / "mn.yaml")
