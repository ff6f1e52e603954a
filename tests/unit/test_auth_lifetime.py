"""Keys with a lifetime, and getting the current key (``tsvllm key``).

TorchServe's own key_file.json gives every key an ``expiration time`` (60 minutes by
default); the handler honours the same field in its keys file and refuses an expired key with
an OpenAI-style 401 that says how to get a new one. ``tsvllm key`` prints the current
inference key of either file, and says how to get a new one when it has expired.
"""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta

import pytest

from tsvllm.auth import ApiKeys, inference_key, renew_inference_key, write_key_file
from tsvllm.cli import main as tsvllm
from tsvllm.errors import Unauthorized, to_error_body

PAST = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
FUTURE = (datetime.now(UTC) + timedelta(days=1)).isoformat()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _torchserve_file(path, *, expires: str) -> None:
    """key_file.json as TorchServe 0.12 writes it (TokenAuthorization.generateKeyFile)."""
    path.write_text(
        json.dumps(
            {
                "management": {"key": "m-key", "expiration time": expires},
                "inference": {"key": "i-key", "expiration time": expires},
                "API": {"key": "api-key"},
            }
        )
    )


def test_an_expired_key_gets_a_401_that_names_the_fix(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps(
            {
                "inference": {"key": "k-main"},
                "keys": {
                    "old": {"key": "k-old", "expiration time": PAST},
                    "new": {"key": "k-new", "expiration time": FUTURE},
                },
            }
        )
    )
    keys = ApiKeys.from_file(path)
    assert keys.check(_bearer("k-main")) == "inference"
    assert keys.check(_bearer("k-new")) == "new"
    with pytest.raises(Unauthorized) as caught:
        keys.check(_bearer("k-old"))
    status, body = to_error_body(caught.value)
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    assert "'old' expired at" in body["error"]["message"]
    assert "`tsvllm key`" in body["error"]["message"]


def test_a_wrong_key_is_told_where_the_current_one_is():
    with pytest.raises(Unauthorized, match="incorrect API key provided.*`tsvllm key`"):
        ApiKeys({"inference": "k"}).check(_bearer("other"))


def test_an_expiry_without_a_zone_is_utc_and_a_bad_one_is_refused(tmp_path):
    path = tmp_path / "keys.json"
    naive = (datetime.now(UTC) - timedelta(minutes=1)).replace(tzinfo=None).isoformat()
    path.write_text(json.dumps({"keys": {"a": {"key": "k-a", "expiration time": naive}}}))
    with pytest.raises(Unauthorized, match="expired"):
        ApiKeys.from_file(path).check(_bearer("k-a"))
    path.write_text(json.dumps({"keys": {"a": {"key": "k-a", "expiration time": "soon"}}}))
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        ApiKeys.from_file(path)


def test_torchserves_own_key_file_and_its_nanosecond_instants_are_read(tmp_path):
    path = tmp_path / "key_file.json"
    _torchserve_file(path, expires="2999-01-01T00:00:00.123456789Z")
    assert inference_key(path) == "i-key"
    assert ApiKeys.from_file(path).check(_bearer("i-key")) == "inference"


def test_an_expired_torchserve_key_names_torchserves_token_api(tmp_path):
    path = tmp_path / "key_file.json"
    _torchserve_file(path, expires=PAST)
    with pytest.raises(ValueError) as caught:
        inference_key(path)
    message = str(caught.value)
    assert "token_expiration_min" in message
    assert "curl -X POST 'http://127.0.0.1:8081/token?type=inference'" in message
    assert "Authorization: Bearer api-key" in message


def test_an_expired_tsvllm_key_names_tsvllm_key_new(tmp_path):
    path = tmp_path / "key_file.json"
    path.write_text(json.dumps({"inference": {"key": "k", "expiration time": PAST}}))
    with pytest.raises(ValueError, match=f"tsvllm key --new --file {path}"):
        inference_key(path)


def test_no_file_or_no_inference_key_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="tsvllm key --new"):
        inference_key(tmp_path / "missing.json")
    (tmp_path / "named.json").write_text(json.dumps({"keys": {"a": "k"}}))
    with pytest.raises(ValueError, match='no "inference"'):
        inference_key(tmp_path / "named.json")


def test_renewing_replaces_the_inference_key_keeps_named_ones_and_drops_torchserves(tmp_path):
    path = tmp_path / "key_file.json"
    _torchserve_file(path, expires=PAST)
    path.write_text(json.dumps({**json.loads(path.read_text()), "keys": {"team-a": "k-a"}}))
    path.chmod(0o644)
    key = renew_inference_key(path)
    assert json.loads(path.read_text()) == {"inference": {"key": key}, "keys": {"team-a": "k-a"}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key_file.json"]  # no temp file left
    assert renew_inference_key(tmp_path / "new.json") == inference_key(tmp_path / "new.json")


def test_a_running_server_takes_a_renewed_key_and_refuses_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "key_file.json"
    old = write_key_file(path)
    keys = ApiKeys.from_file(path)
    new = renew_inference_key(path)
    monkeypatch.setattr(ApiKeys, "RELOAD_CHECK_S", 0.0)
    assert keys.check(_bearer(new)) == "inference"
    with pytest.raises(Unauthorized, match="incorrect"):
        keys.check(_bearer(old))


def test_tsvllm_key_prints_the_current_key(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TSVLLM_API_KEY_FILE", raising=False)
    assert tsvllm(["key"]) == 1
    assert "tsvllm key --new" in capsys.readouterr().err
    assert tsvllm(["key", "--new"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == inference_key(tmp_path / "key_file.json")
    assert tsvllm(["key"]) == 0
    assert capsys.readouterr().out.strip() == printed
    other = tmp_path / "other.json"
    key = write_key_file(other)
    monkeypatch.setenv("TSVLLM_API_KEY_FILE", str(other))
    assert tsvllm(["key"]) == 0
    assert capsys.readouterr().out.strip() == key
    assert tsvllm(["key", "--file", "key_file.json"]) == 0
    assert capsys.readouterr().out.strip() == printed


def test_tsvllm_key_on_an_expired_torchserve_key_exits_1_with_the_fix(tmp_path, capsys):
    path = tmp_path / "key_file.json"
    _torchserve_file(path, expires=PAST)
    assert tsvllm(["key", "--file", str(path)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert "token?type=inference" in out.err
