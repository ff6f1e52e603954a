"""The built-in rule guards, in one place.

* ``PIIGuard`` - e-mail, phone, payment card (Luhn-checked), US SSN, IPv4/IPv6 (``pii.*``);
  default ``mode="redact"``, all stages.
* ``SecretsGuard`` - API keys, tokens, JWTs, PEM private keys (``secret.*``); redact, all
  stages.
* ``DenyListGuard(terms)`` - listed words and phrases, evasion-resistant (``denylist``);
  block, all stages.
* ``InjectionGuard`` - prompt-injection heuristics (``injection.*``); block, stages
  ``input`` and ``context``.

All are :class:`~tsvllm.guards.base.RuleGuard` subclasses: ``mode="redact"|"block"``,
``stages=[...]``, synchronous ``scan(text)`` / ``find(text)``, regular expressions compiled
once per instance. Each module's docstring lists exactly what its detectors match.
"""

from tsvllm.guards.credentials import SecretsGuard, looks_random, shannon_entropy
from tsvllm.guards.denylist import DenyListGuard
from tsvllm.guards.injection import InjectionGuard
from tsvllm.guards.pii import PIIGuard, luhn_valid

__all__ = [
    "DenyListGuard",
    "InjectionGuard",
    "PIIGuard",
    "SecretsGuard",
    "looks_random",
    "luhn_valid",
    "shannon_entropy",
]
