"""What a webhook event is about. Pure.

A webhook is a report that something changed, not the state to keep: its payload may be older
than another report that arrives before it, and Stripe's `created` (whole seconds) cannot order
reports within a second. So an event only names the Stripe objects to fetch; the gateway keeps
what it fetches (`projection`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .stripe_objects import Unreadable, _id


class ObjectKind(StrEnum):
    SUBSCRIPTION = "subscription"
    INVOICE = "invoice"
    CHECKOUT_SESSION = "checkout_session"
    PAYMENT_INTENT = "payment_intent"


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    kind: ObjectKind
    object_id: str


SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
        "customer.subscription.pending_update_applied",
        "customer.subscription.pending_update_expired",
        "customer.subscription.trial_will_end",
    }
)
INVOICE_EVENTS = frozenset(
    {
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.payment_failed",
        "invoice.marked_uncollectible",
        "invoice.voided",
    }
)
CHECKOUT_EVENTS = frozenset(
    {
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.expired",
    }
)
PAYMENT_EVENTS = frozenset(
    {
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.canceled",
        "payment_intent.processing",
        "charge.refunded",
        "charge.refund.updated",
    }
)
HANDLED = SUBSCRIPTION_EVENTS | INVOICE_EVENTS | CHECKOUT_EVENTS | PAYMENT_EVENTS


def objects_named(event: Mapping[str, Any]) -> tuple[ObjectRef, ...]:
    """The objects to fetch for a handled event: the subscription; the invoice and its
    subscription (a payment changes the subscription's status); the checkout session (its
    subscription is fetched once the session is complete)."""
    kind = event.get("type")
    obj = (event.get("data") or {}).get("object")
    if not isinstance(obj, Mapping) or not (object_id := _id(obj.get("id"))):
        raise Unreadable("the event names no object")
    if kind in SUBSCRIPTION_EVENTS:
        return (ObjectRef(ObjectKind.SUBSCRIPTION, object_id),)
    if kind in INVOICE_EVENTS:
        refs = [ObjectRef(ObjectKind.INVOICE, object_id)]
        parent = obj.get("parent")
        details = parent.get("subscription_details") if isinstance(parent, Mapping) else None
        subscription = _id(obj.get("subscription")) or (
            _id(details.get("subscription")) if isinstance(details, Mapping) else None
        )
        if subscription:
            refs.append(ObjectRef(ObjectKind.SUBSCRIPTION, subscription))
        return tuple(refs)
    if kind in CHECKOUT_EVENTS:
        return (ObjectRef(ObjectKind.CHECKOUT_SESSION, object_id),)
    if kind in PAYMENT_EVENTS:
        payment = object_id if kind.startswith("payment_intent.") else None
        payment = payment or _id(obj.get("payment_intent"))
        return (ObjectRef(ObjectKind.PAYMENT_INTENT, payment),) if payment else ()
    return ()
