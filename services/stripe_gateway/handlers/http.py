"""The gateway's HTTP API:
- `POST /stripe/webhook`: Stripe's deliveries, authenticated by their signature;
- `/v1/…` for internal callers with a bearer token: Checkout and Billing Portal sessions (a
  person waits for the redirect), the subscriptions as the gateway holds them (what Stripe
  holds, as last observed), the inbox (parked events and their replay) and reconciliation."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from shared import metrics
from shared.access import READERS, Scope, allow
from shared.audit import audited
from shared.events.audit import SYSTEM_ORGANISATION, AuditAction
from shared.events.envelope import HttpUrl, Identifier, OrganisationId
from shared.events.stripe import (
    CheckoutRequest,
    PaymentCheckoutRequest,
    PortalRequest,
    Quantity,
    StripeId,
)
from shared.http import PROBLEM_RESPONSES, OrganisationPath, Problem

from ..commands import CommandRefused
from ..domain.projection import Held
from ..inbox import WebhookRejected
from ..parts import parts_of
from ..store import inbox as inbox_store
from ..store import objects
from ..store import reconciliations as runs

webhooks = APIRouter(tags=["stripe"])


@webhooks.post(
    "/stripe/webhook",
    responses={400: {"description": "Signature missing, wrong or stale; or not an event"}},
)
async def receive_webhook(request: Request) -> dict[str, bool]:
    """Stripe's webhook endpoint. Verified with `Stripe-Signature` and the endpoint secret,
    stored once under Stripe's event id, answered 200, processed afterwards. A redelivery is
    answered 200 again (`duplicate`) and not processed twice."""
    inbox = parts_of(request).inbox
    try:
        new = await inbox.receive(await request.body(), request.headers.get("stripe-signature"))
    except WebhookRejected as rejected:
        metrics.WEBHOOKS.labels("refused").inc()
        raise Problem(
            400, "webhook-refused", "Webhook refused", rejected.detail, reason=rejected.reason
        ) from None
    metrics.WEBHOOKS.labels("stored" if new else "duplicate").inc()
    return {"received": True, "duplicate": not new}


router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)


class CheckoutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organisation_id: OrganisationId
    request_id: Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    """The caller's id of this request: asking again with it returns the same session."""
    price_id: StripeId
    quantity: Quantity
    success_url: HttpUrl
    cancel_url: HttpUrl
    customer_email: Annotated[str, Field(max_length=254)] | None = None


class PaymentCheckoutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organisation_id: OrganisationId
    request_id: Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    """The caller's id of this request: asking again with it returns the same session."""
    price_id: StripeId
    purchase_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    """Put in the payment's metadata: `stripe_payment.updated.v1` carries it back."""
    success_url: HttpUrl
    cancel_url: HttpUrl


class PortalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organisation_id: OrganisationId
    request_id: Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    return_url: HttpUrl


class SessionOut(BaseModel):
    id: str
    url: str


_REFUSALS = {
    "no_customer": (409, "no-customer", "The organisation has no Stripe customer"),
    "no_subscription": (409, "no-subscription", "The organisation has no live subscription"),
    "stripe_invalid_request": (422, "stripe-refused", "Stripe refused the request"),
    "stripe_unavailable": (503, "stripe-unavailable", "Stripe did not answer"),
    "idempotency_conflict": (
        409,
        "idempotency-conflict",
        "This request id was used for another request",
    ),
    "command_in_progress": (409, "in-progress", "The same request is still running"),
}


def _problem(refused: CommandRefused) -> Problem:
    status, slug, title = _REFUSALS.get(refused.reason, (422, "refused", "Refused"))
    headers = {"Retry-After": "5"} if status == 503 else None
    return Problem(status, slug, title, refused.detail, headers=headers, reason=refused.reason)


@router.post(
    "/checkout-sessions",
    dependencies=[allow(Scope.SERVICE)],
    response_model=SessionOut,
    tags=["sessions"],
)
async def create_checkout_session(body: CheckoutIn, request: Request) -> SessionOut:
    """A Checkout session (subscription mode) for the organisation: redirect the owner to
    `url` (R4). The plan is in force when `stripe_checkout.completed.v1` arrives."""
    try:
        result = await parts_of(request).commands.checkout(
            body.organisation_id,
            body.request_id,
            CheckoutRequest(
                price_id=body.price_id,
                quantity=body.quantity,
                success_url=body.success_url,
                cancel_url=body.cancel_url,
                customer_email=body.customer_email,
            ),
        )
    except CommandRefused as refused:
        raise _problem(refused) from None
    return SessionOut(id=str(result["checkout_session_id"]), url=str(result["url"]))


@router.post(
    "/payment-checkout-sessions",
    dependencies=[allow(Scope.SERVICE)],
    response_model=SessionOut,
    tags=["sessions"],
)
async def create_payment_checkout_session(body: PaymentCheckoutIn, request: Request) -> SessionOut:
    """A Checkout session in payment mode (a credit pack) for the organisation: redirect the
    owner to `url`. The payment is reported by `stripe_payment.updated.v1`."""
    try:
        result = await parts_of(request).commands.payment_checkout(
            body.organisation_id,
            body.request_id,
            PaymentCheckoutRequest(
                price_id=body.price_id,
                purchase_id=body.purchase_id,
                success_url=body.success_url,
                cancel_url=body.cancel_url,
            ),
        )
    except CommandRefused as refused:
        raise _problem(refused) from None
    return SessionOut(id=str(result["checkout_session_id"]), url=str(result["url"]))


@router.post(
    "/portal-sessions",
    dependencies=[allow(Scope.SERVICE)],
    response_model=SessionOut,
    tags=["sessions"],
)
async def create_portal_session(body: PortalIn, request: Request) -> SessionOut:
    """A Billing Portal session for the organisation's customer: payment methods, invoices,
    billing details (R11)."""
    try:
        result = await parts_of(request).commands.portal(
            body.organisation_id, body.request_id, PortalRequest(return_url=body.return_url)
        )
    except CommandRefused as refused:
        raise _problem(refused) from None
    return SessionOut(id=str(result["portal_session_id"]), url=str(result["url"]))


class SubscriptionOut(BaseModel):
    organisation_id: str
    subscription_id: str
    customer_id: str
    status: str
    price_id: str | None
    quantity: int
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    deleted: bool
    version: int
    """Increases with every new state the gateway observed (as in its events)."""


def _subscription_out(held: Held) -> SubscriptionOut:
    sub = held.subscription
    return SubscriptionOut(
        organisation_id=held.organisation_id,
        subscription_id=sub.subscription_id,
        customer_id=sub.customer_id,
        status=sub.status.value,
        price_id=sub.price_id,
        quantity=sub.quantity,
        current_period_start=sub.period_start,
        current_period_end=sub.period_end,
        cancel_at_period_end=sub.cancel_at_period_end,
        deleted=held.deleted,
        version=held.version,
    )


@router.get(
    "/organisations/{organisation_id}/subscriptions",
    dependencies=[allow(Scope.SERVICE, *READERS)],
    response_model=list[SubscriptionOut],
    tags=["subscriptions"],
)
async def subscriptions(
    organisation_id: OrganisationPath, request: Request
) -> list[SubscriptionOut]:
    """The organisation's subscriptions as the gateway last observed them in Stripe, newest
    first."""
    held = await objects.subscriptions_of(request.app.state.runtime.pool, organisation_id)
    return [_subscription_out(h) for h in held]


class InvoiceOut(BaseModel):
    invoice_id: str
    status: str
    amount_due: int
    amount_paid: int
    """In the currency's smallest unit."""
    currency: str
    billing_reason: str | None
    period_start: datetime | None
    period_end: datetime | None
    hosted_url: str | None
    pdf_url: str | None


@router.get(
    "/organisations/{organisation_id}/invoices",
    dependencies=[allow(Scope.SERVICE, *READERS)],
    response_model=list[InvoiceOut],
    tags=["invoices"],
)
async def invoices(
    organisation_id: OrganisationPath,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 12,
) -> list[InvoiceOut]:
    """The organisation's latest invoices as the gateway last observed them in Stripe, newest
    first, with Stripe's page and PDF of each."""
    found = await objects.invoices_of(request.app.state.runtime.pool, organisation_id, limit)
    return [
        InvoiceOut(
            invoice_id=i.invoice_id,
            status=i.status.value,
            amount_due=i.amount_due,
            amount_paid=i.amount_paid,
            currency=i.currency,
            billing_reason=i.billing_reason,
            period_start=i.period_start,
            period_end=i.period_end,
            hosted_url=i.hosted_url,
            pdf_url=i.pdf_url,
        )
        for i in found
    ]


@router.get(
    "/subscriptions",
    dependencies=[allow(Scope.SERVICE, *READERS)],
    response_model=list[SubscriptionOut],
    tags=["subscriptions"],
)
async def all_subscriptions(
    request: Request,
    after: Annotated[StripeId | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> list[SubscriptionOut]:
    """Every subscription held, in id order, a page at a time (`after`: the last id of the
    previous page): what other services' reconcilers compare with."""
    held = await objects.page_of_subscriptions(
        request.app.state.runtime.pool, after=after, limit=limit
    )
    return [_subscription_out(h) for h in held]


class InboxEventOut(BaseModel):
    event_id: str
    type: str
    created: datetime
    status: str
    attempts: int
    last_error: str | None
    received_at: datetime
    processed_at: datetime | None


@router.get(
    "/inbox",
    dependencies=[allow(Scope.OPERATOR)],
    response_model=list[InboxEventOut],
    tags=["inbox"],
)
async def inbox_events(
    request: Request,
    status: Literal["pending", "done", "parked", "ignored"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[InboxEventOut]:
    """Received webhook events, newest first; `status=parked` lists those that need a look."""
    found = await inbox_store.list_events(
        request.app.state.runtime.pool, status=status, limit=limit
    )
    return [InboxEventOut.model_validate(e, from_attributes=True) for e in found]


@router.post(
    "/inbox/{event_id}/replay",
    dependencies=[allow(Scope.OPERATOR)],
    response_model=InboxEventOut,
    tags=["inbox"],
    responses={409: {"description": "The event is not parked"}},
)
async def replay(event_id: Annotated[Identifier, Path()], request: Request) -> InboxEventOut:
    """Process a parked event again, with a fresh count of attempts."""
    pool = request.app.state.runtime.pool
    async with audited(request, SYSTEM_ORGANISATION, AuditAction.REPLAY) as entry:
        entry.target = event_id
        if not await parts_of(request).reports.replay(event_id):
            found = await inbox_store.get_event(pool, event_id)
            if found is None:
                raise Problem(404, "event-not-found", "No such event")
            raise Problem(
                409, "not-parked", f"The event is {found.status}", status_detail=found.status
            )
    found = await inbox_store.get_event(pool, event_id)
    return InboxEventOut.model_validate(found, from_attributes=True)


class ReconcileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organisation_id: OrganisationId | None = None
    """One organisation; none: all of them."""


class ReconciliationOut(BaseModel):
    id: int
    organisation_id: str | None
    started_at: datetime
    finished_at: datetime | None
    subscriptions: int
    """Subscriptions Stripe listed and the gateway compared."""
    checkouts: int
    """Checkout sessions still open on our side, asked about."""
    quantities: int
    """Seat quantities compared with the newest count asked for."""
    repaired: int
    alerts: int
    error: str | None


@router.post(
    "/reconciliations",
    dependencies=[allow(Scope.OPERATOR)],
    response_model=ReconciliationOut,
    tags=["reconciliation"],
    responses={409: {"description": "A sweep of the same scope is running"}},
)
async def reconcile(body: ReconcileIn, request: Request) -> ReconciliationOut:
    """Compare what the gateway holds with what Stripe holds now, and repair (Stripe wins):
    subscriptions, checkouts still open, seat quantities. Answers when it is done."""
    organisation = body.organisation_id or SYSTEM_ORGANISATION
    async with audited(request, organisation, AuditAction.RECONCILIATION) as entry:
        record = await parts_of(request).reconciler.sweep(body.organisation_id)
        if "skipped" in record:
            raise Problem(409, "reconciliation-running", "A sweep of the same scope is running")
        entry.target = f"sweep:{record['id']}"
        entry.detail = f"{record['subscriptions']} compared, {record['repaired']} repaired"
    return ReconciliationOut.model_validate(record)


@router.get(
    "/reconciliations",
    dependencies=[allow(Scope.OPERATOR)],
    response_model=list[ReconciliationOut],
    tags=["reconciliation"],
)
async def reconciliations(
    request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 20
) -> list[ReconciliationOut]:
    """The latest reconciliations, newest first, with their counts."""
    found = await runs.recent(request.app.state.runtime.pool, limit)
    return [ReconciliationOut.model_validate(r) for r in found]
