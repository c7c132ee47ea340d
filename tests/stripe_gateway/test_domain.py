"""Reading Stripe objects in both API shapes, and the rules that make the projection converge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from services.stripe_gateway.domain.stripe_objects import (
    Kind,
    Known,
    Order,
    Unreadable,
    Version,
    order,
    read_subscription,
    transition,
)
from services.stripe_gateway.settings import StripeGatewaySettings
from shared.events.stripe import SubscriptionStatus
from tests.stripe_gateway.conftest import subscription_object

T = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize("shape", ["current", "legacy"])
def test_both_api_shapes_read_alike(shape: str) -> None:
    obj = subscription_object(
        "sub_1",
        "cus_1",
        organisation="org_a",
        quantity=3,
        shape=shape,
        start=1_795_000_000,
        cancel_at_period_end=True,
    )
    read = read_subscription(obj)
    assert (read.subscription_id, read.customer_id, read.organisation_id) == (
        "sub_1",
        "cus_1",
        "org_a",
    )
    assert (read.quantity, read.price_id, read.cancel_at_period_end) == (
        3,
        "price_pro_monthly",
        True,
    )
    assert read.period_start == datetime.fromtimestamp(1_795_000_000, UTC)
    assert read.period_end == read.period_start + timedelta(days=30)


@pytest.mark.parametrize(
    "broken",
    [
        {"id": None},
        {"customer": None},
        {"status": "pending_forever"},
        {"current_period_start": "x"},
    ],
)
def test_an_unreadable_subscription_is_refused(broken: dict) -> None:
    obj = {**subscription_object("sub_1", "cus_1", shape="legacy"), **broken}
    with pytest.raises(Unreadable):
        read_subscription(obj)


def known(version: Version, *, deleted: bool = False) -> Known:
    return Known(
        read_subscription(subscription_object("sub_1", "cus_1")), "org_a", deleted, version
    )


def test_reports_are_ordered_by_stripe_time_then_settled_on_ties() -> None:
    current = known(Version(T, "evt_b"))
    assert order(None, Version(T, "evt_a")) is Order.NEWER
    assert order(current, Version(T + timedelta(seconds=1), "evt_c")) is Order.NEWER
    assert order(current, Version(T - timedelta(seconds=1), "evt_c")) is Order.OLDER
    assert order(current, Version(T, "evt_b")) is Order.OLDER  # the same report again
    assert order(current, Version(T, "evt_c")) is Order.SAME_TIME
    assert order(known(Version(T, "evt_b"), deleted=True), Version(T + timedelta(days=1), "e")) is (
        Order.AFTER_DELETION
    )


def test_what_a_newer_report_means() -> None:
    base = read_subscription(subscription_object("sub_1", "cus_1", start=1_795_000_000))
    incomplete = read_subscription(subscription_object("sub_1", "cus_1", status="incomplete"))
    renewed = read_subscription(subscription_object("sub_1", "cus_1", start=1_797_592_000))
    more = read_subscription(subscription_object("sub_1", "cus_1", start=1_795_000_000, quantity=2))

    assert transition(None, base, deleted=False).kind is Kind.ACTIVATED
    assert transition(incomplete, base, deleted=False).kind is Kind.ACTIVATED
    assert transition(base, renewed, deleted=False).kind is Kind.RENEWED
    change = transition(base, more, deleted=False)
    assert (change.kind, [c.value for c in change.changes]) == (Kind.UPDATED, ["quantity"])
    assert transition(base, base, deleted=False).kind is Kind.UNCHANGED
    ended = transition(base, base, deleted=True)
    assert (ended.kind, ended.subscription.status) == (Kind.DELETED, SubscriptionStatus.CANCELED)


def test_the_development_stripe_secrets_are_refused_off_loopback(monkeypatch) -> None:
    monkeypatch.setenv("STRIPE_GATEWAY_API_BASE", "https://api.stripe.com")
    with pytest.raises(ValidationError, match="development Stripe key"):
        StripeGatewaySettings()
    monkeypatch.setenv("STRIPE_GATEWAY_API_KEY", "sk_live_real")
    monkeypatch.setenv("STRIPE_GATEWAY_WEBHOOK_SECRET", "whsec_real")
    assert StripeGatewaySettings().api_base_url == "https://api.stripe.com"
