"""Every shipped model config passes `tsvllm validate` (ours + vLLM's own parser)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsvllm.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "model_configs").glob("*.yaml"))


def test_there_are_gpu_configs_for_the_big_models():
    names = {p.stem for p in CONFIGS}
    assert {
        "llama-3.1-70b-instruct-tp4",
        "llama-3.1-405b-instruct-fp8-tp8",
        "mixtral-8x7b-instruct-tp2",
        "qwen3-8b",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.startswith("ok")


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda t: t.replace("parallelLevel: 4", "parallelLevel: 2"), "set parallelLevel: 4"),
        (lambda t: t.replace("asyncCommunication: true", ""), "asyncCommunication"),
        (lambda t: t.replace("minWorkers", "minWorker"), "did you mean 'minWorkers'"),
        (lambda t: t.replace("max_num_seqs", "max_num_seq"), "vLLM rejected"),
    ],
)
def test_broken_config_fails_with_the_fix(tmp_path, capsys, mutate, needle):
    src = (CONFIGS[0].parent / "llama-3.1-70b-instruct-tp4.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(mutate(src))
    assert main(["validate", str(bad)]) == 1
    assert needle in capsys.readouterr().err
