"""Example: a handler author's own hooks on top of tsvllm's VLLMHandler.

A cost guard and a per-team quota:

* every request names its team in an ``x-team`` header (any spelling: ``X-Team`` too),
  else 400;
* each team may send :data:`TEAM_REQUESTS_PER_MINUTE` requests per minute to each
  worker; the next one gets 429 ``rate_limit_exceeded`` with ``Retry-After``;
* the output is capped at :data:`MAX_TOKENS_CAP` tokens, whichever field the client
  used (chat's ``max_completion_tokens`` or ``max_tokens``, completions' ``max_tokens``);
* the response reports the team and the cap.

Archive it with ``tsvllm archive CONFIG --handler handlers/example_hooks_handler.py``.
"""

import math
import time
from collections import deque

from tsvllm import BadRequest, ClientError, VLLMHandler

MAX_TOKENS_CAP = 64
#: requests one team may send per minute to one worker (set your own)
TEAM_REQUESTS_PER_MINUTE = 10


class TeamCapHandler(VLLMHandler):
    """Refuses callers without an x-team header, applies the team quota, caps the output.

    (TorchServe takes the one class a handler file defines: helpers stay functions.)
    """

    #: the quota: at most this many requests per team in any window of WINDOW_S seconds
    team_limit = TEAM_REQUESTS_PER_MINUTE
    WINDOW_S = 60.0
    #: above this many teams, those idle for a whole window are forgotten
    MAX_TEAMS = 1024

    def __init__(self):
        super().__init__()
        self.sent = {}  # team -> deque of the times of its requests in the window

    def admit(self, team, *, now=None):
        """0 when ``team`` may send a request now (it is counted), else the seconds until
        it may (a sliding window)."""
        now = time.monotonic() if now is None else now
        if len(self.sent) > self.MAX_TEAMS:
            self.sent = {t: q for t, q in self.sent.items() if now - q[-1] < self.WINDOW_S}
        times = self.sent.setdefault(team, deque())
        while times and now - times[0] >= self.WINDOW_S:
            times.popleft()
        if len(times) >= self.team_limit:
            return times[0] + self.WINDOW_S - now
        times.append(now)
        return 0.0

    async def on_request(self, body, ctx):
        team = ctx.headers.get("x-team")
        if not team:
            raise BadRequest("send an x-team header naming your team", param="x-team")
        asked = ctx.request.max_output_tokens  # a bad value is a 400 naming its field
        wait_s = self.admit(team)
        if wait_s:
            retry = max(1, math.ceil(wait_s))
            raise ClientError(
                429,
                f"team {team!r} sent {self.team_limit} requests in the last minute; "
                f"retry in {retry} s",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry)},
            )
        if asked is None or asked > MAX_TOKENS_CAP:
            ctx.set_max_output_tokens(body, MAX_TOKENS_CAP)
        ctx.metadata["team"] = team
        return body

    async def on_response(self, body, ctx):
        body["x_tsvllm_example"] = {"team": ctx.metadata["team"], "max_tokens_cap": MAX_TOKENS_CAP}
        return body
