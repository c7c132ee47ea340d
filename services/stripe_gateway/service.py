"""Stripe's reports turned into what the gateway holds and announces: one forward path.

1. `inbox.receive` verified and stored the webhook (it was answered 2xx);
2. `domain.reports` says which Stripe objects the event names;
3. `Observer` fetches each object from Stripe, with no transaction open, then applies what it
   fetched in one transaction (`domain.projection`): only if no other observation of that
   object was applied since the fetch began (else it fetches again), with the next version,
   and with what it announces in the outbox;
4. `Reports` marks the events done once every object they name was observed; an event that
   cannot be applied is retried with back-off and then parked, visible and replayable.

Announcements carry the object's state as fetched and its version, so consumers keep the
newest per object whatever order the events reach them in.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
from pydantic import ValidationError

from shared import outbox
from shared.clock import Clock
from shared.events import Body, Event
from shared.events.operations import DriftRepair, DriftRepairedV1
from shared.events.stripe import (
    ObservedBy,
    StripeCheckoutCompletedV2,
    StripeCheckoutObserved,
    StripeInvoiceObserved,
    StripeInvoicePaidV2,
    StripeInvoicePaymentFailedV2,
    StripePaymentObserved,
    StripePaymentUpdatedV1,
    StripeSubscriptionActivatedV2,
    StripeSubscriptionDeletedV2,
    StripeSubscriptionObserved,
    StripeSubscriptionRenewedV2,
    StripeSubscriptionUpdatedV2,
)
from shared.failures import exponential
from shared.logging import get_logger

from . import PRODUCER
from .domain.projection import Held, InvoiceNews, Kind, drift, invoice_news, transition
from .domain.reports import ObjectKind, ObjectRef, objects_named
from .domain.stripe_objects import (
    CheckoutSession,
    Subscription,
    Unreadable,
    read_checkout_session,
    read_invoice,
    read_payment_intent,
    read_subscription,
)
from .store import commands as commands_store
from .store import inbox as inbox_store
from .store import objects
from .stripe_api import StripeApi, StripeMissing

log = get_logger("stripe_gateway.service")

_RETRY_CAP = timedelta(minutes=10)
_CONFLICT_ATTEMPTS = 5


class Conflict(Exception):
    """Another observation of the object was applied since this one's fetch began."""


class UnknownOrganisation(Exception):
    """Nothing in the object or in the gateway's records names its organisation (yet)."""


_ANNOUNCE: dict[Kind, type[Event]] = {
    Kind.ACTIVATED: StripeSubscriptionActivatedV2,
    Kind.RENEWED: StripeSubscriptionRenewedV2,
    Kind.UPDATED: StripeSubscriptionUpdatedV2,
    Kind.DELETED: StripeSubscriptionDeletedV2,
}


@dataclass(frozen=True, slots=True)
class Repair:
    """An observation made by the reconciler: a state that differs is also a repair."""

    reconciliation_id: str


class Observer:
    """Fetches Stripe objects and applies what it fetched (see the module's steps 3)."""

    def __init__(self, pool: asyncpg.Pool, clock: Clock, api: StripeApi, *, topic_prefix: str):
        self._pool = pool
        self._clock = clock
        self._api = api
        self._prefix = topic_prefix

    async def observe(
        self, ref: ObjectRef, by: ObservedBy, repair: Repair | None = None
    ) -> list[Event]:
        """Fetch the object and apply it; fetch again while other observations win."""
        for _ in range(_CONFLICT_ATTEMPTS):
            try:
                match ref.kind:
                    case ObjectKind.SUBSCRIPTION:
                        expected = await objects.subscription_version(self._pool, ref.object_id)
                        fetched = await self._api.retrieve_subscription(ref.object_id)
                        return await self.subscription(fetched, expected, by, repair)
                    case ObjectKind.INVOICE:
                        expected = await objects.invoice_version(self._pool, ref.object_id)
                        fetched = await self._api.retrieve_invoice(ref.object_id)
                        return await self._invoice(fetched, expected, by)
                    case ObjectKind.CHECKOUT_SESSION:
                        fetched = await self._api.retrieve_checkout_session(ref.object_id)
                        return await self._checkout(fetched, by, repair)
                    case ObjectKind.PAYMENT_INTENT:
                        expected = await objects.payment_version(self._pool, ref.object_id)
                        fetched = await self._api.retrieve_payment_intent(ref.object_id)
                        return await self._payment(fetched, expected, by, repair)
            except Conflict:
                continue
        raise Conflict(f"{ref.kind} {ref.object_id}: {_CONFLICT_ATTEMPTS} observations lost")

    async def answered(self, obj: dict[str, Any], expected: int) -> None:
        """Stripe's answer to a command that changed a subscription: the newest state, unless
        another observation was applied meanwhile (then it is fetched again). A failure here
        never fails the command: the change's webhook and the reconciler observe it too."""
        try:
            try:
                await self.subscription(obj, expected, ObservedBy.COMMAND)
            except Conflict:
                ref = ObjectRef(ObjectKind.SUBSCRIPTION, read_subscription(obj).subscription_id)
                await self.observe(ref, ObservedBy.COMMAND)
        except Exception as exc:
            log.warning("a command's answer was not observed", error=repr(exc)[:300])

    # Subscriptions -----------------------------------------------------------------------------

    async def subscription(
        self, obj: dict[str, Any], expected: int, by: ObservedBy, repair: Repair | None = None
    ) -> list[Event]:
        """Apply a fetched subscription if its version is still `expected`."""
        fetched = read_subscription(obj)
        async with self._pool.acquire() as conn, conn.transaction():
            events = await self._apply_subscription(conn, fetched, expected, by, repair)
            await outbox.enqueue(conn, events, prefix=self._prefix, clock=self._clock)
        return events

    async def _apply_subscription(
        self,
        conn: asyncpg.Connection,
        fetched: Subscription,
        expected: int,
        by: ObservedBy,
        repair: Repair | None = None,
    ) -> list[Event]:
        held = await objects.lock_subscription(conn, fetched.subscription_id)
        if (held.version if held else 0) != expected:
            raise Conflict(fetched.subscription_id)
        organisation = await self._organisation(conn, held, fetched)
        now = self._clock.now()
        change = transition(held, fetched)
        if change.kind is Kind.UNCHANGED:
            await objects.touch_subscription(conn, fetched.subscription_id, now)
            return []
        version = expected + 1
        await objects.save_subscription(
            conn,
            change.subscription,
            organisation_id=organisation,
            deleted=change.kind is Kind.DELETED,
            version=version,
            now=now,
        )
        if held is None:
            await objects.remember_customer(conn, organisation, fetched.customer_id, now)
        if change.kind is Kind.ACTIVATED:
            await commands_store.resend_quantity(conn, organisation, now)
        body = StripeSubscriptionObserved(
            subscription_id=fetched.subscription_id,
            customer_id=fetched.customer_id,
            status=fetched.status,
            price_id=fetched.price_id,
            quantity=fetched.quantity,
            current_period_start=fetched.period_start,
            current_period_end=fetched.period_end,
            cancel_at_period_end=fetched.cancel_at_period_end,
            version=version,
            observed_at=now,
            observed_by=by,
            changes=change.changes,
        )
        events = [self._event(_ANNOUNCE[change.kind], organisation, body)]
        if repair is not None:
            differing = drift(held.subscription if held else None, fetched)
            events.append(
                self._repaired(
                    organisation, "subscription", fetched.subscription_id, differing, repair
                )
            )
        log.info(
            "subscription observed",
            organisation_id=organisation,
            subscription_id=fetched.subscription_id,
            kind=change.kind.value,
            version=version,
            observed_by=by.value,
        )
        return events

    async def _organisation(
        self, conn: asyncpg.Connection, held: Held | None, fetched: Subscription
    ) -> str:
        """The subscription's organisation: as held, else its metadata, else its customer's."""
        found = (
            held.organisation_id
            if held
            else fetched.organisation_id or await objects.organisation_of(conn, fetched.customer_id)
        )
        if found is None:
            raise UnknownOrganisation(
                f"subscription {fetched.subscription_id} of customer {fetched.customer_id}"
            )
        return found

    # Checkout sessions -------------------------------------------------------------------------

    async def _checkout(
        self, obj: dict[str, Any], by: ObservedBy, repair: Repair | None
    ) -> list[Event]:
        """A session Stripe holds complete and paid is announced once, with its subscription
        as Stripe holds it (fetched before the transaction)."""
        session = read_checkout_session(obj)
        now = self._clock.now()
        if session.mode == "payment":
            return await self._payment_checkout(session, by, repair)
        if not session.paid:
            if session.status in ("open", "expired"):
                await objects.checkout_checked(self._pool, session.session_id, session.status, now)
            return []
        assert session.subscription_id is not None and session.customer_id is not None
        expected = await objects.subscription_version(self._pool, session.subscription_id)
        fetched = read_subscription(await self._api.retrieve_subscription(session.subscription_id))
        async with self._pool.acquire() as conn, conn.transaction():
            if await objects.lock_checkout(conn, session.session_id) == "complete":
                return []
            organisation = session.organisation_id or await objects.organisation_of(
                conn, session.customer_id
            )
            if organisation is None:
                raise UnknownOrganisation(f"checkout session {session.session_id}")
            await objects.remember_customer(conn, organisation, session.customer_id, now)
            events: list[Event] = [
                self._event(
                    StripeCheckoutCompletedV2,
                    organisation,
                    StripeCheckoutObserved(
                        checkout_session_id=session.session_id,
                        customer_id=session.customer_id,
                        subscription_id=session.subscription_id,
                        price_id=fetched.price_id,
                        quantity=fetched.quantity,
                        request_id=session.request_id,
                        started_at=fetched.period_start,
                        observed_at=now,
                        observed_by=by,
                    ),
                )
            ]
            events += await self._apply_subscription(conn, fetched, expected, by)
            await objects.checkout_completed(
                conn, session.session_id, organisation, session.subscription_id, now
            )
            if repair is not None:
                events.append(
                    self._repaired(
                        organisation,
                        "checkout_session",
                        session.session_id,
                        {"status": ("open", "complete")},
                        repair,
                    )
                )
            await outbox.enqueue(conn, events, prefix=self._prefix, clock=self._clock)
        log.info(
            "checkout completed",
            organisation_id=organisation,
            checkout_session_id=session.session_id,
            observed_by=by.value,
        )
        return events

    async def _payment_checkout(
        self, session: CheckoutSession, by: ObservedBy, repair: Repair | None
    ) -> list[Event]:
        """A payment-mode session (a credit pack): once Stripe holds it complete, its payment
        is observed (and announced, if it is news); the session is followed until then."""
        now = self._clock.now()
        if session.status != "complete" or session.payment_intent_id is None:
            if session.status in ("open", "expired"):
                await objects.checkout_checked(self._pool, session.session_id, session.status, now)
            return []
        ref = ObjectRef(ObjectKind.PAYMENT_INTENT, session.payment_intent_id)
        events = await self.observe(ref, by)
        organisation = events[0].organisation_id if events else session.organisation_id
        async with self._pool.acquire() as conn, conn.transaction():
            if organisation is not None:
                await objects.checkout_completed(conn, session.session_id, organisation, None, now)
            if repair is not None and events and organisation is not None:
                repaired = self._repaired(
                    organisation,
                    "payment",
                    session.payment_intent_id,
                    {"status": (None, events[0].data.status.value)},
                    repair,
                )
                await outbox.enqueue(conn, [repaired], prefix=self._prefix, clock=self._clock)
                events = [*events, repaired]
        return events

    # Invoices ----------------------------------------------------------------------------------

    async def _invoice(self, obj: dict[str, Any], expected: int, by: ObservedBy) -> list[Event]:
        invoice = read_invoice(obj)
        async with self._pool.acquire() as conn, conn.transaction():
            held = await objects.lock_invoice(conn, invoice.invoice_id)
            if (held.version if held else 0) != expected:
                raise Conflict(invoice.invoice_id)
            news = invoice_news(held.invoice if held else None, invoice)
            if news is InvoiceNews.UNCHANGED:
                return []
            organisation = (
                held.organisation_id
                if held
                else invoice.organisation_id
                or await _subscription_organisation(conn, invoice.subscription_id)
                or await objects.organisation_of(conn, invoice.customer_id)
            )
            if organisation is None:
                raise UnknownOrganisation(f"invoice {invoice.invoice_id}")
            now = self._clock.now()
            version = expected + 1
            await objects.save_invoice(
                conn, invoice, organisation_id=organisation, version=version, now=now
            )
            events: list[Event] = []
            if news is not InvoiceNews.QUIET:
                kind = (
                    StripeInvoicePaidV2
                    if news is InvoiceNews.PAID
                    else StripeInvoicePaymentFailedV2
                )
                body = StripeInvoiceObserved(
                    invoice_id=invoice.invoice_id,
                    customer_id=invoice.customer_id,
                    subscription_id=invoice.subscription_id,
                    status=invoice.status,
                    amount_due=invoice.amount_due,
                    amount_paid=invoice.amount_paid,
                    currency=invoice.currency,
                    billing_reason=invoice.billing_reason,
                    period_start=invoice.period_start,
                    period_end=invoice.period_end,
                    attempt_count=invoice.attempt_count,
                    next_payment_attempt=invoice.next_payment_attempt,
                    version=version,
                    observed_at=now,
                    observed_by=by,
                )
                events.append(self._event(kind, organisation, body))
            await outbox.enqueue(conn, events, prefix=self._prefix, clock=self._clock)
        return events

    # One-off payments --------------------------------------------------------------------------

    async def _payment(
        self, obj: dict[str, Any], expected: int, by: ObservedBy, repair: Repair | None = None
    ) -> list[Event]:
        """A payment whose state (status, amounts received and refunded, failure) changed is
        announced with the next version; an unchanged one is not. Found by a sweep, the change
        is also a repair."""
        payment = read_payment_intent(obj)
        async with self._pool.acquire() as conn, conn.transaction():
            held = await objects.lock_payment(conn, payment.payment_intent_id)
            if (held.version if held else 0) != expected:
                raise Conflict(payment.payment_intent_id)
            if held is not None and held.payment.same_state(payment):
                return []
            organisation = held.organisation_id if held else payment.organisation_id
            if organisation is None and payment.customer_id:
                organisation = await objects.organisation_of(conn, payment.customer_id)
            if organisation is None:
                raise UnknownOrganisation(f"payment {payment.payment_intent_id}")
            now = self._clock.now()
            version = expected + 1
            await objects.save_payment(
                conn, payment, organisation_id=organisation, version=version, now=now
            )
            event = self._event(
                StripePaymentUpdatedV1,
                organisation,
                StripePaymentObserved(
                    payment_intent_id=payment.payment_intent_id,
                    customer_id=payment.customer_id,
                    status=payment.status,
                    amount=payment.amount,
                    amount_received=payment.amount_received,
                    amount_refunded=payment.amount_refunded,
                    currency=payment.currency,
                    purchase_id=payment.purchase_id,
                    failure_code=payment.failure_code,
                    version=version,
                    observed_at=now,
                    observed_by=by,
                ),
            )
            events = [event]
            if repair is not None and held is not None:
                differing = {
                    name: (getattr(held.payment, name), getattr(payment, name))
                    for name in ("status", "amount_received", "amount_refunded", "failure_code")
                    if getattr(held.payment, name) != getattr(payment, name)
                }
                events.append(
                    self._repaired(
                        organisation,
                        "payment",
                        payment.payment_intent_id,
                        differing,
                        repair,
                    )
                )
            await outbox.enqueue(conn, events, prefix=self._prefix, clock=self._clock)
        log.info(
            "payment observed",
            organisation_id=organisation,
            payment_intent_id=payment.payment_intent_id,
            status=payment.status.value,
            refunded=payment.amount_refunded,
            version=version,
        )
        return events

    # Announcements -----------------------------------------------------------------------------

    def _event(self, kind: type[Event], organisation: str, body: Body) -> Event:
        return kind.new(
            organisation_id=organisation,
            producer=PRODUCER,
            occurred_at=self._clock.now(),
            data=body,
        )

    def _repaired(
        self,
        organisation: str,
        subject: str,
        subject_id: str,
        differing: dict[str, tuple[Any, Any]],
        repair: Repair,
    ) -> Event:
        return self._event(
            DriftRepairedV1,
            organisation,
            DriftRepair(
                service=PRODUCER,
                subject=subject,
                subject_id=subject_id,
                fields=tuple(sorted(differing)),
                before={k: v[0] for k, v in differing.items()},
                after={k: v[1] for k, v in differing.items()},
                reconciliation_id=repair.reconciliation_id,
            ),
        )


async def _subscription_organisation(
    conn: asyncpg.Connection, subscription_id: str | None
) -> str | None:
    if subscription_id is None:
        return None
    return await conn.fetchval(
        "SELECT organisation_id FROM subscriptions WHERE subscription_id = $1", subscription_id
    )


class Reports:
    """Processes the inbox's pending events (step 4): several instances share the work by
    claiming events for a while; no transaction is open while Stripe is asked."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        observer: Observer,
        *,
        max_attempts: int,
        retry_seconds: float,
        batch_size: int,
        claim_seconds: float,
        concurrency: int = 8,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._observer = observer
        self._max_attempts = max_attempts
        self._retry_seconds = retry_seconds
        self._batch_size = batch_size
        self._claim = timedelta(seconds=claim_seconds)
        self._slots = asyncio.Semaphore(concurrency)
        self.wake = asyncio.Event()

    async def run(self, dsn: str, schema: str, idle_seconds: float = 1.0) -> None:
        """Process due events forever, woken by new ones (NOTIFY) or every `idle_seconds`."""
        listener: asyncpg.Connection | None = None
        try:
            while True:
                try:
                    if listener is None or listener.is_closed():
                        listener = await asyncpg.connect(dsn)
                        await listener.add_listener(f"inbox_{schema}", lambda *_: self.wake.set())
                    self.wake.clear()
                    if await self.process_due() >= self._batch_size:
                        continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("inbox processing interrupted", error=repr(exc))
                    listener = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), idle_seconds)
        finally:
            if listener is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(listener.close())

    async def process_due(self) -> int:
        """Claim due events, observe each object they name once, then mark each event done or
        failed. Returns how many events were tried."""
        now = self._clock.now()
        events = await inbox_store.claim_due(self._pool, now, now + self._claim, self._batch_size)
        if not events:
            return 0
        named: dict[str, tuple[ObjectRef, ...]] = {}
        failures: dict[str, Exception] = {}
        for event in events:
            try:
                named[event.event_id] = objects_named(event.body())
            except (Unreadable, ValueError) as exc:
                failures[event.event_id] = Unreadable(str(exc))
        refs = sorted({ref for found in named.values() for ref in found})
        outcomes = await asyncio.gather(*(self._observe(ref) for ref in refs))
        failed_refs = {ref: exc for ref, exc in zip(refs, outcomes, strict=True) if exc}
        done = []
        for event_id, found in named.items():
            failure = next((failed_refs[r] for r in found if r in failed_refs), None)
            if failure is None:
                done.append(event_id)
            else:
                failures[event_id] = failure
        await inbox_store.finish_events(self._pool, done, self._clock.now())
        for event_id, exc in failures.items():
            await self._failed(event_id, exc)
        log.info("webhooks processed", events=len(events), done=len(done), failed=len(failures))
        return len(events)

    async def _observe(self, ref: ObjectRef) -> Exception | None:
        async with self._slots:
            try:
                await self._observer.observe(ref, ObservedBy.WEBHOOK)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                return exc
        return None

    async def _failed(self, event_id: str, exc: Exception) -> None:
        attempts = await inbox_store.attempts_of(self._pool, event_id) + 1
        park = _poison(exc) or attempts >= self._max_attempts
        now = self._clock.now()
        delay = exponential(attempts, first=self._retry_seconds, cap=_RETRY_CAP.total_seconds())
        await inbox_store.fail_event(
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
        replayed = await inbox_store.replay_event(self._pool, event_id, self._clock.now())
        if replayed:
            self.wake.set()
        return replayed


def _poison(exc: Exception) -> bool:
    """Retrying cannot help: the object is unreadable, cannot be announced, or Stripe does
    not know it."""
    return isinstance(exc, (Unreadable, ValidationError, StripeMissing))
