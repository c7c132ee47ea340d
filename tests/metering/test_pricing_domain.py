"""The rate card against a reference: exact rational arithmetic, one rounding per message, and
the version in force found by scanning every version."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.metering.domain.pricing import (
    DEFAULT,
    Line,
    RateCard,
    RateCardFile,
    RawUsage,
    Unpriced,
    Version,
    cost,
)
from shared.events.usage import MAX_TOKENS_PER_MESSAGE

rates = st.integers(min_value=0, max_value=10**9)
lines = st.builds(
    Line,
    input_per_million=rates,
    output_per_million=rates,
    per_tool_call=st.integers(min_value=0, max_value=1000),
    minimum=st.integers(min_value=1, max_value=100),
    estimate=st.integers(min_value=1, max_value=100),
)
tokens = st.integers(min_value=0, max_value=MAX_TOKENS_PER_MESSAGE)
usages = st.builds(
    RawUsage,
    model=st.just("m"),
    input_tokens=tokens,
    output_tokens=tokens,
    tool_calls=st.integers(min_value=0, max_value=100_000),
)


def reference_cost(line: Line, usage: RawUsage) -> int:
    """Each token costs a fraction of a credit; the message's tokens are summed exactly and
    rounded up once; tool calls are whole credits; never below the minimum."""
    per_input = Fraction(line.input_per_million, 1_000_000)
    per_output = Fraction(line.output_per_million, 1_000_000)
    exact = usage.input_tokens * per_input + usage.output_tokens * per_output
    return max(line.minimum, math.ceil(exact) + usage.tool_calls * line.per_tool_call)


@given(lines, usages)
def test_a_message_costs_what_the_reference_says(line: Line, usage: RawUsage) -> None:
    priced = cost(line, usage)
    assert isinstance(priced, int)
    assert priced == reference_cost(line, usage)


@given(lines, usages, st.integers(min_value=0, max_value=10**6))
def test_more_tokens_never_cost_less(line: Line, usage: RawUsage, more: int) -> None:
    bigger = RawUsage(usage.model, usage.input_tokens + more, usage.output_tokens, usage.tool_calls)
    assert cost(line, bigger) >= cost(line, usage) >= line.minimum


def test_rounding_is_once_per_message_and_upwards() -> None:
    line = Line(input_per_million=1, output_per_million=1, per_tool_call=0, minimum=1, estimate=1)
    assert cost(line, RawUsage("m", 1_000_000, 0, 0)) == 1
    assert cost(line, RawUsage("m", 1_000_000, 1, 0)) == 2
    assert cost(line, RawUsage("m", 600_000, 600_000, 0)) == 2  # not 1 + 1 rounded apart
    assert cost(line, RawUsage("m", 0, 0, 0)) == 1


T = datetime(2026, 1, 1, tzinfo=UTC)
versions = st.lists(
    st.integers(min_value=0, max_value=1000), min_size=1, max_size=5, unique=True
).map(sorted)


@given(versions, st.integers(min_value=-10, max_value=1100))
def test_the_version_in_force_is_the_latest_started(days: list[int], at: int) -> None:
    line = Line(input_per_million=1, output_per_million=1, per_tool_call=0, minimum=1, estimate=1)
    card = RateCard(
        tuple(
            Version(version=f"v{d}", effective_from=T + timedelta(days=d), lines={"m": line})
            for d in days
        )
    )
    instant = T + timedelta(days=at)
    started = [d for d in days if T + timedelta(days=d) <= instant]
    found = card.in_force(instant)
    assert (found.version if found else None) == (f"v{max(started)}" if started else None)
    if not started:
        with pytest.raises(Unpriced):
            card.price(RawUsage("m", 1, 1, 0), instant)


def test_the_shipped_rate_card_loads_and_prices_at_its_boundary() -> None:
    card = RateCard.load(DEFAULT)
    usage = RawUsage("claude-sonnet", 1_000_000, 100_000, 2)
    boundary = card.versions[1].effective_from
    before = card.price(usage, boundary - timedelta(microseconds=1))
    after = card.price(usage, boundary)
    assert (before.version, after.version) == ("2026-01", "2026-12")
    assert (before.credits, after.credits) == (1500 + 750 + 2, 1200 + 600 + 2)
    with pytest.raises(Unpriced, match="no line"):
        card.price(RawUsage("gpt-unknown", 1, 1, 0), boundary)


def test_a_rate_card_out_of_order_or_with_a_fractional_rate_is_refused() -> None:
    line = {"input_per_million": 1, "output_per_million": 1, "per_tool_call": 0}
    line |= {"minimum": 1, "estimate": 1}
    card = {"currency": "credits", "rounding": "up", "versions": []}
    first = {"version": "a", "effective_from": "2026-02-01T00:00:00Z", "lines": {"m": line}}
    second = {"version": "b", "effective_from": "2026-01-01T00:00:00Z", "lines": {"m": line}}
    with pytest.raises(ValidationError, match="increasing"):
        RateCardFile.model_validate(card | {"versions": [first, second]})
    fractional = first | {"lines": {"m": line | {"input_per_million": 1.5}}}
    with pytest.raises(ValidationError):
        RateCardFile.model_validate(card | {"versions": [fractional]})
