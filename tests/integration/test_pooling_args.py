"""A pooling model's settings pass our config and vLLM's own parser: ``runner: pooling`` in
the shipped MiniLM config, and ``--runner pooling`` in the container's VLLM_ARGS; a runner
vLLM does not know is rejected by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsvllm.config import load_model_config
from tsvllm.engine.vllm_engine import handler_argv, parse_engine_args
from tsvllm.host import entrypoint as ep

CONFIG = Path(__file__).resolve().parents[2] / "model_configs" / "minilm-embeddings-cpu.yaml"
ENV = {"TSVLLM_DEVICE": "cpu"}


def test_the_minilm_config_asks_vllm_for_a_pooling_runner():
    cfg = load_model_config(CONFIG)
    assert cfg.handler.vllm_engine_config["runner"] == "pooling"
    args = parse_engine_args(handler_argv(cfg.handler))
    assert args.runner == "pooling" and args.served_model_name == ["minilm"]


def test_vllm_args_runner_pooling_reaches_vllms_parser():
    env = {**ENV, "VLLM_ARGS": "--runner pooling --dtype bfloat16", "SERVED_MODEL_NAME": "e"}
    cfg = ep.model_config(env, model="/m")
    assert cfg.handler.vllm_engine_config["runner"] == "pooling"
    ep.check_engine_args(cfg)


def test_an_unknown_runner_is_rejected_by_name():
    cfg = ep.model_config({**ENV, "VLLM_ARGS": "--runner embedder"}, model="/m")
    with pytest.raises(ep.EntrypointError, match="VLLM_ARGS: vLLM rejected .*embedder"):
        ep.check_engine_args(cfg)
