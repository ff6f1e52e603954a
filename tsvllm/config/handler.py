"""``handler:``: everything VLLMHandler reads; TorchServe ignores this section."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tsvllm.config.audit import AuditLogConfig
from tsvllm.config.guards import GuardsConfig
from tsvllm.config.rag import RagConfig
from tsvllm.contract import MAX_BODY_BYTES, REQUEST_TIMEOUT_S


def _coerce_env_value(key: str, value: Any) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "1" if value else "0"
    if isinstance(value, str | int | float):
        return str(value)
    if value is None:
        raise ValueError(f'{key} has no value; quote it (e.g. {key}: "") or remove it')
    raise ValueError(
        f"{key} must be a string or number, got {type(value).__name__}; quote the value"
    )


def _names(value: Any) -> Any:
    """A served name given as a string or a list, compared as a list."""
    return [value] if isinstance(value, str) else value


def _parallel_dim(cfg: Mapping[str, Any], key: str) -> int:
    value = cfg.get(key, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{key} must be an integer >= 1, got {value!r}; "
            f"write e.g. {key}: 2 (unquoted) or remove it"
        )
    return value


class HandlerConfig(BaseModel):
    """``handler:``: everything VLLMHandler reads; TorchServe ignores this section."""

    model_config = ConfigDict(extra="forbid")

    model_path: str = Field(
        description=(
            "Hugging Face model folder (config.json, weights, tokenizer). Absolute, or "
            "relative to the archive's model_dir; resolved when the handler starts, not here. "
            "vllm_engine_config.model (TorchServe's spelling) is read as model_path."
        ),
    )
    served_model_name: list[str] | None = Field(
        None,
        description=(
            "Names clients may send as `model`; a single string is accepted. "
            "Unset: the handler derives one from model_path. "
            "vllm_engine_config.served_model_name (TorchServe's spelling) is read as this."
        ),
    )
    chat_template: str | None = Field(
        None,
        description=(
            "Chat template: inline Jinja, or a file path; a relative path that exists in the "
            "archive's model_dir (shipped with --extra-files) is resolved there, as "
            "TorchServe's handler did."
        ),
    )
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "LoRA adapters, name -> path; clients select one with `model: <name>`. "
            "Needs vllm_engine_config.enable_lora: true."
        ),
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Environment variables set before the engine starts, e.g. "
            'VLLM_CPU_KVCACHE_SPACE: "1". Numbers become strings; true/false become "1"/"0".'
        ),
    )
    vllm_engine_config: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "vLLM engine arguments, snake_case as in AsyncEngineArgs (max_model_len, "
            "enforce_eager, tensor_parallel_size, dtype, ...). Hyphenated keys are "
            "normalised; values are checked by vLLM's own parser, not here."
        ),
    )
    max_body_bytes: int = Field(
        MAX_BODY_BYTES,
        gt=0,
        description="Largest accepted request body in bytes; larger bodies get HTTP 413.",
    )
    max_response_bytes: int | None = Field(
        None,
        gt=0,
        description=(
            "Largest non-streamed reply in bytes; a larger one is refused with HTTP 400 "
            "(code response_too_large) naming this setting. None: no cap, as vllm serve "
            "(a large reply goes to TorchServe in 4 MiB frames, never over its "
            "max_response_size)."
        ),
    )
    lean_worker: bool = Field(
        True,
        description=(
            "Replace TorchServe's per-request path in the worker with a lean one (same "
            "protocol; no thread hand-offs, context deep copy or per-request log lines; "
            "see docs/PERFORMANCE.md). false keeps TorchServe's own path."
        ),
    )
    request_timeout_s: float = Field(
        REQUEST_TIMEOUT_S,
        gt=0,
        description=(
            "Longest a request may run; then its generation is aborted (504, or an error "
            "event in a stream). A client that leaves ends its request at once when tsvllm's "
            "frontend plugin runs with TSVLLM_CONTROL_DIR; otherwise this deadline frees it."
        ),
    )
    drain_timeout_s: float | None = Field(
        None,
        ge=0,
        description=(
            "On SIGTERM (tsvllm launch, the container), how long running requests may "
            "finish while new ones get 503; then they are ended cleanly. Unset: "
            "TSVLLM_DRAIN_TIMEOUT_S, else 30. 0 ends them at once."
        ),
    )
    runtime_lora: bool = Field(
        False,
        description=(
            "Serve v1/load_lora_adapter and v1/unload_lora_adapter (vLLM's runtime LoRA "
            "switch), behind the API key. Any key holder can then load adapters from paths "
            "on the server: leave off unless you need it. Needs enable_lora."
        ),
    )
    audit_log: AuditLogConfig | None = Field(
        None, description="One JSON line per request: who asked what, what it cost (off)."
    )
    rag: RagConfig | None = Field(
        None, description="Retrieval-augmented generation (needs handlers/rag_guard_handler.py)."
    )
    guards: GuardsConfig | None = Field(
        None, description="Guards on input, context and output (needs rag_guard_handler.py)."
    )

    @model_validator(mode="before")
    @classmethod
    def _torchserve_engine_keys(cls, data: Any) -> Any:
        """TorchServe's VLLMHandler read ``model`` and ``served_model_name`` from
        ``vllm_engine_config``; lift them to ``model_path``/``served_model_name`` (same
        meaning), so every reader of the config finds them in one place."""
        if not isinstance(data, Mapping) or not isinstance(data.get("vllm_engine_config"), Mapping):
            return data
        data = dict(data)
        engine = dict(data["vllm_engine_config"])
        for key, target in (("model", "model_path"), ("served_model_name", "served_model_name")):
            spellings = [k for k in engine if isinstance(k, str) and k.replace("-", "_") == key]
            if len(spellings) != 1:
                continue  # none, or several: _engine_keys names the duplicate
            value = engine.pop(spellings[0])
            if data.get(target) is not None and _names(data[target]) != _names(value):
                raise ValueError(
                    f"{target} is set twice with different values: handler.{target} "
                    f"{data[target]!r} and handler.vllm_engine_config.{spellings[0]} "
                    f"{value!r}; keep one (handler.{target})"
                )
            data[target] = value
        data["vllm_engine_config"] = engine
        return data

    @field_validator("model_path")
    @classmethod
    def _model_path_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model_path is empty; set it to the Hugging Face model folder")
        return value

    @field_validator("served_model_name", mode="before")
    @classmethod
    def _served_model_name_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            if not value:
                raise ValueError(
                    "served_model_name is an empty list; give at least one name or remove it"
                )
            for name in value:
                if isinstance(name, str) and not name.strip():
                    raise ValueError(
                        "served_model_name contains an empty name; remove it or give a name"
                    )
            dupes = sorted({n for n in value if isinstance(n, str) and value.count(n) > 1})
            if dupes:
                raise ValueError(
                    f"served_model_name lists {', '.join(dupes)} more than once; "
                    "list each name once"
                )
        return value

    @field_validator("adapters", "env", "vllm_engine_config", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        # `env:` with nothing under it is None in YAML; treat it as empty.
        return {} if value is None else value

    @field_validator("env", mode="before")
    @classmethod
    def _env_to_str(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value  # let pydantic report the type error
        out: dict[Any, str] = {}
        for key, val in value.items():
            if not isinstance(key, str) or not key or "=" in key or "\0" in key:
                raise ValueError(
                    f"key {key!r} is not a valid variable name; use a non-empty string without '='"
                )
            out[key] = _coerce_env_value(key, val)
        return out

    @field_validator("vllm_engine_config", mode="before")
    @classmethod
    def _engine_keys(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value  # let pydantic report the type error
        out: dict[str, Any] = {}
        for key, val in value.items():
            if not isinstance(key, str):
                # ValueError, not TypeError: pydantic reports only ValueError as a problem
                raise ValueError(  # noqa: TRY004
                    f"key {key!r} is not a string; "
                    "use vLLM engine argument names such as max_model_len"
                )
            norm = key.replace("-", "_")
            if norm in out:
                raise ValueError(
                    f"{norm} is set twice (as {key!r} and in another spelling); keep one"
                )
            out[norm] = val
        _parallel_dim(out, "tensor_parallel_size")
        _parallel_dim(out, "pipeline_parallel_size")
        return out

    @model_validator(mode="after")
    def _adapters_need_lora(self) -> HandlerConfig:
        if self.adapters and self.vllm_engine_config.get("enable_lora") is not True:
            raise ValueError(
                "adapters need LoRA in the engine; set handler.vllm_engine_config.enable_lora: "
                "true (or remove adapters)"
            )
        if self.runtime_lora and self.vllm_engine_config.get("enable_lora") is not True:
            raise ValueError(
                "runtime_lora needs LoRA in the engine; set handler.vllm_engine_config."
                "enable_lora: true (and max_lora_rank for your adapters)"
            )
        clash = sorted(set(self.adapters) & set(self.served_model_name or ()))
        if clash:
            raise ValueError(
                f"adapter name {', '.join(clash)} is also a served_model_name; "
                "rename the adapter so clients can tell them apart"
            )
        return self

    @model_validator(mode="after")
    def _multi_node(self) -> HandlerConfig:
        """``nnodes`` > 1: this is the leader's config; followers get their rank from
        ``tsvllm worker-node --node-rank``."""
        e = self.vllm_engine_config
        nnodes = 1 if e.get("nnodes") is None else e["nnodes"]  # None: unset, as in engine_argv
        if isinstance(nnodes, bool) or not isinstance(nnodes, int) or nnodes < 1:
            raise ValueError(
                f"nnodes must be an integer >= 1, got {nnodes!r}; write e.g. nnodes: 2"
            )
        if e.get("headless"):
            raise ValueError(
                "vllm_engine_config.headless is for follower hosts, which `tsvllm worker-node` "
                "starts from this config; remove headless"
            )
        if nnodes == 1:
            return self
        if not e.get("master_addr"):
            raise ValueError(
                f"nnodes {nnodes} needs the leader's address: set vllm_engine_config.master_addr "
                "(an address every node reaches) and master_port"
            )
        if e.get("node_rank") not in (None, 0):
            raise ValueError(
                f"node_rank {e['node_rank']!r}: the model config is the leader's (rank 0); "
                "remove node_rank and start the others with `tsvllm worker-node --node-rank N`"
            )
        if self.parallel_size % nnodes:
            raise ValueError(
                f"tensor_parallel_size {self.tensor_parallel_size} × pipeline_parallel_size "
                f"{self.pipeline_parallel_size} does not split over nnodes {nnodes}; make it a "
                "multiple of nnodes"
            )
        return self

    @property
    def nnodes(self) -> int:
        """``vllm_engine_config.nnodes`` (default 1): hosts one engine spans."""
        return int(self.vllm_engine_config.get("nnodes") or 1)

    @property
    def parallel_per_node(self) -> int:
        """Devices one engine uses on each node: TP × PP / nnodes."""
        return self.parallel_size // self.nnodes

    @property
    def tensor_parallel_size(self) -> int:
        """``vllm_engine_config.tensor_parallel_size`` (default 1)."""
        return int(self.vllm_engine_config.get("tensor_parallel_size", 1))

    @property
    def pipeline_parallel_size(self) -> int:
        """``vllm_engine_config.pipeline_parallel_size`` (default 1)."""
        return int(self.vllm_engine_config.get("pipeline_parallel_size", 1))

    @property
    def parallel_size(self) -> int:
        """Devices one engine uses: tensor_parallel_size × pipeline_parallel_size."""
        return self.tensor_parallel_size * self.pipeline_parallel_size
