"""Guards for the three places text enters or leaves the model.

* ``Stage.INPUT`` - the user's messages; ``Stage.CONTEXT`` - retrieved documents and tool
  results (indirect prompt injection); ``Stage.OUTPUT`` - the model's response, whole or
  streamed (:meth:`GuardChain.stream_scanner`).

A :class:`GuardChain` runs guards in order; each returns a :class:`Decision` (ALLOW, REDACT
with the redacted text, or BLOCK). Built in:

* rule guards (synchronous, microseconds per KB): :class:`PIIGuard`, :class:`SecretsGuard`,
  :class:`DenyListGuard`, :class:`InjectionGuard`;
* :class:`LlamaGuardJudge`, an LLM judge in the Llama Guard 3 format, reached through
  :func:`engine_completer` (the in-process engine) or :func:`openai_completer` (a server).

Every constructor takes plain keyword arguments, so a typed config maps onto it one to one::

    chain = GuardChain(
        [
            InjectionGuard(stages=["input", "context"]),
            PIIGuard(mode="redact", kinds=["email", "phone", "card"]),
            SecretsGuard(mode="redact"),
            DenyListGuard(["project nightingale"], mode="block"),
            LlamaGuardJudge(engine_completer(engine, model="llama-guard"), timeout=5.0),
        ],
        fail_closed=True,
    )
    decision = await chain.check(user_text, stage=Stage.INPUT)

Importing this package does no work: regular expressions compile when a guard is built, and
:mod:`openai` is imported only by :func:`openai_completer`.
"""

from tsvllm.guards.base import (
    Action,
    Decision,
    Finding,
    Guard,
    RuleGuard,
    Stage,
    apply_redactions,
)
from tsvllm.guards.chain import GuardChain, StreamScanner, StreamVerdict
from tsvllm.guards.judge import (
    JudgeReplyError,
    JudgeVerdict,
    LlamaGuardJudge,
    build_prompt,
    engine_completer,
    openai_completer,
    parse_reply,
)
from tsvllm.guards.rules import DenyListGuard, InjectionGuard, PIIGuard, SecretsGuard

__all__ = [
    "Action",
    "Decision",
    "DenyListGuard",
    "Finding",
    "Guard",
    "GuardChain",
    "InjectionGuard",
    "JudgeReplyError",
    "JudgeVerdict",
    "LlamaGuardJudge",
    "PIIGuard",
    "RuleGuard",
    "SecretsGuard",
    "Stage",
    "StreamScanner",
    "StreamVerdict",
    "apply_redactions",
    "build_prompt",
    "engine_completer",
    "openai_completer",
    "parse_reply",
]
