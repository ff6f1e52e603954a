"""API-key authentication in the handler, answered the way OpenAI answers it (401).

TorchServe 0.12's own token authorization answers a missing or wrong key with
``400 InvalidKeyException`` from the Java frontend, which no handler can change; OpenAI
clients expect ``401``. So the servers tsvllm starts (``tsvllm launch``, the container
entrypoint, the test servers) turn TorchServe's token auth off and let the handler check
the key instead:

* the key lives in ``key_file.json`` (mode 0600, TorchServe's own format, so tools that
  read ``["inference"]["key"]`` keep working); :func:`write_key_file` makes it;
* the worker learns the file's path from ``TSVLLM_API_KEY_FILE`` (TorchServe's workers
  inherit the frontend's environment) and :class:`ApiKey` checks every request's
  ``Authorization: Bearer <key>`` in constant time;
* the management API, which the handler cannot guard, moves to a Unix socket in the
  server's private work directory (see :func:`tsvllm.host.torchserve.ts_config_text`).

A TorchServe you start yourself without ``TSVLLM_API_KEY_FILE`` keeps TorchServe's token
auth (and its 400), and the handler checks nothing.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from tsvllm.errors import Unauthorized

KEY_FILE_ENV = "TSVLLM_API_KEY_FILE"


def write_key_file(path: str | Path) -> str:
    """Create ``path`` (0600) holding a new random inference key; return the key."""
    key = secrets.token_urlsafe(24)
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"inference": {"key": key}}, fh)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file
    return key


class ApiKey:
    """Checks ``Authorization: Bearer <key>`` against one inference key."""

    def __init__(self, key: str):
        if not key:
            raise ValueError("the API key is empty")
        self._key = key.encode()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ApiKey | None:
        """The key named by ``TSVLLM_API_KEY_FILE``, or None when it is unset."""
        path = environ.get(KEY_FILE_ENV)
        if not path:
            return None
        try:
            return cls(json.loads(Path(path).read_text())["inference"]["key"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # refuse to serve unauthenticated when auth was asked for
            raise RuntimeError(f"{KEY_FILE_ENV}={path}: cannot read the key ({exc})") from exc

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise :class:`Unauthorized` unless ``headers`` carry the key."""
        value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        scheme, _, given = value.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise Unauthorized(
                "missing API key: send the header 'Authorization: Bearer <key>' "
                "(the key is in the server's key_file.json)"
            )
        if not hmac.compare_digest(given.strip().encode(), self._key):
            raise Unauthorized("incorrect API key provided")
