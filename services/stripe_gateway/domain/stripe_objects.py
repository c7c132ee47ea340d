"""Reading Stripe objects (webhook payloads, API answers) into what the gateway needs, and the
rules that make the projection converge to Stripe's latest state. Pure: no I/O.

Both API shapes are read: the current one keeps the billing period on the subscription items
(`items.data[].current_period_start/end`), the older one on the subscription itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from shared.events.stripe import StripeSubscriptionChange, SubscriptionStatus

ORGANISATION_KEY = "organisation_id"
"""The metadata key that names the organisation on customers, subscriptions and sessions."""

LIVE = frozenset({SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING})
ENDED = frozenset({SubscriptionStatus.CANCELED, SubscriptionStatus.INCOMPLETE_EXPIRED})


class Unreadable(ValueError):
    """The object lacks what the gateway needs (a poison event: parked, not retried)."""


def instant(seconds: Any) -> datetime | None:
    if seconds is None:
        return None
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        raise Unreadable(f"not a Unix time: {seconds!r}")
    return datetime.fromtimestamp(seconds, UTC)


def _id(value: Any) -> str | None:
    """An id given directly or as an expanded object."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def metadata_organisation(obj: Mapping[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    if isinstance(metadata, Mapping):
        value = metadata.get(ORGANISATION_KEY)
        return value if isinstance(value, str) and value else None
    return None


@dataclass(frozen=True, slots=True)
class Subscription:
    subscription_id: str
    customer_id: str
    organisation_id: str | None
    """From the subscription's metadata, when present."""
    status: SubscriptionStatus
    price_id: str | None
    item_id: str | None
    quantity: int
    period_start: datetime | None
    period_end: datetime | None
    cancel_at_period_end: bool

    @property
    def ended(self) -> bool:
        return self.status in ENDED


def read_subscription(obj: Mapping[str, Any]) -> Subscription:
    """A subscription object in either API shape."""
    try:
        subscription_id = _id(obj.get("id"))
        customer_id = _id(obj.get("customer"))
        if not subscription_id or not customer_id:
            raise Unreadable("subscription without id or customer")
        items = obj.get("items") or {}
        data = items.get("data") if isinstance(items, Mapping) else None
        item: Mapping[str, Any] = data[0] if isinstance(data, list) and data else {}
        price = item.get("price") or item.get("plan") or obj.get("plan")
        quantity = item.get("quantity", obj.get("quantity", 1))
        start = obj.get("current_period_start", item.get("current_period_start"))
        end = obj.get("current_period_end", item.get("current_period_end"))
        return Subscription(
            subscription_id=subscription_id,
            customer_id=customer_id,
            organisation_id=metadata_organisation(obj),
            status=SubscriptionStatus(obj.get("status")),
            price_id=_id(price),
            item_id=_id(item.get("id")),
            quantity=int(quantity) if quantity else 1,
            period_start=instant(start),
            period_end=instant(end),
            cancel_at_period_end=bool(obj.get("cancel_at_period_end", False)),
        )
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        if isinstance(exc, Unreadable):
            raise
        raise Unreadable(f"unreadable subscription: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class Version:
    """A report's place in Stripe's history: its event time, then its event id."""

    created: datetime
    event_id: str


@dataclass(frozen=True, slots=True)
class Known:
    """What the gateway holds about a subscription."""

    subscription: Subscription
    organisation_id: str
    deleted: bool
    version: Version


class Order(StrEnum):
    NEWER = "newer"
    OLDER = "older"
    SAME_TIME = "same_time"
    """Stripe's clock has seconds: two reports in one second need the current object."""
    AFTER_DELETION = "after_deletion"


def order(known: Known | None, version: Version) -> Order:
    if known is None:
        return Order.NEWER
    if known.deleted:
        return Order.AFTER_DELETION
    if version.created > known.version.created:
        return Order.NEWER
    if version.created < known.version.created or version.event_id == known.version.event_id:
        return Order.OLDER
    return Order.SAME_TIME


class Kind(StrEnum):
    ACTIVATED = "activated"
    RENEWED = "renewed"
    UPDATED = "updated"
    DELETED = "deleted"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class Transition:
    kind: Kind
    subscription: Subscription
    changes: tuple[StripeSubscriptionChange, ...]


def transition(
    previous: Subscription | None, current: Subscription, *, deleted: bool
) -> Transition:
    """What a newer report means, compared with the previous one."""
    if deleted or current.ended:
        if current.status not in ENDED:
            current = replace(current, status=SubscriptionStatus.CANCELED)
        return Transition(Kind.DELETED, current, ())
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
    if previous is not None and not changes:
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


@dataclass(frozen=True, slots=True)
class Invoice:
    invoice_id: str
    customer_id: str
    subscription_id: str | None
    amount_paid: int
    amount_due: int
    currency: str
    billing_reason: str | None
    period_start: datetime | None
    period_end: datetime | None
    attempt_count: int
    next_payment_attempt: datetime | None
    organisation_id: str | None


def read_invoice(obj: Mapping[str, Any]) -> Invoice:
    """An invoice in either API shape (the subscription is on `parent.subscription_details`
    in the current one)."""
    try:
        invoice_id, customer_id = _id(obj.get("id")), _id(obj.get("customer"))
        if not invoice_id or not customer_id:
            raise Unreadable("invoice without id or customer")
        parent = obj.get("parent") or {}
        details = parent.get("subscription_details") if isinstance(parent, Mapping) else None
        subscription = obj.get("subscription") or (
            details.get("subscription") if isinstance(details, Mapping) else None
        )
        organisation = metadata_organisation(obj) or (
            metadata_organisation(details) if isinstance(details, Mapping) else None
        )
        lines = ((obj.get("lines") or {}).get("data") or [{}])[0]
        line_period = lines.get("period") or {} if isinstance(lines, Mapping) else {}
        return Invoice(
            invoice_id=invoice_id,
            customer_id=customer_id,
            subscription_id=_id(subscription),
            amount_paid=int(obj.get("amount_paid") or 0),
            amount_due=int(obj.get("amount_due") or 0),
            currency=str(obj.get("currency") or "usd")[:3],
            billing_reason=obj.get("billing_reason"),
            period_start=instant(line_period.get("start", obj.get("period_start"))),
            period_end=instant(line_period.get("end", obj.get("period_end"))),
            attempt_count=int(obj.get("attempt_count") or 0),
            next_payment_attempt=instant(obj.get("next_payment_attempt")),
            organisation_id=organisation,
        )
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as exc:
        if isinstance(exc, Unreadable):
            raise
        raise Unreadable(f"unreadable invoice: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    session_id: str
    customer_id: str | None
    subscription_id: str | None
    organisation_id: str | None
    request_id: str | None
    price_id: str | None
    quantity: int | None
    mode: str | None


def read_checkout_session(obj: Mapping[str, Any]) -> CheckoutSession:
    session_id = _id(obj.get("id"))
    if not session_id:
        raise Unreadable("checkout session without id")
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    quantity = metadata.get("quantity")
    return CheckoutSession(
        session_id=session_id,
        customer_id=_id(obj.get("customer")),
        subscription_id=_id(obj.get("subscription")),
        organisation_id=obj.get("client_reference_id") or metadata_organisation(obj),
        request_id=metadata.get("request_id"),
        price_id=metadata.get("price_id"),
        quantity=int(quantity) if isinstance(quantity, str) and quantity.isdigit() else None,
        mode=obj.get("mode"),
    )
