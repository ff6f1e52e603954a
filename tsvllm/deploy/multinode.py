"""One engine over several Kubernetes pods: a LeaderWorkerSet group, made and checked here.

vLLM's own multi-node runtime (``--nnodes``, ``--node-rank``, ``--master-addr``,
``--headless`` on the other nodes) runs the engine. Every pod of a group gets the same
environment (``VLLM_ARGS`` with ``--nnodes N``); only the image's entrypoint flags differ:

* the leader: ``--master-addr $(LWS_LEADER_ADDRESS)`` (:func:`leader_args`): TorchServe with
  tsvllm, its engine rank 0;
* the others: ``worker-node --config C --node-rank $(LWS_WORKER_INDEX) --master-addr
  $(LWS_LEADER_ADDRESS)`` (:func:`worker_args`), the flags of ``tsvllm worker-node`` from
  :func:`tsvllm.host.worker_node.follower_command`.

The container e2e test (``tests/e2e/test_container_lws.py``) runs exactly these pods, read
from a generated ``leaderworkerset.yaml``, as two containers of the image.
:func:`group_problems` is what ``tsvllm validate`` checks on a group.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from tsvllm.deploy.common import DeployError, Target, plain_env
from tsvllm.host.worker_node import follower_command

#: what LeaderWorkerSet sets in each pod of a group; Kubernetes expands $(VAR) in args
LEADER_ADDRESS = "$(LWS_LEADER_ADDRESS)"
WORKER_INDEX = "$(LWS_WORKER_INDEX)"
#: the entrypoint's work directory in a pod, set in its environment (so that $(...) expands)
POD_WORKDIR = "/tmp/tsvllm"
#: where a worker pod's entrypoint writes the model config (the leader: the same file name)
POD_CONFIG = "$(TSVLLM_WORKDIR)/model-config.yaml"
#: the extended resource of a pod's GPUs (NVIDIA's device plugin)
GPU = "nvidia.com/gpu"
#: environment every pod of a group must share (one engine, one model)
SHARED_ENV = (
    "VLLM_ARGS",
    "TENSOR_PARALLEL_SIZE",
    "TSVLLM_DEVICE",
    "MODEL_ID",
    "MODEL_PATH",
    "TSVLLM_WORKDIR",
)


def node_count(target: Target, *, gpus_per_node: int) -> int:
    """Nodes one engine spans: the config's ``nnodes``, else as many as its GPUs need."""
    h = target.config.handler
    if h.nnodes > 1:
        if target.gpu and h.parallel_per_node > gpus_per_node:
            raise DeployError(
                f"{h.parallel_per_node} GPUs per node (tensor_parallel_size × "
                f"pipeline_parallel_size {target.gpus} / nnodes {h.nnodes}) do not fit nodes of "
                f"{gpus_per_node} GPUs; raise nnodes or --gpus-per-node"
            )
        return h.nnodes
    if target.gpus <= gpus_per_node:
        return 1
    nodes = math.ceil(target.gpus / gpus_per_node)
    while target.gpus % nodes:  # every node holds the same share of TP x PP
        nodes += 1
    return nodes


def spanning(target: Target, nodes: int) -> Target:
    """``target`` with its engine over ``nodes`` nodes (``nnodes`` in the engine args)."""
    h = target.config.handler
    engine = {**h.vllm_engine_config, "nnodes": nodes}
    handler = h.model_copy(update={"vllm_engine_config": engine})
    return dataclasses.replace(target, config=target.config.model_copy(update={"handler": handler}))


def leader_args() -> list[str]:
    """The leader pod's entrypoint flags: TorchServe, its engine rank 0 at the leader's address."""
    return ["--master-addr", LEADER_ADDRESS]


def worker_args() -> list[str]:
    """A worker pod's entrypoint flags: ``tsvllm worker-node``'s, with the pod's index."""
    return follower_command(POD_CONFIG, node_rank=WORKER_INDEX, master_addr=LEADER_ADDRESS)[1:]


#: each pod's own address, for vLLM's distributed runtime (the same on every pod otherwise)
POD_IP = {"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def group_problems(lwt: dict[str, Any]) -> list[tuple[str, str]]:
    """``(field under leaderWorkerTemplate, message)`` for a group that cannot run as one
    engine: size vs ``--nnodes``, TP × PP vs the nodes and each pod's GPUs, pods that
    disagree on the engine, and entrypoint flags other than :func:`leader_args` /
    :func:`worker_args`."""
    from tsvllm.host.entrypoint import EntrypointError, parse_vllm_args

    roles = {role: _tsvllm_container(lwt, role) for role in ("leaderTemplate", "workerTemplate")}
    leader, worker = roles["leaderTemplate"], roles["workerTemplate"]
    if leader is None or worker is None:
        return []  # not a tsvllm group: nothing of ours to check
    env = {role: plain_env(c) for role, c in roles.items()}
    at = {role: f"{role}.spec.containers[0]" for role in roles}
    try:
        engine = parse_vllm_args(env["leaderTemplate"].get("VLLM_ARGS", ""))
    except EntrypointError as exc:
        return [(f"{at['leaderTemplate']}.env.VLLM_ARGS", str(exc))]
    problems: list[tuple[str, str]] = []
    nnodes = engine.get("nnodes", 1)
    size = lwt.get("size", 1)
    if size != nnodes:
        problems.append(
            (
                "size",
                f"{size} pods per group, but the engine spans --nnodes {nnodes} (VLLM_ARGS); "
                f"set size: {nnodes}",
            )
        )
    for name in SHARED_ENV:
        if env["leaderTemplate"].get(name) != env["workerTemplate"].get(name):
            problems.append(
                (
                    f"{at['workerTemplate']}.env.{name}",
                    f"differs from the leader's ({env['leaderTemplate'].get(name)!r}); the "
                    "group runs one engine: give every pod the same value",
                )
            )
    if not env["workerTemplate"].get("TSVLLM_WORKDIR"):
        problems.append(
            (
                f"{at['workerTemplate']}.env",
                f"TSVLLM_WORKDIR is not set, so {POD_CONFIG} would not expand; set it to "
                f"{POD_WORKDIR}",
            )
        )
    problems += _parallel_problems(env["leaderTemplate"], engine, roles, at)
    for role, want in (("leaderTemplate", leader_args()), ("workerTemplate", worker_args())):
        if roles[role].get("args") != want:
            problems.append(
                (
                    f"{at[role]}.args",
                    f"{roles[role].get('args')!r}: the {role[:-8]} of a group runs the "
                    f"entrypoint with {want!r}",
                )
            )
    return problems


def _parallel_problems(
    env: dict[str, str],
    engine: dict[str, Any],
    roles: dict[str, dict[str, Any]],
    at: dict[str, str],
) -> list[tuple[str, str]]:
    nnodes = engine.get("nnodes", 1)
    try:
        tp = int(env.get("TENSOR_PARALLEL_SIZE", "1"))
    except ValueError:
        return [(f"{at['leaderTemplate']}.env.TENSOR_PARALLEL_SIZE", "not a whole number")]
    pp = engine.get("pipeline_parallel_size", 1)
    if not isinstance(nnodes, int) or not isinstance(pp, int) or nnodes < 1:
        return [
            (
                f"{at['leaderTemplate']}.env.VLLM_ARGS",
                "--nnodes and --pipeline-parallel-size must be whole numbers",
            )
        ]
    if (tp * pp) % nnodes:
        return [
            (
                f"{at['leaderTemplate']}.env.TENSOR_PARALLEL_SIZE",
                f"tensor_parallel_size {tp} × pipeline_parallel_size {pp} does not split over "
                f"--nnodes {nnodes}; make it a multiple of nnodes",
            )
        ]
    if env.get("TSVLLM_DEVICE") != "gpu":
        return []
    problems = []
    for role, c in roles.items():
        gpus = (c.get("resources") or {}).get("limits", {}).get(GPU)
        if str(gpus) != str(tp * pp // nnodes):
            problems.append(
                (
                    f"{at[role]}.resources.limits.{GPU}",
                    f"{gpus!r}: each pod holds its share of tensor_parallel_size {tp} × "
                    f"pipeline_parallel_size {pp} over {nnodes} nodes; set {tp * pp // nnodes}",
                )
            )
    return problems


def _tsvllm_container(lwt: dict[str, Any], role: str) -> dict[str, Any] | None:
    containers = ((lwt.get(role) or {}).get("spec") or {}).get("containers") or []
    first = containers[0] if containers and isinstance(containers[0], dict) else None
    return first if first is not None and "VLLM_ARGS" in plain_env(first) else None
