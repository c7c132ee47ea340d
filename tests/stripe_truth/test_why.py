"""Each way the subscription state drifted from what Stripe bills, driven from outside (the
subscription service's HTTP API, devstripe's Checkout, Stripe's webhooks with Stripe's
disorder): each ends with our state equal to Stripe's."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.subscriptions.domain.catalogue import DEFAULT
from shared import cli
from shared.events.members import OrganisationCreated, OrganisationCreatedV1
from shared.testing import eventually
from shared.topics import STRIPE_EVENTS, WORKSPACE_MEMBERS
from tests.stripe_gateway.conftest import invoice_object, stripe_event, stripe_subscription
from tests.stripe_truth.conftest import Stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

DISORDER = {"duplicate": 0.3, "max_delay": 0.8, "seed": 16}
"""Stripe delivers some events twice, and late, so that they overtake each other."""


async def test_a_withdrawn_downgrade_stays_withdrawn(stack: Stack) -> None:
    """On Max, Pro then Max again at once: Stripe's report of the Pro price may arrive after
    the withdrawal; it must not schedule the downgrade again for good."""
    org = await stack.organisation()
    await stack.pay(org, "max")

    scheduled = await stack.owner(org, "change", {"plan": "pro"})
    withdrawn = await stack.owner(org, "change", {"plan": "max"})
    await stack.quiet()

    assert scheduled.json()["action"] == "downgrade_scheduled"
    assert withdrawn.json()["action"] == "downgrade_withdrawn"
    assert withdrawn.json()["subscription"]["pending_plan"] is None
    in_stripe = await stack.in_stripe(org)
    assert in_stripe["plan"]["id"] == "price_max_monthly"  # type: ignore[index]
    sub = await stack.subscription(org)
    assert (sub["plan"], sub["pending_plan"]) == ("max", None)


async def test_withdrawing_a_downgrade_restores_the_price_without_proration(stack: Stack) -> None:
    org = await stack.organisation()
    await stack.pay(org, "max")
    await stack.owner(org, "change", {"plan": "pro"})
    await stack.owner(org, "change", {"plan": "max"})
    await stack.quiet()

    subscription = (await stack.in_stripe(org))["id"]  # type: ignore[index]
    updates = await stack.stripe(
        "GET", "/_devstripe/requests", params={"kind": "subscription_update"}
    )
    prices = [
        (u["params"]["items"][0]["price"], u["params"]["proration_behavior"])
        for u in updates
        if u["path"] == f"/v1/subscriptions/{subscription}" and "proration_behavior" in u["params"]
    ]
    assert prices == [("price_pro_monthly", "none"), ("price_max_monthly", "none")]


async def test_a_quick_cancel_then_reactivate_stays_active(stack: Stack) -> None:
    """Both of Stripe's reports carry the same second; they cannot be ordered by it."""
    org = await stack.organisation()
    await stack.pay(org, "pro")

    await stack.owner(org, "cancel")
    back = await stack.owner(org, "reactivate")
    await stack.quiet()

    assert (back.status_code, back.json()["cancel_at_period_end"]) == (200, False)
    assert (await stack.in_stripe(org))["cancel_at_period_end"] is False  # type: ignore[index]
    assert (await stack.subscription(org))["cancel_at_period_end"] is False


async def test_a_late_payment_failure_does_not_make_a_paying_organisation_past_due(
    stack: Stack,
) -> None:
    """`invoice.payment_failed` arriving after `invoice.paid` for the same invoice."""
    org = await stack.organisation()
    await stack.pay(org, "pro")
    in_stripe = await stack.in_stripe(org)
    assert in_stripe is not None
    late = stripe_event(
        "invoice.payment_failed",
        invoice_object(
            in_stripe["latest_invoice"], in_stripe["customer"], in_stripe["id"], paid=False
        ),
    )

    await stack.gateway.deliver(late)  # type: ignore[union-attr]
    await stack.gateway.processed(late["id"])  # type: ignore[union-attr]
    await stack.quiet()

    assert (await stack.subscription(org))["standing"] == "active"
    kinds = [e["type"] for e in await stack.reported(org)]
    assert not any("payment_failed" in kind for kind in kinds)


async def test_the_portal_on_free_is_refused_with_the_gateways_reason(stack: Stack) -> None:
    org = await stack.organisation()

    answer = await stack.subscriptions.post(  # type: ignore[union-attr]
        "/v1/billing-portal", headers=stack.acting(org)
    )

    assert answer.status_code == 409
    assert answer.json()["reason"] == "no_customer"


async def test_enterprise_features_round_trip_exactly(stack: Stack) -> None:
    org = await stack.organisation()
    features = ["sla, 24x7", "saml_sso", "audit log, 7 years"]

    answer = await stack.subscriptions.put(  # type: ignore[union-attr]
        f"/v1/organisations/{org}/enterprise",
        json={"monthly_credits": 750_000, "features": features},
    )

    assert answer.status_code == 200
    assert answer.json()["features"] == features
    assert (await stack.subscription(org))["features"] == features


async def test_a_checkout_paid_while_the_gateway_is_down_is_not_lost(stack: Stack) -> None:
    """devstripe, as Stripe, retries a webhook that was not acknowledged."""
    org = await stack.organisation()
    answer = await stack.owner(org, "change", {"plan": "pro"})
    session = answer.json()["checkout_url"].rsplit("/", 1)[1]

    await stack.stop_gateway()
    try:
        await stack.stripe("POST", f"/_devstripe/checkout/{session}/complete")
        await asyncio.sleep(1.5)  # a delivery or two refused meanwhile
    finally:
        await stack.start_gateway()

    await stack.subscription(org, plan="pro")
    await stack.quiet()


async def test_a_report_for_an_unknown_organisation_is_parked_then_replayed(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stripe bills an organisation the member directory has not announced (yet): nothing
    is dropped; the report waits in the dead-letter topic, an operator sees it and replays it
    once the organisation exists."""
    org = f"org_{uuid.uuid4().hex[:12]}"
    await stripe_subscription(stack.devstripe, org, price="price_max_monthly")

    async def parked() -> list[dict]:
        return [a for a in await stack.alerts(org) if a["reason"] == "unknown_organisation"]

    (alert,) = await eventually_list(parked)
    assert alert["kind"] == "report_parked"
    ready = (await stack.subscriptions.get("/readyz")).json()  # type: ignore[union-attr]
    assert ready["consumers"]["stripe"]["parked"]["since_start"] >= 1

    await stack.publish(
        WORKSPACE_MEMBERS,
        stack.directory(
            OrganisationCreatedV1, org, OrganisationCreated(created_at=datetime.now(UTC))
        ),
    )
    await stack.subscription(org, plan="free")
    await replay(stack, monkeypatch, "unknown_organisation")

    found = await stack.subscription(org, plan="max")
    assert found["cycle"] == "monthly"


async def test_a_checkout_for_a_price_the_catalogue_lacks_is_parked_then_replayed(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A paid checkout whose price the catalogue does not know is not marked applied: parked,
    with an alert; once the catalogue gains the price, a replay starts the plan."""
    org = await stack.organisation()
    created = await stack.gateway.http.post(  # type: ignore[union-attr]
        "/v1/checkout-sessions",
        json={
            "organisation_id": org,
            "request_id": f"req_{uuid.uuid4().hex}",
            "price_id": "price_pro_monthly_eu",
            "quantity": 1,
            "success_url": "https://app.example/ok",
            "cancel_url": "https://app.example/no",
        },
    )
    await stack.stripe("POST", f"/_devstripe/checkout/{created.json()['id']}/complete")

    async def parked() -> list[dict]:
        return [a for a in await stack.alerts(org) if a["reason"] == "unknown_price"]

    alerts = await eventually_list(parked, at_least=2)  # the checkout, and the subscription
    assert {a["kind"] for a in alerts} == {"report_parked"}
    assert (await stack.subscription(org))["plan"] == "free"

    catalogue = json.loads(DEFAULT.read_text())
    catalogue["version"] = 2
    catalogue["plans"]["pro"]["prices"]["monthly"]["also_billed_as"] = ["price_pro_monthly_eu"]
    (tmp_path / "plans.v2.json").write_text(json.dumps(catalogue))
    await stack.restart_subscriptions(SUBSCRIPTIONS_CATALOGUE=str(tmp_path / "plans.v2.json"))
    try:
        await replay(stack, monkeypatch, "unknown_price")
        found = await stack.subscription(org, plan="pro")
    finally:
        await stack.restart_subscriptions()
    assert found["monthly_credits"] == 20_000


async def replay(stack: Stack, monkeypatch: pytest.MonkeyPatch, reason: str) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", stack.bootstrap)
    monkeypatch.setenv("TOPIC_PREFIX", stack.settings.topic_prefix)
    code = await asyncio.to_thread(
        cli.main, ["dead-letters", STRIPE_EVENTS.name, "--reason", reason, "--replay"]
    )
    assert code == 0


async def eventually_list(
    check: Callable[[], Awaitable[list[dict]]], at_least: int = 1
) -> list[dict]:
    async def enough() -> list[dict] | None:
        found = await check()
        return found if len(found) >= at_least else None

    return await eventually(enough, timeout=30, what=f"{at_least} found")
