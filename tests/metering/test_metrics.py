"""`/metrics` after real traffic on the real broker and database: the counters move by what
happened (records applied and parked by reason, batches timed, authorizations by decision and
reason, the outbox published)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from shared.clock import FrozenClock
from shared.testing import eventually
from shared.testing.plugin import Infrastructure, Isolation
from shared.topics import AGENT_USAGE
from tests.metering.conftest import (
    T0,
    MeteringHarness,
    grant_command,
    module_metering,
    usage_event,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def metering(
    infrastructure: Infrastructure, module_isolation: Isolation
) -> AsyncIterator[MeteringHarness]:
    async with module_metering(infrastructure, module_isolation, FrozenClock(T0)) as harness:
        yield harness


async def scrape(metering: MeteringHarness) -> dict[tuple[str, tuple], float]:
    answer = await metering.http.get("/metrics", headers={"Authorization": ""})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_the_counters_move_with_real_traffic(metering: MeteringHarness) -> None:
    org = "org_metrics"
    topic = metering.topic(AGENT_USAGE)
    before = await scrape(metering)
    await metering.publish_grants(grant_command(org, 100))
    await metering.wait_for(org, balance=100)
    await metering.publish_usage(usage_event(org, 30), usage_event(org, 20))
    await metering.wait_for(org, balance=50)
    conflicting = usage_event(org, 5)
    await metering.publish_usage(usage_event(org, 6, event_id=conflicting.event_id), conflicting)
    await metering.wait_for(org, balance=44)
    ask = {"organisation_id": org, "member_id": "member_1"}
    for message, estimate in (("m1", 10), ("m2", 1_000)):
        await metering.http.post(
            "/v1/authorizations", json=ask | {"message_id": message, "estimate": estimate}
        )

    decided = {
        "schema": metering.settings.db_schema,
        "event_type": "credit_authorization.decided.v1",
    }

    async def moved() -> dict | None:
        after = await scrape(metering)
        published = value(after, "billing_outbox_published_total", **decided)
        earlier = value(before, "billing_outbox_published_total", **decided)
        return after if published - earlier >= 2 else None

    after = await eventually(moved, what="the outbox's announcements counted")

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("billing_records_total", consumer="usage", topic=topic, outcome="applied") == 3
    assert delta("billing_records_total", consumer="usage", topic=topic, outcome="parked") == 1
    assert (
        delta(
            "billing_records_parked_total",
            consumer="usage",
            topic=topic,
            reason="event_id_conflict",
        )
        == 1
    )
    assert delta("billing_batch_seconds_count", consumer="usage") >= 2
    assert delta("billing_authorizations_total", decision="allowed", reason="") == 1
    assert (
        delta("billing_authorizations_total", decision="denied", reason="insufficient_credits") == 1
    )
    assert delta("billing_authorization_seconds_count") == 2
    assert delta("billing_outbox_published_total", **decided) == 2
    lags = [v for (name, _), v in after.items() if name == "billing_consumer_lag"]
    assert lags and min(lags) >= 0
    schema = (("schema", metering.settings.db_schema),)
    assert after[("billing_outbox_backlog", schema)] == 0  # drained, never a full batch
    assert after[("billing_outbox_oldest_seconds", schema)] >= 0
