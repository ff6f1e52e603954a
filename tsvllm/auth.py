"""API-key authentication in the handler, answered the way OpenAI answers it (401).

TorchServe 0.12's own token authorization answers a missing or wrong key with
``400 InvalidKeyException`` from the Java frontend, which no handler can change; OpenAI
clients expect ``401``. So the servers tsvllm starts (``tsvllm launch``, the container
entrypoint, the test servers) turn TorchServe's token auth off and let the handler check
the key instead:

* the key lives in ``key_file.json`` (mode 0600, TorchServe's own format, so tools that
  read ``["inference"]["key"]`` keep working); :func:`write_key_file` makes it,
  :func:`renew_inference_key` replaces it (``tsvllm key --new``); named keys
  (``"keys": {"team-a": ...}``) may be added to it, and removed to revoke them;
* a key has no lifetime unless its entry says so, in TorchServe's own spelling
  (``{"key": ..., "expiration time": "2027-01-01T00:00:00Z"}``); an expired key gets a
  401 saying so and how to get a new one;
* the worker learns the file's path from ``TSVLLM_API_KEY_FILE`` (TorchServe's workers
  inherit the frontend's environment) and :class:`ApiKeys` checks every request's
  ``Authorization: Bearer <key>`` in constant time and names the key (for the audit log
  and metrics);
* the management API, which the handler cannot guard, moves to a Unix socket in the
  server's private work directory (see :func:`tsvllm.host.torchserve.ts_config_text`).

A TorchServe you start yourself without ``TSVLLM_API_KEY_FILE`` keeps TorchServe's token
auth (and its 400; its keys expire after ``token_expiration_min``, 60 by default), and the
handler checks nothing. :func:`inference_key` (``tsvllm key``) reads either file and says
how to get a new key when the one there has expired.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from tsvllm.errors import Unauthorized
from tsvllm.headers import Headers

KEY_FILE_ENV = "TSVLLM_API_KEY_FILE"

#: a key entry's end of life, as TorchServe's key_file.json spells it (an ISO 8601 instant)
EXPIRES = "expiration time"

#: what every refusal of a wrong or expired key tells the caller to do
_GET_A_KEY = "the server's current inference key is printed by `tsvllm key` on the server"

logger = logging.getLogger(__name__)


def write_key_file(path: str | Path) -> str:
    """Create ``path`` (0600) holding a new random inference key; return the key."""
    key = secrets.token_urlsafe(24)
    _write_private(Path(path), {"inference": {"key": key}})
    return key


def renew_inference_key(path: str | Path) -> str:
    """Give the keys file ``path`` a new random inference key (no lifetime); return it.

    Named keys (``"keys"``) stay; anything else goes (TorchServe's ``management`` and ``API``
    keys mean nothing to the handler). A missing file is created. The file is replaced in
    one step (0600), so a server reading it (:class:`ApiKeys`) never sees half of it and
    takes the new key, and refuses the old one, within :attr:`ApiKeys.RELOAD_CHECK_S`.
    """
    path = Path(path)
    data: dict = {}
    if path.exists():
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the keys file must hold a JSON object")
    key = secrets.token_urlsafe(24)
    renewed: dict = {"inference": {"key": key}}
    if "keys" in data:
        renewed["keys"] = data["keys"]
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    _write_private(tmp, renewed)
    os.replace(tmp, path)
    return key


def _write_private(path: Path, data: dict) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file


def inference_key(path: str | Path, *, now: datetime | None = None) -> str:
    """The inference key in ``path`` (tsvllm's keys file or TorchServe's key_file.json).

    ValueError, naming how to get a new key, when there is none or it has expired: for
    TorchServe's own file (its token auth is on; its keys expire after
    ``token_expiration_min``) TorchServe's token API, else ``tsvllm key --new``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        entry = data["inference"]
        key = entry["key"]
    except OSError as exc:
        raise ValueError(
            f"no keys file at {path} ({exc.strerror}); start the server first, or write a "
            f"key: tsvllm key --new --file {path}"
        ) from None
    except (ValueError, KeyError, TypeError):
        raise ValueError(f'{path} holds no "inference": {{"key": ...}}') from None
    expires = _expiry(entry, name="inference")
    if expires is None or (now or datetime.now(UTC)) < expires:
        return str(key)
    if isinstance(data.get("API"), dict) and data["API"].get("key"):
        raise ValueError(
            f"the inference key in {path} expired at {expires.isoformat()} (TorchServe's "
            "token auth: token_expiration_min, 60 minutes by default). Get a new one from "
            "TorchServe's token API (it rewrites the file), then run `tsvllm key` again:\n"
            "  curl -X POST 'http://127.0.0.1:8081/token?type=inference' "
            f"-H 'Authorization: Bearer {data['API']['key']}'\n"
            "(your management address if not 127.0.0.1:8081)"
        )
    raise ValueError(
        f"the inference key in {path} expired at {expires.isoformat()}; write a new one: "
        f"tsvllm key --new --file {path} (a running server takes it within a second)"
    )


class ApiKeys:
    """Checks ``Authorization: Bearer <key>`` against named keys; says whose key it was.

    The keys file holds TorchServe's ``{"inference": {"key": ...}}`` (named
    ``inference``) and/or named keys ``{"keys": {"team-a": "...", "team-b": "..."}}``; a
    named key may be ``{"key": ..., "expiration time": ...}`` too, and any key with an
    ``expiration time`` is refused from then on, with a 401 that says it expired.
    Edit the file to add or revoke a key: it is read again when it changes (looked at no
    more than once per :data:`RELOAD_CHECK_S`), without a restart. A file that cannot be
    read any more refuses every request (a broken edit must not keep a revoked key valid).
    """

    RELOAD_CHECK_S = 1.0

    def __init__(
        self,
        keys: Mapping[str, str],
        *,
        path: Path | None = None,
        expires: Mapping[str, datetime] | None = None,
    ):
        self._keys = _encoded(keys)
        self._expires = dict(expires or {})
        self._path = path
        self._stamp = _stamp(path) if path is not None else None
        self._checked = time.monotonic()
        self._broken: str | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> ApiKeys:
        path = Path(path)
        keys, expires = _read_keys(path)
        return cls(keys, path=path, expires=expires)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ApiKeys | None:
        """The keys named by ``TSVLLM_API_KEY_FILE``, or None when it is unset."""
        path = environ.get(KEY_FILE_ENV)
        if not path:
            return None
        try:
            return cls.from_file(path)
        except (OSError, ValueError) as exc:
            # refuse to serve unauthenticated when auth was asked for
            raise RuntimeError(f"{KEY_FILE_ENV}={path}: cannot read the keys ({exc})") from exc

    def check(self, headers: Mapping[str, str]) -> str:
        """The name of the key ``headers`` carry; raise :class:`Unauthorized` otherwise."""
        self._reload_if_changed()
        given = _presented_key(headers)
        if not given:
            raise Unauthorized(
                "missing API key: send the header 'Authorization: Bearer <key>' (or "
                "'x-api-key: <key>') with the key from the server's key_file.json"
            )
        if self._broken is not None:
            raise Unauthorized(f"the server cannot read its keys file ({self._broken})")
        given_bytes = given.encode()
        found = None
        for name, key in self._keys.items():  # compare with every key: constant time
            if hmac.compare_digest(given_bytes, key):
                found = name
        if found is None:
            raise Unauthorized(f"incorrect API key provided; {_GET_A_KEY}")
        expires = self._expires.get(found)
        if expires is not None and datetime.now(UTC) >= expires:
            raise Unauthorized(
                f"the API key {found!r} expired at {expires.isoformat()}; ask the server's "
                f"operator for a new one ({_GET_A_KEY})"
            )
        return found

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if self._path is None or now - self._checked < self.RELOAD_CHECK_S:
            return
        self._checked = now
        stamp = _stamp(self._path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            keys, expires = _read_keys(self._path)
            self._keys, self._expires = _encoded(keys), expires
            self._broken = None
        except (OSError, ValueError) as exc:
            self._broken = type(exc).__name__
            logger.error("the keys file %s cannot be read: refusing every request", self._path)


def _presented_key(headers: Mapping[str, str]) -> str:
    """The key a request carries: ``Authorization: Bearer <key>`` (OpenAI's clients), else
    ``x-api-key: <key>`` (Anthropic's clients); empty when neither. Header names are
    case-insensitive, and so is the scheme."""
    headers = headers if isinstance(headers, Headers) else Headers(headers)
    scheme, _, given = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        return given.strip()
    return headers.get("x-api-key", "").strip()


def _read_keys(path: Path) -> tuple[dict[str, str], dict[str, datetime]]:
    """``({name: key}, {name: expiry})`` from a keys file; ValueError naming what is wrong."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("the keys file must hold a JSON object")
    keys: dict[str, str] = {}
    expires: dict[str, datetime] = {}
    entries: dict[str, object] = {}
    inference = data.get("inference")
    if isinstance(inference, dict) and inference.get("key"):
        entries["inference"] = inference
    named = data.get("keys", {})
    if not isinstance(named, dict):
        raise ValueError('"keys" must map names to keys')
    entries.update({str(name): entry for name, entry in named.items()})
    for name, entry in entries.items():
        key = entry.get("key") if isinstance(entry, dict) else entry
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"key {name!r} is empty")
        keys[name] = key
        expiry = _expiry(entry, name=name) if isinstance(entry, dict) else None
        if expiry is not None:
            expires[name] = expiry
    if not keys:
        raise ValueError('no key in the file: set "inference": {"key": ...} or "keys": {...}')
    return keys, expires


def _expiry(entry: Mapping, *, name: str) -> datetime | None:
    """The entry's ``expiration time`` (timezone-aware; UTC when it names none), or None."""
    value = entry.get(EXPIRES)
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"key {name!r}: {EXPIRES} {value!r} is not an ISO 8601 time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _encoded(keys: Mapping[str, str]) -> dict[str, bytes]:
    if not keys or any(not k for k in keys.values()):
        raise ValueError("an API key is empty")
    return {name: key.encode() for name, key in keys.items()}


def _stamp(path: Path) -> tuple[float, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
