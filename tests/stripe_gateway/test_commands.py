"""Commands reach Stripe (devstripe, the part of Stripe this project uses) once,
with idempotency keys scoped by organisation; concurrent identical requests make one call;
failures are retried, then reported and parked; no transaction is open during a Stripe call."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from shared.events.stripe import (
    CancelAtPeriodEnd,
    CancelAtPeriodEndRequestedV1,
    CheckoutRequest,
    CheckoutRequestedV1,
    PriceChange,
    PriceChangeRequestedV1,
    QuantityChange,
    QuantityChangeRequestedV1,
)
from shared.testing import eventually, read_topic
from shared.topics import STRIPE_COMMANDS, STRIPE_EVENTS
from tests.stripe_gateway.conftest import GatewayHarness, checkout_object, stripe_event

pytestmark = pytest.mark.asyncio(loop_scope="module")

SUCCESS, CANCEL = "https://app.example/billing?done", "https://app.example/billing?cancelled"


def organisation() -> str:
    return f"org_{uuid.uuid4().hex[:10]}"


def command(kind: Any, organisation: str, data: Any) -> Any:
    return kind.new(
        organisation_id=organisation,
        producer="subscriptions",
        occurred_at=datetime.now(UTC),
        data=data,
    )


async def checkout(
    gateway: GatewayHarness,
    org: str,
    request_id: str,
    price: str = "price_pro_monthly",
    quantity: int = 3,
):  # type: ignore[no-untyped-def]
    return await gateway.http.post(
        "/v1/checkout-sessions",
        json={
            "organisation_id": org,
            "request_id": request_id,
            "price_id": price,
            "quantity": quantity,
            "success_url": SUCCESS,
            "cancel_url": CANCEL,
        },
    )


async def requests_of(gateway: GatewayHarness, kind: str, org: str) -> list[dict[str, Any]]:
    """What devstripe received for the organisation (checkout: its client reference; portal:
    its customer)."""
    found = await gateway.stripe("GET", "/_devstripe/requests", params={"kind": kind})
    mine = await customers(gateway, org)
    return [
        r
        for r in found
        if r["params"].get("client_reference_id") == org
        or (kind == "portal" and r["params"].get("customer") in mine)
    ]


async def customers(gateway: GatewayHarness, org: str) -> set[str]:
    row = await gateway.kernel.pool.fetchval(
        "SELECT customer_id FROM organisations WHERE organisation_id = $1", org
    )
    return {row} if row else set()


async def subscribed(gateway: GatewayHarness, org: str, quantity: int = 3) -> dict[str, Any]:
    """An organisation with a live subscription: a checkout completed in devstripe."""
    session = (await checkout(gateway, org, f"req_{uuid.uuid4().hex}", quantity=quantity)).json()
    await gateway.stripe("POST", f"/_devstripe/checkout/{session['id']}/complete")

    async def live() -> dict[str, Any] | None:
        found = (await gateway.http.get(f"/v1/organisations/{org}/subscriptions")).json()
        return found[0] if found and not found[0]["deleted"] else None

    return await eventually(live, what=f"{org} subscribed")


async def outcomes(gateway: GatewayHarness, org: str, at_least: int) -> list[dict[str, Any]]:
    async def found() -> list[dict[str, Any]] | None:
        records = await read_topic(gateway.bootstrap, gateway.topic(STRIPE_EVENTS))
        mine = [orjson.loads(r.value) for r in records if r.key == org.encode()]
        mine = [e for e in mine if e["type"].startswith("stripe_command.")]
        return mine if len(mine) >= at_least else None

    return await eventually(found, what=f"{at_least} command outcomes for {org}")


async def test_a_checkout_session_has_the_right_parameters_and_is_created_once(
    gateway: GatewayHarness,
) -> None:
    org = organisation()

    first = await checkout(gateway, org, "req_checkout_0001", quantity=4)
    again = await checkout(gateway, org, "req_checkout_0001", quantity=4)

    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert first.json()["url"].startswith(gateway.devstripe.url + "/checkout/cs_test_")
    (request,) = await requests_of(gateway, "checkout", org)
    params = request["params"]
    assert params["mode"] == "subscription"
    assert params["client_reference_id"] == org
    assert params["line_items"] == [{"price": "price_pro_monthly", "quantity": "4"}]
    assert (params["success_url"], params["cancel_url"]) == (SUCCESS, CANCEL)
    assert params["subscription_data"] == {"metadata": {"organisation_id": org}}
    assert params["metadata"]["request_id"] == "req_checkout_0001"
    assert params["customer"] in await customers(gateway, org)
    assert request["idempotency_key"] == f"{org}:stripe_checkout.requested.v1:req_checkout_0001"
    customer = await gateway.stripe("GET", f"/v1/customers/{params['customer']}")
    assert customer["metadata"] == {"organisation_id": org}


async def test_a_checkout_command_delivered_twice_creates_one_session(
    gateway: GatewayHarness,
) -> None:
    org = organisation()
    asked = command(
        CheckoutRequestedV1,
        org,
        CheckoutRequest(
            price_id="price_max_monthly", quantity=2, success_url=SUCCESS, cancel_url=CANCEL
        ),
    )

    await gateway.command(asked, asked)

    (outcome,) = await outcomes(gateway, org, 1)
    assert outcome["type"] == "stripe_command.succeeded.v1"
    assert outcome["data"]["command_id"] == str(asked.event_id)
    assert outcome["data"]["result"]["url"].startswith(gateway.devstripe.url + "/checkout/")
    (request,) = await requests_of(gateway, "checkout", org)
    assert request["idempotency_key"] == f"{org}:stripe_checkout.requested.v1:{asked.event_id}"


async def test_a_portal_session_needs_a_customer_and_has_the_right_parameters(
    gateway: GatewayHarness,
) -> None:
    org = organisation()
    body = {
        "organisation_id": org,
        "request_id": "req_portal_0001",
        "return_url": "https://app.example/billing",
    }

    refused = await gateway.http.post("/v1/portal-sessions", json=body)
    await checkout(gateway, org, "req_checkout_0002")
    created = await gateway.http.post(
        "/v1/portal-sessions", json={**body, "request_id": "req_portal_0002"}
    )

    assert refused.status_code == 409
    assert refused.json()["reason"] == "no_customer"
    assert created.status_code == 200
    assert created.json()["url"].startswith(gateway.devstripe.url + "/portal/bps_")
    (request,) = await requests_of(gateway, "portal", org)
    assert request["params"] == {
        "customer": next(iter(await customers(gateway, org))),
        "return_url": "https://app.example/billing",
    }
    assert request["idempotency_key"] == f"{org}:stripe_portal.requested.v1:req_portal_0002"


async def test_quantity_and_cancellation_changes_reach_stripe(gateway: GatewayHarness) -> None:
    org = organisation()
    subscription = (await subscribed(gateway, org))["subscription_id"]

    await gateway.command(
        command(QuantityChangeRequestedV1, org, QuantityChange(quantity=5, revision=2)),
        command(QuantityChangeRequestedV1, org, QuantityChange(quantity=4, revision=1)),  # older
        command(CancelAtPeriodEndRequestedV1, org, CancelAtPeriodEnd(cancel_at_period_end=True)),
    )
    commanded = await outcomes(gateway, org, 4)  # the checkout's, then the three commands'
    assert [c["data"]["result"].get("skipped") for c in commanded[1:3]] == [None, True]
    await gateway.held(org, quantity=5, cancel_at_period_end=True)
    in_stripe = await gateway.stripe("GET", f"/v1/subscriptions/{subscription}")
    assert in_stripe["items"]["data"][0]["quantity"] == 5
    assert in_stripe["cancel_at_period_end"] is True

    await gateway.command(
        command(CancelAtPeriodEndRequestedV1, org, CancelAtPeriodEnd(cancel_at_period_end=False)),
        command(
            PriceChangeRequestedV1, org, PriceChange(price_id="price_max_monthly", timing="now")
        ),
    )
    await outcomes(gateway, org, 6)
    in_stripe = await gateway.stripe("GET", f"/v1/subscriptions/{subscription}")
    assert in_stripe["cancel_at_period_end"] is False
    assert in_stripe["items"]["data"][0]["plan"]["id"] == "price_max_monthly"
    assert in_stripe["items"]["data"][0]["quantity"] == 5  # kept when only the price changes
    await gateway.held(org, price_id="price_max_monthly", quantity=5, cancel_at_period_end=False)
    updates = await gateway.stripe(
        "GET", "/_devstripe/requests", params={"kind": "subscription_update"}
    )
    mine = [u for u in updates if u["path"] == f"/v1/subscriptions/{subscription}"]
    (upgrade,) = [u for u in mine if "proration_behavior" in u["params"]]
    assert upgrade["params"]["proration_behavior"] == "always_invoice"  # an upgrade: prorated
    assert all(u["idempotency_key"].startswith(f"{org}:") for u in mine)


async def test_stripe_failing_for_a_while_is_retried(gateway: GatewayHarness) -> None:
    org = organisation()
    subscription = (await subscribed(gateway, org))["subscription_id"]
    await gateway.stripe(
        "POST",
        "/_devstripe/faults",
        content=orjson.dumps(
            {"path": f"/v1/subscriptions/{subscription}", "status": 503, "times": 2}
        ),
    )

    await gateway.command(
        command(CancelAtPeriodEndRequestedV1, org, CancelAtPeriodEnd(cancel_at_period_end=True))
    )

    outcome = (await outcomes(gateway, org, 2))[-1]
    assert outcome["type"] == "stripe_command.succeeded.v1"
    in_stripe = await gateway.stripe("GET", f"/v1/subscriptions/{subscription}")
    assert in_stripe["cancel_at_period_end"] is True


async def test_a_command_that_keeps_failing_is_reported_and_parked(
    gateway: GatewayHarness,
) -> None:
    org = organisation()
    subscription = (await subscribed(gateway, org))["subscription_id"]
    await gateway.stripe(
        "POST",
        "/_devstripe/faults",
        content=orjson.dumps(
            {"path": f"/v1/subscriptions/{subscription}", "status": 429, "times": 100}
        ),
    )
    no_subscription = organisation()
    failing = command(
        CancelAtPeriodEndRequestedV1, org, CancelAtPeriodEnd(cancel_at_period_end=True)
    )
    orphan = command(
        CancelAtPeriodEndRequestedV1, no_subscription, CancelAtPeriodEnd(cancel_at_period_end=True)
    )

    await gateway.command(failing, orphan)

    failed = (await outcomes(gateway, org, 2))[-1]
    assert failed["type"] == "stripe_command.failed.v1"
    assert (failed["data"]["command_id"], failed["data"]["reason"]) == (
        str(failing.event_id),
        "stripe_unavailable",
    )
    (refused,) = await outcomes(gateway, no_subscription, 1)
    assert refused["data"]["reason"] == "no_subscription"
    parked = await read_topic(
        gateway.bootstrap,
        STRIPE_COMMANDS.dead_letter_topic(gateway.settings.topic_prefix),
        at_least=2,
    )
    assert sorted(dict(r.headers)["dlq.reason"].decode() for r in parked) == [
        "no_subscription",
        "stripe_unavailable",
    ]


async def test_idempotency_is_scoped_by_organisation_and_refuses_another_body(
    gateway: GatewayHarness,
) -> None:
    """The same request id from two organisations is two requests (one organisation must never
    receive the other's session); the same id with another body is refused, as Stripe does."""
    a, b = organisation(), organisation()

    for_a = await checkout(gateway, a, "req_shared_0001")
    for_b = await checkout(gateway, b, "req_shared_0001")
    other_price = await checkout(gateway, a, "req_shared_0001", price="price_max_monthly")
    other_quantity = await checkout(gateway, a, "req_shared_0001", quantity=9)

    assert for_a.status_code == for_b.status_code == 200
    assert for_a.json()["id"] != for_b.json()["id"]
    (request_b,) = await requests_of(gateway, "checkout", b)
    assert request_b["params"]["client_reference_id"] == b
    for refused in (other_price, other_quantity):
        assert refused.status_code == 409
        assert refused.json()["reason"] == "idempotency_conflict"
    assert len(await requests_of(gateway, "checkout", a)) == 1


async def test_concurrent_identical_requests_make_one_stripe_call_and_one_outcome(
    gateway: GatewayHarness,
) -> None:
    org = organisation()
    await gateway.stripe(
        "POST",
        "/_devstripe/faults",
        content=orjson.dumps({"path": "/v1/checkout/sessions", "delay": 0.5, "times": 1}),
    )

    answers = await asyncio.gather(*(checkout(gateway, org, "req_burst_0001") for _ in range(5)))

    assert [a.status_code for a in answers] == [200] * 5
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(await requests_of(gateway, "checkout", org)) == 1
    await asyncio.sleep(0.3)  # an extra outcome, if any, would be on its way by now
    (outcome,) = await outcomes(gateway, org, 1)
    assert outcome["data"]["command_id"] == "req_burst_0001"


async def test_no_transaction_is_open_while_stripe_is_called(gateway: GatewayHarness) -> None:
    """Processing a completed checkout asks Stripe for the session and its subscription;
    while Stripe takes its time (a second each), the gateway holds no transaction (nor the
    locks in it): none stays idle in a transaction for half a second."""
    org = organisation()
    session = (await checkout(gateway, org, f"req_{uuid.uuid4().hex}")).json()
    completed = await gateway.stripe(
        "POST", f"/_devstripe/checkout/{session['id']}/complete", params={"silent": "true"}
    )
    for path in (
        f"/v1/checkout/sessions/{session['id']}",
        f"/v1/subscriptions/{completed['subscription']}",
    ):
        await gateway.stripe(
            "POST",
            "/_devstripe/faults",
            content=orjson.dumps({"path": path, "delay": 1.0, "times": 1}),
        )
    event = stripe_event(
        "checkout.session.completed",
        checkout_object(session["id"], completed["customer"], completed["subscription"], org),
    )
    await gateway.deliver(event)

    idle_in_transaction = []
    while (await gateway.inbox(event["id"]))["status"] == "pending":  # type: ignore[index]
        idle_in_transaction += await gateway.kernel.pool.fetch(
            """SELECT pid, query FROM pg_stat_activity
               WHERE application_name = 'stripe-gateway' AND datname = current_database()
                 AND state LIKE 'idle in transaction%'
                 AND now() - state_change > interval '0.5 seconds'"""
        )
        await asyncio.sleep(0.05)

    assert idle_in_transaction == []
    kinds = [e["type"] for e in await gateway.mine(org, 3)]
    assert "stripe_checkout.completed.v2" in kinds
