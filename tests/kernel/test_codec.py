"""Decoding records: each kind of bad input gets its own reason; batches decode like singles."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.events import AgentMessageProcessedV1
from shared.events.codec import Rejection, TopicCodec
from shared.events.envelope import _in_window
from shared.events.examples import example

GOOD = example("agent_message.processed.v1")
KEY = b"org_acme"
codec = TopicCodec((AgentMessageProcessedV1,), max_bytes=4096)


@dataclass
class Record:
    key: bytes | None
    value: bytes | None


def changed(**fields: object) -> bytes:
    body = orjson.loads(GOOD)
    data = {**body["data"], **fields.pop("data", {})}  # type: ignore[dict-item]
    return orjson.dumps({**body, **fields, "data": data})


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (b"", KEY, "malformed_json"),
        (None, KEY, "malformed_json"),
        (b"{", KEY, "malformed_json"),
        (b'"a string"', KEY, "malformed_json"),
        (changed(type=None), KEY, "missing_event_type"),
        (changed(type="invoice.paid.v1"), KEY, "unknown_event_type"),
        (changed(type="agent_message.processed.v7"), KEY, "unsupported_event_version"),
        (changed(organisation_id="acme"), KEY, "invalid_organisation_id"),
        (changed(organisation_id=""), KEY, "invalid_organisation_id"),
        (changed(data={"credits": 0}), KEY, "invalid_amount"),
        (changed(data={"credits": -1}), KEY, "invalid_amount"),
        (changed(data={"credits": 1_000_001}), KEY, "invalid_amount"),
        (changed(data={"credits": True}), KEY, "invalid_amount"),
        (changed(data={"credits": 1.0}), KEY, "invalid_amount"),
        (changed(event_id="not-a-uuid"), KEY, "invalid_event"),
        (changed(data={"member_id": ""}), KEY, "invalid_event"),
        (GOOD + b" " * 5000, KEY, "payload_too_large"),
        (GOOD, b"org_other", "key_mismatch"),
        (GOOD, None, "key_mismatch"),
    ],
)
def test_each_kind_of_bad_input_has_its_reason(value, key, reason) -> None:
    outcome = codec.decode(value, key)
    assert isinstance(outcome, Rejection)
    assert outcome.reason == reason
    assert outcome.detail


def test_a_clean_batch_and_a_dirty_batch_decode_record_by_record_alike() -> None:
    good = [Record(KEY, changed(data={"message_id": f"m{i}"})) for i in range(5)]
    dirty = [*good[:2], Record(KEY, b"{"), *good[2:]]

    clean = codec.decode_batch(good)
    mixed = codec.decode_batch(dirty)

    assert all(isinstance(e, AgentMessageProcessedV1) for e in clean)
    assert [e.data.message_id for e in clean] == [f"m{i}" for i in range(5)]
    assert [type(e).__name__ for e in mixed] == ["AgentMessageProcessedV1"] * 2 + ["Rejection"] + [
        "AgentMessageProcessedV1"
    ] * 3


def test_a_record_smuggling_two_events_is_caught_in_a_batch() -> None:
    smuggler = Record(KEY, GOOD + b"," + GOOD)
    outcomes = codec.decode_batch([Record(KEY, GOOD), smuggler])
    assert isinstance(outcomes[0], AgentMessageProcessedV1)
    assert isinstance(outcomes[1], Rejection) and outcomes[1].reason == "malformed_json"


def test_a_key_mismatch_inside_a_clean_batch_is_caught() -> None:
    outcomes = codec.decode_batch([Record(KEY, GOOD), Record(b"org_x", GOOD)])
    assert isinstance(outcomes[0], AgentMessageProcessedV1)
    assert isinstance(outcomes[1], Rejection) and outcomes[1].reason == "key_mismatch"


@given(
    st.datetimes(
        min_value=datetime(1998, 1, 1),
        max_value=datetime(2102, 1, 1),
        timezones=st.sampled_from(
            [timezone(timedelta(minutes=m)) for m in (-1439, -600, -1, 0, 1, 330, 840, 1439)]
        ),
    )
)
def test_the_instant_window_is_decided_on_the_utc_instant(value: datetime) -> None:
    """Inside [2000-01-01, 2100-01-01) UTC is accepted, whatever the offset; outside, refused
    (the calendar's edges with an offset are what the database would refuse)."""
    inside = datetime(2000, 1, 1, tzinfo=UTC) <= value < datetime(2100, 1, 1, tzinfo=UTC)
    try:
        _in_window(value)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == inside
