"""The topic registry and the event schemas: the contract with other teams."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from pydantic import ValidationError

from shared.events import AgentMessageProcessedV1, CreditGrantRequested, GrantReason
from shared.events.codec import TopicCodec
from shared.events.examples import DIRECTORY, example
from shared.testing.bounds import unbounded
from shared.topics import REGISTRY, spec_for

ALL_SCHEMAS = [schema for spec in REGISTRY for schema in spec.schemas]


def test_every_type_is_versioned_unique_and_on_exactly_one_topic() -> None:
    names = [schema.type_name for schema in ALL_SCHEMAS]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z_]+(\.[a-z_]+)+\.v\d+", name) for name in names)


def test_every_topic_is_keyed_by_organisation_and_has_a_dead_letter_topic() -> None:
    assert {spec.key for spec in REGISTRY} == {"organisation_id"}
    assert all(spec.dead_letter == f"{spec.name}.dlq" for spec in REGISTRY)
    assert len({spec.name for spec in REGISTRY}) == len(REGISTRY)


@pytest.mark.parametrize("schema", ALL_SCHEMAS, ids=lambda s: s.type_name)
def test_every_schema_has_an_example_that_its_topic_accepts(schema) -> None:
    payload = example(schema.type_name)
    decoded = TopicCodec(spec_for(schema).schemas, max_bytes=64 * 1024).decode(
        payload, orjson.loads(payload)["organisation_id"].encode()
    )
    assert isinstance(decoded, schema)
    assert orjson.loads(decoded.to_bytes()) == orjson.loads(
        schema.model_validate_json(payload).to_bytes()
    )


def test_no_example_is_orphaned() -> None:
    assert {p.stem for p in DIRECTORY.glob("*.json")} == {s.type_name for s in ALL_SCHEMAS}


def test_events_are_frozen_and_timestamps_must_carry_a_timezone() -> None:
    event = AgentMessageProcessedV1.model_validate_json(example("agent_message.processed.v1"))
    with pytest.raises(ValidationError):
        event.organisation_id = "org_other"  # type: ignore[misc]
    local = datetime(2026, 11, 27, 10, 0, tzinfo=timezone(timedelta(hours=9)))
    moved = AgentMessageProcessedV1.new(
        organisation_id="org_a", data=event.data, producer="p", occurred_at=local
    )
    assert moved.occurred_at == datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
    with pytest.raises(ValidationError, match="timezone"):
        AgentMessageProcessedV1.new(
            organisation_id="org_a", data=event.data, producer="p", occurred_at=datetime(2026, 1, 1)
        )


@pytest.mark.parametrize(
    ("reason", "amount", "with_period", "valid"),
    [
        (GrantReason.RENEWAL_RESET, 1000, True, True),
        (GrantReason.RENEWAL_RESET, 0, True, True),
        (GrantReason.RENEWAL_RESET, 1000, False, False),
        (GrantReason.PLAN_START, -1, True, False),
        (GrantReason.UPGRADE_TOP_UP, 500, False, True),
        (GrantReason.UPGRADE_TOP_UP, 0, False, False),
        (GrantReason.MANUAL_ADJUSTMENT, -250, False, True),
        (GrantReason.MANUAL_ADJUSTMENT, 0, False, False),
        (GrantReason.MANUAL_ADJUSTMENT, 10**13, False, False),
    ],
)
def test_grant_commands_are_consistent(reason, amount, with_period, valid) -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    fields = dict(period_key="k", amount=amount, reason=reason)
    if with_period:
        fields |= dict(period_start=start, period_end=start + timedelta(days=30))
    if valid:
        CreditGrantRequested(**fields)
    else:
        with pytest.raises(ValidationError):
            CreditGrantRequested(**fields)


@pytest.mark.parametrize("schema", ALL_SCHEMAS, ids=lambda s: s.type_name)
def test_every_number_string_and_list_of_every_event_is_bounded(schema) -> None:
    """What the stores can hold: integers within 64 bits (32 where a count is an `int`
    column), strings and lists with a maximum length."""
    json_schema = schema.model_json_schema()
    assert unbounded(json_schema, json_schema.get("$defs", {}), schema.__name__) == []


def test_topics_are_created_with_the_partitions_and_replication_the_settings_give(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.settings import CommonSettings

    monkeypatch.setenv("KAFKA_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("KAFKA_MIN_INSYNC_REPLICAS", "2")
    monkeypatch.setenv("KAFKA_TOPIC_PARTITIONS", '{"agent.usage": 48}')
    topics = {t.name: t for t in CommonSettings().topic_layout.topics(REGISTRY, "p.")}
    assert len(topics) == 2 * len(REGISTRY)
    assert topics["p.agent.usage"].num_partitions == 48
    assert topics["p.agent.usage.dlq"].num_partitions == 1
    assert topics["p.credits.grant-requests"].num_partitions == 3
    assert {t.replication_factor for t in topics.values()} == {3}
    assert {t.topic_configs["min.insync.replicas"] for t in topics.values()} == {"2"}
    for name, value, refusal in (
        ("KAFKA_TOPIC_PARTITIONS", '{"agent.usages": 4}', "not a registry topic"),
        ("KAFKA_TOPIC_PARTITIONS", '{"agent.usage": 0}', "1 to 10000"),
        ("KAFKA_MIN_INSYNC_REPLICAS", "4", "exceeds KAFKA_REPLICATION_FACTOR"),
    ):
        with monkeypatch.context() as bad:
            bad.setenv(name, value)
            with pytest.raises(ValidationError, match=refusal):
                CommonSettings()
