"""TorchServe 0.12's own vLLM configs (its three examples and test_example_vllm.py's YAML) load
unchanged and give the engine what TorchServe's VLLMHandler gave it. No vLLM here: the argv
goes through vLLM's parser in tests/integration/test_torchserve_configs.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tsvllm.config import load_model_config
from tsvllm.engine.vllm_engine import handler_argv
from tsvllm.worker.handler import _in_archive

HERE = Path(__file__).resolve().parent / "torchserve_configs"
LLAMA = (
    "model/models--meta-llama--Meta-Llama-3.1-8B/snapshots/48d6d0fc4e02fb1269b36940650a1b7233035cbb"
)
LLAMA_INSTRUCT = (
    "model/models--meta-llama--Meta-Llama-3.1-8B-Instruct/snapshots/"
    "8c22764a7e3675c50d4c7c9a4edb474456022b16"
)
MISTRAL = (
    "model/models--mistralai--Mistral-7B-v0.1/snapshots/26bca36bde8333b5d7f72e9ed20ccda6a618af24"
)
ADAPTER = (
    "adapters/model/models--llama-duo--llama3.1-8b-summarize-gpt4o-128k/snapshots/"
    "4ba83353f24fa38946625c8cc49bf21c80a22825"
)

# What TorchServe's handler used, per config: model path inside model_dir, served names
# (vllm_engine_config.served_model_name), LoRA modules (adapters), chat template, engine keys.
EXPECTED = {
    "llama3": {
        "model": LLAMA_INSTRUCT,
        "served": ["meta-llama/Meta-Llama-3.1-8B", "llama3-8b"],
        "adapters": {},
        "chat_template": None,
        "engine": {"max_num_seqs": 16, "max_model_len": 250},
    },
    "lora": {
        "model": LLAMA,
        "served": ["meta-llama/Meta-Llama-3.1-8B", "llama-8b-lora"],
        "adapters": {"adapter_1": ADAPTER},
        "chat_template": None,
        "engine": {
            "enable_lora": True,
            "max_loras": 4,
            "max_cpu_loras": 4,
            "max_lora_rank": 32,
            "max_num_seqs": 16,
            "max_model_len": 250,
        },
    },
    "mistral": {
        "model": MISTRAL,
        "served": ["mistral"],
        "adapters": {},
        "chat_template": None,
        "engine": {"max_model_len": 250, "max_num_seqs": 16, "tensor_parallel_size": 4},
    },
    "test_example_vllm": {
        "model": LLAMA,
        "served": ["Meta-Llama-31-8B"],
        "adapters": {"adapter_1": ADAPTER},
        "chat_template": "chat_template.txt",
        "engine": {
            "enable_lora": True,
            "max_loras": 4,
            "max_lora_rank": 32,
            "max_cpu_loras": 4,
            "max_num_seqs": 16,
            "max_model_len": 250,
            "tensor_parallel_size": 1,
        },
    },
}


def _model_dir(tmp_path: Path, name: str) -> Path:
    """An unpacked archive as TorchServe's worker sees it: weights, adapters, extra files."""
    want = EXPECTED[name]
    model_dir = tmp_path / name
    (model_dir / want["model"]).mkdir(parents=True)
    for path in want["adapters"].values():
        (model_dir / path).mkdir(parents=True)
    shutil.copy(HERE / f"{name}.yaml", model_dir / "model-config.yaml")
    if want["chat_template"]:
        shutil.copy(HERE / want["chat_template"], model_dir / want["chat_template"])
    return model_dir


def test_every_copy_is_tested() -> None:
    assert sorted(p.stem for p in HERE.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loads_with_torchserve_meaning(name: str) -> None:
    cfg = load_model_config(HERE / f"{name}.yaml")
    want = EXPECTED[name]
    assert cfg.handler.model_path == want["model"]
    assert cfg.handler.served_model_name == want["served"]
    assert cfg.handler.adapters == want["adapters"]
    assert cfg.handler.chat_template == want["chat_template"]
    assert cfg.handler.vllm_engine_config == want["engine"]
    assert (cfg.deviceType, cfg.asyncCommunication, cfg.maxBatchDelay) == ("gpu", True, 100)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_engine_argv_is_what_torchserve_used(tmp_path: Path, name: str) -> None:
    """The worker's argv (handler_argv with its _in_archive resolution): paths into model_dir,
    like TorchServe's handler (model_path joined to model_dir; adapters and the chat template
    relative to the worker's working directory, which TorchServe sets to model_dir)."""
    model_dir = _model_dir(tmp_path, name)
    cfg = load_model_config(model_dir / "model-config.yaml")
    argv = handler_argv(cfg.handler, resolve=lambda p: _in_archive(p, model_dir))
    want = EXPECTED[name]

    expected = ["--model", str(model_dir / want["model"])]
    for key, value in want["engine"].items():
        flag = "--" + key.replace("_", "-")
        expected += [flag] if value is True else [flag, str(value)]
    expected += ["--served-model-name", *want["served"]]
    if want["chat_template"]:
        expected += ["--chat-template", str(model_dir / want["chat_template"])]
    if want["adapters"]:
        expected += [
            "--lora-modules",
            *(f"{n}={model_dir / p}" for n, p in want["adapters"].items()),
        ]
    assert argv == expected


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_warnings(name: str) -> None:
    warnings = load_model_config(HERE / f"{name}.yaml").warnings()
    if name == "mistral":  # tensor_parallel_size 4, no parallelType/parallelLevel
        assert len(warnings) == 1
        assert "needs 4 GPUs per worker but parallelType/parallelLevel are not set" in warnings[0]
        assert warnings[0].endswith("set parallelType: custom and parallelLevel: 4")
    else:
        assert warnings == []


def test_chat_template_outside_model_dir_is_passed_as_written(tmp_path: Path) -> None:
    # not shipped in the archive: vLLM gets the name (it also knows built-in template names)
    model_dir = _model_dir(tmp_path, "test_example_vllm")
    (model_dir / "chat_template.txt").unlink()
    cfg = load_model_config(model_dir / "model-config.yaml")
    argv = handler_argv(cfg.handler, resolve=lambda p: _in_archive(p, model_dir))
    assert argv[argv.index("--chat-template") + 1] == "chat_template.txt"


@pytest.mark.parametrize(
    "template",
    [
        "{% for m in messages %}{{ m.content }}{% endfor %}",
        "plain text\non two lines",
        "x" * 5000,  # longer than any file name: not looked up, passed as written
    ],
)
def test_inline_chat_template_is_not_resolved(tmp_path: Path, template: str) -> None:
    cfg = load_model_config(HERE / "llama3.yaml").model_copy(deep=True)
    cfg.handler.chat_template = template
    argv = handler_argv(cfg.handler, resolve=lambda p: _in_archive(p, tmp_path))
    assert argv[argv.index("--chat-template") + 1] == template
