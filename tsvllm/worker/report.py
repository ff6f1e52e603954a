"""What one request cost, reported once it ended: its model metrics (through TorchServe)
and its audit-log line. Called by :mod:`tsvllm.worker.core`; never fails a request."""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tsvllm.worker import ts_worker
from tsvllm.worker.hooks import overrides

if TYPE_CHECKING:
    from tsvllm.worker.core import Record
    from tsvllm.worker.handler import VLLMHandler

logger = logging.getLogger(__name__)

#: the histogram of the seconds a request spent in each hook, by ``Stage`` (the hook's name)
HOOK_LATENCY = "HookLatency"
#: the hooks :data:`HOOK_LATENCY` times (``setup`` once per engine start, the others per
#: request: on_chunk summed over the stream's chunks)
HOOK_STAGES = ("setup", "on_request", "on_response", "on_chunk", "on_stream_end")


def audit_entry(context: Any, record: Record, *, content: bool) -> dict[str, Any]:
    """The audit log's line for one request (:mod:`tsvllm.worker.audit`)."""
    manifest = getattr(context, "manifest", None) or {}
    usage = {
        key: sum(u[key] for u in record.usages if u.get(key) is not None)
        for key in ("prompt_tokens", "completion_tokens")
    }
    entry: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "request_id": ts_worker.request_id(context),
        "route": record.route,
        "model": getattr(context, "model_name", None),
        "version": (manifest.get("model") or {}).get("modelVersion"),
        "worker": os.getpid(),
        "key": record.key,
        "status": context.get_response_status(0)[0],
        **usage,
        "latency_ms": round((time.perf_counter() - record.start) * 1000, 1),
        "ttft_ms": None if record.ttft_ms is None else round(record.ttft_ms, 1),
        "finish_reasons": record.finish_reasons,
        "guards": [
            {"guard": guard, "action": action, "categories": list(categories)}
            for ctx in record.contexts
            for guard, action, categories in ctx.metadata.get("guard_decisions", ())
        ],
        "sources": sorted(
            {c["source"] for ctx in record.contexts for c in ctx.metadata.get("citations", ())}
        ),
    }
    if content:
        entry["requests"] = record.requests
        entry["outputs"] = record.outputs
    return entry


def emit_hook_time(context: Any, stage: str, seconds: float) -> None:
    """One observation of :data:`HOOK_LATENCY` for ``stage`` (``setup`` has no request)."""
    try:
        observation = (HOOK_LATENCY, seconds, _stage(context, stage))
        ts_worker.emit_metrics(context, histograms_s=[observation])
    except Exception:  # metrics must never fail what they measure
        logger.exception("emitting metrics failed")


def _stage(context: Any, stage: str) -> dict[str, str]:
    """The dimensions of a :data:`HOOK_LATENCY` observation: the stage, never the request
    (the model and level named, so that ``setup``'s, emitted outside any request, match)."""
    return {"Stage": stage, "ModelName": str(context.model_name), "Level": "Model"}


def emit_request_metrics(handler: VLLMHandler, context: Any, record: Record) -> None:
    """Token counts, time to first token, deadline hits, retrieval time, guard decisions,
    time in each overridden hook."""
    try:
        counters, times = [], []
        hook_times = [
            (HOOK_LATENCY, seconds, _stage(context, stage))
            for stage, seconds in record.hook_s.items()
            if overrides(handler, stage)
        ]
        for key, name in (
            ("prompt_tokens", "PromptTokens"),
            ("completion_tokens", "CompletionTokens"),
        ):
            counts = [u[key] for u in record.usages if u.get(key) is not None]
            if counts:  # per API key name: who used what ("-": no key checked)
                counters.append((name, sum(counts), {"Key": record.key or "-"}))
        if record.timed_out:
            counters.append(("RequestTimeouts", 1, {}))
        if record.client_gone:
            counters.append(("ClientDisconnects", 1, {}))
        if record.ttft_ms is not None:
            times.append(("TimeToFirstToken", record.ttft_ms, {}))
        for ctx in record.contexts:
            meta = ctx.metadata
            if "retrieval_ms" in meta:
                times.append(("RetrievalLatency", meta["retrieval_ms"], {}))
            for guard, action, categories in meta.get("guard_decisions", ()):
                for category in categories or ("none",):
                    dims = {"Guard": guard, "Action": action, "Category": category}
                    counters.append(("GuardDecisions", 1, dims))
        ts_worker.emit_metrics(context, counters=counters, times_ms=times, histograms_s=hook_times)
    except Exception:  # metrics must never fail a request
        logger.exception("emitting metrics failed")
