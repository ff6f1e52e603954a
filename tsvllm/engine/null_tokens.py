"""What the bench's null engine "generates": which requests of a step get a token, which token,
and how fast (no vLLM here; :mod:`tsvllm.engine.null_executor` adapts it to vLLM's executor).

A request samples a token in the step where its last known token is computed: its prompt's
last chunk, then every decode step. Tokens come from a fixed cycle of real token ids (the
served model's tokenizer encodes :data:`TEXT`), so detokenization does its real work and the
text of a completion is known in advance: :meth:`NullTokens.expected_ids`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence

#: ``distributed_executor_backend`` that selects the null engine (vLLM imports it by name)
EXECUTOR = "tsvllm.engine.null_executor.NullExecutor"
#: environment variable the null engine reads when it starts: steps per second (each step gives
#: every running request one token); unset or 0: no wait
TOKENS_PER_S_ENV = "TSVLLM_NULL_TOKENS_PER_S"

#: the text whose token ids the null engine cycles through (ordinary words: no stop or
#: special token, so ``max_tokens`` decides every length)
TEXT = (
    " The quick brown fox jumps over the lazy dog, and the five boxing wizards jump quickly"
    " while a wise old owl counts the stars above the quiet river."
)


class NullTokens:
    """Sampled token ids per step for the requests a scheduler scheduled.

    ``token_ids``: the cycle every request walks through from its first output token.
    """

    def __init__(self, *, token_ids: Sequence[int]):
        if not token_ids:
            raise ValueError("the null engine needs at least one token id to emit")
        self._cycle = tuple(token_ids)
        self._known: dict[str, int] = {}  # tokens a request has: prompt + sampled
        self._sampled: dict[str, int] = {}

    def expected_ids(self, count: int) -> list[int]:
        """The first ``count`` token ids every request gets."""
        return [self._cycle[i % len(self._cycle)] for i in range(count)]

    def step(
        self,
        *,
        new_prompts: Mapping[str, int],
        computed: Mapping[str, int],
        scheduled: Mapping[str, int],
        finished: Iterable[str],
    ) -> dict[str, list[int]]:
        """Token ids sampled this step, per scheduled request ([] while its prompt is still
        being computed in chunks).

        ``new_prompts``: prompt length of requests scheduled for the first time;
        ``computed``: tokens already computed per scheduled request (before this step);
        ``scheduled``: tokens computed in this step; ``finished``: requests the scheduler
        has dropped since the last step.
        """
        for req_id in finished:
            self._known.pop(req_id, None)
            self._sampled.pop(req_id, None)
        for req_id, prompt_len in new_prompts.items():
            self._known[req_id] = prompt_len
            self._sampled[req_id] = 0
        out: dict[str, list[int]] = {}
        for req_id, count in scheduled.items():
            if computed[req_id] + count < self._known[req_id]:
                out[req_id] = []  # a prompt chunk: no token yet
                continue
            token = self._cycle[self._sampled[req_id] % len(self._cycle)]
            self._sampled[req_id] += 1
            self._known[req_id] += 1
            out[req_id] = [token]
        return out

    @property
    def running(self) -> int:
        """Requests being tracked (scheduled and not yet reported finished)."""
        return len(self._known)


class Pace:
    """Spaces engine steps ``1 / tokens_per_s`` apart (each step gives every running request
    one token), like a device decoding at that rate; 0 means no wait at all.

    ``clock`` and ``sleep`` are for tests.
    """

    def __init__(
        self,
        *,
        tokens_per_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if tokens_per_s < 0:
            raise ValueError(
                f"null tokens per second must be 0 (no wait) or more, not {tokens_per_s}"
            )
        self._interval = 1.0 / tokens_per_s if tokens_per_s else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = 0.0

    def wait(self) -> None:
        """Return when the next step is due."""
        if not self._interval:
            return
        now = self._clock()
        if self._next > now:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self._interval
