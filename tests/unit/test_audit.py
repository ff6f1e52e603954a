"""The audit log: one line per request, no text unless asked, safe with several writers."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from pathlib import Path

from tests.unit.conftest import FakeEngine, golden, make_context
from tsvllm.auth import ApiKeys
from tsvllm.engine.base import EngineReply, EngineRoute
from tsvllm.worker.audit import AuditLog

PROMPT = "my secret plan is to build a boat"


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def serve(handler, route, body, *, key="k-a"):
    ctx = make_context(route, headers={"Authorization": f"Bearer {key}"})
    asyncio.run(handler.handle([{"body": body}], ctx))
    return ctx


def audited(handler, tmp_path, *, content=False):
    handler.audit = AuditLog(tmp_path / "audit.jsonl", max_bytes=1 << 20, backups=2)
    handler.audit_content = content
    handler.api_key = ApiKeys({"team-a": "k-a", "team-b": "k-b"})
    return handler.audit


def test_one_line_per_request_with_key_name_tokens_and_no_text(handler, tmp_path):
    log = audited(handler, tmp_path)
    serve(handler, "v1/completions", {"prompt": PROMPT})
    serve(handler, "v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}]})
    serve(handler, "v1/completions", {"prompt": PROMPT}, key="k-b")
    serve(handler, "v1/completions", {"prompt": PROMPT}, key="wrong")
    log.flush()
    text = log.path.read_text()
    assert PROMPT not in text and "boat" not in text
    entries = lines(log.path)
    assert [e["key"] for e in entries] == ["team-a", "team-a", "team-b", None]
    assert [e["status"] for e in entries] == [200, 200, 200, 401]
    usage = golden("completion.json")["usage"]
    first = entries[0]
    assert first["route"] == "v1/completions" and first["request_id"] == "req-1"
    assert first["prompt_tokens"] == usage["prompt_tokens"]
    assert first["completion_tokens"] == usage["completion_tokens"]
    assert first["finish_reasons"] == [golden("completion.json")["choices"][0]["finish_reason"]]
    assert first["latency_ms"] >= 0 and "requests" not in first and "outputs" not in first


def test_log_content_adds_the_bodies_and_what_the_client_saw(handler, tmp_path):
    log = audited(handler, tmp_path, content=True)
    serve(handler, "v1/completions", {"prompt": PROMPT})
    serve(handler, "v1/chat/completions", {"stream": True})
    log.flush()
    plain, stream = lines(log.path)
    assert plain["requests"] == [{"prompt": PROMPT}]
    assert plain["outputs"] == [golden("completion.json")["choices"][0]["text"]]
    chunks = golden("chat_completion_chunks.json")
    expected = "".join(
        c["delta"].get("content") or "" for chunk in chunks for c in chunk["choices"]
    )
    assert stream["outputs"] == [expected]
    assert stream["ttft_ms"] is not None
    assert stream["finish_reasons"] == ["stop"]


def _write_many(path: str, tag: str, count: int) -> None:
    log = AuditLog(Path(path), max_bytes=20_000, backups=50)
    for i in range(count):
        log.write({"writer": tag, "i": i, "pad": "x" * 150})
    log.flush()


def test_two_writers_at_once_tear_no_line_and_rotate_once(tmp_path):
    """Two processes (as two TorchServe workers) append and rotate one file together."""
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(path), t, 400)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    files = [path, *sorted(tmp_path.glob("audit.jsonl.*"))]
    entries = [e for f in files for e in lines(f)]  # json.loads fails on a torn line
    assert len(files) > 2  # it rotated
    for tag in "ab":
        assert sorted(e["i"] for e in entries if e["writer"] == tag) == list(range(400))
    assert all(f.stat().st_size <= 20_000 for f in files)


def test_token_metrics_say_whose_key_used_them(handler, monkeypatch):
    from tsvllm.worker import ts_worker

    emitted = []
    monkeypatch.setattr(
        ts_worker, "emit_metrics", lambda ctx, counters, times_ms, **_: emitted.append(counters)
    )
    handler.api_key = ApiKeys({"team-a": "k-a", "team-b": "k-b"})
    serve(handler, "v1/completions", {"prompt": "x"}, key="k-b")
    dims = {name: d for name, _, d in emitted[0]}
    assert dims["PromptTokens"] == {"Key": "team-b"} == dims["CompletionTokens"]


def _pooling_reply(path: str, tokens: int) -> dict:
    """What vLLM 0.32's pooling route ``path`` answers (its own response models), with
    ``tokens`` prompt tokens."""
    from vllm.entrypoints.pooling.embed.protocol import (
        CohereBilledUnits,
        CohereEmbedByTypeEmbeddings,
        CohereEmbedResponse,
        CohereMeta,
        EmbeddingResponse,
        EmbeddingResponseData,
    )
    from vllm.entrypoints.pooling.pooling.protocol import PoolingResponse, PoolingResponseData
    from vllm.entrypoints.pooling.scoring.protocol import (
        RerankDocument,
        RerankResponse,
        RerankResult,
        RerankUsage,
        ScoreResponse,
        ScoreResponseData,
    )
    from vllm.entrypoints.serve.engine.protocol import UsageInfo

    usage = UsageInfo(prompt_tokens=tokens, total_tokens=tokens)
    if path == "v1/embeddings":
        data = [EmbeddingResponseData(index=0, embedding=[0.5, 0.5])]
        return EmbeddingResponse(model="m", data=data, usage=usage).model_dump()
    if path == "v2/embed":
        embeddings = CohereEmbedByTypeEmbeddings(float=[[0.5, 0.5]])
        meta = CohereMeta(billed_units=CohereBilledUnits(input_tokens=tokens))
        return CohereEmbedResponse(embeddings=embeddings, meta=meta).model_dump()
    if path in ("score", "v1/score"):
        data = [ScoreResponseData(index=0, score=0.9)]
        return ScoreResponse(model="m", data=data, usage=usage).model_dump()
    if path in ("rerank", "v1/rerank", "v2/rerank"):
        results = [RerankResult(index=0, document=RerankDocument(text="d"), relevance_score=1)]
        rerank_usage = RerankUsage(prompt_tokens=tokens, total_tokens=tokens)
        return RerankResponse(id="r", model="m", usage=rerank_usage, results=results).model_dump()
    if path == "classify":
        from vllm.entrypoints.pooling.classify.protocol import (
            ClassificationData,
            ClassificationResponse,
        )

        data = [ClassificationData(index=0, label="a", probs=[1.0], num_classes=1)]
        return ClassificationResponse(model="m", data=data, usage=usage).model_dump()
    # pooling, and invocations (SageMaker's, answering as the route its body is for)
    data = [PoolingResponseData(index=0, data=[0.5])]
    return PoolingResponse(model="m", data=data, usage=usage).model_dump()


POOLING_PATHS = ["v1/embeddings", "v2/embed", "pooling", "score", "v1/score", "rerank"]
POOLING_PATHS += ["v1/rerank", "v2/rerank", "classify", "invocations"]


class PoolingEngine(FakeEngine):
    """A pooling model's engine: no generation; its pooling routes answer as vLLM's do, the
    Nth request with 10 * N prompt tokens."""

    ROUTES = (
        EngineRoute("tokenize", frozenset({"POST"})),
        *(EngineRoute(path, frozenset({"POST"})) for path in POOLING_PATHS),
    )

    def __init__(self) -> None:
        super().__init__()
        self.generates = False

    async def call(self, route, path, body, *, request_id):
        if path == "tokenize":  # an engine route that is not pooling: nothing counted
            return await super().call(route, path, body, request_id=request_id)
        self.calls.append((route.template, json.loads(body), request_id))
        reply = _pooling_reply(path, 10 * len(self.calls))
        return EngineReply(200, "application/json", json.dumps(reply).encode())


def test_pooling_routes_count_their_prompt_tokens_in_the_metrics_and_the_audit_log(
    handler, tmp_path, monkeypatch
):
    from tsvllm.worker import ts_worker

    emitted = []
    monkeypatch.setattr(
        ts_worker, "emit_metrics", lambda ctx, counters, times_ms, **_: emitted.append(counters)
    )
    handler.engine = PoolingEngine()
    log = audited(handler, tmp_path)
    for path in [*POOLING_PATHS, "tokenize"]:
        ctx = serve(handler, path, {"model": "m", "input": PROMPT})
        assert ctx.get_response_status(0)[0] == 200
    log.flush()
    entries = lines(log.path)
    assert [e["route"] for e in entries] == [*POOLING_PATHS, "tokenize"]
    expected = [10 * n for n in range(1, len(POOLING_PATHS) + 1)]
    assert [e["prompt_tokens"] for e in entries] == [*expected, 0]  # tokenize: none
    prompt = [[(v, d) for name, v, d in c if name == "PromptTokens"] for c in emitted]
    assert prompt == [*([(n, {"Key": "team-a"})] for n in expected), []]
    completion = [[v for name, v, _ in c if name == "CompletionTokens"] for c in emitted]
    # OpenAI's usage says 0 completion tokens for embeddings, score and pooling
    assert sum(sum(c) for c in completion) == 0
    assert all(e["completion_tokens"] == 0 for e in entries)
    assert PROMPT not in log.path.read_text()
