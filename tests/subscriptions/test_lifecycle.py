"""The subscription lifecycle against the real broker and database, with metering and the
Stripe gateway (and devstripe) running beside it, and an injected clock."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from shared import cli, identity
from shared.events.members import MemberRole
from shared.events.stripe import (
    ObservedBy,
    StripeCheckoutCompletedV2,
    StripeCheckoutObserved,
    StripeSubscriptionDeletedV2,
    StripeSubscriptionObserved,
    StripeSubscriptionUpdatedV2,
)
from shared.identity import IDENTITY_HEADER
from shared.testing import eventually
from tests.subscriptions.conftest import ADMIN, MEMBER, OWNER, Billing

FREE, PRO, MAX = 1_000, 20_000, 100_000

pytestmark = pytest.mark.asyncio(loop_scope="module")


def organisation() -> str:
    return f"org_{uuid.uuid4().hex[:10]}"


async def checkout_through_stripe(
    billing: Billing, org: str, plan: str, cycle: str = "monthly"
) -> dict:
    """The owner asks for a paid plan, pays in devstripe's Checkout, and the gateway reports it."""
    response = await billing.http.post(
        "/v1/subscription/change",
        json={"plan": plan, "cycle": cycle},
        headers=billing.acting(org),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["action"] == "checkout"
    assert body["subscription"]["plan"] == "free"  # not before the payment
    session = body["checkout_url"].rsplit("/", 1)[1]
    await billing.gateway.stripe("POST", f"/_devstripe/checkout/{session}/complete")
    return await billing.subscription(org, plan=plan)


async def paid(
    billing: Billing,
    org: str,
    plan: str,
    *,
    at: datetime,
    subscription_id: str,
    cycle: str = "monthly",
) -> None:
    """What the gateway reports after a completed checkout (published directly: the clock of
    this test, not devstripe's, decides the periods)."""
    await billing.stripe(
        StripeCheckoutCompletedV2,
        org,
        StripeCheckoutObserved(
            checkout_session_id=f"cs_test_{uuid.uuid4().hex[:8]}",
            customer_id="cus_x",
            subscription_id=subscription_id,
            price_id=f"price_{plan}_{cycle}",
            quantity=1,
            request_id=None,
            started_at=at,
            observed_at=at,
            observed_by=ObservedBy.WEBHOOK,
        ),
    )
    await billing.subscription(org, plan=plan, cycle=cycle)


async def test_a_new_organisation_gets_free_and_its_credits(billing: Billing) -> None:
    org = organisation()
    created = billing.clock.now()

    credits = await billing.organisation(org, created_at=created)

    sub = await billing.subscription(org, plan="free")
    assert (credits["allotment"], credits["renews_at"]) == (FREE, "2026-12-15T12:00:00Z")
    assert (sub["seat_limit"], sub["credit_period_end"]) == (3, "2026-12-15T12:00:00Z")
    assert await billing.changes(org) == ["started"]


async def test_an_owner_goes_from_free_to_pro_through_checkout_with_the_credits_at_once(
    billing: Billing,
) -> None:
    org = organisation()
    await billing.organisation(org)

    sub = await checkout_through_stripe(billing, org, "pro")

    assert (sub["plan"], sub["cycle"], sub["monthly_credits"]) == ("pro", "monthly", PRO)
    credits = await billing.credits(org, balance=PRO)
    assert credits["allotment"] == PRO
    requests = await billing.gateway.stripe(
        "GET", "/_devstripe/requests", params={"kind": "checkout"}
    )
    (request,) = [r for r in requests if r["params"]["client_reference_id"] == org]
    assert request["params"]["line_items"] == [{"price": "price_pro_monthly", "quantity": "3"}]


@pytest.mark.parametrize(
    ("member", "status", "reason"),
    [
        (ADMIN, 403, "not_owner"),
        (MEMBER, 403, "not_owner"),
        ("member_stranger", 403, "not_a_member"),
    ],
)
async def test_only_an_owner_may_change_cancel_or_reactivate(
    billing: Billing, member: str, status: int, reason: str
) -> None:
    org = organisation()
    await billing.organisation(org)
    before = await billing.subscription(org)

    for path, body in (("change", {"plan": "pro"}), ("cancel", None), ("reactivate", None)):
        response = await billing.http.post(
            f"/v1/subscription/{path}", json=body, headers=billing.acting(org, member)
        )
        assert response.status_code == status, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["reason"] == reason
    missing = await billing.http.post("/v1/subscription/cancel", headers=billing.acting(org, None))
    assert missing.status_code == 401
    assert await billing.subscription(org) == before


async def test_a_promoted_member_may_act(billing: Billing) -> None:
    org = organisation()
    await billing.organisation(org)
    await billing.promote(org, ADMIN, MemberRole.OWNER, sequence=2)
    await billing.promote(org, ADMIN, MemberRole.ADMIN, sequence=1)  # late and older: ignored

    async def allowed() -> bool:
        response = await billing.http.post(
            "/v1/subscription/change", json={"plan": "max"}, headers=billing.acting(org, ADMIN)
        )
        return response.status_code == 200

    assert await eventually(allowed, what="the promoted owner acts")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"plan": "gold"}, 400),
        ({"plan": "pro", "cycle": "weekly"}, 400),
        ({"plan": "enterprise"}, 422),
        ({"plan": "free", "cycle": "annual"}, 409),
        ({"plan": "pro", "surprise": 1}, 400),
    ],
)
async def test_bad_requests_get_a_reason_and_change_nothing(
    billing: Billing, body: dict, status: int
) -> None:
    org = organisation()
    await billing.organisation(org)
    before = await billing.subscription(org)

    response = await billing.http.post(
        "/v1/subscription/change", json=body, headers=billing.acting(org)
    )

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert await billing.subscription(org) == before
    reactivate = await billing.http.post("/v1/subscription/reactivate", headers=billing.acting(org))
    assert (reactivate.status_code, reactivate.json()["reason"]) == (409, "not_cancelled")


async def test_pro_to_max_tops_up_the_difference_and_max_to_pro_waits_for_the_renewal(
    billing: Billing,
) -> None:
    org = organisation()
    await billing.organisation(org)
    start = billing.clock.now()
    await paid(billing, org, "pro", at=start, subscription_id="sub_upgrade")
    await billing.credits(org, balance=PRO)

    upgraded = await billing.http.post(
        "/v1/subscription/change", json={"plan": "max"}, headers=billing.acting(org)
    )
    assert (upgraded.status_code, upgraded.json()["action"]) == (200, "upgraded")
    await billing.credits(org, balance=PRO + (MAX - PRO))

    downgraded = await billing.http.post(
        "/v1/subscription/change", json={"plan": "pro"}, headers=billing.acting(org)
    )
    body = downgraded.json()
    assert (body["action"], body["subscription"]["plan"], body["subscription"]["pending_plan"]) == (
        "downgrade_scheduled",
        "max",
        "pro",
    )

    billing.clock.set(start + timedelta(days=30) - timedelta(seconds=1))
    await billing.service.renew_due(100)
    assert (await billing.subscription(org))["plan"] == "max"

    renewed = REGISTRY.get_sample_value("billing_renewals_total", {"outcome": "renewed"}) or 0
    billing.clock.set(start + timedelta(days=30))  # Nov 15 + 1 month
    sub = await billing.subscription(org, plan="pro", pending_plan=None)
    assert REGISTRY.get_sample_value("billing_renewals_total", {"outcome": "renewed"}) > renewed
    assert sub["credit_period_start"] == "2026-12-15T12:00:00Z"
    await billing.credits(org, balance=PRO, allotment=PRO)
    assert (await billing.changes(org))[-1] == "downgrade_applied"


async def test_cancel_keeps_the_plan_to_the_period_end_then_free_and_reactivate_continues(
    billing: Billing,
) -> None:
    org = organisation()
    created = billing.clock.now() - timedelta(days=20)
    await billing.organisation(org, created_at=created)
    start = billing.clock.now()
    await paid(billing, org, "pro", at=start, subscription_id="sub_cancel")

    cancelled = await billing.http.post("/v1/subscription/cancel", headers=billing.acting(org))
    assert cancelled.json()["cancel_at_period_end"] is True
    back = await billing.http.post("/v1/subscription/reactivate", headers=billing.acting(org))
    assert (back.json()["cancel_at_period_end"], back.json()["plan"]) == (False, "pro")
    again = await billing.http.post("/v1/subscription/cancel", headers=billing.acting(org))
    assert again.status_code == 200

    billing.clock.set(start + timedelta(days=29))
    await billing.service.renew_due(100)
    assert (await billing.subscription(org))["plan"] == "pro"

    billing.clock.set(start + timedelta(days=30))
    sub = await billing.subscription(org, plan="free")
    assert sub["credit_period_start"] == "2026-12-15T12:00:00Z"
    assert sub["credit_period_end"] == "2026-12-26T12:00:00Z"  # the creation day's boundary
    await billing.credits(org, balance=FREE, allotment=FREE)


async def test_monthly_renewal_on_the_billing_date_and_one_reset_after_missed_periods(
    billing: Billing,
) -> None:
    org = organisation()
    created = billing.clock.now()
    await billing.organisation(org, created_at=created)

    billing.clock.set(created + timedelta(days=30))  # 2026-12-15 12:00
    await billing.subscription(org, credit_period_start="2026-12-15T12:00:00Z")
    billing.clock.set(datetime(2027, 4, 1, tzinfo=UTC))  # three periods later
    await billing.subscription(org, credit_period_start="2027-03-15T12:00:00Z")

    renewals = [g for g in await billing.grants(org) if g[0] == "renewal_reset"]
    assert [key for _, _, key in renewals] == [
        "renew:2026-12-15T12:00:00Z",
        "renew:2027-03-15T12:00:00Z",
    ]


async def test_an_annual_plan_anchored_on_jan_31_renews_at_the_months_ends(
    billing: Billing,
) -> None:
    org = organisation()
    billing.clock.set(datetime(2028, 1, 31, 9, tzinfo=UTC))
    await billing.organisation(org)
    await paid(
        billing, org, "max", at=billing.clock.now(), subscription_id="sub_annual", cycle="annual"
    )

    starts = []
    for boundary in ("2028-02-29T09:00:00Z", "2028-03-31T09:00:00Z", "2028-04-30T09:00:00Z"):
        billing.clock.set(datetime.fromisoformat(boundary))
        sub = await billing.subscription(org, credit_period_start=boundary)
        starts.append(sub["credit_period_start"])
    assert sub["paid_period_end"] == "2029-01-31T09:00:00Z"
    assert [k for r, _, k in await billing.grants(org) if r == "renewal_reset"] == [
        f"renew:{s}" for s in starts
    ]
    await billing.credits(org, balance=MAX, renews_at="2028-05-31T09:00:00Z")


async def test_gateway_reports_duplicated_and_reordered_converge_to_the_newest_version(
    billing: Billing,
) -> None:
    org = organisation()
    await billing.organisation(org)
    start = billing.clock.now()
    await paid(billing, org, "pro", at=start, subscription_id="sub_order")

    def report(kind, version: int, **state):  # type: ignore[no-untyped-def]
        fields = dict(
            subscription_id="sub_order",
            customer_id="cus_x",
            status="active",
            price_id="price_pro_monthly",
            quantity=3,
            current_period_start=start,
            current_period_end=start + timedelta(days=30),
            cancel_at_period_end=False,
            version=version,
            observed_at=start,  # one second for all: only the versions order them
            observed_by=ObservedBy.WEBHOOK,
        )
        fields.update(state)
        return kind, StripeSubscriptionObserved(**fields)

    cancelled = report(StripeSubscriptionUpdatedV2, 2, cancel_at_period_end=True)
    older = report(StripeSubscriptionUpdatedV2, 1, status="past_due")
    newest = report(StripeSubscriptionUpdatedV2, 3, cancel_at_period_end=True, status="past_due")
    recovered = report(StripeSubscriptionUpdatedV2, 4, cancel_at_period_end=True)
    for kind, data in (newest, cancelled, newest, older, cancelled):
        await billing.stripe(kind, org, data)
    await billing.subscription(org, cancel_at_period_end=True, standing="past_due")
    await billing.stripe(recovered[0], org, recovered[1])  # paid: Stripe says active again
    sub = await billing.subscription(org, standing="active")
    assert (sub["plan"], sub["cancel_at_period_end"]) == ("pro", True)

    kind, deleted = report(StripeSubscriptionDeletedV2, 5, status="canceled")
    await billing.stripe(kind, org, deleted)
    await billing.stripe(kind, org, deleted)
    await billing.subscription(org, plan="free")
    await billing.credits(org, balance=FREE)
    assert (await billing.changes(org)).count("fell_back_to_free") == 1


async def test_the_directory_stand_in_creates_an_organisation_and_its_owner(
    billing: Billing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`billing org-created` / `billing member` publish the member directory's contract."""
    org = organisation()
    billing.clock.set(datetime.now(UTC))  # the command stamps events with the real time
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", billing.bootstrap)
    monkeypatch.setenv("TOPIC_PREFIX", billing.settings.topic_prefix)

    created = await asyncio.to_thread(cli.main, ["org-created", org, "--owner", "member_ada"])
    joined = await asyncio.to_thread(cli.main, ["member", org, "member_bob", "joined"])

    assert (created, joined) == (0, 0)
    await billing.credits(org, balance=FREE)
    owner = await billing.http.post(
        "/v1/subscription/cancel", headers=billing.acting(org, "member_ada")
    )
    assert owner.status_code == 409, owner.text
    assert owner.json()["reason"] == "nothing_to_cancel"

    async def bob_is_a_member() -> bool:
        bob = await billing.http.post(
            "/v1/subscription/cancel", headers=billing.acting(org, "member_bob")
        )
        return bob.status_code == 403 and bob.json()["reason"] == "not_owner"

    await eventually(bob_is_a_member, what="member_bob projected as a plain member")


async def test_forged_expired_and_foreign_identities_are_refused(billing: Billing) -> None:
    org, other = organisation(), organisation()
    await billing.organisation(org)
    await billing.organisation(other)
    await billing.promote(org, "member_carol", MemberRole.MEMBER, 1)
    now = billing.clock.now()

    async def carol_reads_her_own() -> bool:
        answer = await billing.http.get(
            "/v1/subscription", headers=billing.acting(org, "member_carol")
        )
        return answer.status_code == 200

    await eventually(carol_reads_her_own, what="a member reads her organisation's plan")
    signed = identity.sign(org, OWNER, now)
    flipped = "B" if signed[-10] == "A" else "A"  # inside the signature, all six bits count
    cases = (
        (identity.sign(org, OWNER, now, key=Ed25519PrivateKey.generate()), 401, "invalid-identity"),
        (identity.sign(org, OWNER, now - timedelta(minutes=6)), 401, "invalid-identity"),
        (signed[:-10] + flipped + signed[-9:], 401, "invalid-identity"),
        (identity.sign(other, "member_carol", now), 403, "not-a-member"),
        ("", 401, "missing-identity"),
    )
    for token, status, slug in cases:
        for path in ("/v1/subscription", "/v1/subscription/cancel"):
            method = "GET" if path == "/v1/subscription" else "POST"
            answer = await billing.http.request(method, path, headers={IDENTITY_HEADER: token})
            assert answer.status_code == status, (slug, path, answer.text)
            assert answer.json()["type"].endswith(slug)
    assert (await billing.subscription(org))["cancel_at_period_end"] is False
