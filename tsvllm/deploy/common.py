"""What the deployment generators share: image, probe timing, env, options.

The container (``docker/Dockerfile*``, :mod:`tsvllm.host.entrypoint`) always serves one
TorchServe model with fixed names, ports and routes: those are the runtime contract,
:mod:`tsvllm.contract`, which the host imports too. The generators turn a model config into the
container's environment (:func:`container_env`): the entrypoint turns it back into a
model config in the container.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from tsvllm.config import ModelConfig

# the runtime contract (model name, ports, routes), re-exported for the generators
from tsvllm.contract import (  # noqa: F401
    CHAT_ROUTE,
    INFERENCE_PORT,
    LIVENESS_ROUTE,
    MANAGEMENT_PORT,
    METRICS_PORT,
    MODEL_NAME,
    MODEL_VERSION,
    OPENAI_BASE,
    PREFIX,
    READINESS_ROUTE,
    VERTEX_PREDICT_ROUTE,
)
from tsvllm.host.shutdown import (
    DEFAULT_DRAIN_TIMEOUT_S,
    DRAIN_TIMEOUT_ENV,
    drain_timeout,
    shutdown_bound,
)

#: images built from docker/Dockerfile and docker/Dockerfile.cpu (push them to your registry
#: and pass --image)
IMAGE_GPU = "tsvllm:0.1.0"
IMAGE_CPU = "tsvllm-cpu:0.1.0"
#: Azure ML online endpoints cut a request after at most 180 s
AZURE_MAX_REQUEST_TIMEOUT_MS = 180_000
#: seconds between probes; the JVM + worker registration take about a minute before /alive
PROBE_PERIOD = 10
FRONTEND_START = 60
#: Kubernetes preStop sleep: the endpoints controller takes the terminating pod out of the
#: Service before SIGTERM starts the drain (the pattern KServe documents)
PRESTOP_SLEEP_S = 5

_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


class DeployError(ValueError):
    """Assets cannot be generated for this config (the message says what to change)."""


class DeployOptions(BaseModel):
    """Per-deployment choices a model config does not hold; defaults derive from it."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None, description="Resource name (DNS label). Default: the config file's name."
    )
    image: str | None = Field(
        None, description=f"Container image. Default: {IMAGE_GPU} (gpu) or {IMAGE_CPU} (cpu)."
    )
    instance_type: str | None = Field(
        None, description="Azure ML VM size. Default: from the GPUs the config needs."
    )
    gpus_per_node: int = Field(
        8, ge=1, description="Kubernetes: GPUs per node; more than this needs a LeaderWorkerSet."
    )
    replicas: int = Field(1, ge=1, description="Serving replicas (instances, pods, groups).")
    private: bool = Field(
        False, description="Azure ML: no public network access in or out (private endpoint)."
    )
    disable_token_auth: bool = Field(
        False,
        description=(
            "Kubernetes: turn TorchServe's token auth off. Only behind a gateway that "
            "authenticates (Azure ML and Vertex AI always authenticate, so it is off there)."
        ),
    )
    artifact_uri: str | None = Field(
        None, description="Vertex AI: gs:// folder with the weights (becomes AIP_STORAGE_URI)."
    )
    weights: Literal["auto", "hub", "local"] = Field(
        "auto",
        description=(
            "Whether handler.model_path is a Hugging Face id (hub) or a model folder (local). "
            "auto: an org/name path that does not exist here is a hub id."
        ),
    )
    storage_gi: int | None = Field(
        None, ge=1, description="Kubernetes: size of the weights volume. Default: 80 Gi per GPU."
    )
    autoscaling: Literal["none", "keda", "hpa"] = Field(
        "none",
        description=(
            "Kubernetes: scale on vllm:num_requests_waiting with a KEDA ScaledObject (keda) or "
            "an autoscaling/v2 HPA through prometheus-adapter (hpa)."
        ),
    )
    max_replicas: int | None = Field(
        None, ge=1, description="Kubernetes autoscaling: most replicas. Default: 4 x replicas."
    )
    waiting_per_replica: float = Field(
        4.0, gt=0, description="Kubernetes autoscaling: queued requests per replica to aim at."
    )
    prometheus_url: str = Field(
        "http://prometheus-operated.monitoring.svc:9090",
        description="Kubernetes, KEDA: the Prometheus server the ScaledObject queries.",
    )


@dataclass(frozen=True)
class Target:
    """What every generator needs to know about one model config."""

    name: str
    config: ModelConfig
    gpus: int  # GPUs one engine needs (0 on cpu)
    image: str
    hub_id: str | None  # the Hugging Face id to download, or None for a local folder
    local_dir: str | None  # the model folder's name when the weights come from a mount

    @property
    def gpu(self) -> bool:
        return self.gpus > 0

    @property
    def startup_timeout(self) -> int:
        return self.config.startupTimeout

    @property
    def served_names(self) -> list[str]:
        return list(self.config.handler.served_model_name or [self.name])


def target_for(cfg: ModelConfig, *, source: str, options: DeployOptions) -> Target:
    """Resolve names, image and model source of ``cfg`` (read from ``source``)."""
    from tsvllm.host.archive import HF_ID

    name = options.name or Path(source).stem
    name = _DNS_LABEL.sub("-", name.lower()).strip("-")[:50].strip("-")
    if not name:
        raise DeployError(f"cannot derive a resource name from {source!r}; pass --name")
    gpus = cfg.parallel_size if cfg.deviceType == "gpu" else 0
    path = cfg.handler.model_path
    local = Path(path).expanduser()
    if options.weights == "auto":
        hub = HF_ID.match(path) is not None and not local.is_absolute() and not local.exists()
    else:
        hub = options.weights == "hub"
        if hub and HF_ID.match(path) is None:
            raise DeployError(f"--weights hub, but handler.model_path {path!r} is no org/name id")
    return Target(
        name=name,
        config=cfg,
        gpus=gpus,
        image=options.image or (IMAGE_GPU if gpus else IMAGE_CPU),
        hub_id=path if hub else None,
        local_dir=None if hub else local.name,
    )


#: engine args that do not go into ``VLLM_ARGS``: TENSOR_PARALLEL_SIZE has the first; the
#: leader's address is each pod's own flag (a LeaderWorkerSet knows it only at run time)
_NOT_IN_VLLM_ARGS = ("tensor_parallel_size", "master_addr", "node_rank")


def vllm_args(cfg: ModelConfig) -> str:
    """``VLLM_ARGS`` for the config's engine args."""
    from tsvllm.engine.vllm_engine import engine_argv

    engine = {k: v for k, v in cfg.handler.vllm_engine_config.items() if k not in _NOT_IN_VLLM_ARGS}
    argv = engine_argv(
        model="-",
        engine_args=engine,
        chat_template=cfg.handler.chat_template,
        adapters=cfg.handler.adapters,
    )
    return shlex.join(argv[2:])  # drop "--model -": the entrypoint sets the model


def container_env(target: Target, **extra: str) -> dict[str, str]:
    """The container's environment for ``target`` (read by :mod:`tsvllm.host.entrypoint`).

    No secrets: HF_TOKEN is added by each platform from its secret store, at run time.
    """
    cfg = target.config
    env = {
        "SERVED_MODEL_NAME": ",".join(target.served_names),
        "TSVLLM_DEVICE": "gpu" if target.gpu else "cpu",
        "TENSOR_PARALLEL_SIZE": str(cfg.handler.tensor_parallel_size),
        "VLLM_ARGS": vllm_args(cfg),
        "TSVLLM_STARTUP_TIMEOUT": str(cfg.startupTimeout),
        "TSVLLM_RESPONSE_TIMEOUT": str(cfg.responseTimeout),
        # seconds running requests get to finish after SIGTERM (tsvllm.host.shutdown);
        # handler.env may set it
        DRAIN_TIMEOUT_ENV: f"{DEFAULT_DRAIN_TIMEOUT_S:g}",
    }
    env.update(cfg.handler.env)  # engine environment, e.g. VLLM_CPU_KVCACHE_SPACE
    env.update(extra)
    return env


def drain_timeout_s(target: Target) -> float:
    """The container's drain timeout (``TSVLLM_DRAIN_TIMEOUT_S``, default 30 s)."""
    try:
        return drain_timeout(container_env(target))
    except ValueError as exc:
        raise DeployError(f"handler.env: {exc}") from None


def grace_period_s(drain_s: float, *, prestop_s: float = PRESTOP_SLEEP_S) -> int:
    """Seconds between a pod's deletion and its SIGKILL that let it drain: the preStop
    sleep, the drain, the abort wait and TorchServe's stop (:func:`shutdown_bound`)."""
    return math.ceil(prestop_s) + shutdown_bound(drain_s)


@dataclass(frozen=True)
class ProbeTiming:
    """Probe settings sized from the config's ``startupTimeout``."""

    period: int
    initial_delay: int
    startup_failures: int  # failures tolerated while the model loads

    @property
    def startup_window(self) -> int:
        return self.initial_delay + self.period * self.startup_failures


def probe_timing(startup_timeout: int) -> ProbeTiming:
    """Give the model ``startupTimeout`` seconds (plus the frontend's start) to get ready."""
    failures = math.ceil(startup_timeout / PROBE_PERIOD) + 1
    return ProbeTiming(period=PROBE_PERIOD, initial_delay=FRONTEND_START, startup_failures=failures)


def shm_mb(target: Target) -> int:
    """/dev/shm for the engine: NCCL and vLLM's workers share tensors through it."""
    return 16384 if target.gpu else 2048


class _PlainDumper(yaml.SafeDumper):
    """SafeDumper without anchors/aliases: generated files read like hand-written ones."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any, *, header: str = "") -> str:
    """YAML from plain data, with an optional ``#`` comment header."""
    text = yaml.dump(
        data, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False, width=100
    )
    lines = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return lines + text


def write_files(out: str | Path, files: dict[str, str]) -> list[Path]:
    """Write ``files`` (name → text) under ``out``; return the paths written."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = root / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def readme_notes(target: Target) -> list[str]:
    """Notes every platform README carries for this config."""
    notes = []
    handler = target.config.handler
    if handler.rag is not None or handler.guards is not None:
        notes.append(
            "This config uses RAG and/or guards. The image serves handlers/vllm_handler.py "
            "from the environment above; to serve RAG and guards, build an image FROM it "
            "that copies the index and the config, and set TSVLLM_CONFIG to the config's "
            "path in the image (the entrypoint then uses it as the base config)."
        )
    if handler.adapters:
        notes.append(
            "LoRA adapters are read from the paths in the config ("
            + ", ".join(f"{k}: {v}" for k, v in handler.adapters.items())
            + "); mount them there (the environment passes them in VLLM_ARGS)."
        )
    return notes


def plain_env(container: Any) -> dict[str, str]:
    """A Kubernetes container's ``env`` entries that have a literal value."""
    if not isinstance(container, dict):
        return {}
    items = container.get("env") or []
    return {
        str(e["name"]): str(e["value"])
        for e in items
        if isinstance(e, dict) and "name" in e and e.get("value") is not None
    }
