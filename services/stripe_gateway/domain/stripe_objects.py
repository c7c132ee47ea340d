"""Reading Stripe objects (API answers, webhook payloads) into what the gateway needs. Pure: no
I/O. An object that lacks what the gateway needs is `Unreadable`.

Both API shapes are read: the current one keeps the billing period on the subscription items
(`items.data[].current_period_start/end`), the older one on the subscription itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.events.envelope import EARLIEST, LATEST
from shared.events.stripe import InvoiceStatus, PaymentStatus, SubscriptionStatus

ORGANISATION_KEY = "organisation_id"
"""The metadata key that names the organisation on customers, subscriptions and sessions."""

LIVE = frozenset({SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING})
ENDED = frozenset({SubscriptionStatus.CANCELED, SubscriptionStatus.INCOMPLETE_EXPIRED})


_EARLIEST, _LATEST = int(EARLIEST.timestamp()), int(LATEST.timestamp())


class Unreadable(ValueError):
    """The object lacks what the gateway needs (a poison event: parked, not retried)."""


def instant(seconds: Any) -> datetime | None:
    if seconds is None:
        return None
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        raise Unreadable(f"not a Unix time: {seconds!r}")
    if not _EARLIEST <= seconds < _LATEST:
        raise Unreadable(f"a time outside [2000, 2100): {seconds}")
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

    @property
    def live(self) -> bool:
        return self.status in LIVE


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
        quantity = int(quantity) if quantity else 1
        if not 1 <= quantity <= 1_000_000:
            raise Unreadable(f"quantity out of range: {quantity}")
        start = obj.get("current_period_start", item.get("current_period_start"))
        end = obj.get("current_period_end", item.get("current_period_end"))
        return Subscription(
            subscription_id=subscription_id,
            customer_id=customer_id,
            organisation_id=metadata_organisation(obj),
            status=SubscriptionStatus(obj.get("status")),
            price_id=_id(price),
            item_id=_id(item.get("id")),
            quantity=quantity,
            period_start=instant(start),
            period_end=instant(end),
            cancel_at_period_end=bool(obj.get("cancel_at_period_end", False)),
        )
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        if isinstance(exc, Unreadable):
            raise
        raise Unreadable(f"unreadable subscription: {exc!r}") from exc


_MAX_MONEY = 10**12


def _link(value: Any) -> str | None:
    """An https (or, from devstripe, http) address Stripe gives, if it is one."""
    if isinstance(value, str) and value.startswith(("https://", "http://")) and len(value) <= 2048:
        return value
    return None


def _money(value: Any) -> int:
    amount = int(value or 0)
    if not 0 <= amount <= _MAX_MONEY:
        raise Unreadable(f"amount out of range: {amount}")
    return amount


@dataclass(frozen=True, slots=True)
class Invoice:
    invoice_id: str
    customer_id: str
    subscription_id: str | None
    status: InvoiceStatus
    amount_paid: int
    amount_due: int
    currency: str
    billing_reason: str | None
    period_start: datetime | None
    period_end: datetime | None
    attempt_count: int
    next_payment_attempt: datetime | None
    organisation_id: str | None
    hosted_url: str | None = None
    """Stripe's page of the invoice (to view and pay it)."""
    pdf_url: str | None = None


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
            status=InvoiceStatus(obj.get("status")),
            amount_paid=_money(obj.get("amount_paid")),
            amount_due=_money(obj.get("amount_due")),
            currency=str(obj.get("currency") or "usd")[:3],
            billing_reason=obj.get("billing_reason"),
            period_start=instant(line_period.get("start", obj.get("period_start"))),
            period_end=instant(line_period.get("end", obj.get("period_end"))),
            attempt_count=min(int(obj.get("attempt_count") or 0), 1_000),
            next_payment_attempt=instant(obj.get("next_payment_attempt")),
            organisation_id=organisation,
            hosted_url=_link(obj.get("hosted_invoice_url")),
            pdf_url=_link(obj.get("invoice_pdf")),
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
    status: str | None
    """`open`, `complete` or `expired`."""
    payment_status: str | None
    """`paid`, `unpaid` or `no_payment_required`."""
    mode: str | None = None
    """`subscription` (a plan) or `payment` (a credit pack)."""
    payment_intent_id: str | None = None
    """A payment-mode session's payment, once it was paid."""

    @property
    def paid(self) -> bool:
        """Complete, paid, and its subscription exists: the plan may start (R4)."""
        return (
            self.status == "complete"
            and self.payment_status in ("paid", "no_payment_required")
            and self.subscription_id is not None
            and self.customer_id is not None
        )


def read_checkout_session(obj: Mapping[str, Any]) -> CheckoutSession:
    session_id = _id(obj.get("id"))
    if not session_id:
        raise Unreadable("checkout session without id")
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    reference = obj.get("client_reference_id")
    request_id = metadata.get("request_id")
    return CheckoutSession(
        session_id=session_id,
        customer_id=_id(obj.get("customer")),
        subscription_id=_id(obj.get("subscription")),
        organisation_id=(reference if isinstance(reference, str) and reference else None)
        or metadata_organisation(obj),
        request_id=request_id if isinstance(request_id, str) and request_id else None,
        status=obj.get("status") if isinstance(obj.get("status"), str) else None,
        payment_status=obj.get("payment_status")
        if isinstance(obj.get("payment_status"), str)
        else None,
        mode=obj.get("mode") if isinstance(obj.get("mode"), str) else None,
        payment_intent_id=_id(obj.get("payment_intent")),
    )


PURCHASE_KEY = "purchase_id"
"""The metadata key that names the requesting service's purchase on a payment."""


@dataclass(frozen=True, slots=True)
class Payment:
    payment_intent_id: str
    customer_id: str | None
    organisation_id: str | None
    status: PaymentStatus
    amount: int
    amount_received: int
    amount_refunded: int
    """From the latest charge (expanded), refunded so far in total."""
    currency: str
    purchase_id: str | None
    failure_code: str | None

    def same_state(self, other: Payment) -> bool:
        return (self.status, self.amount_received, self.amount_refunded, self.failure_code) == (
            other.status,
            other.amount_received,
            other.amount_refunded,
            other.failure_code,
        )


def read_payment_intent(obj: Mapping[str, Any]) -> Payment:
    """A PaymentIntent, its latest charge expanded (for what was refunded)."""
    try:
        payment_id = _id(obj.get("id"))
        if not payment_id:
            raise Unreadable("payment intent without id")
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
        charge = obj.get("latest_charge")
        refunded = charge.get("amount_refunded") if isinstance(charge, Mapping) else 0
        error = obj.get("last_payment_error")
        code = error.get("code") if isinstance(error, Mapping) else None
        purchase = metadata.get(PURCHASE_KEY)
        return Payment(
            payment_intent_id=payment_id,
            customer_id=_id(obj.get("customer")),
            organisation_id=metadata_organisation(obj),
            status=PaymentStatus(obj.get("status")),
            amount=_money(obj.get("amount")),
            amount_received=_money(obj.get("amount_received")),
            amount_refunded=_money(refunded),
            currency=str(obj.get("currency") or "usd")[:3],
            purchase_id=purchase if isinstance(purchase, str) and purchase else None,
            failure_code=code if isinstance(code, str) and code else None,
        )
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        if isinstance(exc, Unreadable):
            raise
        raise Unreadable(f"unreadable payment intent: {exc!r}") from exc
