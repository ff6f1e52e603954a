"""Example: a handler author's own hooks on top of tsvllm's VLLMHandler.

It caps ``max_tokens`` per request (a cost guard), tags the request with the caller's
``x-team`` header, and reports the tag and the cap in the response. Archive it with
``tsvllm archive CONFIG --handler handlers/example_hooks_handler.py``.
"""

from tsvllm import VLLMHandler
from tsvllm.errors import BadRequest

MAX_TOKENS_CAP = 64


class TeamCapHandler(VLLMHandler):
    """Caps max_tokens, refuses callers without an x-team header, echoes the tag."""

    async def on_request(self, body, ctx):
        team = ctx.headers.get("x-team")
        if not team:
            raise BadRequest("send an x-team header naming your team", param="x-team")
        ctx.metadata["team"] = team
        body["max_tokens"] = min(int(body.get("max_tokens") or MAX_TOKENS_CAP), MAX_TOKENS_CAP)
        return body

    async def on_response(self, body, ctx):
        body["x_tsvllm_example"] = {"team": ctx.metadata["team"], "max_tokens_cap": MAX_TOKENS_CAP}
        return body
