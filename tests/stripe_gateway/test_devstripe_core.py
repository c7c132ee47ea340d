"""devstripe's Stripe on its clock (pure): periods on the anchor's day clamped to the month's
end, invoices paid or retried on Stripe's schedule, cancellations at period end, prorated
upgrades, and lists a page at a time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.stripe_gateway.devstripe.core import DECLINING, PAYING, RETRIES, Clock, Stripe


def at(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, 9, tzinfo=UTC)


def stripe_at(instant: datetime) -> Stripe:
    return Stripe(clock=Clock(lambda: instant))


def subscribe(stripe: Stripe, price: str = "price_pro_annual", **customer: str):  # type: ignore[no-untyped-def]
    found, _ = stripe.create_customer({"metadata": {"organisation_id": "org_a"}, **customer})
    return stripe.create_subscription(
        {"customer": found.id, "items": [{"price": price, "quantity": "3"}]}
    )


def kinds(events: list) -> list[str]:  # type: ignore[type-arg]
    return [e[0] for e in events]


@pytest.mark.parametrize(
    ("start", "ends"),
    [
        (at(2027, 1, 31), [at(2027, 2, 28), at(2027, 3, 31), at(2027, 4, 30)]),
        (at(2028, 1, 31), [at(2028, 2, 29), at(2028, 3, 31), at(2028, 4, 30)]),
    ],
)
def test_monthly_periods_end_on_the_anchor_day_clamped(
    start: datetime, ends: list[datetime]
) -> None:
    stripe = stripe_at(start)
    subscription, created = subscribe(stripe, "price_pro_monthly")
    assert kinds(created) == [
        "customer.subscription.created",
        "invoice.paid",
        "invoice.payment_succeeded",
    ]

    events = stripe.advance(ends[-1])

    renewals = [e for e in events if e[0] == "customer.subscription.updated"]
    assert [datetime.fromtimestamp(e[3], UTC) for e in renewals] == ends  # each at its instant
    assert subscription.period_start == ends[-1]
    paid = [stripe.invoices[e[1]["id"]] for e in events if e[0] == "invoice.paid"]
    assert [(i.billing_reason, i.amount_paid) for i in paid] == [("subscription_cycle", 6000)] * 3


def test_a_declined_renewal_is_past_due_retried_on_schedule_then_canceled() -> None:
    stripe = stripe_at(at(2027, 1, 10))
    subscription, _ = subscribe(stripe, "price_pro_monthly")
    stripe.update_customer(
        subscription.customer, {"invoice_settings": {"default_payment_method": DECLINING}}
    )

    failed = stripe.advance(at(2027, 2, 10))
    assert "invoice.payment_failed" in kinds(failed)
    assert subscription.status == "past_due"
    invoice = stripe.invoices[subscription.latest_invoice]  # type: ignore[index]
    assert invoice.next_payment_attempt == int((at(2027, 2, 10) + RETRIES[0]).timestamp())

    ended = stripe.advance(at(2027, 2, 10) + sum(RETRIES, timedelta()) + timedelta(days=1))
    assert kinds(ended).count("invoice.payment_failed") == len(RETRIES)
    assert kinds(ended)[-1] == "customer.subscription.deleted"
    assert (subscription.status, invoice.status) == ("canceled", "uncollectible")


def test_a_card_that_pays_again_recovers_at_the_next_retry() -> None:
    stripe = stripe_at(at(2027, 1, 10))
    subscription, _ = subscribe(stripe, "price_pro_monthly")
    card = {"invoice_settings": {"default_payment_method": DECLINING}}
    stripe.update_customer(subscription.customer, card)
    stripe.advance(at(2027, 2, 10))
    stripe.update_customer(
        subscription.customer, {"invoice_settings": {"default_payment_method": PAYING}}
    )

    recovered = stripe.advance(at(2027, 2, 14))

    assert kinds(recovered)[:2] == ["invoice.paid", "invoice.payment_succeeded"]
    assert subscription.status == "active"


def test_a_cancellation_at_period_end_ends_the_subscription_then() -> None:
    stripe = stripe_at(at(2027, 1, 10))
    subscription, _ = subscribe(stripe, "price_max_monthly")
    stripe.update_subscription(subscription.id, {"cancel_at_period_end": "true"})

    assert stripe.advance(at(2027, 2, 9)) == []
    ended = stripe.advance(at(2027, 2, 11))

    assert kinds(ended) == ["customer.subscription.deleted"]
    assert (subscription.status, subscription.ended_at) == (
        "canceled",
        int(at(2027, 2, 10).timestamp()),
    )
    assert stripe.next_due() is None


def test_an_upgrade_is_invoiced_for_what_is_left_of_the_period() -> None:
    instant = [at(2027, 1, 1)]
    stripe = Stripe(clock=Clock(lambda: instant[0]))
    subscription, _ = subscribe(stripe, "price_pro_monthly")
    instant[0] = at(2027, 1, 1) + (subscription.period_end - subscription.period_start) / 2

    _, events = stripe.update_subscription(
        subscription.id,
        {"items": [{"price": "price_max_monthly"}], "proration_behavior": "always_invoice"},
    )

    assert kinds(events)[0] == "customer.subscription.updated"
    invoice = stripe.invoices[subscription.latest_invoice]  # type: ignore[index]
    assert (invoice.billing_reason, invoice.amount_paid) == ("subscription_update", 4500)
    quiet = stripe.update_subscription(
        subscription.id, {"items": [{"price": "price_pro_monthly"}], "proration_behavior": "none"}
    )[1]
    assert kinds(quiet) == ["customer.subscription.updated"]  # a downgrade: nothing invoiced


def test_lists_are_newest_first_a_page_at_a_time() -> None:
    stripe = stripe_at(at(2027, 1, 1))
    made = [subscribe(stripe)[0].id for _ in range(5)]
    stripe.cancel_subscription(made[0])

    first = stripe.list_subscriptions(status="all", customer=None, limit=3, starting_after=None)
    rest = stripe.list_subscriptions(
        status="all", customer=None, limit=3, starting_after=first["data"][-1]["id"]
    )
    live = stripe.list_subscriptions(status=None, customer=None, limit=10, starting_after=None)

    assert [s["id"] for s in first["data"] + rest["data"]] == made[::-1]
    assert (first["has_more"], rest["has_more"]) == (True, False)
    assert made[0] not in [s["id"] for s in live["data"]]
