"""What a newly observed state of a Stripe object means next to the one the gateway holds. Pure.

The gateway never orders Stripe's reports by their timestamps. It fetches the object a report
names and keeps the state it fetched, with a `version` it increases itself: observations of one
object are applied one at a time, each only if no other was applied since its fetch began
(optimistic: the caller reads the version before fetching and applies only if it is
unchanged). So applied states follow one another in the order Stripe held them, and the last
one is never older than the last report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.events.stripe import InvoiceStatus, StripeSubscriptionChange

from .stripe_objects import LIVE, Invoice, Subscription


class Kind(StrEnum):
    ACTIVATED = "activated"
    RENEWED = "renewed"
    UPDATED = "updated"
    DELETED = "deleted"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class Held:
    """A subscription as the gateway holds it: the state of its last applied observation."""

    subscription: Subscription
    organisation_id: str
    deleted: bool
    version: int


@dataclass(frozen=True, slots=True)
class Transition:
    kind: Kind
    subscription: Subscription
    changes: tuple[StripeSubscriptionChange, ...]


def transition(held: Held | None, current: Subscription) -> Transition:
    """What an observed state means after the held one. A deleted subscription stays deleted
    (Stripe never brings one back)."""
    previous = held.subscription if held else None
    if held is not None and held.deleted:
        return Transition(Kind.UNCHANGED, previous, ())  # type: ignore[arg-type]
    if current.ended:
        return Transition(Kind.DELETED, current, _changes(previous, current))
    changes = _changes(previous, current)
    if current.status in LIVE and (previous is None or previous.status not in LIVE):
        return Transition(Kind.ACTIVATED, current, changes)
    if (
        previous is not None
        and previous.period_start is not None
        and current.period_start is not None
        and current.period_start > previous.period_start
    ):
        return Transition(Kind.RENEWED, current, changes)
    if previous is not None and not changes and previous.item_id == current.item_id:
        return Transition(Kind.UNCHANGED, current, ())
    return Transition(Kind.UPDATED, current, changes)


def _changes(
    previous: Subscription | None, current: Subscription
) -> tuple[StripeSubscriptionChange, ...]:
    if previous is None:
        return ()
    found = []
    if previous.price_id != current.price_id:
        found.append(StripeSubscriptionChange.PRICE)
    if previous.quantity != current.quantity:
        found.append(StripeSubscriptionChange.QUANTITY)
    if previous.cancel_at_period_end != current.cancel_at_period_end:
        found.append(StripeSubscriptionChange.CANCEL_AT_PERIOD_END)
    if previous.status != current.status:
        found.append(StripeSubscriptionChange.STATUS)
    if (previous.period_start, previous.period_end) != (current.period_start, current.period_end):
        found.append(StripeSubscriptionChange.PERIOD)
    return tuple(found)


# Invoices ------------------------------------------------------------------------------------


class InvoiceNews(StrEnum):
    PAID = "paid"
    PAYMENT_FAILED = "payment_failed"
    QUIET = "quiet"
    """A new state with nothing to announce (a draft, a void invoice, …)."""
    UNCHANGED = "unchanged"


def invoice_news(held: Invoice | None, current: Invoice) -> InvoiceNews:
    """A paid invoice is final: once the gateway holds it paid, no other state of it is news.
    A failure is news when it is a new failed attempt of an invoice still unpaid."""
    if held is not None and held.status is InvoiceStatus.PAID:
        return InvoiceNews.UNCHANGED
    if held is not None and _invoice_state(held) == _invoice_state(current):
        return InvoiceNews.UNCHANGED
    if current.status is InvoiceStatus.PAID:
        return InvoiceNews.PAID
    failed_attempt = current.status is InvoiceStatus.OPEN and current.attempt_count > 0
    if failed_attempt and (held is None or current.attempt_count > held.attempt_count):
        return InvoiceNews.PAYMENT_FAILED
    return InvoiceNews.QUIET


def _invoice_state(invoice: Invoice) -> tuple[Any, ...]:
    return (
        invoice.status,
        invoice.amount_paid,
        invoice.amount_due,
        invoice.attempt_count,
        invoice.next_payment_attempt,
        invoice.period_start,
        invoice.period_end,
    )


# Drift between what the gateway holds and what Stripe holds ---------------------------------

COMPARED = ("status", "price_id", "quantity", "cancel_at_period_end", "period_end", "customer_id")
"""What the reconciler compares, field by field."""


def drift(held: Subscription | None, stripe: Subscription) -> dict[str, tuple[Any, Any]]:
    """The compared fields that differ: name -> (held, Stripe's). Everything, for an unknown
    subscription."""
    if held is None:
        return {name: (None, _value(getattr(stripe, name))) for name in COMPARED}
    return {
        name: (_value(getattr(held, name)), _value(getattr(stripe, name)))
        for name in COMPARED
        if getattr(held, name) != getattr(stripe, name)
    }


def _value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, StrEnum):
        return value.value
    return value
