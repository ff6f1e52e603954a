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

The package follows the file's sections: :mod:`~tsvllm.config.frontend` (TorchServe's keys,
``torchrun:``), :mod:`~tsvllm.config.handler`, :mod:`~tsvllm.config.rag`,
:mod:`~tsvllm.config.guards`, :mod:`~tsvllm.config.audit`, and :mod:`~tsvllm.config.load`
(reading, writing, error messages). Import from ``tsvllm.config``.
"""

from __future__ import annotations

from tsvllm.config.audit import AuditLogConfig
from tsvllm.config.frontend import ModelConfig, TorchrunConfig
from tsvllm.config.guards import (
    CATEGORIES,
    DenyListConfig,
    GuardsConfig,
    JudgeConfig,
    RuleGuardConfig,
    Stage,
)
from tsvllm.config.handler import HandlerConfig
from tsvllm.config.load import (
    ConfigError,
    dump_model_config,
    load_model_config,
    loads_model_config,
    validate_model_config,
)
from tsvllm.config.rag import RagConfig

__all__ = [
    "CATEGORIES",
    "AuditLogConfig",
    "ConfigError",
    "DenyListConfig",
    "GuardsConfig",
    "HandlerConfig",
    "JudgeConfig",
    "ModelConfig",
    "RagConfig",
    "RuleGuardConfig",
    "Stage",
    "TorchrunConfig",
    "dump_model_config",
    "load_model_config",
    "loads_model_config",
    "validate_model_config",
]
