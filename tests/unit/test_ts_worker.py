"""tsvllm.worker.ts_worker: the patched TorchServe worker path replies to every request."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from tests.unit.conftest import RecordingSocket
from tsvllm.worker import ts_worker


def decode(frame: bytes) -> dict[str, Any]:
    """One predict-response frame (TorchServe's encoding, a single request)."""
    pos = 0

    def integer() -> int:
        nonlocal pos
        (value,) = struct.unpack_from("!i", frame, pos)
        pos += 4
        return value

    def text() -> bytes:
        nonlocal pos
        n = integer()
        pos += n
        return frame[pos - n : pos]

    out: dict[str, Any] = {"code": integer(), "message": text().decode()}
    out["request_id"] = text().decode()
    out["content_type"] = text().decode()
    out["status"] = integer()
    out["phrase"] = text().decode()
    out["headers"] = {text().decode(): text().decode() for _ in range(integer())}
    out["body"] = text()
    assert integer() == -1 and pos == len(frame)
    return out


def batch(request_id: bytes = b"req-1", **parameter: Any) -> list[dict[str, Any]]:
    """A batch as TorchServe's ``_retrieve_inference_msg`` delivers it."""
    param = {"name": "body", "contentType": "application/json", "value": {"prompt": "hi"}}
    param.update(parameter)
    return [
        {
            "requestId": request_id,
            "headers": [{"name": b"url_path", "value": b"v1/completions"}],
            "parameters": [param],
        }
    ]


def fake_service(entry_point) -> SimpleNamespace:
    from ts.context import Context

    service = SimpleNamespace(
        cl_socket=RecordingSocket(),
        context=Context("tiny", "/tmp", None, 1, None, "0.12.0"),
        _entry_point=entry_point,
    )
    return SimpleNamespace(service=service)


async def echo(data, context):
    ts_worker.set_reply(context, status=200, content_type="application/json")
    return [json.dumps({"got": data[0]["body"]})]


def predict(entry_point, the_batch) -> dict[str, Any]:
    async_service = fake_service(entry_point)
    asyncio.run(ts_worker._call_predict(async_service, the_batch))
    [frame] = async_service.service.cl_socket.frames
    return decode(frame)


def assert_internal_error(reply: dict[str, Any]) -> None:
    assert reply["code"] == 200, "a non-200 message code fails every request on the worker"
    assert reply["request_id"] == "req-1"
    assert reply["status"] == 500 and reply["content_type"] == "application/json"
    error = json.loads(reply["body"])["error"]
    assert error["type"] == "InternalServerError" and "worker log" in error["message"]


def test_a_request_is_answered():
    reply = predict(echo, batch())
    assert reply["code"] == 200 and reply["status"] == 200
    assert json.loads(reply["body"]) == {"got": {"prompt": "hi"}}


def test_a_batch_torchserve_cannot_unpack_still_gets_a_500_reply(caplog):
    broken = batch()
    del broken[0]["parameters"][0]["contentType"]  # Service.retrieve_data_for_inference fails
    with caplog.at_level(logging.ERROR):
        assert_internal_error(predict(echo, broken))
    assert "KeyError" in caplog.text


def test_a_reply_that_cannot_be_encoded_gets_a_500_with_message_code_200(caplog):
    async def bad_header(data, context):
        context.set_response_header(0, "x-count", 3)  # not a str: encoding the reply fails
        return [b"ok"]

    async def unserialisable(data, context):
        return [{"when": object()}]  # TorchServe would answer with message code 503

    for entry_point in (bad_header, unserialisable):
        assert_internal_error(predict(entry_point, batch()))


def test_a_handler_that_raises_or_returns_no_list_gets_a_500():
    async def raises(data, context):
        raise RuntimeError("bug")

    async def no_list(data, context):
        return b"ok"

    for entry_point in (raises, no_list):
        assert_internal_error(predict(entry_point, batch()))


# --- the receive loop ----------------------------------------------------------------------


def frame_int(n: int) -> bytes:
    return struct.pack("!i", n)


def frame_bytes(data: bytes) -> bytes:
    return frame_int(len(data)) + data


def load_message() -> bytes:
    return (
        b"L"
        + frame_bytes(b"tiny")
        + frame_bytes(b"/tmp/model")
        + frame_int(1)
        + frame_bytes(b"handler.py")
        + frame_int(-1)
        + frame_bytes(b"")
        + struct.pack("!?", True)
    )


def inference_message(request_id: bytes) -> bytes:
    header = frame_bytes(b"url_path") + frame_bytes(b"v1/completions")
    param = frame_bytes(b"body") + frame_bytes(b"text/plain") + frame_bytes(b"hi")
    return (
        b"I"
        + frame_bytes(request_id)
        + header
        + frame_int(-1)
        + param
        + frame_int(-1)
        + frame_int(-1)
    )


def frontend_socket(data: bytes) -> socket.socket:
    """The worker's end of a socket pair whose frontend end sent ``data`` and hung up."""
    worker, frontend = socket.socketpair()
    frontend.sendall(data)
    frontend.close()
    return worker


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def receive(loop, data: bytes, call_predict) -> None:
    """Run the receive loop until the fake frontend disconnects (TorchServe exits then)."""
    async_service = SimpleNamespace(
        service=SimpleNamespace(cl_socket=frontend_socket(data)),
        loop=loop,
        call_predict=call_predict,
    )
    with pytest.raises(SystemExit):
        ts_worker._receive_requests(async_service)


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def test_a_load_command_is_logged_and_skipped_like_torchserve_does(loop, caplog):
    seen: list[list[dict[str, Any]]] = []

    async def call_predict(the_batch):
        seen.append(the_batch)

    data = load_message() + inference_message(b"req-2")
    with caplog.at_level(logging.WARNING):
        receive(loop, data, call_predict)
    wait_for(lambda: len(seen) == 1)
    assert seen[0][0]["requestId"] == b"req-2"
    assert "LOAD" in caplog.text


def test_requests_read_through_the_buffer_decode_as_torchserve_decodes_them(loop):
    """Many requests in one socket read, and a request split over reads, each decoded whole
    and in order, the same as TorchServe's decoder reading the raw socket."""
    from ts.protocol.otf_message_handler import _retrieve_buffer, _retrieve_inference_msg

    seen: list[list[dict[str, Any]]] = []

    async def call_predict(the_batch):
        seen.append(the_batch)

    ids = [f"req-{i}".encode() for i in range(1000)]
    data = b"".join(inference_message(i) for i in ids)  # over the 64 KiB buffer: split
    receive(loop, data, call_predict)
    wait_for(lambda: len(seen) == len(ids))
    assert [batch[0]["requestId"] for batch in seen] == ids
    raw = frontend_socket(inference_message(b"req-x"))
    assert _retrieve_buffer(raw, 1) == b"I"
    expected = _retrieve_inference_msg(raw)
    expected[0]["requestId"] = b"req-0"
    assert seen[0] == expected


def test_an_unknown_command_byte_is_logged_before_the_worker_stops(loop, caplog):
    async def call_predict(the_batch):
        raise AssertionError("not reached")

    async_service = SimpleNamespace(
        service=SimpleNamespace(cl_socket=frontend_socket(b"X")),
        loop=loop,
        call_predict=call_predict,
    )
    with caplog.at_level(logging.ERROR), pytest.raises(ValueError, match="command"):
        ts_worker._receive_requests(async_service)
    assert "b'X'" in caplog.text and "out of step" in caplog.text


def test_an_exception_escaping_call_predict_is_logged(loop, caplog):
    async def call_predict(the_batch):
        raise RuntimeError("escaped the worker path")

    with caplog.at_level(logging.ERROR):
        receive(loop, inference_message(b"req-3"), call_predict)
        wait_for(lambda: "escaped the worker path" in caplog.text)
    assert "req-3" in caplog.text


# --- which path runs ---------------------------------------------------------------------


@pytest.fixture
def fresh(monkeypatch):
    """install_worker_path as in a new worker; TorchServe's class restored afterwards."""
    from ts.async_service import AsyncService

    for name in ("receive_requests", "call_predict", "send_responses"):
        monkeypatch.setattr(AsyncService, name, getattr(AsyncService, name))
    monkeypatch.setattr(ts_worker, "_installed", False)
    monkeypatch.setattr(ts_worker._WRITER, "coalesce", False)
    monkeypatch.setattr(ts_worker._METRICS, "batching", False)
    return AsyncService


@pytest.fixture
def loops_set(monkeypatch):
    """The event loops made the worker's loop (recorded: this process keeps its own)."""
    loops: list[Any] = []
    monkeypatch.setattr(asyncio, "set_event_loop", loops.append)
    yield loops
    for loop in loops:
        loop.close()


@pytest.mark.parametrize(
    ("lean", "patched", "path"),
    [
        (True, {"receive_requests", "call_predict"}, "lean path"),
        (False, {"send_responses"}, "TorchServe's path with the socket lock"),
    ],
)
def test_on_torchserve_0_12_0_the_path_is_patched_and_logged(
    fresh, loops_set, caplog, lean, patched, path
):
    before = dict(vars(fresh))
    with caplog.at_level(logging.INFO, logger="tsvllm.worker.ts_worker"):
        ts_worker.install_worker_path(lean=lean)
    changed = {name for name in before if vars(fresh)[name] is not before[name]}
    assert changed == patched
    # frames coalesced and metrics batched on the lean path only (both written from the loop)
    assert ts_worker._WRITER.coalesce is lean and ts_worker._METRICS.batching is lean
    # the lean path's loop is uvloop's, as vLLM's own server's is
    assert [type(loop).__module__ for loop in loops_set] == (["uvloop"] if lean else [])
    [line] = [r.getMessage() for r in caplog.records if "worker path:" in r.getMessage()]
    assert path in line


@pytest.mark.parametrize("lean", [True, False])
def test_another_torchserve_version_keeps_its_own_path_with_a_warning(
    fresh, monkeypatch, caplog, lean
):
    monkeypatch.setattr("ts.version.__version__", "0.13.1")
    before = dict(vars(fresh))
    with caplog.at_level(logging.INFO, logger="tsvllm.worker.ts_worker"):
        ts_worker.install_worker_path(lean=lean)
    assert dict(vars(fresh)) == before and not ts_worker._WRITER.coalesce
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "0.13.1" in warning and "0.12.0" in warning
    [line] = [r.getMessage() for r in caplog.records if "worker path:" in r.getMessage()]
    assert "TorchServe's path unpatched" in line


class RecordingMetrics:
    """TorchServe's metrics cache as the worker uses it: each add is one stdout line."""

    def __init__(self) -> None:
        self.lines: list[tuple] = []
        self.request_ids: Any = "unset"
        self.model_name = "tiny"

    def add_counter(self, name, value, idx, dimensions):
        self.lines.append(("counter", name, value, {d.name: d.value for d in dimensions}))

    def add_time(self, name, value, idx, unit, dimensions, metric_type=None):
        kind = "histogram" if metric_type is not None else "gauge"
        self.lines.append((kind, name, value, unit, {d.name: d.value for d in dimensions}))


def test_batched_metrics_sum_counters_keep_a_gauges_last_value_and_every_observation(
    monkeypatch,
):
    monkeypatch.setattr(ts_worker, "METRICS_FLUSH_S", 0.0)
    batch = ts_worker._MetricBatch()
    metrics = RecordingMetrics()
    alice, bob = {"Key": "alice"}, {"Key": "bob"}
    model = {"ModelName": "tiny", "Level": "Model"}  # as TorchServe adds to a request's

    async def requests() -> None:
        for tokens, key, ttft, hook in (
            (5, alice, 30.0, 0.1),
            (7, alice, 20.0, 0.2),
            (1, bob, 9.0, 0.3),
        ):
            batch.add(
                metrics,
                counters=[("CompletionTokens", tokens, key)],
                times_ms=[("TimeToFirstToken", ttft, {})],
                histograms_s=[("HookLatency", hook, {"Stage": "on_request"})],
            )
        assert metrics.lines == []  # nothing written with the requests themselves
        deadline = time.monotonic() + 5
        while not metrics.lines:  # the flush the first add scheduled
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

    asyncio.run(requests())
    assert metrics.request_ids is None  # a batch's lines belong to no one request
    assert sorted(metrics.lines, key=repr) == sorted(
        [
            ("counter", "CompletionTokens", 12, {**alice, **model}),
            ("counter", "CompletionTokens", 1, {**bob, **model}),
            ("gauge", "TimeToFirstToken", 9.0, "ms", model),
            *(
                ("histogram", "HookLatency", s, "s", {"Stage": "on_request", **model})
                for s in (0.1, 0.2, 0.3)
            ),
        ],
        key=repr,
    )
    metrics.lines.clear()
    batch.flush()  # nothing pending: nothing written
    assert metrics.lines == []


def test_metrics_are_written_at_once_off_the_lean_path():
    metrics = RecordingMetrics()
    context = SimpleNamespace(metrics=metrics, request_ids={0: "req-1"})
    ts_worker.emit_metrics(context, counters=[("PromptTokens", 3, {"Key": "-"})])
    assert metrics.lines == [("counter", "PromptTokens", 3, {"Key": "-"})]
    assert metrics.request_ids == {0: "req-1"}


def test_a_batched_line_has_the_dimensions_torchserve_gives_a_requests_line(caplog):
    """With TorchServe's own metrics cache: the batched line and the line of one request
    differ only in value, time and request id (a line without ModelName would be another
    Prometheus series, and TorchServe labels a line with no request id Level "Error")."""
    import os

    import ts
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    cache = MetricsCacheYamlImpl(
        os.path.join(os.path.dirname(ts.__file__), "configs", "metrics.yaml")
    )
    cache.initialize_cache()
    cache.model_name = "tiny"
    counters = [("CompletionTokens", 4, {"Key": "alice"})]
    times = [("TimeToFirstToken", 12.5, {})]

    def lines() -> list[str]:
        out = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[METRICS]")]
        caplog.clear()
        # name.unit, then dimensions and type: not the value, host time or request id
        return sorted(
            ln.split(":", 1)[0] + "|" + ln.split("|")[1] + "|" + ln.split("|")[2] for ln in out
        )

    with caplog.at_level(logging.INFO):
        context = SimpleNamespace(metrics=cache, request_ids={0: "req-1"})
        ts_worker.emit_metrics(context, counters=counters, times_ms=times)
        per_request = lines()
        batch = ts_worker._MetricBatch()

        async def batched() -> None:
            batch.add(cache, counters=counters, times_ms=times, histograms_s=())

        asyncio.run(batched())
        batch.flush()
        assert lines() == per_request
    assert any("ModelName:tiny" in ln and "Level:Model" in ln for ln in per_request), per_request


def test_a_metric_batched_outside_the_event_loop_is_written_at_once():
    metrics = RecordingMetrics()
    batch = ts_worker._MetricBatch()
    batch.add(metrics, counters=[("PromptTokens", 2, {})], times_ms=(), histograms_s=())
    assert metrics.lines == [
        ("counter", "PromptTokens", 2, {"ModelName": "tiny", "Level": "Model"})
    ]
