"""VLLM_ARGS reach vLLM's own argument parser before anything starts."""

from __future__ import annotations

import pytest

from tsvllm.host import entrypoint as ep

ENV = {"TSVLLM_DEVICE": "cpu"}


def test_vllm_args_accepted_by_vllm():
    cfg = ep.model_config({**ENV, "VLLM_ARGS": "--max-model-len 512 --enforce-eager"}, model="/m")
    ep.check_engine_args(cfg)


@pytest.mark.parametrize(
    ("args", "named"),
    [("--max-model-len 512 --no-such-flag 3", "no-such-flag"), ("--dtype float7", "float7")],
)
def test_vllm_rejects_bad_args_and_the_message_names_them(args, named):
    cfg = ep.model_config({**ENV, "VLLM_ARGS": args}, model="/m")
    with pytest.raises(ep.EntrypointError, match=rf"VLLM_ARGS: vLLM rejected .*{named}"):
        ep.check_engine_args(cfg)
