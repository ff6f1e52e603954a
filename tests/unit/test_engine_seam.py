"""The engine seam's pure parts: argv for vLLM's parser, stream events, error mapping."""

from __future__ import annotations

import json

import pytest

from tsvllm.engine.base import StreamEvent
from tsvllm.engine.vllm_engine import engine_argv
from tsvllm.errors import (
    BadRequest,
    EngineUnavailable,
    NotFound,
    error_for_status,
    to_error_body,
)


def test_engine_argv_spells_flags_like_vllm_serve():
    argv = engine_argv(
        model="/m",
        engine_args={
            "max_model_len": 2048,
            "enforce_eager": True,
            "enable_prefix_caching": False,
            "override_generation_config": {"temperature": 0.5},
            "allowed_local_media_path": None,
        },
        served_model_name=["a", "b"],
        chat_template="/t.jinja",
        adapters={"sql": "/lora/sql"},
    )
    assert argv == [
        "--model",
        "/m",
        "--max-model-len",
        "2048",
        "--enforce-eager",
        "--no-enable-prefix-caching",
        "--override-generation-config",
        json.dumps({"temperature": 0.5}),
        "--served-model-name",
        "a",
        "b",
        "--chat-template",
        "/t.jinja",
        "--lora-modules",
        "sql=/lora/sql",
    ]


def test_engine_argv_keeps_a_misspelled_key_for_vllm_to_reject():
    assert "--max-modle-len" in engine_argv(model="/m", engine_args={"max_modle_len": 1})


def test_stream_event_forwards_raw_text_untouched():
    raw = '{"a": 1,   "b": [1, 2]}'
    assert StreamEvent(raw).encode() == f"data: {raw}\n\n"


def test_stream_event_reencodes_after_payload_change():
    event = StreamEvent('{"choices": []}')
    event.payload["choices"].append({"index": 0})
    assert json.loads(event.encode()[6:]) == {"choices": [{"index": 0}]}
    assert StreamEvent.from_payload({"x": 1}).encode() == 'data: {"x":1}\n\n'


@pytest.mark.parametrize(
    ("status", "cls"), [(400, BadRequest), (404, NotFound), (503, EngineUnavailable)]
)
def test_error_for_status_picks_our_class(status, cls):
    exc = error_for_status(status, "m", error_type="VllmType", param="p")
    assert isinstance(exc, cls)
    code, body = to_error_body(exc)
    assert code == status
    assert body == {"error": {"message": "m", "type": "VllmType", "param": "p", "code": status}}


def test_error_for_an_unlisted_status_keeps_it():
    code, body = to_error_body(error_for_status(501, "not implemented"))
    assert code == 501 and body["error"]["code"] == 501


def test_an_engine_on_one_host_keeps_its_ports_on_loopback():
    from types import SimpleNamespace

    from tsvllm.engine.vllm_engine import engine_environ

    one_host = SimpleNamespace(runtime_lora=False, nnodes=1)
    loopback = {"GLOO_SOCKET_IFNAME": "lo", "VLLM_HOST_IP": "127.0.0.1"}
    assert engine_environ(one_host, environ={}) == loopback
    assert engine_environ(one_host, environ=loopback | {"VLLM_HOST_IP": "10.0.0.5"}) == {}
    across = SimpleNamespace(runtime_lora=True, nnodes=2)  # the others must reach it
    assert engine_environ(across, environ={}) == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
