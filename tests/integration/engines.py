"""A real vLLM engine behind tsvllm's adapter, on the tiny model, for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tsvllm.engine.vllm_engine import VllmEngine, engine_argv, parse_engine_args


@contextlib.contextmanager
def running_engine(
    model: Path, *, engine_args: dict[str, Any]
) -> Iterator[tuple[VllmEngine, asyncio.AbstractEventLoop]]:
    """``(engine, its event loop)``, serving ``model`` as "tiny"; shut down on exit."""
    with pytest.MonkeyPatch.context() as mp:  # for the engine's lifetime, then restored
        if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        args = parse_engine_args(
            engine_argv(model=str(model), engine_args=engine_args, served_model_name=["tiny"])
        )
        loop = asyncio.new_event_loop()
        eng = loop.run_until_complete(VllmEngine.start(args))
        try:
            yield eng, loop
        finally:
            # inside the loop, so vLLM closes its sockets now (else zmq hangs at exit)
            loop.run_until_complete(_in_loop(eng.shutdown))
            loop.close()


async def _in_loop(fn):
    fn()
    await asyncio.sleep(0)
