"""API-key auth in the handler: 401 with OpenAI's body, constant-time key check."""

from __future__ import annotations

import asyncio
import json
import stat

import pytest

from tests.unit.conftest import make_context
from tsvllm.auth import KEY_FILE_ENV, ApiKeys, write_key_file
from tsvllm.errors import Unauthorized


def test_key_file_is_private_and_in_torchserve_format(tmp_path):
    path = tmp_path / "key_file.json"
    key = write_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"inference": {"key": key}}
    assert len(key) >= 32 and write_key_file(path) != key  # random, replaced


def test_from_environ(tmp_path):
    assert ApiKeys.from_environ({}) is None
    path = tmp_path / "k.json"
    key = write_key_file(path)
    ApiKeys.from_environ({KEY_FILE_ENV: str(path)}).check({"Authorization": f"Bearer {key}"})
    with pytest.raises(RuntimeError, match="cannot read the key"):
        ApiKeys.from_environ({KEY_FILE_ENV: str(tmp_path / "missing.json")})


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
        ApiKeys({"inference": "s3cret-key"}).check(headers)


def test_check_accepts_any_header_case():
    ApiKeys({"inference": "s3cret-key"}).check({"authorization": "bearer s3cret-key"})


def _serve(handler, headers):
    ctx = make_context("v1/models", headers=headers)
    payload = asyncio.run(handler.handle([{"body": None}], ctx))[0]
    return ctx.get_response_status(0)[0], payload


def test_handler_answers_401_before_anything_else(handler, engine):
    handler.api_key = ApiKeys({"inference": "s3cret-key"})
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


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_named_keys_say_whose_key_it_was(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"inference": {"key": "k-main"}, "keys": {"team-a": "k-a"}}))
    keys = ApiKeys.from_file(path)
    assert keys.check(_bearer("k-main")) == "inference"
    assert keys.check(_bearer("k-a")) == "team-a"


def test_a_key_removed_from_the_file_is_revoked_without_a_restart(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": {"team-a": "k-a", "team-b": "k-b"}}))
    keys = ApiKeys.from_file(path)
    assert keys.check(_bearer("k-b")) == "team-b"
    path.write_text(json.dumps({"keys": {"team-a": "k-a"}}))
    monkeypatch.setattr(ApiKeys, "RELOAD_CHECK_S", 0.0)
    with pytest.raises(Unauthorized, match="incorrect"):
        keys.check(_bearer("k-b"))
    assert keys.check(_bearer("k-a")) == "team-a"


def test_a_broken_edit_of_the_keys_file_refuses_every_key(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": {"team-a": "k-a"}}))
    keys = ApiKeys.from_file(path)
    path.write_text('{"keys": {"team-a": ')  # an editor saved half a file
    monkeypatch.setattr(ApiKeys, "RELOAD_CHECK_S", 0.0)
    with pytest.raises(Unauthorized, match="cannot read its keys file"):
        keys.check(_bearer("k-a"))


@pytest.mark.parametrize(
    "content, message",
    [
        ("[]", "JSON object"),
        ('{"keys": {"a": ""}}', "empty"),
        ('{"keys": ["k"]}', "map names"),
        ("{}", "no key"),
    ],
)
def test_a_keys_file_that_cannot_work_is_refused_at_start(tmp_path, content, message):
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(RuntimeError, match=message):
        ApiKeys.from_environ({KEY_FILE_ENV: str(path)})


def test_anthropic_clients_x_api_key_header_is_accepted():
    keys = ApiKeys({"team-a": "k-a"})
    assert keys.check({"x-api-key": "k-a"}) == "team-a"
    with pytest.raises(Unauthorized, match="incorrect"):
        keys.check({"X-Api-Key": "k-b"})


@pytest.mark.parametrize(
    "headers",
    [
        {"AUTHORIZATION": "Bearer s3cret-key"},
        {"Authorization": "BEARER s3cret-key"},
        {"X-API-KEY": "s3cret-key"},
        {"X-Api-Key": "s3cret-key"},
    ],
)
def test_the_key_headers_are_found_in_any_spelling_through_the_handler(handler, headers):
    handler.api_key = ApiKeys({"inference": "s3cret-key"})
    status, _ = _serve(handler, headers)
    assert status == 200
