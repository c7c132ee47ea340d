"""Webhooks: verified, stored once, answered; each names Stripe objects that the gateway fetches,
so what it keeps and announces is what Stripe holds, whatever order, duplication or age of the
reports; failures retried, parked and replayable."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.stripe_gateway.inbox import Inbox, WebhookRejected
from services.stripe_gateway.settings import DEV_WEBHOOK_SECRET
from shared.clock import FrozenClock
from tests.stripe_gateway.conftest import (
    GatewayHarness,
    checkout_object,
    invoice_object,
    signed,
    stripe_event,
    stripe_subscription,
    stripe_update,
    subscription_object,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

SUBSCRIPTION = "stripe_subscription."


def organisation() -> str:
    return f"org_{uuid.uuid4().hex[:10]}"


def stale(subscription: dict, **changes: object) -> dict:
    """A webhook payload about the subscription, with whatever (old) state the test wants."""
    return subscription_object(
        subscription["id"],
        subscription["customer"],
        organisation=subscription["metadata"].get("organisation_id"),
        **changes,  # type: ignore[arg-type]
    )


async def test_a_validly_signed_event_is_stored_answered_and_what_stripe_holds_announced(
    gateway: GatewayHarness,
) -> None:
    org = organisation()
    sub = await stripe_subscription(gateway.devstripe, org, quantity=3)
    await gateway.held(org)  # devstripe's own `created` came and was processed
    event = stripe_event("customer.subscription.updated", stale(sub, quantity=4, status="past_due"))

    response = await gateway.deliver(event)

    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False}
    await gateway.processed(event["id"])
    (activated,) = await gateway.mine(org, kind=SUBSCRIPTION)
    assert activated["type"] == "stripe_subscription.activated.v2"
    assert activated["organisation_id"] == org
    data = activated["data"]
    assert (data["subscription_id"], data["quantity"], data["status"]) == (sub["id"], 3, "active")
    assert (data["version"], data["observed_by"]) == (1, "webhook")
    assert (await gateway.held(org))["version"] == 1  # the stale payload changed nothing


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered body", "bad_signature"),
        ("wrong secret", "bad_signature"),
        ("missing header", "missing_signature"),
        ("stale timestamp", "stale_timestamp"),
        ("an hour ahead", "future_timestamp"),
        ("not an event", "not_an_event"),
    ],
)
async def test_a_bad_delivery_gets_400_is_recorded_and_never_processed(
    gateway: GatewayHarness, case: str, reason: str
) -> None:
    event = stripe_event(
        "customer.subscription.created",
        subscription_object(f"sub_{uuid.uuid4().hex[:14]}", "cus_x", organisation="org_x"),
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
    elif case == "an hour ahead":
        payload, headers["Stripe-Signature"] = signed(event, timestamp=int(time.time()) + 3600)
    else:
        payload, headers["Stripe-Signature"] = signed({"hello": "world"})  # type: ignore[arg-type]
    pool = gateway.kernel.pool
    before = await pool.fetchval(
        "SELECT count(*) FROM webhook_rejections WHERE reason = $1", reason
    )

    response = await gateway.http.post("/stripe/webhook", content=payload, headers=headers)

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["reason"] == reason
    assert await gateway.inbox(event["id"]) is None
    after = await pool.fetchval("SELECT count(*) FROM webhook_rejections WHERE reason = $1", reason)
    assert after == before + 1


async def test_refused_requests_are_sampled_and_pruned(gateway: GatewayHarness) -> None:
    """Anyone can send refused requests: at most a few a minute are recorded (the rest only
    counted), and records older than the retention are deleted."""
    pool, clock = gateway.kernel.pool, FrozenClock(datetime(2031, 5, 1, tzinfo=UTC))
    inbox = Inbox(
        pool,
        clock,
        webhook_secret=DEV_WEBHOOK_SECRET,
        tolerance_seconds=300,
        rejections_per_minute=3,
    )
    for _ in range(20):
        with pytest.raises(WebhookRejected):
            await inbox.receive(b"{}", "t=1,v1=00")
    rows = await pool.fetchval(
        "SELECT count(*) FROM webhook_rejections WHERE received_at = $1", clock.now()
    )
    assert rows == 3
    assert inbox.rejections_unrecorded == 17
    clock.advance(timedelta(minutes=2))
    with pytest.raises(WebhookRejected):
        await inbox.receive(b"{}", "t=1,v1=00")
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM webhook_rejections WHERE received_at = $1", clock.now()
        )
        == 1
    )
    clock.advance(timedelta(days=8))
    assert await inbox.prune(timedelta(days=7)) >= 4
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM webhook_rejections WHERE received_at >= $1",
            datetime(2031, 5, 1, tzinfo=UTC),
        )
        == 0
    )


async def test_one_event_delivered_five_times_also_at_once_is_processed_once(
    gateway: GatewayHarness,
) -> None:
    org = organisation()
    sub = await stripe_subscription(gateway.devstripe, org)
    await gateway.held(org)
    await stripe_update(gateway.devstripe, sub, quantity=2)  # its own webhook withheld
    event = stripe_event("customer.subscription.updated", stale(sub, quantity=2))

    first = await asyncio.gather(*(gateway.deliver(event) for _ in range(3)))
    await gateway.processed(event["id"])
    later = [await gateway.deliver(event) for _ in range(2)]

    responses = [*first, *later]
    assert all(r.status_code == 200 for r in responses)
    assert sorted(r.json()["duplicate"] for r in responses) == [False, True, True, True, True]
    assert (await gateway.inbox(event["id"]))["attempts"] == 1  # type: ignore[index]
    await gateway.quiet()
    announced = [e["data"] for e in await gateway.mine(org, 2, kind=SUBSCRIPTION)]
    assert [(a["version"], a["quantity"]) for a in announced] == [(1, 1), (2, 2)]


async def test_reports_in_any_order_and_within_one_second_leave_what_stripe_holds(
    gateway: GatewayHarness,
) -> None:
    """Stripe's `created` is whole seconds: reports of one second cannot be ordered by it,
    and arrive in any order. The gateway fetches the subscription instead."""
    org = organisation()
    sub = await stripe_subscription(gateway.devstripe, org)
    await gateway.held(org)
    await stripe_update(gateway.devstripe, sub, cancel_at_period_end="true")
    await stripe_update(gateway.devstripe, sub, quantity=7)
    await stripe_update(gateway.devstripe, sub, cancel_at_period_end="false")
    second = int(time.time())
    reports = [
        stripe_event(
            "customer.subscription.updated",
            stale(sub, cancel_at_period_end=c, quantity=q),
            created=second,
        )
        for c, q in ((True, 1), (True, 7), (False, 7))
    ]

    for event in reversed(reports):  # the newest first, the oldest last
        await gateway.deliver(event)
    for event in reports:
        await gateway.processed(event["id"])

    held = await gateway.held(org)
    assert (held["quantity"], held["cancel_at_period_end"]) == (7, False)
    newest = (await gateway.mine(org, 2, kind=SUBSCRIPTION))[-1]["data"]
    assert (newest["quantity"], newest["cancel_at_period_end"], newest["version"]) == (7, False, 2)


async def test_a_deleted_subscription_stays_deleted(gateway: GatewayHarness) -> None:
    org = organisation()
    sub = await stripe_subscription(gateway.devstripe, org)
    await gateway.held(org)
    await gateway.stripe("DELETE", f"/v1/subscriptions/{sub['id']}")
    await gateway.held(org, deleted=True)
    late = stripe_event("customer.subscription.updated", stale(sub, quantity=9))

    await gateway.deliver(late)
    await gateway.processed(late["id"])

    held = await gateway.held(org)
    assert (held["deleted"], held["status"], held["quantity"]) == (True, "canceled", 1)
    assert [e["type"] for e in await gateway.mine(org, 2, kind=SUBSCRIPTION)] == [
        "stripe_subscription.activated.v2",
        "stripe_subscription.deleted.v2",
    ]


async def test_an_event_type_we_do_not_handle_is_answered_and_ignored(
    gateway: GatewayHarness,
) -> None:
    event = stripe_event("plan.created", {"id": "plan_x", "object": "plan"})

    response = await gateway.deliver(event)

    assert response.status_code == 200
    assert (await gateway.inbox(event["id"]))["status"] == "ignored"  # type: ignore[index]


async def test_a_checkout_and_an_invoice_are_announced_as_stripe_holds_them(
    gateway: GatewayHarness,
) -> None:
    org = organisation()
    session = (
        await gateway.http.post(
            "/v1/checkout-sessions",
            json={
                "organisation_id": org,
                "request_id": f"req_{uuid.uuid4().hex}",
                "price_id": "price_max_monthly",
                "quantity": 2,
                "success_url": "https://app.example/ok",
                "cancel_url": "https://app.example/no",
            },
        )
    ).json()
    completed = await gateway.stripe(
        "POST", f"/_devstripe/checkout/{session['id']}/complete", params={"silent": "true"}
    )
    sub = await gateway.stripe("GET", f"/v1/subscriptions/{completed['subscription']}")
    invoice = sub["latest_invoice"]
    checkout = stripe_event(
        "checkout.session.completed",
        checkout_object(session["id"], completed["customer"], sub["id"], org),
    )
    paid = stripe_event(
        "invoice.paid", invoice_object(invoice, completed["customer"], sub["id"], paid=True)
    )

    for event in (checkout, checkout, paid):
        await gateway.deliver(event)
    await gateway.processed(checkout["id"])
    await gateway.processed(paid["id"])

    kinds = [e["type"] for e in await gateway.mine(org, 4)]
    assert kinds[:3] == [
        "stripe_command.succeeded.v1",
        "stripe_checkout.completed.v2",
        "stripe_subscription.activated.v2",
    ]
    assert kinds.count("stripe_checkout.completed.v2") == 1
    assert "stripe_invoice.paid.v2" in kinds
    announced = {e["type"]: e["data"] for e in await gateway.mine(org, 4)}
    done = announced["stripe_checkout.completed.v2"]
    assert (done["subscription_id"], done["price_id"], done["quantity"]) == (
        sub["id"],
        "price_max_monthly",
        2,
    )
    assert announced["stripe_invoice.paid.v2"]["invoice_id"] == invoice


async def test_a_report_that_cannot_be_applied_is_retried_parked_and_replays(
    gateway: GatewayHarness,
) -> None:
    org = organisation()
    orphan = await stripe_subscription(gateway.devstripe, None)  # no organisation anywhere
    event = stripe_event("customer.subscription.updated", stale(orphan))
    await gateway.deliver(event)

    parked = await gateway.processed(event["id"], status="parked")
    assert parked["attempts"] == gateway.settings.inbox_max_attempts
    assert "UnknownOrganisation" in parked["last_error"]
    listed = (await gateway.http.get("/v1/inbox", params={"status": "parked"})).json()
    assert event["id"] in [e["event_id"] for e in listed]
    ready = (await gateway.http.get("/readyz")).json()
    assert ready["parked_webhooks"] >= 1

    # The customer becomes known (another subscription of it names the organisation), and an
    # operator replays.
    await stripe_subscription(gateway.devstripe, org, customer=orphan["customer"])
    await gateway.held(org)
    replayed = await gateway.http.post(f"/v1/inbox/{event['id']}/replay")
    assert replayed.status_code == 200
    done = await gateway.processed(event["id"])
    again = await gateway.http.post(f"/v1/inbox/{event['id']}/replay")

    assert again.status_code == 409
    assert done["attempts"] == 1
    announced = [
        e["data"]["subscription_id"] for e in await gateway.mine(org, 2, kind=SUBSCRIPTION)
    ]
    assert orphan["id"] in announced
    unknown = await gateway.http.post("/v1/inbox/evt_nothing_here/replay")
    assert unknown.status_code == 404
    audited = await gateway.kernel.pool.fetch(
        "SELECT actor, outcome, detail FROM audit_log WHERE action = 'replay' AND target = $1"
        " ORDER BY id",
        event["id"],
    )
    actor = audited[0]["actor"]
    assert actor.startswith("operator:") and "dev-token" not in actor
    assert [(r["outcome"], r["detail"]) for r in audited] == [
        ("succeeded", ""),
        ("refused", "not-parked"),
    ]


async def test_an_object_stripe_does_not_know_is_parked_at_once(gateway: GatewayHarness) -> None:
    event = stripe_event(
        "customer.subscription.updated",
        subscription_object(f"sub_{uuid.uuid4().hex[:14]}", "cus_x", organisation=organisation()),
    )
    await gateway.deliver(event)

    parked = await gateway.processed(event["id"], status="parked")

    assert parked["attempts"] == 1
    assert "StripeMissing" in parked["last_error"]
