"""Handlers written for TorchServe's VLLMHandler: a method tsvllm never calls fails at
initialize naming the hook to use; config warnings are logged at initialize."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from tsvllm.worker import handler as handler_module
from tsvllm.worker.handler import VLLMHandler
from tsvllm.worker.hooks import TORCHSERVE_METHODS, check_torchserve_overrides

CONFIGS = Path(__file__).resolve().parent / "torchserve_configs"


def _context(tmp_path: Path, config: dict) -> SimpleNamespace:
    return SimpleNamespace(
        system_properties={"model_dir": str(tmp_path)},
        model_yaml_config=config,
        model_name="m",
    )


CPU_CONFIG = {"asyncCommunication": True, "handler": {"model_path": "m"}}


class _Stop(Exception):
    """Stops initialize right after the checks (before workers, reaper and engine)."""


@pytest.fixture
def stop_after_checks(monkeypatch):
    def stop(_environ):
        raise _Stop

    monkeypatch.setattr(handler_module.ApiKeys, "from_environ", staticmethod(stop))


@pytest.mark.parametrize("name", sorted(TORCHSERVE_METHODS))
def test_torchserve_method_fails_at_initialize(tmp_path, name, stop_after_checks) -> None:
    async def method(self, *args, **kwargs):
        return args

    Ported = type("Ported", (VLLMHandler,), {name: method})
    with pytest.raises(TypeError) as info:
        Ported().initialize(_context(tmp_path, CPU_CONFIG))
    message = str(info.value)
    assert (
        f"defines {name}, which TorchServe's VLLMHandler called but tsvllm never calls" in message
    )
    assert f"{name}: use {TORCHSERVE_METHODS[name]}" in message
    assert "docs/MIGRATING.md" in message


def test_the_message_names_every_method_and_its_hook() -> None:
    class LoraHandler(VLLMHandler):  # as people wrote them on TorchServe's handler
        async def preprocess(self, requests, context):
            return requests

        async def postprocess(self, outputs):
            return outputs

        def _get_lora_request(self, data):
            return None

    with pytest.raises(TypeError) as info:
        check_torchserve_overrides(LoraHandler, base=VLLMHandler)
    lines = str(info.value).splitlines()
    assert "defines preprocess, postprocess, _get_lora_request" in lines[0]
    assert (
        lines[1]
        == "  preprocess: use on_request(body, ctx), which gets the decoded OpenAI request body"
    )
    assert lines[2].startswith("  postprocess: use on_response(body, ctx)")
    assert lines[3].startswith("  _get_lora_request: use handler.adapters in model-config.yaml")


def test_inherited_torchserve_method_is_found_too() -> None:
    class Mixin:
        def inference(self, batch):
            return batch

    class Ported(Mixin, VLLMHandler):
        pass

    with pytest.raises(TypeError, match="defines inference"):
        check_torchserve_overrides(Ported, base=VLLMHandler)


def test_hook_handlers_pass() -> None:
    class Hooked(VLLMHandler):
        async def on_request(self, body, ctx):
            return body

        async def setup(self, *, engine, model_dir):
            pass

    check_torchserve_overrides(VLLMHandler, base=VLLMHandler)
    check_torchserve_overrides(Hooked, base=VLLMHandler)


def test_shipped_handlers_pass() -> None:
    from tsvllm.worker.rag_guard import RagGuardHandler

    check_torchserve_overrides(RagGuardHandler, base=VLLMHandler)


def test_a_handler_that_owns_handle_is_not_checked() -> None:
    class OwnPath(VLLMHandler):
        async def handle(self, data, context):
            return [await self.preprocess(data)]

        async def preprocess(self, data):
            return data

    check_torchserve_overrides(OwnPath, base=VLLMHandler)


def test_a_non_method_attribute_is_not_a_method() -> None:
    class WithData(VLLMHandler):
        inference = None  # e.g. a counter or flag, not a method

    check_torchserve_overrides(WithData, base=VLLMHandler)


def test_config_warnings_are_logged_at_initialize(tmp_path, stop_after_checks, caplog) -> None:
    import yaml

    config = yaml.safe_load((CONFIGS / "mistral.yaml").read_text())
    level = caplog.at_level(logging.WARNING, logger=handler_module.logger.name)
    with level, pytest.raises(_Stop):
        VLLMHandler().initialize(_context(tmp_path, config))
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(tmp_path / "model-config.yaml") in record.getMessage()
    assert record.getMessage().endswith("set parallelType: custom and parallelLevel: 4")


def test_no_warning_logged_for_a_clean_config(tmp_path, stop_after_checks, caplog) -> None:
    level = caplog.at_level(logging.WARNING, logger=handler_module.logger.name)
    with level, pytest.raises(_Stop):
        VLLMHandler().initialize(_context(tmp_path, CPU_CONFIG))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
