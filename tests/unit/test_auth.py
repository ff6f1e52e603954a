"""API-key auth in the handler: 401 with OpenAI's body, constant-time key check."""

from __future__ import annotations

import asyncio
import json
import stat

import pytest

from tests.unit.conftest import make_context
from tsvllm.auth import KEY_FILE_ENV, ApiKey, write_key_file
from tsvllm.errors import Unauthorized


def test_key_file_is_private_and_in_torchserve_format(tmp_path):
    path = tmp_path / "key_file.json"
    key = write_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"inference": {"key": key}}
    assert len(key) >= 32 and write_key_file(path) != key  # random, replaced


def test_from_environ(tmp_path):
    assert ApiKey.from_environ({}) is None
    path = tmp_path / "k.json"
    key = write_key_file(path)
    ApiKey.from_environ({KEY_FILE_ENV: str(path)}).check({"Authorization": f"Bearer {key}"})
    with pytest.raises(RuntimeError, match="cannot read the key"):
        ApiKey.from_environ({KEY_FILE_ENV: str(tmp_path / "missing.json")})


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing API key"),
        ({"authorization": "Basic abc"}, "missing API key"),
        ({"Authorization": "Bearer "}, "missing API key"),
        ({"Authorization": "Bearer wrong"}, "incorrect API key"),
        ({"Authorization": "Bearer s3cret-key-x"}, "incorrect API key"),
    ],
)
def test_check_refuses(headers, message):
    with pytest.raises(Unauthorized, match=message):
        ApiKey("s3cret-key").check(headers)


def test_check_accepts_any_header_case():
    ApiKey("s3cret-key").check({"authorization": "bearer s3cret-key"})


def _serve(handler, headers):
    ctx = make_context("v1/models", headers=headers)
    payload = asyncio.run(handler.handle([{"body": None}], ctx))[0]
    return ctx.get_response_status(0)[0], payload


def test_handler_answers_401_before_anything_else(handler, engine):
    handler.api_key = ApiKey("s3cret-key")
    status, payload = _serve(handler, {})
    assert status == 401
    body = json.loads(payload)
    assert body["error"]["code"] == "invalid_api_key"
    assert body["error"]["type"] == "AuthenticationError"
    # an unknown route gets 401 too: no probing of routes without the key
    ctx = make_context("v1/nope")
    asyncio.run(handler.handle([{"body": None}], ctx))
    assert ctx.get_response_status(0)[0] == 401
    status, _ = _serve(handler, {"Authorization": "Bearer s3cret-key"})
    assert status == 200
