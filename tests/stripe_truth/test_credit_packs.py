"""Credit packs and auto-recharge across the seams: an owner buys through devstripe's Checkout
(payment mode), the gateway observes the payment, subscriptions grants, metering adds a bucket;
webhooks arrive duplicated and late; refunds claw back what is left; auto-recharge charges once
per crossing, never beyond its monthly cap, and turns itself off after repeated declines. All
real: devstripe, the gateway, subscriptions, metering, on the real broker and database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import orjson
import pytest
import pytest_asyncio

from services.metering.app import SERVICE as METERING
from services.metering.settings import MeteringSettings
from shared.clock import SystemClock
from shared.events import AgentMessageProcessed, AgentMessageProcessedV1
from shared.testing import eventually, produce, read_topic
from shared.testing.service import running_service
from shared.topics import AGENT_USAGE, BILLING_OPERATIONS, CREDIT_GRANT_REQUESTS, STRIPE_EVENTS
from tests.stripe_truth.conftest import Stack, settings_of

pytestmark = pytest.mark.asyncio(loop_scope="module")

DISORDER = {"duplicate": 0.5, "max_delay": 0.8, "seed": 20}
"""Stripe delivers some webhooks twice, and late: later ones overtake earlier ones."""
OWN_DEVSTRIPE = True
"""A devstripe of the module's own: a full sweep sees only its refunds."""

FREE_CREDITS = 1000
PACK = 5000


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def metering(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    env = {
        **stack.isolation.env(stack.infrastructure, METERING.env_prefix),
        "METERING_DB_SCHEMA": stack.isolation.schema_for("metering"),
    }
    async with running_service(METERING, settings_of(MeteringSettings, env), SystemClock()) as (
        _,
        http,
    ):
        yield http


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def recharging(stack: Stack, metering: httpx.AsyncClient) -> Stack:
    """Subscriptions retrying a declined recharge at the next report (not an hour later)."""
    await stack.restart_subscriptions(SUBSCRIPTIONS_RECHARGE_RETRY_SECONDS="0")
    return stack


async def credits(metering: httpx.AsyncClient, org: str, **expected: object) -> dict:
    async def matches() -> dict | None:
        answer = await metering.get(f"/v1/organisations/{org}/credits")
        found = answer.json() if answer.status_code == 200 else None
        if found and all(found[k] == v for k, v in expected.items()):
            return found
        return None

    return await eventually(matches, timeout=30, what=f"{org} credits {expected}")


async def use(stack: Stack, org: str, amount: int) -> None:
    await stack.publish(
        AGENT_USAGE,
        AgentMessageProcessedV1.new(
            organisation_id=org,
            producer="agent-runtime",
            occurred_at=datetime.now(UTC),
            data=AgentMessageProcessed(
                member_id="member_owner",
                agent_id="agent_1",
                conversation_id="conv_1",
                message_id=f"msg_{uuid.uuid4().hex[:12]}",
                credits=amount,
            ),
        ),
    )


async def buy(stack: Stack, org: str, pack: str = "pack_5k") -> dict:
    """The owner buys a pack and pays in devstripe's Checkout."""
    answer = await stack.subscriptions.post(  # type: ignore[union-attr]
        "/v1/subscription/credit-packs", json={"pack": pack}, headers=stack.acting(org)
    )
    assert answer.status_code == 200, answer.text
    bought = answer.json()
    session = bought["checkout_url"].rsplit("/", 1)[1]
    completed = await stack.stripe("POST", f"/_devstripe/checkout/{session}/complete")
    return {**bought["purchase"], "payment_intent": completed["payment_intent"]}


async def purchases(stack: Stack, org: str) -> list[dict]:
    answer = await stack.subscriptions.get(  # type: ignore[union-attr]
        "/v1/subscription/credit-purchases", headers=stack.acting(org)
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


async def grants_of(stack: Stack, org: str) -> list[dict]:
    records = await read_topic(stack.bootstrap, stack.topic(CREDIT_GRANT_REQUESTS))
    commands = [orjson.loads(r.value) for r in records if r.key == org.encode()]
    return [c["data"] for c in commands if c["type"].endswith(".v2")]


async def test_a_pack_is_granted_once_however_its_payment_is_reported(
    stack: Stack, metering: httpx.AsyncClient
) -> None:
    org = await stack.organisation()
    await credits(metering, org, balance=FREE_CREDITS)
    members_cannot = await stack.subscriptions.post(  # type: ignore[union-attr]
        "/v1/subscription/credit-packs",
        json={"pack": "pack_5k"},
        headers=stack.acting(org, "member_nobody"),
    )
    assert members_cannot.status_code == 403

    bought = await buy(stack, org)
    found = await credits(metering, org, balance=FREE_CREDITS + PACK)
    pack = next(b for b in found["buckets"] if b["source"] == "pack")
    assert (pack["granted"], pack["grant_key"]) == (PACK, f"purchase:{bought['purchase_id']}")
    await stack.quiet()

    # The gateway's reports again, and the oldest of them last: nothing more is granted.
    reports = [
        r
        for r in await read_topic(stack.bootstrap, stack.topic(STRIPE_EVENTS))
        if r.key == org.encode() and b"stripe_payment.updated.v1" in r.value
    ]
    assert reports
    await produce(
        stack.bootstrap,
        stack.topic(STRIPE_EVENTS),
        [(r.key, r.value) for r in reports[::-1]] + [(reports[0].key, reports[0].value)],
    )
    await stack.quiet()
    await credits(metering, org, balance=FREE_CREDITS + PACK)
    assert [g["reason"] for g in await grants_of(stack, org)] == ["pack_purchase"]
    (purchase,) = await purchases(stack, org)
    assert (purchase["status"], purchase["source"], purchase["credits"]) == (
        "paid",
        "checkout",
        PACK,
    )
    assert purchase["expires_at"] is not None


async def test_a_pack_paid_while_no_webhook_came_is_granted_by_the_reconciliation(
    stack: Stack, metering: httpx.AsyncClient
) -> None:
    """Stripe holds the pack paid, but never said so (the webhooks were lost): the gateway's
    sweep finds the session paid, observes its payment, and the credits arrive once."""
    org = await stack.organisation()
    await credits(metering, org, balance=FREE_CREDITS)
    answer = await stack.subscriptions.post(  # type: ignore[union-attr]
        "/v1/subscription/credit-packs", json={"pack": "pack_5k"}, headers=stack.acting(org)
    )
    session = answer.json()["checkout_url"].rsplit("/", 1)[1]
    await stack.stripe("POST", f"/_devstripe/checkout/{session}/complete", params={"silent": "1"})
    await stack.quiet()
    assert (await purchases(stack, org))[0]["status"] == "open"

    swept = await stack.gateway.http.post(  # type: ignore[union-attr]
        "/v1/reconciliations", json={"organisation_id": org}
    )
    assert swept.status_code == 200, swept.text
    assert swept.json()["repaired"] >= 1
    await credits(metering, org, balance=FREE_CREDITS + PACK)
    await stack.quiet()
    again = await stack.gateway.http.post(  # type: ignore[union-attr]
        "/v1/reconciliations", json={"organisation_id": org}
    )
    assert again.json()["repaired"] == 0
    await stack.quiet()
    await credits(metering, org, balance=FREE_CREDITS + PACK)
    assert [g["reason"] for g in await grants_of(stack, org)] == ["pack_purchase"]


async def test_a_refund_takes_back_what_is_left_of_the_pack(
    stack: Stack, metering: httpx.AsyncClient
) -> None:
    org = await stack.organisation()
    await credits(metering, org, balance=FREE_CREDITS)
    bought = await buy(stack, org)
    await credits(metering, org, balance=FREE_CREDITS + PACK)
    await use(stack, org, 3000)  # the plan's 1,000 first (it expires sooner), then 2,000
    await credits(metering, org, balance=FREE_CREDITS + PACK - 3000)

    await stack.stripe(
        "POST", "/v1/refunds", data={"payment_intent": bought["payment_intent"], "amount": "500"}
    )
    found = await credits(metering, org, balance=FREE_CREDITS + PACK - 3000 - 2500)
    assert [(b["source"], b["remaining"]) for b in found["buckets"]] == [("pack", 500)]
    await stack.stripe("POST", "/v1/refunds", data={"payment_intent": bought["payment_intent"]})
    found = await credits(metering, org, balance=0)
    assert found["buckets"] == []
    await stack.quiet()
    (purchase,) = await purchases(stack, org)
    assert (purchase["refunded"], purchase["clawed_back"]) == (1000, PACK)
    assert [(g["reason"], g["amount"]) for g in await grants_of(stack, org)] == [
        ("pack_purchase", PACK),
        ("refund_clawback", 2500),
        ("refund_clawback", 2500),
    ]
    ledger = (await metering.get(f"/v1/organisations/{org}/ledger")).json()["entries"]
    assert [e["amount"] for e in ledger if e["reason"] == "refund_clawback"] == [-500, -2500]


async def test_a_refund_whose_webhooks_were_lost_is_clawed_back_by_the_sweep(
    stack: Stack, metering: httpx.AsyncClient
) -> None:
    org = await stack.organisation()
    await credits(metering, org, balance=FREE_CREDITS)
    bought = await buy(stack, org)
    await credits(metering, org, balance=FREE_CREDITS + PACK)
    await stack.quiet()
    await stack.stripe(
        "POST",
        "/v1/refunds",
        data={"payment_intent": bought["payment_intent"]},
        headers={"Devstripe-Silent": "1"},
    )
    await stack.quiet()
    await credits(metering, org, balance=FREE_CREDITS + PACK)  # nobody was told

    swept = await stack.gateway.http.post("/v1/reconciliations", json={})  # type: ignore[union-attr]
    assert swept.status_code == 200, swept.text
    assert swept.json()["repaired"] >= 1
    await credits(metering, org, balance=FREE_CREDITS)
    repairs = [
        a for a in await stack.events(BILLING_OPERATIONS, org) if a["type"] == "drift.repaired.v1"
    ]
    assert [(r["data"]["subject"], r["data"]["after"]["amount_refunded"]) for r in repairs] == [
        ("payment", 1000)
    ]


async def set_recharge(stack: Stack, org: str, **body: object) -> dict:
    answer = await stack.subscriptions.put(  # type: ignore[union-attr]
        "/v1/subscription/auto-recharge", json=body, headers=stack.acting(org)
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


async def recharge(stack: Stack, org: str, **expected: object) -> dict:
    async def matches() -> dict | None:
        answer = await stack.subscriptions.get(  # type: ignore[union-attr]
            "/v1/subscription/auto-recharge", headers=stack.acting(org)
        )
        found = answer.json()
        return found if all(found[k] == v for k, v in expected.items()) else None

    return await eventually(matches, timeout=30, what=f"{org} auto-recharge {expected}")


async def test_auto_recharge_charges_once_per_crossing_within_its_monthly_cap(
    stack: Stack, metering: httpx.AsyncClient
) -> None:
    org = await stack.organisation()
    await buy(stack, org)  # the card is saved with the first purchase
    await credits(metering, org, balance=FREE_CREDITS + PACK)
    refused = await stack.subscriptions.put(  # type: ignore[union-attr]
        "/v1/subscription/auto-recharge",
        json={"enabled": True, "threshold": 300, "pack": "pack_5k", "monthly_cap": 4000},
        headers=stack.acting(org),
    )
    assert refused.status_code == 422
    await set_recharge(
        stack, org, enabled=True, threshold=300, pack="pack_5k", monthly_cap=2 * PACK
    )

    async def spend(*amounts: int) -> None:
        for amount in amounts:
            await use(stack, org, amount)

    await spend(1000, 1000, 1000, 1000, 1000, 800)  # to 200: one crossing, however reported
    await credits(metering, org, balance=200 + PACK)
    await recharge(stack, org, recharged_this_month=PACK, in_flight=None, armed=True)
    await spend(1000, 1000, 1000, 1000, 1000)  # to 200 again: a second crossing
    await credits(metering, org, balance=200 + PACK)
    await recharge(stack, org, recharged_this_month=2 * PACK, in_flight=None)
    await spend(1000, 1000, 1000, 1000, 1000, 150)  # a third: the monthly cap is reached
    found = await recharge(stack, org, last_failure="monthly_cap_reached")
    assert found["recharged_this_month"] == 2 * PACK
    await stack.quiet()
    await credits(metering, org, balance=50)
    bought = await purchases(stack, org)
    assert [(p["source"], p["status"]) for p in bought] == [
        ("auto_recharge", "paid"),
        ("auto_recharge", "paid"),
        ("checkout", "paid"),
    ]
    charged = [
        r
        for r in await stack.stripe(
            "GET", "/_devstripe/requests", params={"kind": "payment_intent"}
        )
        if r["params"]["metadata"]["organisation_id"] == org
    ]
    assert len(charged) == 2


async def test_auto_recharge_turns_itself_off_after_repeated_declines(
    recharging: Stack, metering: httpx.AsyncClient
) -> None:
    stack = recharging
    org = await stack.organisation()
    bought = await buy(stack, org)
    await credits(metering, org, balance=FREE_CREDITS + PACK)
    intent = await stack.stripe("GET", f"/v1/payment_intents/{bought['payment_intent']}")
    await stack.stripe(
        "POST",
        f"/v1/customers/{intent['customer']}",
        data={"invoice_settings[default_payment_method]": "pm_card_chargeDeclined"},
    )
    await set_recharge(
        stack, org, enabled=True, threshold=1000, pack="pack_5k", monthly_cap=10 * PACK
    )
    for n, amount in enumerate((5500, 100, 100), start=1):  # below 1,000, then lower
        await use(stack, org, amount)
        await recharge(stack, org, failures=n)
    found = await recharge(stack, org, enabled=False)
    assert (found["disabled_reason"], found["last_failure"]) == (
        "payment_failed_repeatedly",
        "card_declined",
    )
    await use(stack, org, 100)
    await stack.quiet()
    await credits(metering, org, balance=FREE_CREDITS + PACK - 5800)
    assert [(p["source"], p["status"], p["failure_code"]) for p in await purchases(stack, org)][
        :3
    ] == [("auto_recharge", "failed", "card_declined")] * 3
