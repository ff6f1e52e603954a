"""``/load``, vLLM's server load (``--enable-server-load-tracking``): the requests this
worker serves now when tracking is on; a 404 naming the setting when it is off."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from tests.unit.conftest import make_context, until


def config(**engine):
    return SimpleNamespace(handler=SimpleNamespace(vllm_engine_config=engine))


async def call(handler, route, body=None):
    ctx = make_context(route, request_id=f"req-{route}")
    reply = await handler.handle([{"body": body}], ctx)
    return ctx.get_response_status(0)[0], json.loads(reply[0])


def test_load_counts_the_requests_being_served(handler, engine):
    handler.config = config(enable_server_load_tracking=True)
    engine.delay_s = 0.5

    async def run():
        idle = await call(handler, "load")
        running = [asyncio.ensure_future(call(handler, "v1/completions", {"prompt": "x"}))]
        running.append(asyncio.ensure_future(call(handler, "v1/completions", {"prompt": "y"})))
        await until(lambda: engine.running == 2, what="two requests run")
        busy = await call(handler, "load")
        await asyncio.gather(*running)
        return idle, busy, await call(handler, "load")

    idle, busy, after = asyncio.run(run())
    assert idle == (200, {"server_load": 0})
    assert busy == (200, {"server_load": 2})
    assert after == (200, {"server_load": 0})


def test_load_is_404_naming_the_setting_when_tracking_is_off(handler):
    handler.config = config()
    status, body = asyncio.run(call(handler, "load"))
    assert status == 404
    assert "vllm_engine_config.enable_server_load_tracking: true" in body["error"]["message"]
