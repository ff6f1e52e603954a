"""API-key authentication in the handler, answered the way OpenAI answers it (401).

TorchServe 0.12's own token authorization answers a missing or wrong key with
``400 InvalidKeyException`` from the Java frontend, which no handler can change; OpenAI
clients expect ``401``. So the servers tsvllm starts (``tsvllm launch``, the container
entrypoint, the test servers) turn TorchServe's token auth off and let the handler check
the key instead:

* the key lives in ``key_file.json`` (mode 0600, TorchServe's own format, so tools that
  read ``["inference"]["key"]`` keep working); :func:`write_key_file` makes it; named keys
  (``"keys": {"team-a": ...}``) may be added to it, and removed to revoke them;
* the worker learns the file's path from ``TSVLLM_API_KEY_FILE`` (TorchServe's workers
  inherit the frontend's environment) and :class:`ApiKeys` checks every request's
  ``Authorization: Bearer <key>`` in constant time and names the key (for the audit log
  and metrics);
* the management API, which the handler cannot guard, moves to a Unix socket in the
  server's private work directory (see :func:`tsvllm.host.torchserve.ts_config_text`).

A TorchServe you start yourself without ``TSVLLM_API_KEY_FILE`` keeps TorchServe's token
auth (and its 400), and the handler checks nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

from tsvllm.errors import Unauthorized
from tsvllm.headers import Headers

KEY_FILE_ENV = "TSVLLM_API_KEY_FILE"

logger = logging.getLogger(__name__)


def write_key_file(path: str | Path) -> str:
    """Create ``path`` (0600) holding a new random inference key; return the key."""
    key = secrets.token_urlsafe(24)
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"inference": {"key": key}}, fh)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file
    return key


class ApiKeys:
    """Checks ``Authorization: Bearer <key>`` against named keys; says whose key it was.

    The keys file holds TorchServe's ``{"inference": {"key": ...}}`` (named
    ``inference``) and/or named keys ``{"keys": {"team-a": "...", "team-b": "..."}}``.
    Edit the file to add or revoke a key: it is read again when it changes (looked at no
    more than once per :data:`RELOAD_CHECK_S`), without a restart. A file that cannot be
    read any more refuses every request (a broken edit must not keep a revoked key valid).
    """

    RELOAD_CHECK_S = 1.0

    def __init__(self, keys: Mapping[str, str], *, path: Path | None = None):
        self._keys = _encoded(keys)
        self._path = path
        self._stamp = _stamp(path) if path is not None else None
        self._checked = time.monotonic()
        self._broken: str | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> ApiKeys:
        path = Path(path)
        return cls(_read_keys(path), path=path)

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
            raise Unauthorized("incorrect API key provided")
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
            self._keys = _encoded(_read_keys(self._path))
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


def _read_keys(path: Path) -> dict[str, str]:
    """``{name: key}`` from a keys file; ValueError naming what is wrong."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("the keys file must hold a JSON object")
    keys: dict[str, str] = {}
    inference = data.get("inference")
    if isinstance(inference, dict) and inference.get("key"):
        keys["inference"] = str(inference["key"])
    named = data.get("keys", {})
    if not isinstance(named, dict):
        raise ValueError('"keys" must map names to keys')
    for name, key in named.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"key {name!r} is empty")
        keys[str(name)] = key
    if not keys:
        raise ValueError('no key in the file: set "inference": {"key": ...} or "keys": {...}')
    return keys


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
