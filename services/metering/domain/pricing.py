"""The rate card: what raw agent usage costs in credits (data, `catalogue/rate_card.json`).

A rate card has versions, each in force from its `effective_from` until the next one's; a
version, once published, never changes (a new price is a new version). Usage is priced with the
version in force at the instant it occurred, whenever it is processed, so a redelivery or a
replay prices it the same.

Rounding, per message, in integers only:
    credits = ceil((input_tokens × input_per_million + output_tokens × output_per_million)
                   / 1,000,000) + tool_calls × per_tool_call,
at least the line's `minimum` (every message costs something: a debit is never zero).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

DEFAULT = Path(__file__).resolve().parents[1] / "catalogue" / "rate_card.json"

PER = 1_000_000
"""Token rates are credits per million tokens."""

Rate = Annotated[int, Field(strict=True, ge=0, le=10**9)]
ModelName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._:-]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Line(_Strict):
    """What one model costs."""

    input_per_million: Rate
    output_per_million: Rate
    per_tool_call: Rate
    minimum: Annotated[int, Field(strict=True, ge=1, le=10**6)]
    estimate: Annotated[int, Field(strict=True, ge=1, le=10**6)]
    """Credits an authorization holds for a message to this model, unless told otherwise."""


class Version(_Strict):
    version: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")]
    effective_from: AwareDatetime
    lines: Mapping[ModelName, Line] = Field(min_length=1)


class RateCardFile(_Strict):
    currency: str
    rounding: str
    versions: tuple[Version, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> RateCardFile:
        starts = [v.effective_from for v in self.versions]
        if starts != sorted(set(starts)):
            raise ValueError("versions must be listed by strictly increasing effective_from")
        if len({v.version for v in self.versions}) != len(self.versions):
            raise ValueError("version names must be unique")
        return self


@dataclass(frozen=True, slots=True)
class RawUsage:
    model: str
    input_tokens: int
    output_tokens: int
    tool_calls: int


@dataclass(frozen=True, slots=True)
class Priced:
    credits: int
    version: str
    model: str
    line: Line


class Unpriced(ValueError):
    """No version in force at that instant, or no line for the model in it."""


def cost(line: Line, usage: RawUsage) -> int:
    tokens = (
        usage.input_tokens * line.input_per_million + usage.output_tokens * line.output_per_million
    )
    return max(line.minimum, -(-tokens // PER) + usage.tool_calls * line.per_tool_call)


@dataclass(frozen=True)
class RateCard:
    versions: tuple[Version, ...]

    @classmethod
    def load(cls, path: Path = DEFAULT) -> RateCard:
        return cls(RateCardFile.model_validate_json(path.read_bytes()).versions)

    def in_force(self, at: datetime) -> Version | None:
        found = None
        for version in self.versions:
            if version.effective_from <= at:
                found = version
        return found

    def price(self, usage: RawUsage, at: datetime) -> Priced:
        version = self.in_force(at)
        if version is None:
            raise Unpriced(f"no rate card is in force at {at.isoformat()}")
        line = version.lines.get(usage.model)
        if line is None:
            raise Unpriced(f"rate card {version.version} has no line for model {usage.model!r}")
        return Priced(cost(line, usage), version.version, usage.model, line)

    def line(self, version: str, model: str) -> Line | None:
        """The line that priced `model` in `version` (a receipt shows it)."""
        found = next((v for v in self.versions if v.version == version), None)
        return found.lines.get(model) if found else None

    def estimate(self, model: str, at: datetime) -> int | None:
        version = self.in_force(at)
        line = version.lines.get(model) if version else None
        return line.estimate if line else None
