"""The Stripe gateway's contract: commands other services send it (`stripe.commands`), and
what it reports (`stripe.events`): what happened in Stripe, and how each command ended.

Version 2 of the reports (what the gateway publishes): every subscription and invoice event
carries the object's whole state as the gateway *fetched it from Stripe* after a webhook (or a
reconciliation) named it, with `version`: a number the gateway increases, per Stripe object,
every time it observes a new state of it. A consumer keeps, per object, the state with the
highest version and drops lower ones, whatever order the events arrive in. Stripe's own event
times are whole seconds and cannot order several changes within one second; versions can.

Version 1 (`stripe_event_created` as the version) is what the gateway published before; its
schemas stay so that records already on the topic can be read.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from .envelope import (
    TEXT_PATTERN,
    Body,
    Event,
    HttpUrl,
    Identifier,
    Int64,
    NonNegativeInt64,
    UtcDatetime,
)

MAX_AMOUNT = 10**12
"""The largest invoice amount (in the currency's smallest unit) the gateway stores."""

StripeId = Annotated[str, Field(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_]+$")]
"""A Stripe object id (`sub_…`, `cus_…`, `price_…`, `evt_…`, `cs_…`)."""

Quantity = Annotated[int, Field(strict=True, ge=1, le=1_000_000)]

ObjectVersion = Annotated[int, Field(strict=True, ge=1, le=2**63 - 1)]
"""The gateway's count of the states it observed of one Stripe object (a PostgreSQL bigint)."""

Money = Annotated[int, Field(strict=True, ge=0, le=10**12)]
"""An amount in the currency's smallest unit."""


class SubscriptionStatus(StrEnum):
    INCOMPLETE = "incomplete"
    INCOMPLETE_EXPIRED = "incomplete_expired"
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    CANCELED = "canceled"
    UNPAID = "unpaid"
    PAUSED = "paused"


class StripeSubscription(Body):
    """A subscription as Stripe last reported it."""

    subscription_id: StripeId
    customer_id: StripeId
    status: SubscriptionStatus
    price_id: StripeId | None
    quantity: Quantity
    current_period_start: UtcDatetime | None
    current_period_end: UtcDatetime | None
    cancel_at_period_end: bool
    stripe_event_id: StripeId
    stripe_event_created: UtcDatetime
    """The version of this state: Stripe's time of the event that reported it."""


class StripeSubscriptionChange(StrEnum):
    PRICE = "price"
    QUANTITY = "quantity"
    CANCEL_AT_PERIOD_END = "cancel_at_period_end"
    STATUS = "status"
    PERIOD = "period"


class StripeSubscriptionUpdate(StripeSubscription):
    changes: Annotated[tuple[StripeSubscriptionChange, ...], Field(max_length=100)]
    """What differs from the previous state the gateway saw (empty if it saw none)."""


class StripeSubscriptionActivatedV1(Event):
    """A subscription became active (or trialing) for the first time."""

    type: Literal["stripe_subscription.activated.v1"]
    data: StripeSubscription


class StripeSubscriptionRenewedV1(Event):
    """A subscription entered a new billing period."""

    type: Literal["stripe_subscription.renewed.v1"]
    data: StripeSubscription


class StripeSubscriptionUpdatedV1(Event):
    """A subscription's price, quantity, cancellation at period end or status changed."""

    type: Literal["stripe_subscription.updated.v1"]
    data: StripeSubscriptionUpdate


class StripeSubscriptionDeletedV1(Event):
    """A subscription ended (Stripe deleted it); it never comes back."""

    type: Literal["stripe_subscription.deleted.v1"]
    data: StripeSubscription


class StripeCheckout(Body):
    checkout_session_id: StripeId
    customer_id: StripeId | None
    subscription_id: StripeId | None
    price_id: StripeId | None
    quantity: Quantity | None
    request_id: Identifier | None
    """The id the requesting service gave the checkout (from the session's metadata)."""
    stripe_event_id: StripeId
    stripe_event_created: UtcDatetime


class StripeCheckoutCompletedV1(Event):
    """A customer completed a Checkout session: the subscription exists and is paid (R4)."""

    type: Literal["stripe_checkout.completed.v1"]
    data: StripeCheckout


class StripeInvoice(Body):
    invoice_id: StripeId
    customer_id: StripeId
    subscription_id: StripeId | None
    amount: Annotated[int, Field(ge=0, le=MAX_AMOUNT)]
    """Amount paid (`paid`) or due (`payment_failed`), in the currency's smallest unit."""
    currency: Annotated[str, Field(min_length=3, max_length=3)]
    billing_reason: Identifier | None
    period_start: UtcDatetime | None
    period_end: UtcDatetime | None
    attempt_count: Annotated[int, Field(ge=0, le=1_000)]
    next_payment_attempt: UtcDatetime | None
    stripe_event_id: StripeId
    stripe_event_created: UtcDatetime


class StripeInvoicePaidV1(Event):
    type: Literal["stripe_invoice.paid.v1"]
    data: StripeInvoice


class StripeInvoicePaymentFailedV1(Event):
    """A payment for an invoice failed; Stripe retries it (see `next_payment_attempt`)."""

    type: Literal["stripe_invoice.payment_failed.v1"]
    data: StripeInvoice


# Version 2: states fetched from Stripe, ordered per object by the gateway's `version` ---------


class ObservedBy(StrEnum):
    WEBHOOK = "webhook"
    """A webhook named the object; the gateway fetched it."""
    COMMAND = "command"
    """The gateway changed the object (a command) and fetched it afterwards."""
    RECONCILIATION = "reconciliation"
    """The reconciler found Stripe's state differing from what the gateway held."""


class StripeSubscriptionObserved(Body):
    """A subscription as the gateway fetched it from Stripe."""

    subscription_id: StripeId
    customer_id: StripeId
    status: SubscriptionStatus
    price_id: StripeId | None
    quantity: Quantity
    current_period_start: UtcDatetime | None
    current_period_end: UtcDatetime | None
    cancel_at_period_end: bool
    version: ObjectVersion
    """Increases with every new state the gateway observes of this subscription."""
    observed_at: UtcDatetime
    observed_by: ObservedBy
    changes: Annotated[tuple[StripeSubscriptionChange, ...], Field(max_length=100)] = ()
    """What differs from the previous version (empty for the first)."""


class StripeSubscriptionActivatedV2(Event):
    """A subscription became active (or trialing) for the first time."""

    type: Literal["stripe_subscription.activated.v2"]
    data: StripeSubscriptionObserved


class StripeSubscriptionRenewedV2(Event):
    """A subscription entered a new billing period."""

    type: Literal["stripe_subscription.renewed.v2"]
    data: StripeSubscriptionObserved


class StripeSubscriptionUpdatedV2(Event):
    """A subscription's price, quantity, cancellation at period end, status or period changed."""

    type: Literal["stripe_subscription.updated.v2"]
    data: StripeSubscriptionObserved


class StripeSubscriptionDeletedV2(Event):
    """A subscription ended (canceled or incomplete_expired); it never comes back."""

    type: Literal["stripe_subscription.deleted.v2"]
    data: StripeSubscriptionObserved


class StripeCheckoutObserved(Body):
    checkout_session_id: StripeId
    customer_id: StripeId
    subscription_id: StripeId
    price_id: StripeId | None
    """The subscription's price as Stripe holds it: what the customer pays."""
    quantity: Quantity
    request_id: Identifier | None
    """The id the requesting service gave the checkout (from the session's metadata)."""
    started_at: UtcDatetime | None
    """The subscription's first period start (Stripe's clock)."""
    observed_at: UtcDatetime
    observed_by: ObservedBy


class StripeCheckoutCompletedV2(Event):
    """A Checkout session is complete and paid in Stripe: its subscription exists (R4).
    Announced once per session."""

    type: Literal["stripe_checkout.completed.v2"]
    data: StripeCheckoutObserved


class InvoiceStatus(StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    UNCOLLECTIBLE = "uncollectible"
    VOID = "void"


class StripeInvoiceObserved(Body):
    invoice_id: StripeId
    customer_id: StripeId
    subscription_id: StripeId | None
    status: InvoiceStatus
    amount_due: Money
    amount_paid: Money
    currency: Annotated[str, Field(min_length=3, max_length=3)]
    billing_reason: Identifier | None
    period_start: UtcDatetime | None
    period_end: UtcDatetime | None
    attempt_count: Annotated[int, Field(strict=True, ge=0, le=1_000)]
    next_payment_attempt: UtcDatetime | None
    version: ObjectVersion
    """Increases with every new state the gateway observes of this invoice. A paid invoice is
    final: no later version of it is anything but paid."""
    observed_at: UtcDatetime
    observed_by: ObservedBy


class StripeInvoicePaidV2(Event):
    type: Literal["stripe_invoice.paid.v2"]
    data: StripeInvoiceObserved


class StripeInvoicePaymentFailedV2(Event):
    """The newest state of an unpaid invoice after a failed payment attempt; Stripe retries it
    (`next_payment_attempt`). Never announced for an invoice already paid."""

    type: Literal["stripe_invoice.payment_failed.v2"]
    data: StripeInvoiceObserved


class PaymentStatus(StrEnum):
    """A PaymentIntent's status, as Stripe names it."""

    REQUIRES_PAYMENT_METHOD = "requires_payment_method"
    REQUIRES_CONFIRMATION = "requires_confirmation"
    REQUIRES_ACTION = "requires_action"
    PROCESSING = "processing"
    REQUIRES_CAPTURE = "requires_capture"
    CANCELED = "canceled"
    SUCCEEDED = "succeeded"


class StripePaymentObserved(Body):
    """A one-off payment (a PaymentIntent: a credit pack bought through Checkout, or charged
    off-session by auto-recharge) as the gateway fetched it from Stripe, with its refunds."""

    payment_intent_id: StripeId
    customer_id: StripeId | None
    status: PaymentStatus
    amount: Money
    amount_received: Money
    amount_refunded: Money
    """Refunded so far, in total (a later refund raises it)."""
    currency: Annotated[str, Field(min_length=3, max_length=3)]
    purchase_id: Identifier | None
    """The id the requesting service gave the payment (its metadata)."""
    failure_code: Identifier | None
    """Why the last attempt failed (`card_declined`, …), while it is not paid."""
    version: ObjectVersion
    """Increases with every new state the gateway observes of this payment."""
    observed_at: UtcDatetime
    observed_by: ObservedBy


class StripePaymentUpdatedV1(Event):
    """A one-off payment changed: it succeeded, an attempt failed, or it was refunded (wholly
    or in part). Consumers keep the highest version per payment."""

    type: Literal["stripe_payment.updated.v1"]
    data: StripePaymentObserved


# Commands ---------------------------------------------------------------------------------------


class CustomerRequest(Body):
    email: Annotated[str, Field(max_length=254)] | None = None
    name: Annotated[str, Field(max_length=200)] | None = None


class CreateCustomerRequestedV1(Event):
    """Create the organisation's Stripe customer (once; later requests return it)."""

    type: Literal["stripe_customer.create_requested.v1"]
    data: CustomerRequest


class CheckoutRequest(Body):
    price_id: StripeId
    quantity: Quantity
    success_url: HttpUrl
    cancel_url: HttpUrl
    customer_email: Annotated[str, Field(max_length=254)] | None = None


class CheckoutRequestedV1(Event):
    """Create a Checkout session (subscription mode) for the organisation; its URL is reported
    by `stripe_command.succeeded.v1` (also served over HTTP)."""

    type: Literal["stripe_checkout.requested.v1"]
    data: CheckoutRequest


class PortalRequest(Body):
    return_url: HttpUrl


class PortalRequestedV1(Event):
    """Create a Billing Portal session for the organisation's customer (R11)."""

    type: Literal["stripe_portal.requested.v1"]
    data: PortalRequest


class PriceChangeTiming(StrEnum):
    NOW = "now"
    """An upgrade: the new price at once, the difference prorated and invoiced now (R5)."""
    PERIOD_END = "period_end"
    """A downgrade: no proration; the next period is billed at the new price (R5)."""


class PriceChange(Body):
    price_id: StripeId
    timing: PriceChangeTiming


class PriceChangeRequestedV1(Event):
    type: Literal["stripe_subscription.price_change_requested.v1"]
    data: PriceChange


class CancelAtPeriodEnd(Body):
    cancel_at_period_end: bool
    """True cancels at the end of the paid period (R12); False withdraws that (R13)."""


class CancelAtPeriodEndRequestedV1(Event):
    type: Literal["stripe_subscription.cancel_at_period_end_requested.v1"]
    data: CancelAtPeriodEnd


class QuantityChange(Body):
    quantity: Quantity
    revision: NonNegativeInt64
    """Increases with every seat count of the organisation: an older one never overwrites a
    newer one."""


class QuantityChangeRequestedV1(Event):
    type: Literal["stripe_subscription.quantity_change_requested.v1"]
    data: QuantityChange


class PaymentCheckoutRequest(Body):
    """A Checkout session in payment mode for one price (a credit pack)."""

    price_id: StripeId
    purchase_id: Identifier
    success_url: HttpUrl
    cancel_url: HttpUrl


class ChargeRequest(Body):
    purchase_id: Identifier
    """The requesting service's id for the payment: in its metadata, and in its idempotency
    key (one charge per purchase)."""
    amount: Annotated[int, Field(strict=True, ge=1, le=10**12)]
    currency: Annotated[str, Field(min_length=3, max_length=3, pattern=r"^[a-z]{3}$")]
    description: Annotated[str, Field(max_length=200, pattern=TEXT_PATTERN)]


class ChargeRequestedV1(Event):
    """Charge the organisation's customer off-session, once per purchase, with its default
    payment method (auto-recharge). What happened is reported by `stripe_payment.updated.v1`."""

    type: Literal["stripe_payment.charge_requested.v1"]
    data: ChargeRequest


class CommandOutcome(Body):
    command_id: Annotated[str, Field(min_length=1, max_length=64)]
    """The command's event id (HTTP requests: their request id)."""
    command_type: Identifier
    result: Annotated[
        dict[Identifier, Annotated[str, Field(max_length=500)] | Int64 | bool | None],
        Field(max_length=50),
    ] = Field(default_factory=dict)
    """What the command produced: ids, the Checkout or Portal `url`, `skipped` if it had no
    effect to make (e.g. an older quantity)."""


class CommandFailure(Body):
    command_id: Annotated[str, Field(min_length=1, max_length=64)]
    command_type: Identifier
    reason: Identifier
    """`no_customer`, `no_subscription`, `stripe_invalid_request`, `stripe_unavailable`,
    `idempotency_conflict`, …"""
    detail: Annotated[str, Field(max_length=500)]


class StripeCommandSucceededV1(Event):
    type: Literal["stripe_command.succeeded.v1"]
    data: CommandOutcome


class StripeCommandFailedV1(Event):
    type: Literal["stripe_command.failed.v1"]
    data: CommandFailure
