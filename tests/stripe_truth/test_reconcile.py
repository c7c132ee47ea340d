"""The backstop: drift seeded directly in Stripe (devstripe), without the webhooks that would
report it, is found and repaired by one sweep, and each repair is announced; the ledger check
reports a wallet that differs from its ledger."""

from __future__ import annotations

import pytest

from shared.topics import BILLING_OPERATIONS, STRIPE_EVENTS
from tests.stripe_gateway.conftest import stripe_update
from tests.stripe_truth.conftest import Stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

OWN_DEVSTRIPE = True


async def test_drift_seeded_in_stripe_is_repaired_by_one_sweep_and_announced(
    stack: Stack,
) -> None:
    repriced, ended, resized, cancelled = [await stack.organisation() for _ in range(4)]
    unreported = await stack.organisation()
    for org in (repriced, ended, resized, cancelled):
        await stack.pay(org, "pro")
    await stack.quiet()
    subscription = {
        org: await stack.in_stripe(org) for org in (repriced, ended, resized, cancelled)
    }

    # Behind our back, with no webhook: a price changed (in the dashboard), a subscription
    # deleted, a quantity changed, a cancellation at period end set...
    await stripe_update(stack.devstripe, subscription[repriced], price="price_max_monthly")
    await stack.stripe(
        "DELETE",
        f"/v1/subscriptions/{subscription[ended]['id']}",
        headers={"Devstripe-Silent": "1"},
    )
    await stripe_update(stack.devstripe, subscription[resized], quantity=7)
    await stripe_update(stack.devstripe, subscription[cancelled], cancel_at_period_end="true")
    # ... and a Checkout paid whose webhook never came (its retries ran out).
    answer = await stack.owner(unreported, "change", {"plan": "max"})
    session = answer.json()["checkout_url"].rsplit("/", 1)[1]
    await stack.stripe(
        "POST", f"/_devstripe/checkout/{session}/complete", params={"silent": "true"}
    )
    await stack.quiet()
    assert (await stack.subscription(repriced))["plan"] == "pro"  # not known yet
    assert (await stack.subscription(unreported))["plan"] == "free"

    run = await stack.gateway.http.post("/v1/reconciliations", json={})  # type: ignore[union-attr]
    assert run.status_code == 200, run.text
    counts = run.json()
    assert counts["repaired"] >= 5 and counts["error"] is None

    await stack.subscription(repriced, plan="max")
    await stack.subscription(ended, plan="free")
    await stack.subscription(cancelled, cancel_at_period_end=True)
    await stack.subscription(unreported, plan="max")
    await stack.quiet()
    in_stripe = await stack.stripe("GET", f"/v1/subscriptions/{subscription[resized]['id']}")
    assert in_stripe["quantity"] == 1  # our seat count (the owner) was sent again

    repairs = {
        org: [
            e["data"]
            for e in await stack.events(BILLING_OPERATIONS, org)
            if e["type"] == "drift.repaired.v1"
        ]
        for org in (repriced, ended, resized, cancelled, unreported)
    }
    assert repairs[repriced][0]["before"]["price_id"] == "price_pro_monthly"
    assert repairs[repriced][0]["after"]["price_id"] == "price_max_monthly"
    assert repairs[ended][0]["after"]["status"] == "canceled"
    assert [(r["subject"], r["before"], r["after"]) for r in repairs[resized]] == [
        ("subscription", {"quantity": 1}, {"quantity": 7}),  # what the gateway held: Stripe's
        ("quantity", {"quantity": 7}, {"quantity": 1}),  # our seat count, sent again
    ]
    assert repairs[cancelled][0]["after"]["cancel_at_period_end"] is True
    assert {r["subject"] for r in repairs[unreported]} == {"subscription", "checkout_session"}
    reported = [e["data"].get("observed_by") for e in await stack.events(STRIPE_EVENTS, repriced)]
    assert "reconciliation" in reported

    again = await stack.gateway.http.post("/v1/reconciliations", json={})  # type: ignore[union-attr]
    assert again.json()["repaired"] == 0  # nothing left to repair
    listed = (await stack.gateway.http.get("/v1/reconciliations")).json()  # type: ignore[union-attr]
    assert [r["id"] for r in listed[:2]] == [again.json()["id"], counts["id"]]


async def test_our_own_state_that_strays_from_stripe_is_repaired_by_the_subscription_check(
    stack: Stack,
) -> None:
    """A change that never reached Stripe (here: written straight into our table, as a bug
    would) is put back to what Stripe holds, and announced with before and after."""
    org = await stack.organisation()
    await stack.pay(org, "pro")
    await stack.quiet()
    await stack.subscriptions_kernel.pool.execute(
        "UPDATE subscriptions SET cancel_at_period_end = true WHERE organisation_id = $1", org
    )

    run = await stack.subscriptions.post(  # type: ignore[union-attr]
        "/v1/reconciliations", json={"organisation_id": org}
    )

    assert run.status_code == 200, run.text
    (repair,) = run.json()["repairs"]
    assert repair["fields"] == ["cancel_at_period_end"]
    assert (repair["before"], repair["after"]) == (
        {"cancel_at_period_end": True},
        {"cancel_at_period_end": False},
    )
    assert (await stack.subscription(org))["cancel_at_period_end"] is False
    announced = [e["type"] for e in await stack.events(BILLING_OPERATIONS, org)]
    assert "drift.repaired.v1" in announced
