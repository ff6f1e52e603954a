"""Reading, validating and writing a model config, and its error messages."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from tsvllm.config.frontend import ModelConfig
from tsvllm.config.handler import HandlerConfig


class ConfigError(ValueError):
    """A model config could not be read or is invalid.

    ``str(err)`` is a header naming the source, then one ``path.to.field: message`` line per
    problem (cross-field problems start with the field they are about).
    """

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join("  " + p.replace("\n", "\n    ") for p in self.problems)
        super().__init__(f"invalid model config {source}:\n{lines}")


def load_model_config(path: str | Path) -> ModelConfig:
    """Read and validate a ``model-config.yaml``; raise :class:`ConfigError` on any problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror or exc}"]) from exc
    return loads_model_config(text, source=source)


def loads_model_config(text: str, *, source: str = "<string>") -> ModelConfig:
    """Parse YAML text and validate it; raise :class:`ConfigError` on any problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from exc
    return validate_model_config(data, source=source)


def validate_model_config(data: Any, *, source: str = "<data>") -> ModelConfig:
    """Validate already-parsed data; raise :class:`ConfigError` listing every problem."""
    if data is None:
        raise ConfigError(
            source, ["the file is empty; it needs at least asyncCommunication and handler"]
        )
    if not isinstance(data, Mapping):
        raise ConfigError(
            source,
            [f"the top level must be a mapping of keys, got {type(data).__name__}"],
        )
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _problems_from(exc)) from exc


def dump_model_config(cfg: ModelConfig, path: str | Path) -> Path:
    """Write ``cfg.to_yaml()`` to ``path`` (parents created); return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(cfg.to_yaml(), encoding="utf-8")
    return out


def _problems_from(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for err in exc.errors():
        loc = err["loc"]
        where = _format_loc(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = _unknown_key_message(loc)
        elif kind == "missing":
            msg = f"missing required key '{loc[-1]}'"
        elif kind == "value_error":
            msg = str(err.get("ctx", {}).get("error", err["msg"]))
        else:
            msg = err["msg"]
            value = err.get("input")
            if isinstance(value, str | int | float | bool) or value is None:
                msg = f"{msg} (got {value!r})"
        for line in msg.splitlines():
            problems.append(f"{where}: {line}" if where else line)
    return problems


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _keys_of(cls: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in cls.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _section(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that owns the mapping at ``loc`` (ModelConfig for the top level)."""
    cls: type[BaseModel] | None = ModelConfig
    for part in loc:
        if cls is None or not isinstance(part, str):
            return None
        fields = {f.alias or n: f for n, f in cls.model_fields.items()}
        field = fields.get(part) or cls.model_fields.get(part)
        if field is None:
            return None
        cls = _model_in(field.annotation)
    return cls


def _unknown_key_message(loc: tuple[int | str, ...]) -> str:
    key = str(loc[-1])
    msg = f"unknown key '{key}'"
    cls = _section(loc[:-1])
    if cls is None:
        return msg
    keys = _keys_of(cls)
    by_lower = {k.lower(): k for k in keys}
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    if close:
        return f"{msg} (did you mean '{by_lower[close[0]]}'?)"
    # A key written at the wrong level: top-level key under handler:, or the reverse.
    if cls is ModelConfig and key in _keys_of(HandlerConfig):
        return f"{msg} (did you mean 'handler.{key}'? it belongs under handler:)"
    if cls is HandlerConfig and key in _keys_of(ModelConfig):
        return f"{msg} (did you mean top-level '{key}'? it belongs outside handler:)"
    return msg
