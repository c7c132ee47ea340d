"""Reading Stripe objects in both API shapes; what an observation means next to what the
gateway holds; which objects an event names; the seat quantity's hourly budget. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.stripe_gateway.domain.projection import (
    Held,
    InvoiceNews,
    Kind,
    drift,
    invoice_news,
    transition,
)
from services.stripe_gateway.domain.quantities import next_send_at, within_budget
from services.stripe_gateway.domain.reports import objects_named
from services.stripe_gateway.domain.stripe_objects import (
    Invoice,
    Subscription,
    Unreadable,
    read_invoice,
    read_subscription,
)
from services.stripe_gateway.settings import StripeGatewaySettings
from tests.stripe_gateway.conftest import invoice_object, subscription_object


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


def held(subscription: Subscription, *, deleted: bool = False, version: int = 1) -> Held:
    return Held(subscription, "org_a", deleted, version)


def test_what_a_newer_observation_means() -> None:
    base = read_subscription(subscription_object("sub_1", "cus_1", start=1_795_000_000))
    incomplete = read_subscription(subscription_object("sub_1", "cus_1", status="incomplete"))
    renewed = read_subscription(subscription_object("sub_1", "cus_1", start=1_797_592_000))
    more = read_subscription(subscription_object("sub_1", "cus_1", start=1_795_000_000, quantity=2))
    ended = read_subscription(subscription_object("sub_1", "cus_1", status="canceled"))

    assert transition(None, base).kind is Kind.ACTIVATED
    assert transition(held(incomplete), base).kind is Kind.ACTIVATED
    assert transition(held(base), renewed).kind is Kind.RENEWED
    change = transition(held(base), more)
    assert (change.kind, [c.value for c in change.changes]) == (Kind.UPDATED, ["quantity"])
    assert transition(held(base), base).kind is Kind.UNCHANGED
    assert transition(held(base), ended).kind is Kind.DELETED
    assert transition(held(ended, deleted=True), base).kind is Kind.UNCHANGED  # stays deleted


def invoice(status: str, attempts: int) -> Invoice:
    obj = invoice_object("in_1", "cus_1", "sub_1", paid=status == "paid")
    obj.update(status=status, attempt_count=attempts)
    return read_invoice(obj)


def test_a_paid_invoice_is_final_and_only_new_failed_attempts_are_news() -> None:
    paid, failed, failed_again = invoice("paid", 1), invoice("open", 1), invoice("open", 2)

    assert invoice_news(None, paid) is InvoiceNews.PAID
    assert invoice_news(paid, failed) is InvoiceNews.UNCHANGED  # a late failure changes nothing
    assert invoice_news(None, failed) is InvoiceNews.PAYMENT_FAILED
    assert invoice_news(failed, failed) is InvoiceNews.UNCHANGED
    assert invoice_news(failed, failed_again) is InvoiceNews.PAYMENT_FAILED
    assert invoice_news(failed_again, paid) is InvoiceNews.PAID
    assert invoice_news(None, invoice("draft", 0)) is InvoiceNews.QUIET


def test_drift_names_the_fields_that_differ() -> None:
    ours = read_subscription(subscription_object("sub_1", "cus_1", quantity=3))
    theirs = read_subscription(
        subscription_object("sub_1", "cus_1", quantity=4, cancel_at_period_end=True)
    )
    assert drift(ours, theirs) == {"quantity": (3, 4), "cancel_at_period_end": (False, True)}
    assert drift(ours, ours) == {}
    assert set(drift(None, theirs)) == {
        "status",
        "price_id",
        "quantity",
        "cancel_at_period_end",
        "period_end",
        "customer_id",
    }


@pytest.mark.parametrize(
    ("kind", "obj", "named"),
    [
        ("customer.subscription.updated", {"id": "sub_1"}, [("subscription", "sub_1")]),
        (
            "invoice.payment_failed",
            {"id": "in_1", "subscription": "sub_1"},
            [("invoice", "in_1"), ("subscription", "sub_1")],
        ),
        (
            "invoice.paid",
            {"id": "in_1", "parent": {"subscription_details": {"subscription": "sub_2"}}},
            [("invoice", "in_1"), ("subscription", "sub_2")],
        ),
        ("checkout.session.completed", {"id": "cs_1"}, [("checkout_session", "cs_1")]),
        ("customer.created", {"id": "cus_1"}, []),
    ],
)
def test_an_event_only_names_the_objects_to_fetch(kind: str, obj: dict, named: list) -> None:
    found = objects_named({"type": kind, "data": {"object": obj}})
    assert [(ref.kind.value, ref.object_id) for ref in found] == named


T0 = datetime(2026, 12, 1, tzinfo=UTC)


@settings(max_examples=200)
@given(
    st.lists(st.integers(min_value=0, max_value=4 * 3600 * 10), min_size=1, max_size=400),
    st.integers(min_value=2, max_value=200),
)
def test_quantity_updates_never_exceed_the_hourly_budget(asks: list[int], budget: int) -> None:
    """Whatever the rhythm of seat changes (tenths of a second over four hours), the sends
    the schedule allows never exceed `budget` in any hour, and the last change is sent."""
    sent: list[datetime] = []
    due: datetime | None = None
    for tenth in sorted(asks):
        now = T0 + timedelta(seconds=tenth / 10)
        while due is not None and due <= now:
            at = next_send_at(sent, due, budget)
            if at <= due:
                sent.append(due)
                due = None
            else:
                due = at
        due = due or now
    while due is not None:
        at = next_send_at(sent, due, budget)
        if at <= due:
            sent.append(due)
            due = None
        else:
            due = at
    assert within_budget(sent, budget)
    assert sent  # the newest count always goes, eventually


def test_the_development_stripe_secrets_are_refused_off_loopback(monkeypatch) -> None:
    monkeypatch.setenv("STRIPE_GATEWAY_API_BASE", "https://api.stripe.com")
    with pytest.raises(ValidationError, match="development Stripe key"):
        StripeGatewaySettings()
    monkeypatch.setenv("STRIPE_GATEWAY_API_KEY", "sk_live_real")
    monkeypatch.setenv("STRIPE_GATEWAY_WEBHOOK_SECRET", "whsec_real")
    assert StripeGatewaySettings().api_base_url == "https://api.stripe.com"


def test_an_invoice_keeps_stripes_page_and_pdf_links_and_nothing_else() -> None:
    obj = invoice_object("in_1", "cus_1", "sub_1", paid=True)
    obj.update(
        hosted_invoice_url="https://invoice.stripe.com/i/acct_1/test_1",
        invoice_pdf="javascript:alert(1)",
    )
    found = read_invoice(obj)
    assert found.hosted_url == "https://invoice.stripe.com/i/acct_1/test_1"
    assert found.pdf_url is None
    obj.update(hosted_invoice_url="https://x/" + "a" * 3000)
    assert read_invoice(obj).hosted_url is None
