"""TorchServe 0.12's own vLLM configs through vLLM's parser and `tsvllm validate` (imports vLLM;
the configs are copies in tests/unit/torchserve_configs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsvllm.cli import main
from tsvllm.config import load_model_config, loads_model_config
from tsvllm.engine.vllm_engine import EngineArgsError, handler_argv, parse_engine_args
from tsvllm.worker.handler import _in_archive

CONFIGS = Path(__file__).resolve().parents[1] / "unit" / "torchserve_configs"
NAMES = ["llama3", "lora", "mistral", "test_example_vllm"]


def _parsed(name: str, model_dir: Path = CONFIGS):
    cfg = load_model_config(CONFIGS / f"{name}.yaml")
    return parse_engine_args(handler_argv(cfg.handler, resolve=lambda p: _in_archive(p, model_dir)))


@pytest.mark.parametrize("name", NAMES)
def test_vllm_parses_them(name: str) -> None:
    args = _parsed(name)
    cfg = load_model_config(CONFIGS / f"{name}.yaml")
    assert args.model == cfg.handler.model_path
    assert list(args.served_model_name) == cfg.handler.served_model_name
    assert (args.max_model_len, args.max_num_seqs) == (250, 16)


def test_lora_keys_and_adapters_reach_vllm() -> None:
    args = _parsed("test_example_vllm")
    assert args.enable_lora is True
    assert (args.max_loras, args.max_cpu_loras, args.max_lora_rank) == (4, 4, 32)
    [module] = args.lora_modules
    assert module.name == "adapter_1"
    assert module.path.startswith("adapters/model/models--llama-duo--")
    # chat_template.txt sits in model_dir (here: next to the config), so its path is passed
    assert args.chat_template == str(CONFIGS / "chat_template.txt")


def test_mistral_tensor_parallel_reaches_vllm() -> None:
    assert _parsed("mistral").tensor_parallel_size == 4


def test_misspelled_engine_arg_is_still_an_error() -> None:
    text = (CONFIGS / "lora.yaml").read_text().replace("max_cpu_loras", "max_cpu_lora")
    cfg = loads_model_config(text)
    with pytest.raises(EngineArgsError, match="max.cpu.lora"):
        parse_engine_args(handler_argv(cfg.handler))


@pytest.mark.parametrize("name", NAMES)
def test_tsvllm_validate(name: str, capsys) -> None:
    assert main(["validate", str(CONFIGS / f"{name}.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok")
    if name == "mistral":
        assert "warning: tensor_parallel_size 4" in out
        assert out.rstrip().endswith("set parallelType: custom and parallelLevel: 4")
    else:
        assert "warning" not in out


def test_validate_fails_on_a_real_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "model-config.yaml"
    text = (CONFIGS / "mistral.yaml").read_text()
    bad.write_text(
        text.replace("asyncCommunication: true", "parallelLevel: 2\nasyncCommunication: true")
    )
    assert main(["validate", str(bad)]) == 1
    assert "set parallelLevel: 4" in capsys.readouterr().err
