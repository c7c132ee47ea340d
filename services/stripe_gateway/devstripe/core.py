"""devstripe's Stripe: the part of Stripe's API and billing this project uses, in memory, on a
clock that tests and `billing clock` can move (as Stripe's test clocks do). No I/O here: the
app (`app.py`) turns HTTP requests into calls and delivers the events these return.

What it models, as Stripe does:
- customers with a default payment method: `pm_card_visa` pays; `pm_card_chargeDeclined`
  (Stripe's test card that declines) makes every charge fail;
- prices (`price_…`: monthly, or yearly when the id says `annual` or `year`; created on first
  use, with an amount when the catalogue's price ids are used);
- subscriptions with one item (price, quantity), billed in advance for each period; periods
  follow the billing cycle anchor's day of the month, clamped to the month's end;
  `cancel_at_period_end`; price changes prorated and invoiced now (`always_invoice`) or not
  (`none`);
- invoices, paid at once with the customer's payment method, or open after a failed attempt
  and retried on Stripe's schedule (`RETRIES`), the subscription `past_due` meanwhile; after
  the last failed retry the subscription is canceled;
- one-off payments (PaymentIntents, charged at once with `confirm`, as Checkout in payment
  mode does) and their refunds, whole or in part;
- when the clock moves, everything that fell due runs in time order: renewals, retries,
  cancellations at period end; each event carries the instant it happened.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.calendar import add_months

RETRIES = (timedelta(days=3), timedelta(days=5), timedelta(days=7))
"""Delays between a failed payment and the next attempt (Stripe's default retries four
times within about two weeks); after the last, the subscription is canceled."""

DECLINING = "pm_card_chargeDeclined"
PAYING = "pm_card_visa"

KNOWN_AMOUNTS = {
    "price_pro_monthly": 2000,
    "price_pro_annual": 20000,
    "price_max_monthly": 5000,
    "price_max_annual": 50000,
    "price_pack_5k": 1000,
    "price_pack_25k": 4500,
    "price_pack_100k": 16000,
}
"""Per seat (per pack for `price_pack_…`), in cents: the catalogue's prices, so invoices and
payments carry amounts."""


class StripeError(Exception):
    def __init__(self, status: int, kind: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = {
            "error": {"type": kind, "message": message, **({"code": code} if code else {})}
        }


def missing(kind: str, object_id: str) -> StripeError:
    return StripeError(
        404, "invalid_request_error", f"No such {kind}: '{object_id}'", code="resource_missing"
    )


def bad(message: str) -> StripeError:
    return StripeError(400, "invalid_request_error", message)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(7)}"


class Clock:
    """Real time plus an offset that only grows (`advance`, `set`)."""

    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._real = now
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return self._real() + self.offset

    def seconds(self) -> int:
        return int(self.now().timestamp())

    def move_to(self, instant: datetime) -> None:
        if instant > self.now():
            self.offset += instant - self.now()


@dataclass
class Price:
    id: str
    unit_amount: int
    interval: str
    created: int

    def export(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "price",
            "active": True,
            "currency": "usd",
            "unit_amount": self.unit_amount,
            "type": "recurring",
            "recurring": {"interval": self.interval, "interval_count": 1},
            "product": f"prod_{self.id}",
            "created": self.created,
            "livemode": False,
        }

    def plan(self) -> dict[str, Any]:
        """The same price in the older API shape (`plan`)."""
        return {
            "id": self.id,
            "object": "plan",
            "amount": self.unit_amount,
            "currency": "usd",
            "interval": self.interval,
            "interval_count": 1,
            "product": f"prod_{self.id}",
        }


@dataclass
class Customer:
    id: str
    created: int
    metadata: dict[str, str]
    email: str | None
    name: str | None
    payment_method: str = PAYING

    def export(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "customer",
            "created": self.created,
            "email": self.email,
            "name": self.name,
            "metadata": dict(self.metadata),
            "invoice_settings": {"default_payment_method": self.payment_method},
            "livemode": False,
        }


@dataclass
class Invoice:
    id: str
    customer: str
    subscription: str | None
    created: int
    amount_due: int
    billing_reason: str
    period_start: int
    period_end: int
    price: str
    quantity: int
    metadata: dict[str, str]
    """The subscription's metadata when the invoice was made (as Stripe copies it)."""
    status: str = "open"
    amount_paid: int = 0
    attempt_count: int = 0
    next_payment_attempt: int | None = None
    paid_at: int | None = None
    base_url: str = ""
    """Where devstripe serves the invoice's page and PDF."""

    def export(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "invoice",
            "hosted_invoice_url": f"{self.base_url}/_devstripe/invoices/{self.id}",
            "invoice_pdf": f"{self.base_url}/_devstripe/invoices/{self.id}/pdf",
            "customer": self.customer,
            "subscription": self.subscription,
            "parent": {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {
                    "metadata": dict(self.metadata),
                    "subscription": self.subscription,
                },
            }
            if self.subscription
            else None,
            "status": self.status,
            "currency": "usd",
            "amount_due": self.amount_due,
            "amount_paid": self.amount_paid,
            "amount_remaining": self.amount_due - self.amount_paid,
            "attempt_count": self.attempt_count,
            "attempted": self.attempt_count > 0,
            "next_payment_attempt": self.next_payment_attempt,
            "billing_reason": self.billing_reason,
            "created": self.created,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "status_transitions": {"paid_at": self.paid_at},
            "lines": {
                "object": "list",
                "data": [
                    {
                        "object": "line_item",
                        "amount": self.amount_due,
                        "quantity": self.quantity,
                        "pricing": {"price_details": {"price": self.price}},
                        "period": {"start": self.period_start, "end": self.period_end},
                    }
                ],
                "has_more": False,
            },
            "metadata": {},
            "livemode": False,
        }


@dataclass
class Subscription:
    id: str
    customer: str
    created: int
    anchor: datetime
    """The billing cycle anchor: periods end on its day of the month (clamped)."""
    item_id: str
    price: Price
    quantity: int
    metadata: dict[str, str]
    period_start: datetime
    period_end: datetime
    periods: int = 1
    """How many periods from the anchor the current one ends."""
    status: str = "active"
    cancel_at_period_end: bool = False
    canceled_at: int | None = None
    ended_at: int | None = None
    latest_invoice: str | None = None

    @property
    def live(self) -> bool:
        return self.status in ("active", "trialing", "past_due", "unpaid")

    def export(self) -> dict[str, Any]:
        start, end = _seconds(self.period_start), _seconds(self.period_end)
        item = {
            "id": self.item_id,
            "object": "subscription_item",
            "subscription": self.id,
            "price": self.price.export(),
            "plan": self.price.plan(),
            "quantity": self.quantity,
            "current_period_start": start,
            "current_period_end": end,
            "created": self.created,
        }
        return {
            "id": self.id,
            "object": "subscription",
            "customer": self.customer,
            "status": self.status,
            "created": self.created,
            "start_date": self.created,
            "billing_cycle_anchor": _seconds(self.anchor),
            "cancel_at_period_end": self.cancel_at_period_end,
            "cancel_at": end if self.cancel_at_period_end else None,
            "canceled_at": self.canceled_at,
            "ended_at": self.ended_at,
            "current_period_start": start,
            "current_period_end": end,
            "items": {"object": "list", "data": [item], "has_more": False},
            "plan": self.price.plan(),
            "quantity": self.quantity,
            "latest_invoice": self.latest_invoice,
            "metadata": dict(self.metadata),
            "livemode": False,
        }


@dataclass
class PaymentIntent:
    id: str
    customer: str | None
    amount: int
    currency: str
    created: int
    metadata: dict[str, str]
    description: str | None
    status: str = "requires_payment_method"
    charge: str | None = None
    amount_received: int = 0
    amount_refunded: int = 0
    last_payment_error: dict[str, Any] | None = None

    def export(self, *, expand_charge: bool = False) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "payment_intent",
            "amount": self.amount,
            "amount_received": self.amount_received,
            "currency": self.currency,
            "customer": self.customer,
            "description": self.description,
            "metadata": dict(self.metadata),
            "status": self.status,
            "created": self.created,
            "latest_charge": self.charge_export() if expand_charge and self.charge else self.charge,
            "last_payment_error": self.last_payment_error,
            "livemode": False,
        }

    def charge_export(self) -> dict[str, Any]:
        return {
            "id": self.charge,
            "object": "charge",
            "amount": self.amount,
            "amount_captured": self.amount_received,
            "amount_refunded": self.amount_refunded,
            "refunded": self.amount_refunded >= self.amount_received > 0,
            "currency": self.currency,
            "customer": self.customer,
            "payment_intent": self.id,
            "metadata": dict(self.metadata),
            "status": "succeeded",
            "livemode": False,
        }


def _seconds(at: datetime) -> int:
    return int(at.timestamp())


Event = tuple[str, dict[str, Any], dict[str, Any] | None, int]
"""(type, the object as it is, the attributes it had before, when)."""


@dataclass
class Stripe:
    clock: Clock = field(default_factory=Clock)
    prices: dict[str, Price] = field(default_factory=dict)
    customers: dict[str, Customer] = field(default_factory=dict)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    invoices: dict[str, Invoice] = field(default_factory=dict)
    payment_intents: dict[str, PaymentIntent] = field(default_factory=dict)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    """Oldest first (lists are newest first)."""
    public_url: str = ""
    """Where this devstripe is reached (its invoices' links)."""
    _order: list[str] = field(default_factory=list)
    """Subscription ids, oldest first (lists are newest first)."""
    _open: set[str] = field(default_factory=set)
    """Invoices waiting for a payment retry."""

    # Prices and customers --------------------------------------------------------------------

    def price(self, price_id: str) -> Price:
        if price_id not in self.prices:
            interval = "year" if ("annual" in price_id or "year" in price_id) else "month"
            self.prices[price_id] = Price(
                price_id, KNOWN_AMOUNTS.get(price_id, 0), interval, self.clock.seconds()
            )
        return self.prices[price_id]

    def create_customer(self, params: Mapping[str, Any]) -> tuple[Customer, list[Event]]:
        customer = Customer(
            new_id("cus"),
            self.clock.seconds(),
            _metadata(params),
            params.get("email"),
            params.get("name"),
            _payment_method(params) or PAYING,
        )
        self.customers[customer.id] = customer
        return customer, [self._event("customer.created", customer.export())]

    def customer(self, customer_id: str) -> Customer:
        found = self.customers.get(customer_id)
        if found is None:
            raise missing("customer", customer_id)
        return found

    def update_customer(
        self, customer_id: str, params: Mapping[str, Any]
    ) -> tuple[Customer, list[Event]]:
        """Metadata, email, name, and the default payment method (a card that pays again
        makes the next retry of an open invoice succeed)."""
        customer = self.customer(customer_id)
        before = customer.export()
        customer.metadata.update(_metadata(params))
        customer.email = params.get("email", customer.email)
        customer.name = params.get("name", customer.name)
        customer.payment_method = _payment_method(params) or customer.payment_method
        return customer, [self._changed("customer.updated", customer.export(), before)]

    # Subscriptions ---------------------------------------------------------------------------

    def create_subscription(self, params: Mapping[str, Any]) -> tuple[Subscription, list[Event]]:
        customer = self.customer(str(params.get("customer")))
        items = params.get("items") or []
        if len(items) != 1 or not isinstance(items[0], Mapping):
            raise bad("devstripe takes subscriptions of exactly one item")
        price_id = items[0].get("price") or items[0].get("plan")
        if not price_id:
            raise bad("items[0][price] is required")
        now = self.clock.now()
        price = self.price(str(price_id))
        subscription = Subscription(
            id=new_id("sub"),
            customer=customer.id,
            created=_seconds(now),
            anchor=now,
            item_id=new_id("si"),
            price=price,
            quantity=_quantity(items[0].get("quantity", 1)),
            metadata=_metadata(params),
            period_start=now,
            period_end=_period_end(now, price, 1),
        )
        self.subscriptions[subscription.id] = subscription
        self._order.append(subscription.id)
        events = [self._event("customer.subscription.created", subscription.export())]
        invoice = self._invoice(subscription, "subscription_create", price.unit_amount)
        events += self._attempt(invoice, first=True)
        return subscription, events

    def subscription(self, subscription_id: str) -> Subscription:
        found = self.subscriptions.get(subscription_id)
        if found is None:
            raise missing("subscription", subscription_id)
        return found

    def update_subscription(
        self, subscription_id: str, params: Mapping[str, Any]
    ) -> tuple[Subscription, list[Event]]:
        subscription = self.subscription(subscription_id)
        if not subscription.live:
            raise bad(f"the subscription is {subscription.status}: it cannot be changed")
        before = subscription.export()
        events: list[Event] = []
        if "cancel_at_period_end" in params:
            subscription.cancel_at_period_end = _flag(params["cancel_at_period_end"])
            subscription.canceled_at = (
                self.clock.seconds() if subscription.cancel_at_period_end else None
            )
        subscription.metadata.update(_metadata(params))
        items = params.get("items") or []
        if items:
            item = items[0]
            old_amount = subscription.price.unit_amount * subscription.quantity
            if item.get("price") or item.get("plan"):
                subscription.price = self.price(str(item.get("price") or item.get("plan")))
            if item.get("quantity") is not None:
                subscription.quantity = _quantity(item["quantity"])
            new_amount = subscription.price.unit_amount * subscription.quantity
            if params.get("proration_behavior") == "always_invoice" and new_amount > old_amount:
                events += self._prorate(subscription, new_amount - old_amount)
        changed = _differences(before, subscription.export())
        if changed:
            events.insert(
                0,
                self._changed("customer.subscription.updated", subscription.export(), changed),
            )
        return subscription, events

    def cancel_subscription(self, subscription_id: str) -> tuple[Subscription, list[Event]]:
        """Cancel now (`DELETE /v1/subscriptions/{id}`)."""
        subscription = self.subscription(subscription_id)
        if not subscription.live:
            return subscription, []
        return subscription, self._end(subscription, self.clock.now())

    def list_subscriptions(
        self, *, status: str | None, customer: str | None, limit: int, starting_after: str | None
    ) -> dict[str, Any]:
        newest_first = [self.subscriptions[i] for i in reversed(self._order)]
        if starting_after is not None:
            ids = [s.id for s in newest_first]
            if starting_after not in ids:
                raise missing("subscription", starting_after)
            newest_first = newest_first[ids.index(starting_after) + 1 :]
        matching = (
            s
            for s in newest_first
            if (customer is None or s.customer == customer)
            and (
                status == "all"
                or (status is None and s.status not in ("canceled", "incomplete_expired"))
                or s.status == status
            )
        )
        page = []
        for found in matching:
            if len(page) == limit:
                return _page(page, more=True)
            page.append(found.export())
        return _page(page, more=False)

    def invoice(self, invoice_id: str) -> Invoice:
        found = self.invoices.get(invoice_id)
        if found is None:
            raise missing("invoice", invoice_id)
        return found

    # One-off payments ---------------------------------------------------------------------------

    def create_payment_intent(self, params: Mapping[str, Any]) -> tuple[PaymentIntent, list[Event]]:
        """A payment; with `confirm`, charged at once to `payment_method` or the customer's
        default (`off_session` is accepted: nobody is there to authenticate)."""
        customer = self.customer(str(params["customer"])) if params.get("customer") else None
        intent = PaymentIntent(
            new_id("pi"),
            customer.id if customer else None,
            _amount(params.get("amount")),
            str(params.get("currency") or "usd"),
            self.clock.seconds(),
            _metadata(params),
            params.get("description"),
        )
        self.payment_intents[intent.id] = intent
        events = [self._event("payment_intent.created", intent.export())]
        if _flag(params.get("confirm")):
            method = params.get("payment_method") or (customer.payment_method if customer else None)
            events += self._pay(intent, method)
        return intent, events

    def _pay(self, intent: PaymentIntent, method: str | None) -> list[Event]:
        if method is None or method == DECLINING:
            intent.status = "requires_payment_method"
            intent.last_payment_error = {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "generic_decline",
                "message": "Your card was declined.",
            }
            return [self._event("payment_intent.payment_failed", intent.export())]
        intent.status, intent.amount_received = "succeeded", intent.amount
        intent.last_payment_error, intent.charge = None, new_id("ch")
        return [
            self._event("charge.succeeded", intent.charge_export()),
            self._event("payment_intent.succeeded", intent.export()),
        ]

    def payment_intent(self, payment_intent_id: str) -> PaymentIntent:
        found = self.payment_intents.get(payment_intent_id)
        if found is None:
            raise missing("payment_intent", payment_intent_id)
        return found

    def refund(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], list[Event]]:
        """Refund a succeeded payment, wholly or in part (`amount`)."""
        intent = self.payment_intent(str(params.get("payment_intent")))
        left = intent.amount_received - intent.amount_refunded
        amount = _amount(params["amount"]) if params.get("amount") is not None else left
        if intent.status != "succeeded" or amount > left:
            raise bad(
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})"
            )
        intent.amount_refunded += amount
        refund = {
            "id": new_id("re"),
            "object": "refund",
            "amount": amount,
            "charge": intent.charge,
            "payment_intent": intent.id,
            "currency": intent.currency,
            "status": "succeeded",
            "created": self.clock.seconds(),
        }
        self.refunds.append(refund)
        return refund, [
            self._event("refund.created", refund),
            self._event("charge.refunded", intent.charge_export()),
        ]

    def list_refunds(
        self, *, created_gte: int | None, limit: int, starting_after: str | None
    ) -> dict[str, Any]:
        newest_first = [
            r for r in reversed(self.refunds) if created_gte is None or r["created"] >= created_gte
        ]
        if starting_after is not None:
            ids = [r["id"] for r in newest_first]
            if starting_after not in ids:
                raise missing("refund", starting_after)
            newest_first = newest_first[ids.index(starting_after) + 1 :]
        page = newest_first[:limit]
        return {
            "object": "list",
            "data": page,
            "has_more": len(newest_first) > limit,
            "url": "/v1/refunds",
        }

    # Time --------------------------------------------------------------------------------------

    def next_due(self) -> datetime | None:
        """The earliest instant something falls due: a period end, a payment retry."""
        due = [s.period_end for s in self.subscriptions.values() if s.live]
        due += [
            datetime.fromtimestamp(attempt, UTC)
            for i in self._open
            if (attempt := self.invoices[i].next_payment_attempt) is not None
        ]
        return min(due, default=None)

    def advance(self, to: datetime) -> list[Event]:
        """Move the clock to `to` (never back), running what falls due on the way, in time
        order, each at its own instant."""
        events: list[Event] = []
        while (due := self.next_due()) is not None and due <= to:
            self.clock.move_to(due)
            events += self._run_due(due)
        self.clock.move_to(to)
        return events

    def _run_due(self, now: datetime) -> list[Event]:
        events: list[Event] = []
        for invoice_id in sorted(self._open):
            invoice = self.invoices[invoice_id]
            attempt = invoice.next_payment_attempt
            if attempt is not None and attempt <= _seconds(now):
                events += self._attempt(invoice, first=False)
        for subscription in list(self.subscriptions.values()):
            if subscription.live and subscription.period_end <= now:
                events += self._renew(subscription)
        return events

    def _renew(self, subscription: Subscription) -> list[Event]:
        """The period ended: the subscription ends (cancelled at period end), or a new period
        begins and is invoiced."""
        if subscription.cancel_at_period_end:
            return self._end(subscription, subscription.period_end)
        before = subscription.export()
        subscription.periods += 1
        subscription.period_start = subscription.period_end
        subscription.period_end = _period_end(
            subscription.anchor, subscription.price, subscription.periods
        )
        changed = _differences(before, subscription.export())
        events = [self._changed("customer.subscription.updated", subscription.export(), changed)]
        invoice = self._invoice(
            subscription,
            "subscription_cycle",
            subscription.price.unit_amount * subscription.quantity,
        )
        return events + self._attempt(invoice, first=False)

    def _end(self, subscription: Subscription, at: datetime) -> list[Event]:
        subscription.status = "canceled"
        subscription.ended_at = _seconds(at)
        subscription.canceled_at = subscription.canceled_at or _seconds(at)
        for invoice_id in sorted(self._open):
            invoice = self.invoices[invoice_id]
            if invoice.subscription == subscription.id:
                invoice.status, invoice.next_payment_attempt = "void", None
                self._open.discard(invoice_id)
        return [self._event("customer.subscription.deleted", subscription.export())]

    # Invoices and payments ---------------------------------------------------------------------

    def _invoice(self, subscription: Subscription, reason: str, amount: int) -> Invoice:
        invoice = Invoice(
            id=new_id("in"),
            customer=subscription.customer,
            subscription=subscription.id,
            created=self.clock.seconds(),
            amount_due=amount,
            billing_reason=reason,
            period_start=_seconds(subscription.period_start),
            period_end=_seconds(subscription.period_end),
            price=subscription.price.id,
            quantity=subscription.quantity,
            metadata=dict(subscription.metadata),
            base_url=self.public_url,
        )
        self.invoices[invoice.id] = invoice
        subscription.latest_invoice = invoice.id
        return invoice

    def _prorate(self, subscription: Subscription, difference: int) -> list[Event]:
        """An upgrade invoiced now: the difference for what is left of the period."""
        now = self.clock.now()
        whole = (subscription.period_end - subscription.period_start).total_seconds()
        left = max(0.0, (subscription.period_end - now).total_seconds())
        amount = difference * int(left) // max(1, int(whole))
        return self._attempt(self._invoice(subscription, "subscription_update", amount), True)

    def _attempt(self, invoice: Invoice, first: bool) -> list[Event]:
        """Charge the customer's payment method for the invoice."""
        subscription = self.subscriptions.get(invoice.subscription or "")
        before = subscription.export() if subscription else None
        invoice.attempt_count += 1
        pays = (
            invoice.amount_due == 0 or self.customer(invoice.customer).payment_method != DECLINING
        )
        events: list[Event] = []
        self._open.discard(invoice.id)
        if pays:
            invoice.status, invoice.amount_paid = "paid", invoice.amount_due
            invoice.paid_at, invoice.next_payment_attempt = self.clock.seconds(), None
            events += [
                self._event("invoice.paid", invoice.export()),
                self._event("invoice.payment_succeeded", invoice.export()),
            ]
            if subscription is not None and subscription.status == "past_due":
                subscription.status = "active"
        elif invoice.attempt_count > len(RETRIES):
            invoice.status, invoice.next_payment_attempt = "uncollectible", None
            events.append(self._event("invoice.payment_failed", invoice.export()))
            if subscription is not None and subscription.live:
                return events + self._end(subscription, self.clock.now())
        else:
            retry = self.clock.now() + RETRIES[invoice.attempt_count - 1]
            invoice.next_payment_attempt = _seconds(retry)
            self._open.add(invoice.id)
            events.append(self._event("invoice.payment_failed", invoice.export()))
            if subscription is not None and subscription.live:
                subscription.status = "past_due"
        if subscription is not None and before is not None and not first:
            changed = _differences(before, subscription.export())
            if changed:
                events.append(
                    self._changed("customer.subscription.updated", subscription.export(), changed)
                )
        return events

    # Events ------------------------------------------------------------------------------------

    def _event(self, kind: str, obj: dict[str, Any]) -> Event:
        return (kind, obj, None, self.clock.seconds())

    def _changed(self, kind: str, obj: dict[str, Any], before: dict[str, Any]) -> Event:
        return (kind, obj, before, self.clock.seconds())


def _period_end(anchor: datetime, price: Price, periods: int) -> datetime:
    months = periods * (12 if price.interval == "year" else 1)
    return add_months(anchor, months, anchor_day=anchor.day)


def _differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """Stripe's `previous_attributes`: what the object had before, where it changed."""
    return {key: value for key, value in before.items() if after.get(key) != value}


def _page(data: list[dict[str, Any]], *, more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": more, "url": "/v1/subscriptions"}


def _metadata(params: Mapping[str, Any]) -> dict[str, str]:
    metadata = params.get("metadata") or {}
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, Mapping) else {}


def _payment_method(params: Mapping[str, Any]) -> str | None:
    settings = params.get("invoice_settings") or {}
    found = settings.get("default_payment_method") if isinstance(settings, Mapping) else None
    return found or params.get("payment_method") or params.get("source")


def _quantity(value: Any) -> int:
    try:
        quantity = int(value)
    except (TypeError, ValueError):
        raise bad(f"invalid quantity: {value!r}") from None
    if quantity < 1:
        raise bad("quantity must be at least 1")
    return quantity


def _amount(value: Any) -> int:
    try:
        amount = int(value)
    except (TypeError, ValueError):
        raise bad(f"invalid amount: {value!r}") from None
    if amount < 1:
        raise bad("amount must be at least 1")
    return amount


def _flag(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "yes")
