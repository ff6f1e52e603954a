"""``handler.audit_log``: the audit log's settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


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
