"""SecretsGuard: API keys, tokens, JWTs and PEM private keys.

Detectors (category → what):

* ``secret.openai`` - ``sk-...``, ``sk-proj-...``, ``sk-svcacct-...`` (20+ random-looking
  characters); ``secret.anthropic`` - ``sk-ant-...``;
* ``secret.aws`` - AWS access key ids ``AKIA``/``ASIA``/``ABIA``/``ACCA`` + 16 characters;
* ``secret.github`` - ``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_`` tokens, ``github_pat_...``;
* ``secret.slack`` - ``xoxa-``/``xoxb-``/``xoxp-``/``xoxr-`` tokens;
* ``secret.google`` - ``AIza`` + 35 characters;
* ``secret.jwt`` - three base64url parts whose header decodes to a JSON object with ``alg``;
* ``secret.private_key`` - a PEM ``-----BEGIN ... PRIVATE KEY-----`` block, up to its END line
  (or to the end of the text when the END line is missing);
* ``secret.generic`` - ``api_key=...``, ``"client_secret": "..."``, ``password: ...``,
  ``Authorization: Bearer ...``: an assignment to a secret-sounding name whose value looks
  random (16+ characters, letters *and* digits, Shannon entropy >= 3.2 bits/character).
  Only the value is redacted. ``password = getpass()`` or ``token = os.environ[...]`` are not.

Provider keys are matched by their documented prefixes, so a well-formed *example* key (such
as AWS's ``AKIAIOSFODNN7EXAMPLE``) is flagged too: the guard cannot tell examples from keys.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from tsvllm.guards.base import Action, Finding, RuleGuard, Stage

__all__ = ["SecretsGuard", "looks_random", "shannon_entropy"]

SECRET_KINDS = (
    "openai",
    "aws",
    "github",
    "slack",
    "google",
    "jwt",
    "private_key",
    "generic",
)

_OPENAI = r"(?<![\w-])sk-(?P<body>(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,300})(?![\w-])"
_AWS = r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])"
_GITHUB = (
    r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"
    r"(?![A-Za-z0-9_])"
)
_GITHUB_PREFIXES = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")
_SLACK = r"(?<![A-Za-z0-9-])xox[abpr]-[A-Za-z0-9-]{10,250}(?![A-Za-z0-9-])"
_GOOGLE = r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"
_JWT = r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"
_PEM_BEGIN = r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----"
_PEM_END = r"-----END (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----"
# Generic assignments: an identifier ending in one of these names (``OPENAI_API_KEY``,
# ``db_password``, ``x-api-key``), then ``=``/``:``/``=>``/``:=``, then the value.
_GENERIC_NAMES = (
    "api_key",
    "apikey",
    "api_secret",
    "secret_key",
    "client_secret",
    "access_key",
    "access_token",
    "auth_token",
    "refresh_token",
    "bearer_token",
    "private_key",
    "private_token",
    "secret",
    "token",
    "password",
    "passwd",
    "pwd",
    "credential",
    "credentials",
)
_GENERIC_TRIGGERS = ("key", "secret", "token", "passw", "pwd", "credential")
_ASSIGN = (
    r"[\"']?\s*(?::=|=>|[:=])\s*"
    r"(?:(?P<q>[\"'])(?P<qval>[^\"'\s]{12,300})(?P=q)|(?P<val>[A-Za-z0-9_\-+/=.~]{16,300}))"
)
_BEARER = r"(?i:bearer)\s+(?P<bearer>[A-Za-z0-9_\-.=+/~]{20,2000})"


def _ident_char(c: str) -> bool:
    return c.isalnum() or c == "_" or c == "-"


_PEM = "secret.private_key"

LABELS = {
    "openai": "[REDACTED:API_KEY]",
    "anthropic": "[REDACTED:API_KEY]",
    "aws": "[REDACTED:API_KEY]",
    "github": "[REDACTED:API_KEY]",
    "slack": "[REDACTED:API_KEY]",
    "google": "[REDACTED:API_KEY]",
    "jwt": "[REDACTED:JWT]",
    "private_key": "[REDACTED:PRIVATE_KEY]",
    "generic": "[REDACTED:SECRET]",
}


def shannon_entropy(s: str) -> float:
    """Shannon entropy of ``s`` in bits per character (0.0 for the empty string)."""
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def looks_random(value: str, *, min_len: int = 16, min_entropy: float = 3.2) -> bool:
    """Heuristic: a credential-like string (long, letters and digits, high entropy)."""
    if len(value) < min_len:
        return False
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    return has_digit and has_alpha and shannon_entropy(value) >= min_entropy


def _b64url_json(part: str) -> object:
    padded = part + "=" * (-len(part) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded)
        return json.loads(raw)
    except (binascii.Error, ValueError):
        return None


class SecretsGuard(RuleGuard):
    """Credentials: ``secret.openai``, ``secret.aws``, ``secret.github``, ``secret.jwt``, ...

    ``kinds`` selects the detectors: ``openai`` (also covers ``sk-ant-`` Anthropic keys),
    ``aws``, ``github``, ``slack``, ``google``, ``jwt``, ``private_key``, ``generic``.
    Redaction labels: ``[REDACTED:API_KEY]``, ``[REDACTED:JWT]``, ``[REDACTED:PRIVATE_KEY]``,
    ``[REDACTED:SECRET]`` (generic assignments: the value only).

    In a stream, a PEM block is longer than the scanner's window: once its BEGIN line has
    been redacted, the scanner keeps redacting until the END line (:meth:`find_close`).
    """

    name = "secrets"

    def __init__(
        self,
        *,
        mode: Action | str = Action.REDACT,
        stages: Iterable[Stage | str] | None = None,
        kinds: Iterable[str] = SECRET_KINDS,
        min_entropy: float = 3.2,
        name: str | None = None,
    ) -> None:
        super().__init__(mode=mode, stages=stages, name=name)
        kinds = tuple(dict.fromkeys(kinds))
        unknown = [k for k in kinds if k not in SECRET_KINDS]
        if unknown:
            raise ValueError(
                f"unknown secret kinds {unknown}; expected some of {list(SECRET_KINDS)}"
            )
        self.kinds = kinds
        self.min_entropy = float(min_entropy)
        self._openai = re.compile(_OPENAI)
        self._aws = re.compile(_AWS)
        self._github = re.compile(_GITHUB)
        self._slack = re.compile(_SLACK)
        self._google = re.compile(_GOOGLE)
        self._jwt = re.compile(_JWT)
        self._pem_begin = re.compile(_PEM_BEGIN)
        self._pem_end = re.compile(_PEM_END)
        self._assign = re.compile(_ASSIGN)
        self._token_chars = re.compile(r"[A-Za-z0-9_-]*")
        self._value_chars = re.compile(r"[A-Za-z0-9_\-+/=.~]*")
        self._bearer = re.compile(_BEARER)

    def find(self, text: str) -> list[Finding]:
        """All credential spans in ``text``.

        A token that runs to the very end of ``text`` may continue in text not seen yet (a
        stream): it is reported ``open`` (see :meth:`find_close`).
        """
        n = len(text)
        return [
            replace(f, open=True) if f.end == n and f.category != _PEM else f
            for f in self._find(text)
        ]

    def _find(self, text: str) -> list[Finding]:
        out: list[Finding] = []
        kinds = self.kinds
        if "openai" in kinds and "sk-" in text:
            for m in self._openai.finditer(text):
                body = m.group("body")
                if body.startswith("ant-"):
                    kind, body = "anthropic", body[4:]
                else:
                    kind = "openai"
                if looks_random(body, min_len=20, min_entropy=self.min_entropy):
                    out.append(self._finding(m.start(), m.end(), kind))
        if "aws" in kinds and any(p in text for p in ("AKIA", "ASIA", "ABIA", "ACCA")):
            out += [self._finding(*m.span(), "aws") for m in self._aws.finditer(text)]
        if "github" in kinds and any(p in text for p in _GITHUB_PREFIXES):
            out += [self._finding(*m.span(), "github") for m in self._github.finditer(text)]
        if "slack" in kinds and "xox" in text:
            for m in self._slack.finditer(text):
                if any(c.isdigit() for c in m.group()):
                    out.append(self._finding(*m.span(), "slack"))
        if "google" in kinds and "AIza" in text:
            out += [self._finding(*m.span(), "google") for m in self._google.finditer(text)]
        if "jwt" in kinds and "eyJ" in text:
            for m in self._jwt.finditer(text):
                header = _b64url_json(m.group().split(".", 1)[0])
                if isinstance(header, dict) and "alg" in header:
                    out.append(self._finding(*m.span(), "jwt"))
        if "private_key" in kinds and "PRIVATE KEY" in text:
            out += self._private_keys(text)
        if "generic" in kinds:
            out += self._generics(text)
        return out

    def find_close(self, text: str, category: str, start: int) -> int | None:
        """Where an open finding ends: a PEM block after its END line (which may have begun
        just before ``start``), a token at the first character that cannot be part of it;
        ``None`` while it runs to the end of ``text``."""
        if category == _PEM:
            m = self._pem_end.search(text, max(0, start - 40))
            while m is not None and m.end() <= start:  # an earlier block's END line
                m = self._pem_end.search(text, m.end())
            return m.end() if m else None
        chars = self._value_chars if category == "secret.generic" else self._token_chars
        m = chars.match(text, start)
        end = m.end() if m else start
        return None if end == len(text) else end

    @staticmethod
    def _finding(start: int, end: int, kind: str) -> Finding:
        return Finding(start, end, f"secret.{kind}", LABELS[kind])

    def _private_keys(self, text: str) -> list[Finding]:
        out = []
        pos = 0
        while True:
            m = self._pem_begin.search(text, pos)
            if m is None:
                return out
            end_m = self._pem_end.search(text, m.end())
            end = end_m.end() if end_m else len(text)
            finding = self._finding(m.start(), end, "private_key")
            out.append(finding if end_m else replace(finding, open=True))  # END not seen yet
            pos = end

    def _generics(self, text: str) -> list[Finding]:
        """Assignments of random-looking values to secret-sounding names, and bearer tokens.

        Scans for the trigger words with ``str.find`` (fast) and matches the assignment right
        after each identifier that contains one, instead of running a regex over the text.
        """
        low = text.lower()
        if len(low) != len(text):  # a few characters lower-case to two; keep offsets
            low = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
        n = len(text)
        out = []
        done: set[int] = set()
        for trigger in _GENERIC_TRIGGERS:
            i = low.find(trigger)
            while i >= 0:
                j = i + len(trigger)
                while j < n and _ident_char(low[j]):
                    j += 1
                if j not in done:
                    done.add(j)
                    k = i
                    while k > 0 and _ident_char(low[k - 1]):
                        k -= 1
                    if low[k:j].replace("-", "_").endswith(_GENERIC_NAMES):
                        m = self._assign.match(text, j)
                        if m is not None:
                            group = "qval" if m.group("qval") is not None else "val"
                            min_len = 12 if group == "qval" else 16
                            if looks_random(
                                m.group(group), min_len=min_len, min_entropy=self.min_entropy
                            ):
                                out.append(self._finding(*m.span(group), "generic"))
                i = low.find(trigger, j)
        i = low.find("bearer")
        while i >= 0:
            m = self._bearer.match(text, i)
            if m is not None and looks_random(m.group("bearer"), min_entropy=self.min_entropy):
                out.append(self._finding(*m.span("bearer"), "generic"))
            i = low.find("bearer", i + 6)
        return out
