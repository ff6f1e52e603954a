"""Example: a handler author's own hooks on top of tsvllm's VLLMHandler.

It caps ``max_tokens`` per request (a cost guard), tags the request with the caller's
``x-team`` header, and reports the tag and the cap in the response. Archive it with
``tsvllm archive CONFIG --handler handlers/example_hooks_handler.py``.
"""

from tsvllm import VLLMHandler
from tsvllm.errors import BadRequest

MAX_TOKENS_CAP = 64


def max_tokens(value):
    """The requested max_tokens (the cap when absent); BadRequest (400) when it is not a
    positive integer (a digit string such as "12" is accepted, as vLLM accepts it)."""
    if value is None:
        return MAX_TOKENS_CAP
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(
            f"max_tokens must be a positive integer, not {value!r}; "
            f"send an integer >= 1 (values above {MAX_TOKENS_CAP} are capped) or leave it out",
            param="max_tokens",
        )
    return value


class TeamCapHandler(VLLMHandler):
    """Caps max_tokens, refuses callers without an x-team header, echoes the tag."""

    async def on_request(self, body, ctx):
        team = ctx.headers.get("x-team")
        if not team:
            raise BadRequest("send an x-team header naming your team", param="x-team")
        ctx.metadata["team"] = team
        body["max_tokens"] = min(max_tokens(body.get("max_tokens")), MAX_TOKENS_CAP)
        return body

    async def on_response(self, body, ctx):
        body["x_tsvllm_example"] = {"team": ctx.metadata["team"], "max_tokens_cap": MAX_TOKENS_CAP}
        return body
