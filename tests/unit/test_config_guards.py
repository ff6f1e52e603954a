"""Hook settings (handler.guards, handler.rag) that the guards or the retriever would reject
when the chain is built, after the engine started, are config errors found by
``tsvllm validate`` and by the handler's initialize (both go through validate_model_config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tsvllm.config import ConfigError, validate_model_config


def config(guards: dict[str, Any] | None = None, rag: dict[str, Any] | None = None) -> dict:
    handler: dict[str, Any] = {"model_path": "m"}
    if guards is not None:
        handler["guards"] = guards
    if rag is not None:
        handler["rag"] = rag
    return {"asyncCommunication": True, "handler": handler}


def problems(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_model_config(data, source="model-config.yaml")
    return str(info.value)


BAD = [
    pytest.param(
        config(guards={"judge": {"categories": ["S1", "S15"]}}),
        ["handler.guards.judge.categories", "'S15'", "S1", "S14", "remove categories"],
        id="judge-category-unknown",
    ),
    pytest.param(
        config(guards={"judge": {"categories": ["violence"]}}),
        ["handler.guards.judge.categories", "'violence'"],
        id="judge-category-name",
    ),
    pytest.param(
        config(guards={"judge": {"categories": []}}),
        ["handler.guards.judge.categories", "empty", "remove categories"],
        id="judge-categories-empty",
    ),
    pytest.param(
        config(guards={"deny": {"terms": ["nightingale", "   "]}}),
        ["handler.guards.deny.terms", "[1]", "blank"],
        id="deny-term-blank",
    ),
    pytest.param(
        config(guards={"deny": {"terms": ["\u200b"]}}),
        ["handler.guards.deny.terms", "[0]", "blank"],
        id="deny-term-invisible",
    ),
    pytest.param(
        config(guards={"judge": {"url": "localhost:8000/v1"}}),
        ["handler.guards.judge.url", "http://", "localhost:8000/v1"],
        id="judge-url-no-scheme",
    ),
    pytest.param(
        config(guards={"judge": {"url": "http://[::1/v1"}}),
        ["handler.guards.judge.url"],
        id="judge-url-unparsable",
    ),
    pytest.param(
        config(guards={"pii": {"stages": []}}),
        ["handler.guards.pii.stages", "never run"],
        id="guard-stages-empty",
    ),
    pytest.param(
        config(guards={"judge": {"stages": []}}),
        ["handler.guards.judge.stages", "never run"],
        id="judge-stages-empty",
    ),
    pytest.param(
        config(rag={"index": "  "}),
        ["handler.rag.index", "empty"],
        id="rag-index-blank",
    ),
    pytest.param(
        config(rag={"index": "idx", "search": "exact", "nprobe": 4}),
        ["handler.rag: nprobe 4", "search: exact"],
        id="rag-nprobe-with-exact-search",
    ),
]


@pytest.mark.parametrize(("data", "expected"), BAD)
def test_bad_hook_settings_are_config_errors(data, expected):
    message = problems(data)
    for part in expected:
        assert part in message, message


def test_good_hook_settings_load_and_categories_are_normalised():
    cfg = validate_model_config(
        config(
            guards={
                "deny": {"terms": ["project nightingale"]},
                "judge": {"categories": ["s10", "S1"], "url": "https://judge.example/v1"},
                "pii": {"mode": "redact"},
            },
            rag={"index": "idx", "search": "partitioned", "nprobe": 4},
        )
    )
    assert cfg.handler.guards.judge.categories == ["S1", "S10"]


def test_tsvllm_validate_reports_bad_hook_settings(tmp_path: Path, capsys):
    from tsvllm.cli import main

    path = tmp_path / "model-config.yaml"
    path.write_text(yaml.safe_dump(config(guards={"judge": {"categories": ["S99"]}})))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "handler.guards.judge.categories" in err and "S99" in err
