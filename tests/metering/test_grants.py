"""Grant commands: once per (organisation, period key); renewals reset to the new allotment."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.clock import FrozenClock
from shared.events import GrantReason
from shared.testing import read_topic
from shared.topics import CREDIT_GRANT_REQUESTS
from tests.metering.conftest import MeteringHarness, grant_command, usage_event

DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)
JAN_1 = datetime(2027, 1, 1, tzinfo=UTC)


async def ledger(metering: MeteringHarness, organisation: str) -> list[tuple[str, int, str | None]]:
    page = (await metering.http.get(f"/v1/organisations/{organisation}/ledger")).json()
    return [(e["kind"], e["amount"], e["reason"]) for e in reversed(page["entries"])]


async def test_a_grant_applied_twice_counts_once(metering: MeteringHarness) -> None:
    grant = grant_command("org_twice", 500, reason=GrantReason.PLAN_START, period_key="sub_1:start")
    same_key_new_event = grant_command(
        "org_twice", 500, reason=GrantReason.PLAN_START, period_key="sub_1:start"
    )
    await metering.publish_grants(grant, grant, same_key_new_event)
    await metering.publish_grants(
        grant_command("org_twice", 50, reason=GrantReason.UPGRADE_TOP_UP, period_key="sub_1:topup")
    )

    credits = await metering.wait_for("org_twice", balance=550)

    assert credits["allotment"] == 550
    assert await ledger(metering, "org_twice") == [
        ("grant", 500, "plan_start"),
        ("grant", 50, "upgrade_top_up"),
    ]


async def test_renewal_expires_the_rest_and_grants_the_new_allotment(
    metering: MeteringHarness, clock: FrozenClock
) -> None:
    await metering.publish_grants(grant_command("org_renew", 1_000, period_key="2026-11"))
    await metering.wait_for("org_renew", balance=1_000)
    await metering.publish_usage(usage_event("org_renew", 300))
    await metering.wait_for("org_renew", balance=700, used=300)

    clock.set(DEC_1)
    await metering.publish_grants(
        grant_command(
            "org_renew", 1_200, period_key="2026-12", period_start=DEC_1, period_end=JAN_1
        )
    )
    credits = await metering.wait_for("org_renew", balance=1_200)

    assert credits["allotment"] == 1_200
    assert credits["used"] == 0
    assert credits["period_start"] == "2026-12-01T00:00:00Z"
    assert credits["renews_at"] == "2027-01-01T00:00:00Z"
    assert await ledger(metering, "org_renew") == [
        ("grant", 1_000, "renewal_reset"),
        ("debit", -300, None),
        ("expiry", -700, "period_ended"),
        ("grant", 1_200, "renewal_reset"),
    ]


async def test_renewal_writes_off_a_negative_remainder(
    metering: MeteringHarness, clock: FrozenClock
) -> None:
    await metering.publish_grants(grant_command("org_overdrawn", 100, period_key="2026-11"))
    await metering.wait_for("org_overdrawn", balance=100)
    await metering.publish_usage(usage_event("org_overdrawn", 130))
    await metering.wait_for("org_overdrawn", balance=-30)

    clock.set(DEC_1)
    await metering.publish_grants(
        grant_command(
            "org_overdrawn", 100, period_key="2026-12", period_start=DEC_1, period_end=JAN_1
        )
    )
    credits = await metering.wait_for("org_overdrawn", balance=100)

    assert credits["level"] == "normal"
    assert (await ledger(metering, "org_overdrawn"))[-2:] == [
        ("expiry", 30, "negative_remainder_written_off"),
        ("grant", 100, "renewal_reset"),
    ]


async def test_a_renewal_older_than_the_current_period_is_parked(
    metering: MeteringHarness, clock: FrozenClock
) -> None:
    clock.set(DEC_1)
    await metering.publish_grants(
        grant_command("org_late", 1_200, period_key="2026-12", period_start=DEC_1, period_end=JAN_1)
    )
    await metering.wait_for("org_late", balance=1_200)
    await metering.publish_grants(grant_command("org_late", 1_000, period_key="2026-11"))
    await metering.publish_grants(
        grant_command("org_late", 5, reason=GrantReason.MANUAL_ADJUSTMENT, period_key="goodwill-1")
    )

    await metering.wait_for("org_late", balance=1_205)
    parked = await read_topic(
        metering.bootstrap,
        CREDIT_GRANT_REQUESTS.dead_letter_topic(metering.settings.topic_prefix),
        at_least=1,
    )
    assert [dict(r.headers)["dlq.reason"] for r in parked] == [b"stale_period"]


async def test_a_conflicting_grant_is_parked_and_an_identical_one_ignored(
    metering: MeteringHarness,
) -> None:
    applied = grant_command("org_key", 500, reason=GrantReason.PLAN_START, period_key="sub_9")
    reissued = grant_command("org_key", 500, reason=GrantReason.PLAN_START, period_key="sub_9")
    other_amount = grant_command("org_key", 900, reason=GrantReason.PLAN_START, period_key="sub_9")
    other_reason = grant_command(
        "org_key", 500, reason=GrantReason.UPGRADE_TOP_UP, period_key="sub_9"
    )
    marker = grant_command("org_key", 1, reason=GrantReason.MANUAL_ADJUSTMENT, period_key="m")

    await metering.publish_grants(applied, reissued, other_amount, other_reason, marker)

    await metering.wait_for("org_key", balance=501)
    parked = await metering.parked(CREDIT_GRANT_REQUESTS, at_least=2)
    assert parked == [
        ("grant_conflict", other_amount.to_bytes()),
        ("grant_conflict", other_reason.to_bytes()),
    ]


async def test_a_period_starting_far_ahead_is_refused_and_creates_nothing(
    metering: MeteringHarness, clock: FrozenClock
) -> None:
    far = datetime(2027, 6, 1, tzinfo=UTC)
    ahead = grant_command(
        "org_future",
        1_000,
        period_key="2027-06",
        period_start=far,
        period_end=far + (JAN_1 - DEC_1),
    )
    await metering.publish_grants(ahead)

    parked = await metering.parked(CREDIT_GRANT_REQUESTS, at_least=1)
    assert parked == [("period_too_far_ahead", ahead.to_bytes())]
    assert await metering.credits("org_future") is None

    clock.set(DEC_1)  # the normal renewal still applies
    await metering.publish_grants(
        grant_command("org_future", 800, period_key="2026-12", period_start=DEC_1, period_end=JAN_1)
    )
    assert (await metering.wait_for("org_future", balance=800))["renews_at"] == (
        "2027-01-01T00:00:00Z"
    )
