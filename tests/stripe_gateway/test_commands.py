"""Commands reach Stripe (devstripe: localstripe plus Checkout and the Billing Portal) once,
with their idempotency keys; failures are retried, then reported and parked."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

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
from tests.stripe_gateway.conftest import GatewayHarness

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
    assert request["idempotency_key"] == "stripe_checkout.requested.v1:req_checkout_0001"
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
    assert request["idempotency_key"] == f"stripe_checkout.requested.v1:{asked.event_id}"


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
    assert request["idempotency_key"] == "stripe_portal.requested.v1:req_portal_0002"


async def test_quantity_and_cancellation_changes_reach_stripe(gateway: GatewayHarness) -> None:
    org = organisation()
    subscription = (await subscribed(gateway, org))["subscription_id"]

    await gateway.command(
        command(QuantityChangeRequestedV1, org, QuantityChange(quantity=5, revision=2)),
        command(QuantityChangeRequestedV1, org, QuantityChange(quantity=4, revision=1)),  # older
        command(CancelAtPeriodEndRequestedV1, org, CancelAtPeriodEnd(cancel_at_period_end=True)),
    )
    await outcomes(gateway, org, 4)  # the checkout's, then the three commands'
    in_stripe = await gateway.stripe("GET", f"/v1/subscriptions/{subscription}")
    assert in_stripe["items"]["data"][0]["quantity"] == 5
    assert in_stripe["cancel_at_period_end"] is True

    await gateway.command(
        command(CancelAtPeriodEndRequestedV1, org, CancelAtPeriodEnd(cancel_at_period_end=False)),
        command(
            PriceChangeRequestedV1, org, PriceChange(price_id="price_max_monthly", timing="now")
        ),
    )
    commanded = await outcomes(gateway, org, 6)
    in_stripe = await gateway.stripe("GET", f"/v1/subscriptions/{subscription}")
    assert in_stripe["cancel_at_period_end"] is False
    assert in_stripe["items"]["data"][0]["plan"]["id"] == "price_max_monthly"
    skipped = [c for c in commanded if c["data"]["result"].get("skipped")]
    assert [c["data"]["result"]["revision"] for c in skipped] == [1]

    async def reported() -> dict[str, Any] | None:  # devstripe's `updated` webhooks came back
        (state,) = (await gateway.http.get(f"/v1/organisations/{org}/subscriptions")).json()
        done = state["price_id"] == "price_max_monthly" and state["quantity"] == 5
        return state if done and not state["cancel_at_period_end"] else None

    await eventually(reported, what="the subscription as Stripe reports it")


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
        command(QuantityChangeRequestedV1, org, QuantityChange(quantity=9, revision=1))
    )

    outcome = (await outcomes(gateway, org, 2))[-1]
    assert outcome["type"] == "stripe_command.succeeded.v1"
    in_stripe = await gateway.stripe("GET", f"/v1/subscriptions/{subscription}")
    assert in_stripe["items"]["data"][0]["quantity"] == 9


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
    failing = command(QuantityChangeRequestedV1, org, QuantityChange(quantity=9, revision=1))
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
