"""``handler.guards``: the guard chain's settings, and the Llama Guard 3 categories.

The guards (:mod:`tsvllm.guards`) import these; the config imports nothing from them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tsvllm.textfold import fold

#: code → hazard name (MLCommons taxonomy as used by Llama Guard 3)
CATEGORIES: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Suicide & Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}

Stage = Literal["input", "context", "output"]


def _stages_not_empty(value: list[str], where: str) -> list[str]:
    if not value:
        raise ValueError(
            f"stages is empty, so the guard would never run; list where it runs ({where}) "
            "or remove the guard"
        )
    return value


class RuleGuardConfig(BaseModel):
    """One built-in rule guard."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["redact", "block"] = Field(
        "block", description="What a match does: redact it, or refuse / end the output."
    )
    stages: list[Stage] = Field(
        default_factory=lambda: ["input", "context", "output"],
        description="Where the guard runs: input (user), context (retrieved), output (model).",
    )

    @field_validator("stages")
    @classmethod
    def _stages_given(cls, value: list[str]) -> list[str]:
        return _stages_not_empty(value, "input, context, output")


class DenyListConfig(RuleGuardConfig):
    """The deny list: words or phrases, matched after Unicode normalisation."""

    terms: list[str] = Field(min_length=1, description="Words or phrases to refuse.")

    @field_validator("terms")
    @classmethod
    def _terms_not_blank(cls, value: list[str]) -> list[str]:
        # the same test as DenyListGuard: a term that folds to no word can never match
        for i, term in enumerate(value):
            if not fold(term).split():
                raise ValueError(
                    f"terms[{i}] {term!r} is blank (only whitespace or invisible characters); "
                    "remove it or write the word or phrase to refuse"
                )
        return value


class JudgeConfig(BaseModel):
    """An LLM judge with the Llama Guard 3 prompt format and S1–S14 categories."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None,
        description=(
            "OpenAI-compatible base URL of the judge model (…/v1). Unset: the served engine."
        ),
    )
    model: str | None = Field(
        None, description="Model name to ask. Unset: the first served_model_name."
    )
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the judge's API key."
    )
    stages: list[Literal["input", "output"]] = Field(
        default_factory=lambda: ["input", "output"], description="Where the judge runs."
    )
    categories: list[str] | None = Field(
        None, description="Llama Guard codes to enforce, e.g. [S1, S10]. Unset: S1–S14."
    )
    timeout: float = Field(10.0, gt=0, description="Seconds before the judge counts as failed.")
    fail_closed: bool = Field(True, description="A judge error or timeout blocks (true).")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from urllib.parse import urlsplit

        example = "e.g. http://127.0.0.1:8000/v1, or remove url to judge on the served engine"
        try:
            parts = urlsplit(value.strip())
            parts.port  # noqa: B018  # raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"url {value!r} is not a valid URL ({exc}); {example}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"url {value!r} must be an http:// or https:// URL with a host; {example}"
            )
        return value

    @field_validator("stages")
    @classmethod
    def _stages_given(cls, value: list[str]) -> list[str]:
        return _stages_not_empty(value, "input, output")

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, value: list[str] | None) -> list[str] | None:
        """Llama Guard 3 codes (any case) → canonical ``S1``... in S-order, as the judge
        uses them."""
        if value is None:
            return value
        every = "remove categories to enforce all of S1–S14"
        if not value:
            raise ValueError(f"categories is empty; list codes such as [S1, S10], or {every}")
        codes = {c.strip().upper() for c in value}
        unknown = [c for c in value if c.strip().upper() not in CATEGORIES]
        if unknown:
            known = ", ".join(f"{code} {name}" for code, name in CATEGORIES.items())
            raise ValueError(
                f"unknown Llama Guard 3 categories {', '.join(map(repr, unknown))}; use codes "
                f"S1–S14 ({known}), or {every}"
            )
        return [code for code in CATEGORIES if code in codes]


class GuardsConfig(BaseModel):
    """``handler.guards``: the guard chain run on input, retrieved context and output."""

    model_config = ConfigDict(extra="forbid")

    pii: RuleGuardConfig | None = Field(
        None, description="Emails, phones, Luhn-checked cards, SSNs, IPs."
    )
    secrets: RuleGuardConfig | None = Field(None, description="API keys, JWTs, private keys.")
    deny: DenyListConfig | None = Field(None, description="Words or phrases to refuse.")
    injection: RuleGuardConfig | None = Field(
        None, description="Prompt-injection heuristics (use on input and context)."
    )
    judge: JudgeConfig | None = Field(None, description="LLM judge (Llama Guard 3 format).")
    fail_closed: bool = Field(True, description="A guard that errors blocks (true).")
    stream_window: int = Field(
        256, ge=16, description="Characters re-checked around each new stream chunk."
    )
    stream_hold: int = Field(
        64, ge=0, description="Characters held back from the client until checked."
    )
    refusal: str = Field(
        "I can't help with that.",
        description="Text that replaces a blocked non-streaming answer.",
    )

    @model_validator(mode="after")
    def _window_holds(self) -> GuardsConfig:
        if self.stream_hold >= self.stream_window:
            raise ValueError(
                f"stream_hold {self.stream_hold} must be smaller than stream_window "
                f"{self.stream_window}; raise stream_window or lower stream_hold"
            )
        return self
