"""The webhook inbox: Stripe's events are verified and stored before they are answered, then
processed asynchronously, each exactly once.

Receiving (`receive`): the `Stripe-Signature` header is verified with the official SDK and the
endpoint secret (tolerance 300 s). A bad or missing signature, a stale timestamp or a body that
is not an event is refused (400) and recorded in `webhook_rejections`, never processed. A
verified event is stored once under Stripe's event id (a redelivery finds it there and is
answered 2xx again); types the gateway does not handle are stored as `ignored`.

Processing (`run`, `process_due`): pending events are taken in Stripe's order (event time, then
arrival), a batch at a time in one transaction that locks them (`FOR UPDATE SKIP LOCKED`, so
several instances share the work), applies them and writes what they announce to the outbox;
only then are they `done`. If anything in a batch fails, its events are processed one by one,
each in its own transaction, so that only the failing ones count a failure: retried with
back-off; after `max_attempts` (at once for an unreadable event) `parked` with the reason,
visible and replayable (`replay`).

Convergence: Stripe neither orders nor deduplicates deliveries and retries for days. Each
subscription keeps the newest report by Stripe's event time (`domain.stripe_objects.order`):
an older report changes nothing, a deleted subscription stays deleted, and two reports within
the same second are settled by fetching the subscription from Stripe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import orjson
import stripe
from pydantic import ValidationError

from shared import outbox
from shared.clock import Clock
from shared.events import Event
from shared.events.stripe import (
    StripeCheckout,
    StripeCheckoutCompletedV1,
    StripeInvoice,
    StripeInvoicePaidV1,
    StripeInvoicePaymentFailedV1,
    StripeSubscription,
    StripeSubscriptionActivatedV1,
    StripeSubscriptionDeletedV1,
    StripeSubscriptionRenewedV1,
    StripeSubscriptionUpdate,
    StripeSubscriptionUpdatedV1,
)
from shared.failures import exponential
from shared.logging import get_logger

from . import PRODUCER, store
from .domain.stripe_objects import (
    Kind,
    Order,
    Subscription,
    Unreadable,
    Version,
    instant,
    order,
    read_checkout_session,
    read_invoice,
    read_subscription,
    transition,
)
from .stripe_api import StripeApi, StripeRefused

log = get_logger("stripe_gateway.inbox")

SUBSCRIPTION_EVENTS = {
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
}
INVOICE_PAID = {"invoice.paid", "invoice.payment_succeeded"}
INVOICE_FAILED = {"invoice.payment_failed"}
CHECKOUT_COMPLETED = {"checkout.session.completed"}
HANDLED = SUBSCRIPTION_EVENTS | INVOICE_PAID | INVOICE_FAILED | CHECKOUT_COMPLETED

_RETRY_CAP = timedelta(minutes=10)


class WebhookRejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class UnknownOrganisation(Exception):
    """Nothing in the event or in the gateway's records names its organisation (yet)."""


class Inbox:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        api: StripeApi,
        *,
        webhook_secret: str,
        tolerance_seconds: int,
        topic_prefix: str,
        max_attempts: int,
        retry_seconds: float,
        batch_size: int,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._api = api
        self._secret = webhook_secret
        self._tolerance = tolerance_seconds
        self._prefix = topic_prefix
        self._max_attempts = max_attempts
        self._retry_seconds = retry_seconds
        self._batch_size = batch_size
        self._wake = asyncio.Event()

    # Receiving -----------------------------------------------------------------------------

    async def receive(self, payload: bytes, signature: str | None) -> bool:
        """Verify and store one webhook delivery. True if the event is new, False if it was
        received before. Raises `WebhookRejected` (after recording it) otherwise."""
        try:
            event = self._verified(payload, signature)
        except WebhookRejected as rejected:
            await store.record_rejection(
                self._pool,
                reason=rejected.reason,
                detail=rejected.detail,
                signature=signature,
                body_sha256=hashlib.sha256(payload).hexdigest(),
                body=payload,
                now=self._clock.now(),
            )
            log.warning("webhook refused", reason=rejected.reason, detail=rejected.detail)
            raise
        new = await store.store_event(
            self._pool,
            event_id=event["id"],
            type=event["type"],
            created=instant(event["created"]),  # type: ignore[arg-type]
            payload=payload,
            status="pending" if event["type"] in HANDLED else "ignored",
            now=self._clock.now(),
        )
        if new:
            self._wake.set()
        log.info(
            "webhook received" if new else "webhook received again",
            stripe_event_id=event["id"],
            stripe_event_type=event["type"],
        )
        return new

    def _verified(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        if not signature:
            raise WebhookRejected("missing_signature", "no Stripe-Signature header")
        try:
            stripe.WebhookSignature.verify_header(payload, signature, self._secret, self._tolerance)
        except stripe.SignatureVerificationError as exc:
            stale = "tolerance" in str(exc)
            raise WebhookRejected(
                "stale_timestamp" if stale else "bad_signature", str(exc)[:300]
            ) from None
        except UnicodeDecodeError:
            raise WebhookRejected("not_an_event", "the body is not UTF-8") from None
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise WebhookRejected("not_an_event", f"not JSON: {exc}") from None
        if not (
            isinstance(event, dict)
            and isinstance(event.get("id"), str)
            and event["id"].startswith("evt_")
            and isinstance(event.get("type"), str)
            and isinstance(event.get("created"), int)
            and isinstance((event.get("data") or {}).get("object"), dict)
        ):
            raise WebhookRejected("not_an_event", "no event id, type, created or data.object")
        try:
            instant(event["created"])
        except (Unreadable, ValueError, OverflowError, OSError):
            raise WebhookRejected("not_an_event", "`created` is not a time") from None
        return event

    # Processing ----------------------------------------------------------------------------

    async def run(self, dsn: str, schema: str, idle_seconds: float = 1.0) -> None:
        """Process due events forever, woken by new ones (NOTIFY) or every `idle_seconds`."""
        listener: asyncpg.Connection | None = None
        try:
            while True:
                try:
                    if listener is None or listener.is_closed():
                        listener = await asyncpg.connect(dsn)
                        await listener.add_listener(f"inbox_{schema}", lambda *_: self._wake.set())
                    self._wake.clear()
                    if await self.process_due() >= self._batch_size:
                        continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("inbox processing interrupted", error=repr(exc))
                    listener = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), idle_seconds)
        finally:
            if listener is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(listener.close())

    async def process_due(self) -> int:
        """Process the events that are due, in Stripe's order: a batch in one transaction;
        if anything in it fails, each of its events alone, so that only the failing ones are
        retried or parked. Returns how many were tried."""
        claimed: list[str] = []
        async with self._pool.acquire() as conn:
            try:
                async with conn.transaction():
                    events = await store.claim_due(conn, self._clock.now(), self._batch_size)
                    if not events:
                        return 0
                    claimed = [e.event_id for e in events]
                    bodies = [e.body() for e in events]
                    await store.lock_subscriptions(conn, _subscription_ids(bodies))
                    announced: list[Event] = []
                    for body in bodies:
                        announced += await self._apply(conn, body)
                    await outbox.enqueue(conn, announced, prefix=self._prefix, clock=self._clock)
                    await store.finish_events(conn, claimed, self._clock.now())
                log.info("webhooks processed", events=len(claimed), announced=len(announced))
                return len(claimed)
            except Exception as exc:
                if not claimed:
                    raise
                log.info("batch failed; processing its events one by one", error=repr(exc))
        for event_id in claimed:
            await self.process(event_id)
        return len(claimed)

    async def process(self, event_id: str) -> None:
        async with self._pool.acquire() as conn:
            try:
                async with conn.transaction():
                    event = await store.claim_event(conn, event_id)
                    if event is None:
                        return
                    announced = await self._apply(conn, event.body())
                    await outbox.enqueue(conn, announced, prefix=self._prefix, clock=self._clock)
                    await store.finish_event(conn, event_id, self._clock.now())
            except Exception as exc:
                await self._failed(event_id, exc)
                return
        log.info(
            "webhook processed",
            stripe_event_id=event.event_id,
            stripe_event_type=event.type,
            announced=[e.type for e in announced],
        )

    async def _failed(self, event_id: str, exc: Exception) -> None:
        attempts = await store.attempts_of(self._pool, event_id) + 1
        park = isinstance(exc, (Unreadable, ValidationError)) or attempts >= self._max_attempts
        now = self._clock.now()
        delay = exponential(attempts, first=self._retry_seconds, cap=_RETRY_CAP.total_seconds())
        await store.fail_event(
            self._pool,
            event_id,
            error=f"{type(exc).__name__}: {exc}",
            retry_at=now + timedelta(seconds=delay),
            park=park,
            now=now,
        )
        log.warning(
            "webhook parked" if park else "webhook processing failed; will retry",
            stripe_event_id=event_id,
            attempts=attempts,
            retry_in=None if park else delay,
            error=repr(exc)[:300],
        )

    async def replay(self, event_id: str) -> bool:
        """Process a parked event again (after fixing what made it fail)."""
        replayed = await store.replay_event(self._pool, event_id, self._clock.now())
        if replayed:
            self._wake.set()
        return replayed

    async def _apply(self, conn: asyncpg.Connection, event: dict[str, Any]) -> Sequence[Event]:
        kind, obj = event["type"], event["data"]["object"]
        version = Version(instant(event["created"]), event["id"])  # type: ignore[arg-type]
        if kind in SUBSCRIPTION_EVENTS:
            return await self._subscription(
                conn, read_subscription(obj), version, deleted=kind.endswith(".deleted")
            )
        if kind in CHECKOUT_COMPLETED:
            return await self._checkout(conn, obj, version)
        if kind in INVOICE_PAID or kind in INVOICE_FAILED:
            return await self._invoice(conn, obj, version, paid=kind in INVOICE_PAID)
        return ()

    async def _subscription(
        self, conn: asyncpg.Connection, incoming: Subscription, version: Version, *, deleted: bool
    ) -> Sequence[Event]:
        known = await store.lock_subscription(conn, incoming.subscription_id)
        ordering = order(known, version)
        if ordering in (Order.OLDER, Order.AFTER_DELETION):
            log.info(
                "older subscription report ignored",
                subscription_id=incoming.subscription_id,
                ordering=ordering.value,
                stripe_event_id=version.event_id,
            )
            return ()
        if ordering is Order.SAME_TIME:
            try:
                incoming = read_subscription(
                    await self._api.retrieve_subscription(incoming.subscription_id)
                )
            except StripeRefused:
                pass  # unknown to Stripe now: the report stands
        organisation = (
            known.organisation_id
            if known
            else incoming.organisation_id or await store.organisation_of(conn, incoming.customer_id)
        )
        if organisation is None:
            raise UnknownOrganisation(f"customer {incoming.customer_id}")
        now = self._clock.now()
        if known is None:
            await store.remember_customer(conn, organisation, incoming.customer_id, now)
        change = transition(known.subscription if known else None, incoming, deleted=deleted)
        await store.save_subscription(
            conn,
            change.subscription,
            organisation_id=organisation,
            deleted=change.kind is Kind.DELETED,
            version=version,
            now=now,
        )
        if change.kind is Kind.UNCHANGED:
            return ()
        state = _state(change.subscription, version)
        if change.kind is Kind.UPDATED:
            body: StripeSubscription = StripeSubscriptionUpdate(
                **state.model_dump(), changes=change.changes
            )
        else:
            body = state
        announce = {
            Kind.ACTIVATED: StripeSubscriptionActivatedV1,
            Kind.RENEWED: StripeSubscriptionRenewedV1,
            Kind.UPDATED: StripeSubscriptionUpdatedV1,
            Kind.DELETED: StripeSubscriptionDeletedV1,
        }[change.kind]
        return [_event(announce, organisation, body, version)]

    async def _checkout(
        self, conn: asyncpg.Connection, obj: dict[str, Any], version: Version
    ) -> Sequence[Event]:
        session = read_checkout_session(obj)
        organisation = session.organisation_id or (
            await store.organisation_of(conn, session.customer_id) if session.customer_id else None
        )
        if organisation is None:
            raise UnknownOrganisation(f"checkout session {session.session_id}")
        if session.customer_id:
            await store.remember_customer(
                conn, organisation, session.customer_id, self._clock.now()
            )
        body = StripeCheckout(
            checkout_session_id=session.session_id,
            customer_id=session.customer_id,
            subscription_id=session.subscription_id,
            price_id=session.price_id,
            quantity=session.quantity,
            request_id=session.request_id,
            stripe_event_id=version.event_id,
            stripe_event_created=version.created,
        )
        events: list[Event] = [_event(StripeCheckoutCompletedV1, organisation, body, version)]
        if session.subscription_id and not await store.lock_subscription(
            conn, session.subscription_id
        ):
            # Known at once, not only when its own webhook comes (any order, maybe later):
            # a command for it (cancel, quantity) may follow the checkout within a second.
            try:
                current = read_subscription(
                    await self._api.retrieve_subscription(session.subscription_id)
                )
            except StripeRefused:
                return events  # unknown to Stripe: its own webhooks will tell
            events += await self._subscription(conn, current, version, deleted=False)
        return events

    async def _invoice(
        self, conn: asyncpg.Connection, obj: dict[str, Any], version: Version, *, paid: bool
    ) -> Sequence[Event]:
        invoice = read_invoice(obj)
        organisation = invoice.organisation_id or await store.organisation_of(
            conn, invoice.customer_id
        )
        if organisation is None:
            raise UnknownOrganisation(f"customer {invoice.customer_id}")
        body = StripeInvoice(
            invoice_id=invoice.invoice_id,
            customer_id=invoice.customer_id,
            subscription_id=invoice.subscription_id,
            amount=invoice.amount_paid if paid else invoice.amount_due,
            currency=invoice.currency,
            billing_reason=invoice.billing_reason,
            period_start=invoice.period_start,
            period_end=invoice.period_end,
            attempt_count=invoice.attempt_count,
            next_payment_attempt=invoice.next_payment_attempt,
            stripe_event_id=version.event_id,
            stripe_event_created=version.created,
        )
        kind = StripeInvoicePaidV1 if paid else StripeInvoicePaymentFailedV1
        return [_event(kind, organisation, body, version)]


def _subscription_ids(bodies: Sequence[dict[str, Any]]) -> list[str]:
    found = []
    for body in bodies:
        obj = (body.get("data") or {}).get("object") or {}
        if body.get("type") in SUBSCRIPTION_EVENTS and isinstance(obj.get("id"), str):
            found.append(obj["id"])
    return found


def _state(subscription: Subscription, version: Version) -> StripeSubscription:
    return StripeSubscription(
        subscription_id=subscription.subscription_id,
        customer_id=subscription.customer_id,
        status=subscription.status,
        price_id=subscription.price_id,
        quantity=subscription.quantity,
        current_period_start=subscription.period_start,
        current_period_end=subscription.period_end,
        cancel_at_period_end=subscription.cancel_at_period_end,
        stripe_event_id=version.event_id,
        stripe_event_created=version.created,
    )


def _event(kind: type[Event], organisation: str, body: Any, version: Version) -> Event:
    return kind.new(
        organisation_id=organisation, producer=PRODUCER, occurred_at=version.created, data=body
    )
