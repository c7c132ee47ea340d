"""Bad input is parked in the dead-letter topic with its reason and original bytes; the
consumer never stalls and goes on with the next message."""

from __future__ import annotations

from uuid import uuid4

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.testing import produce, read_topic
from shared.topics import AGENT_USAGE
from tests.metering.conftest import MeteringHarness, grant_command, usage_event

ORG = "org_dlq"


def envelope(**overrides: object) -> bytes:
    body = usage_event(ORG, 5).model_dump(mode="json")
    data = {**body["data"], **overrides.pop("data", {})}  # type: ignore[dict-item]
    return orjson.dumps({**body, **overrides, "data": data})


def raw(**overrides: object) -> bytes:
    """A raw-usage (version 2) event, made from the version 1 example."""
    data = {**orjson.loads(envelope())["data"], "model": "claude-haiku"}
    data |= {"input_tokens": 10, "output_tokens": 10, "tool_calls": 0}
    del data["credits"]
    data |= overrides.pop("data", {})  # type: ignore[arg-type]
    body = {**orjson.loads(envelope()), "type": "agent_message.processed.v2", "data": data}
    return orjson.dumps(body)


def without(field: str) -> bytes:
    body = usage_event(ORG, 5).model_dump(mode="json")
    del body[field]
    return orjson.dumps(body)


BAD_INPUT: list[tuple[str, bytes, str]] = [
    ("malformed JSON", b'{"event_id": "', "malformed_json"),
    ("not an object", b"[1, 2, 3]", "malformed_json"),
    ("empty payload", b"", "malformed_json"),
    ("no type", without("type"), "missing_event_type"),
    ("unknown type", envelope(type="agent_message.deleted.v1"), "unknown_event_type"),
    ("future version", envelope(type="agent_message.processed.v3"), "unsupported_event_version"),
    ("missing organisation", without("organisation_id"), "invalid_organisation_id"),
    (
        "malformed organisation",
        envelope(organisation_id="acme; DROP TABLE"),
        "invalid_organisation_id",
    ),
    ("zero credits", envelope(data={"credits": 0}), "invalid_amount"),
    ("negative credits", envelope(data={"credits": -5}), "invalid_amount"),
    ("absurd credits", envelope(data={"credits": 10**15}), "invalid_amount"),
    ("fractional credits", envelope(data={"credits": 2.5}), "invalid_amount"),
    ("credits as text", envelope(data={"credits": "5"}), "invalid_amount"),
    ("raw usage with credits", raw(data={"credits": 5}), "invalid_amount"),
    ("negative tokens", raw(data={"input_tokens": -1}), "invalid_amount"),
    ("fractional tool calls", raw(data={"tool_calls": 0.5}), "invalid_amount"),
    ("tokens beyond a message", raw(data={"output_tokens": 10**10}), "invalid_amount"),
    ("a model name with spaces", raw(data={"model": "claude sonnet"}), "invalid_event"),
    ("naive timestamp", envelope(occurred_at="2026-11-01T00:00:00"), "invalid_event"),
    ("unknown field", envelope(data={"discount": 1}), "invalid_event"),
    ("oversized", envelope(data={"message_id": "x" * 100_000}), "payload_too_large"),
    ("NUL in an id", envelope(data={"message_id": "msg\u0000"}), "invalid_event"),
    ("control character in an id", envelope(data={"member_id": "m\u001b[31m"}), "invalid_event"),
    (
        "instant at the calendar's edge",
        envelope(occurred_at="0001-01-01T00:00:00+05:00"),
        "invalid_event",
    ),
    ("instant far ahead", envelope(occurred_at="9999-12-31T23:00:00-05:00"), "invalid_event"),
]


async def test_each_kind_of_bad_input_is_parked_with_its_reason(metering: MeteringHarness) -> None:
    await metering.publish_grants(grant_command(ORG, 1_000))
    await metering.wait_for(ORG, balance=1_000)
    good = usage_event(ORG, 7)
    records = [(ORG.encode(), value) for _, value, _ in BAD_INPUT]
    records.append((b"org_other", usage_event(ORG, 9).to_bytes()))
    records.append((ORG.encode(), good.to_bytes()))

    await produce(metering.bootstrap, metering.topic(AGENT_USAGE), records)

    await metering.wait_for(ORG, balance=993)
    parked = await read_topic(
        metering.bootstrap,
        AGENT_USAGE.dead_letter_topic(metering.settings.topic_prefix),
        at_least=len(BAD_INPUT) + 1,
    )
    from_org = [r for r in parked if r.key == ORG.encode()]
    headers = [{k: v.decode() for k, v in r.headers} for r in from_org]
    assert [h["dlq.reason"] for h in headers] == [reason for *_, reason in BAD_INPUT]
    assert [r.value for r in from_org] == [value for _, value, _ in BAD_INPUT]
    assert [int(h["dlq.original_offset"]) for h in headers] == list(range(len(BAD_INPUT)))
    assert all(h["dlq.original_topic"] == metering.topic(AGENT_USAGE) for h in headers)
    assert all(h["dlq.detail"] for h in headers)
    (mismatch,) = [r for r in parked if r.key == b"org_other"]
    assert dict(mismatch.headers)["dlq.reason"] == b"key_mismatch"


async def test_an_event_id_reused_for_another_effect_is_parked(
    metering: MeteringHarness, db
) -> None:
    first = usage_event(ORG, 5)
    await metering.publish_usage(first)
    await metering.wait_for(ORG, balance=-5)
    reused = usage_event(ORG, 50, event_id=first.event_id)
    await metering.publish_usage(reused, usage_event(ORG, 1))

    await metering.wait_for(ORG, balance=-6)
    parked = await read_topic(
        metering.bootstrap,
        AGENT_USAGE.dead_letter_topic(metering.settings.topic_prefix),
        at_least=1,
    )
    assert [dict(r.headers)["dlq.reason"] for r in parked] == [b"event_id_conflict"]
    assert parked[0].value == reused.to_bytes()
    assert await db.fetchval("SELECT count(*) FROM ledger WHERE entry_id = $1", first.event_id) == 1


async def test_the_http_api_answers_bad_requests_with_problem_json(
    metering: MeteringHarness,
) -> None:
    malformed = await metering.http.get("/v1/organisations/not-an-org/credits")
    unknown = await metering.http.get(f"/v1/organisations/org_{uuid4().hex}/credits")
    bad_limit = await metering.http.get("/v1/organisations/org_x/ledger", params={"limit": 0})

    for response, status in ((malformed, 400), (unknown, 404), (bad_limit, 400)):
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status
        assert response.json()["title"]


async def test_a_ledger_cursor_beyond_64_bits_is_a_400(metering: MeteringHarness) -> None:
    for before in (2**63, 10**30, -1):
        response = await metering.http.get(
            "/v1/organisations/org_x/ledger", params={"before": before}
        )
        assert response.status_code == 400, before
        assert response.headers["content-type"] == "application/problem+json"


async def test_a_streamed_body_over_the_limit_gets_413(metering: MeteringHarness) -> None:
    limit = metering.settings.max_request_bytes

    async def chunks():  # no Content-Length: the body arrives in pieces
        for _ in range(limit // 1000 + 2):
            yield b" " * 1000

    response = await metering.http.post(
        "/v1/authorizations", content=chunks(), headers={"content-type": "application/json"}
    )

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert "content-length" not in response.request.headers


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=5,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "organisation_id": st.text(max_size=80)
            | st.from_regex(r"org_[a-z0-9]{1,8}", fullmatch=True),
            "member_id": st.text(max_size=140),
            "message_id": st.text(max_size=140),
            "agent_id": st.none() | st.text(max_size=140),
            "estimate": st.none() | st.integers() | JSON_VALUES,
            "extra": JSON_VALUES,
        },
    )
)
async def test_generated_authorization_requests_get_a_decision_or_a_4xx(
    metering: MeteringHarness, body: dict
) -> None:
    response = await metering.http.post("/v1/authorizations", json=body)

    assert response.status_code in {200, 400, 413}, (response.status_code, response.text)
    if response.status_code == 200:
        assert response.json()["decision"] in {"allowed", "denied"}
    else:
        assert response.headers["content-type"] == "application/problem+json"
