"""docs/CONFIG.md is generated from the config models (tsvllm.config_docs) and kept in sync."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tsvllm.config import ModelConfig, load_model_config
from tsvllm.config_docs import ALL_KEYS, example_configs, render, sections, undocumented

REPO = Path(__file__).resolve().parents[2]


def test_config_md_is_up_to_date():
    expected = render(configs=example_configs(REPO))
    actual = (REPO / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    assert actual == expected, (
        "docs/CONFIG.md is out of date; regenerate it from the repo root with "
        "`python -m tsvllm.config_docs > docs/CONFIG.md`"
    )


def test_every_key_of_every_section_has_a_row():
    text = render(configs=[])
    paths = [s.path for s in sections()]
    for path in ("handler", "handler.rag", "handler.guards.judge", "handler.audit_log"):
        assert path in paths
        assert f"## `{path}`" in text
    rows = sum(len(s.model.model_fields) for s in sections())
    assert text.count("\n| `") == rows
    assert "| `max_body_bytes` | int, > 0 | `1048576` |" in text
    assert "| `index` | str | required |" in text


def test_examples_come_from_shipped_configs_and_name_the_file():
    configs = [
        ("a.yaml", {"handler": {"rag": {"k": 7}}}),
        ("b.yaml", {"handler": {"rag": {"k": 9}}}),
    ]
    text = render(configs=configs)
    row = next(line for line in text.splitlines() if line.startswith("| `k` |"))
    assert row.endswith("| `7` (a.yaml) |")
    assert "see [`handler.rag`](#handlerrag)" in text


def test_undocumented_names_fields_without_a_description():
    class Inner(BaseModel):
        model_config = ConfigDict(extra="forbid")
        bare: int = 1
        told: int = Field(1, description="told")

    class Outer(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inner: Inner | None = Field(None, description="a section")

    assert undocumented(Outer) == ["inner.bare"]
    assert undocumented(ModelConfig) == []


def test_the_all_keys_example_validates_and_sets_every_key_but_torchrun():
    load_model_config(REPO / ALL_KEYS)  # raises ConfigError naming any problem
    text = render(configs=example_configs(REPO))
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    without = [row.split("|")[1].strip() for row in rows if row.rstrip().endswith("|  |")]
    torchrun = next(s.model for s in sections() if s.path == "torchrun")
    assert without == [f"`{f.alias or n}`" for n, f in torchrun.model_fields.items()]
