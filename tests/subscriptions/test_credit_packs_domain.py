"""Credit packs, auto-recharge and rollover, pure: what a payment report changes, when a
balance report charges, and which grant command a plan's period sends."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.subscriptions.domain import packs
from services.subscriptions.domain.catalogue import Catalogue
from services.subscriptions.domain.packs import AutoRecharge, Payment, Purchase, Source, Status
from services.subscriptions.domain.subscription import Grant
from services.subscriptions.service import grant_command
from shared.events import CreditGrantRequestedV1, CreditGrantRequestedV2
from shared.events.subscriptions import Plan

NOW = datetime(2027, 3, 10, tzinfo=UTC)
PURCHASE = Purchase("pur_1", "org_a", "pack_5k", 5000, 1000, "usd", 365, Source.CHECKOUT)


def payment(version: int, *, paid: bool = True, refunded: int = 0, code: str | None = None):
    return Payment("pi_1", paid, 1000 if paid else 0, refunded, code, version)


def test_a_purchase_is_granted_once_whatever_the_order_of_its_reports() -> None:
    failed = packs.follow_payment(PURCHASE, payment(1, paid=False, code="card_declined"), NOW)
    assert failed is not None and failed.failed and failed.grant == 0
    paid = packs.follow_payment(failed.purchase, payment(2), NOW)
    assert paid is not None and (paid.grant, paid.purchase.status) == (5000, Status.PAID)
    assert packs.follow_payment(paid.purchase, payment(2), NOW) is None  # the same again
    assert packs.follow_payment(paid.purchase, payment(1, paid=False), NOW) is None  # late
    assert paid.purchase.expires_at() == NOW + timedelta(days=365)


@given(refunds=st.lists(st.integers(1, 400), max_size=6))
def test_refunds_claw_back_the_credits_their_share_paid_for_once(refunds: list[int]) -> None:
    news = packs.follow_payment(PURCHASE, payment(1), NOW)
    assert news is not None
    found, refunded, clawed, version = news.purchase, 0, 0, 1
    for amount in refunds:
        refunded = min(1000, refunded + amount)
        version += 1
        news = packs.follow_payment(found, payment(version, refunded=refunded), NOW)
        assert news is not None and news.grant == 0
        clawed += news.claw_back
        found = news.purchase
        assert clawed == (5000 if refunded == 1000 else 5000 * refunded // 1000)
        assert packs.follow_payment(found, payment(version, refunded=refunded), NOW) is None


RULE = AutoRecharge("org_a", True, threshold=500, pack="pack_5k", monthly_cap=10_000)


def test_one_recharge_per_crossing_within_the_cap() -> None:
    def report(rule, balance, revision, month=0):
        return packs.on_balance(
            rule, balance, revision, NOW, recharged_this_month=month, pack_credits=5000
        )

    rule, charge = report(RULE, 400, 1)
    assert charge and not rule.armed
    rule = replace(rule, in_flight="ar_1")
    assert report(rule, 300, 2) == (replace(rule, balance_revision=2), False)
    rule = packs.recharge_paid(replace(rule, balance_revision=2))
    rule, charge = report(rule, 5300, 3, 5000)
    assert not charge and rule.armed
    assert report(rule, 200, 2, 5000)[1] is False  # an older report
    rule, charge = report(rule, 200, 4, 5000)
    assert charge
    rule, charge = report(replace(rule, armed=True), 100, 5, 10_000)
    assert not charge and rule.last_failure == "monthly_cap_reached"


def test_repeated_declines_turn_auto_recharge_off() -> None:
    rule = RULE
    for n in range(1, 4):
        rule, charge = packs.on_balance(
            rule, 100, n, NOW + timedelta(hours=2 * n), recharged_this_month=0, pack_credits=5000
        )
        assert charge
        rule = packs.recharge_failed(
            replace(rule, in_flight="x"),
            "card_declined",
            NOW + timedelta(hours=2 * n),
            timedelta(hours=1),
        )
        assert rule.failures == n
    assert (rule.enabled, rule.disabled_reason) == (False, "payment_failed_repeatedly")
    assert (
        packs.on_balance(
            rule, 50, 9, NOW + timedelta(days=1), recharged_this_month=0, pack_credits=5000
        )[1]
        is False
    )


def test_a_failed_recharge_waits_before_it_is_tried_again() -> None:
    rule = packs.recharge_failed(RULE, "card_declined", NOW, timedelta(hours=1))
    early = packs.on_balance(
        rule, 100, 1, NOW + timedelta(minutes=30), recharged_this_month=0, pack_credits=5000
    )
    later = packs.on_balance(
        rule, 100, 1, NOW + timedelta(hours=1), recharged_this_month=0, pack_credits=5000
    )
    assert (early[1], later[1]) == (False, True)


def test_a_plan_that_rolls_credits_over_sends_version_two_with_its_cap() -> None:
    catalogue = Catalogue.load()
    rolling = replace(
        catalogue,
        plans={
            **catalogue.plans,
            Plan.PRO: catalogue.plans[Plan.PRO].model_copy(update={"rollover_cap": 5000}),
        },
    )
    renewal = Grant(
        "renewal_reset", 20_000, "sub_1:2027-03", NOW, NOW + timedelta(days=31), Plan.PRO
    )
    top_up = replace(renewal, reason="upgrade_top_up", period_start=None, period_end=None)
    sent = grant_command(renewal, rolling, "org_a", NOW)
    assert isinstance(sent, CreditGrantRequestedV2) and sent.data.rollover_cap == 5000
    assert isinstance(grant_command(renewal, catalogue, "org_a", NOW), CreditGrantRequestedV1)
    assert isinstance(grant_command(top_up, rolling, "org_a", NOW), CreditGrantRequestedV1)
