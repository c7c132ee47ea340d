"""Webhooks: verified, stored once, answered, processed exactly once, converging to Stripe's
latest state whatever the order; failures retried, parked and replayable."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from tests.stripe_gateway.conftest import (
    GatewayHarness,
    checkout_object,
    invoice_object,
    signed,
    stripe_event,
    subscription_object,
)

ORG = "org_hooks"


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def ids() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:14]
    return f"sub_{suffix}", f"cus_{suffix}"


async def test_a_validly_signed_event_is_stored_answered_and_processed(
    gateway: GatewayHarness,
) -> None:
    subscription, customer = ids()
    event = stripe_event(
        "customer.subscription.created",
        subscription_object(subscription, customer, organisation=ORG, quantity=4),
    )

    response = await gateway.deliver(event)

    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False}
    await gateway.processed(event["id"])
    (announced,) = await gateway.announced()
    assert announced["type"] == "stripe_subscription.activated.v1"
    assert announced["organisation_id"] == ORG
    assert announced["data"]["subscription_id"] == subscription
    assert announced["data"]["quantity"] == 4
    assert announced["data"]["stripe_event_id"] == event["id"]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered body", "bad_signature"),
        ("wrong secret", "bad_signature"),
        ("missing header", "missing_signature"),
        ("stale timestamp", "stale_timestamp"),
        ("not an event", "not_an_event"),
    ],
)
async def test_a_bad_delivery_gets_400_is_recorded_and_never_processed(
    gateway: GatewayHarness, db: asyncpg.Connection, case: str, reason: str
) -> None:
    subscription, customer = ids()
    event = stripe_event(
        "customer.subscription.created",
        subscription_object(subscription, customer, organisation=ORG),
    )
    payload, signature = signed(event)
    headers = {"Stripe-Signature": signature}
    if case == "tampered body":
        payload = payload.replace(b'"active"', b'"past_due"')
    elif case == "wrong secret":
        payload, headers["Stripe-Signature"] = signed(event, secret="whsec_not_ours")
    elif case == "missing header":
        headers = {}
    elif case == "stale timestamp":
        payload, headers["Stripe-Signature"] = signed(event, timestamp=int(time.time()) - 301)
    else:
        payload, headers["Stripe-Signature"] = signed({"hello": "world"})  # type: ignore[arg-type]

    response = await gateway.http.post("/stripe/webhook", content=payload, headers=headers)

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["reason"] == reason
    assert await db.fetchval("SELECT count(*) FROM inbox") == 0
    rejections = await db.fetch("SELECT reason, body_sha256 FROM webhook_rejections")
    assert [r["reason"] for r in rejections] == [reason]


async def test_one_event_delivered_five_times_also_at_once_is_processed_once(
    gateway: GatewayHarness, db: asyncpg.Connection
) -> None:
    subscription, customer = ids()
    event = stripe_event(
        "customer.subscription.created",
        subscription_object(subscription, customer, organisation=ORG),
    )

    first = await asyncio.gather(*(gateway.deliver(event) for _ in range(3)))
    await gateway.processed(event["id"])
    later = [await gateway.deliver(event) for _ in range(2)]

    responses = [*first, *later]
    assert all(r.status_code == 200 for r in responses)
    assert sorted(r.json()["duplicate"] for r in responses) == [False, True, True, True, True]
    assert (await gateway.inbox(event["id"]))["attempts"] == 1  # type: ignore[index]
    marker = stripe_event(
        "customer.subscription.created", subscription_object(*ids(), organisation=ORG)
    )
    await gateway.deliver(marker)
    await gateway.processed(marker["id"])
    announced = await gateway.announced(at_least=2)
    assert [a["data"]["stripe_event_id"] for a in announced].count(event["id"]) == 1


async def test_reports_in_any_order_leave_the_newest_state(gateway: GatewayHarness) -> None:
    subscription, customer = ids()
    now = int(time.time())
    created = stripe_event(
        "customer.subscription.created",
        subscription_object(subscription, customer, organisation=ORG, quantity=1),
        created=now - 30,
    )
    newer = stripe_event(
        "customer.subscription.updated",
        subscription_object(subscription, customer, organisation=ORG, quantity=7),
        created=now - 10,
    )
    older = stripe_event(
        "customer.subscription.updated",
        subscription_object(subscription, customer, organisation=ORG, quantity=3),
        created=now - 20,
    )

    for event in (newer, created, older):  # `updated` before `created`, then an old update
        assert (await gateway.deliver(event)).status_code == 200
        await gateway.processed(event["id"])

    (state,) = (await gateway.http.get(f"/v1/organisations/{ORG}/subscriptions")).json()
    assert (state["quantity"], state["stripe_event_id"]) == (7, newer["id"])
    announced = await gateway.announced()
    assert [(a["type"], a["data"]["quantity"]) for a in announced] == [
        ("stripe_subscription.activated.v1", 7)
    ]


async def test_a_deleted_subscription_stays_deleted(gateway: GatewayHarness) -> None:
    subscription, customer = ids()
    now = int(time.time())
    deleted = stripe_event(
        "customer.subscription.deleted",
        subscription_object(subscription, customer, organisation=ORG, status="canceled"),
        created=now,
    )
    late = stripe_event(
        "customer.subscription.updated",
        subscription_object(subscription, customer, organisation=ORG, quantity=9),
        created=now,  # the same second: settled by asking Stripe, which does not know it
    )
    for event in (deleted, late):
        await gateway.deliver(event)
        await gateway.processed(event["id"])

    (state,) = (await gateway.http.get(f"/v1/organisations/{ORG}/subscriptions")).json()
    assert (state["deleted"], state["status"], state["quantity"]) == (True, "canceled", 1)
    assert [a["type"] for a in await gateway.announced()] == ["stripe_subscription.deleted.v1"]


async def test_an_event_type_we_do_not_handle_is_answered_and_ignored(
    gateway: GatewayHarness,
) -> None:
    event = stripe_event("plan.created", {"id": "plan_x", "object": "plan"})

    response = await gateway.deliver(event)

    assert response.status_code == 200
    assert (await gateway.inbox(event["id"]))["status"] == "ignored"  # type: ignore[index]


@pytest.mark.parametrize("shape", ["current", "legacy"])
async def test_each_handled_event_type_announces_its_event(
    gateway: GatewayHarness, shape: str
) -> None:
    subscription, customer = ids()
    now = int(time.time())
    start = 1_795_000_000
    sequence = [
        stripe_event(
            "checkout.session.completed",
            checkout_object(f"cs_test_{uuid.uuid4().hex[:10]}", customer, subscription, ORG),
            created=now - 60,
        ),
        stripe_event(
            "customer.subscription.created",
            subscription_object(subscription, customer, organisation=ORG, start=start, shape=shape),
            created=now - 50,
        ),
        stripe_event(
            "customer.subscription.updated",
            subscription_object(
                subscription,
                customer,
                organisation=ORG,
                start=start,
                quantity=2,
                cancel_at_period_end=True,
                shape=shape,
            ),
            created=now - 40,
        ),
        stripe_event(
            "customer.subscription.updated",
            subscription_object(
                subscription,
                customer,
                organisation=ORG,
                start=start + 30 * 86400,
                quantity=2,
                cancel_at_period_end=True,
                shape=shape,
            ),
            created=now - 30,
        ),
        stripe_event(
            "invoice.paid",
            invoice_object(f"in_{uuid.uuid4().hex[:10]}", customer, subscription, paid=True),
            created=now - 20,
        ),
        stripe_event(
            "invoice.payment_failed",
            invoice_object(f"in_{uuid.uuid4().hex[:10]}", customer, subscription, paid=False),
            created=now - 15,
        ),
        stripe_event(
            "customer.subscription.deleted",
            subscription_object(
                subscription,
                customer,
                organisation=ORG,
                status="canceled",
                start=start + 30 * 86400,
                quantity=2,
                shape=shape,
            ),
            created=now - 10,
        ),
    ]
    for event in sequence:
        await gateway.deliver(event)
        await gateway.processed(event["id"])

    announced = await gateway.announced(at_least=len(sequence))
    assert [a["type"] for a in announced] == [
        "stripe_checkout.completed.v1",
        "stripe_subscription.activated.v1",
        "stripe_subscription.updated.v1",
        "stripe_subscription.renewed.v1",
        "stripe_invoice.paid.v1",
        "stripe_invoice.payment_failed.v1",
        "stripe_subscription.deleted.v1",
    ]
    assert all(a["organisation_id"] == ORG for a in announced)
    checkout, activated, updated, renewed, paid, failed, deleted = (a["data"] for a in announced)
    assert (checkout["subscription_id"], checkout["customer_id"]) == (subscription, customer)
    assert activated["current_period_start"] == _iso(start)
    assert sorted(updated["changes"]) == ["cancel_at_period_end", "quantity"]
    assert renewed["current_period_start"] == _iso(start + 30 * 86400)
    assert (paid["amount"], paid["subscription_id"]) == (2500, subscription)
    assert (failed["amount"], failed["attempt_count"]) == (2500, 2)
    assert deleted["status"] == "canceled"


async def test_a_failing_event_is_retried_then_parked_and_replays(
    gateway: GatewayHarness, db: asyncpg.Connection
) -> None:
    subscription, customer = ids()
    orphan = stripe_event(  # no organisation in it, and the customer is not known (yet)
        "invoice.paid",
        invoice_object(f"in_{uuid.uuid4().hex[:10]}", customer, subscription, paid=True),
    )
    await gateway.deliver(orphan)

    parked = await gateway.processed(orphan["id"], status="parked")
    assert parked["attempts"] == gateway.settings.inbox_max_attempts
    assert "UnknownOrganisation" in parked["last_error"]
    listed = (await gateway.http.get("/v1/inbox", params={"status": "parked"})).json()
    assert [e["event_id"] for e in listed] == [orphan["id"]]

    # The customer becomes known (its subscription reported), and an operator replays.
    known = stripe_event(
        "customer.subscription.created",
        subscription_object(subscription, customer, organisation=ORG),
    )
    await gateway.deliver(known)
    await gateway.processed(known["id"])
    replayed = await gateway.http.post(f"/v1/inbox/{orphan['id']}/replay")
    again = await gateway.http.post(f"/v1/inbox/{orphan['id']}/replay")

    assert replayed.status_code == 200
    done = await gateway.processed(orphan["id"])
    assert again.status_code in (200, 409)
    assert done["attempts"] == 1
    announced = await gateway.announced(at_least=2)
    assert [a["type"] for a in announced] == [
        "stripe_subscription.activated.v1",
        "stripe_invoice.paid.v1",
    ]
    unknown = await gateway.http.post("/v1/inbox/evt_nothing_here/replay")
    assert unknown.status_code == 404
