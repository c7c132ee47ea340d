"""Commands from the other services (topic `stripe.commands`, and HTTP for Checkout and the
Billing Portal, where a person waits for the redirect).

Exactly once, and scoped by organisation: a command's key is
`<organisation>:<type>:<id>` (its id: the command event's id, an HTTP request's `request_id`),
and it is both the Stripe idempotency key and the key of its record in `commands`. The record
is claimed before Stripe is called, so concurrent identical requests make one Stripe call and
announce one outcome (the others wait for it); it keeps the request's fingerprint, so the same
id with another body is refused (`idempotency_conflict`, as Stripe refuses it). The outcome and
its announcement (outbox) are recorded in one transaction after Stripe answered: no
transaction is open while Stripe is called. A claim whose holder died lapses and is taken over;
Stripe answers the same key with the same object.

A command that fails (Stripe refuses it, stays unavailable through every retry, or there is no
customer or subscription to act on) is recorded as failed, announced as
`stripe_command.failed.v1`, and parked in the command topic's dead-letter topic, from which an
operator may replay it (a failed command may run again; a succeeded one never does).

Seat quantities are not sent here: the newest count asked for is kept and sent within Stripe's
budget by `Quantities`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import orjson

from shared import outbox
from shared.clock import Clock
from shared.consumer import Decoded
from shared.events import Body, Event
from shared.events.codec import Rejection
from shared.events.stripe import (
    CancelAtPeriodEndRequestedV1,
    ChargeRequest,
    ChargeRequestedV1,
    CheckoutRequest,
    CheckoutRequestedV1,
    CommandFailure,
    CommandOutcome,
    CreateCustomerRequestedV1,
    ObservedBy,
    PaymentCheckoutRequest,
    PortalRequest,
    PortalRequestedV1,
    PriceChangeRequestedV1,
    PriceChangeTiming,
    QuantityChangeRequestedV1,
    StripeCommandFailedV1,
    StripeCommandSucceededV1,
)
from shared.logging import get_logger

from . import PRODUCER
from .domain.projection import Held
from .domain.quantities import next_send_at
from .domain.reports import ObjectKind, ObjectRef
from .service import Observer
from .store import commands as store
from .store import objects
from .stripe_api import StripeApi, StripeRefused, StripeUnavailable

log = get_logger("stripe_gateway.commands")

Result = dict[str, str | int | bool | None]


class CommandRefused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def scoped_key(organisation: str, kind: str, command_id: str) -> str:
    """The Stripe idempotency key, and the `commands` id, of a command."""
    return f"{organisation}:{kind}:{command_id}"


def fingerprint(body: Body) -> str:
    return hashlib.sha256(
        orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    ).hexdigest()


class Commands:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        api: StripeApi,
        observer: Observer,
        quantities: Quantities,
        *,
        topic_prefix: str,
        claim_seconds: float,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._api = api
        self._observer = observer
        self._quantities = quantities
        self._prefix = topic_prefix
        self._claim = timedelta(seconds=claim_seconds)

    async def apply(
        self, items: Sequence[Decoded[Event]]
    ) -> list[tuple[Decoded[Event], Rejection]]:
        """The `BatchConsumer` step for `stripe.commands`: each command in order."""
        refused = []
        for item in items:
            try:
                await self.execute(item.event)
            except CommandRefused as exc:
                refused.append((item, Rejection(exc.reason, exc.detail)))
        return refused

    async def execute(self, command: Event) -> Result:
        organisation, data, command_id = (
            command.organisation_id,
            command.data,
            str(command.event_id),
        )
        run: Callable[[str], Awaitable[Result]]
        match command:
            case CreateCustomerRequestedV1():
                run = lambda _: self._create_customer(organisation, data.email, data.name)  # noqa: E731
            case CheckoutRequestedV1():
                return await self.checkout(organisation, command_id, data)
            case PortalRequestedV1():
                return await self.portal(organisation, command_id, data)
            case PriceChangeRequestedV1():
                run = lambda key: self._change_price(organisation, data.price_id, data.timing, key)  # noqa: E731
            case CancelAtPeriodEndRequestedV1():
                run = lambda key: self._update(  # noqa: E731
                    organisation, {"cancel_at_period_end": data.cancel_at_period_end}, key
                )
            case QuantityChangeRequestedV1():
                run = lambda _: self._quantities.want(organisation, data.quantity, data.revision)  # noqa: E731
            case ChargeRequestedV1():
                return await self.charge(organisation, data)
            case _:
                raise CommandRefused("unknown_command", command.type)
        return await self._once(organisation, command.type, command_id, fingerprint(data), run)

    async def checkout(
        self, organisation: str, request_id: str, request: CheckoutRequest
    ) -> Result:
        """A Checkout session for the organisation (its customer is created if needed)."""

        async def run(key: str) -> Result:
            customer = await self._ensure_customer(organisation, request.customer_email, None)
            session = await self._api.create_checkout_session(
                organisation,
                customer_id=customer,
                price_id=request.price_id,
                quantity=request.quantity,
                success_url=str(request.success_url),
                cancel_url=str(request.cancel_url),
                request_id=request_id,
                idempotency_key=key,
            )
            await objects.follow_checkout(
                self._pool, session["id"], organisation, self._clock.now()
            )
            return {"checkout_session_id": session["id"], "url": session["url"]}

        return await self._once(
            organisation, CheckoutRequestedV1.type_name, request_id, fingerprint(request), run
        )

    async def payment_checkout(
        self, organisation: str, request_id: str, request: PaymentCheckoutRequest
    ) -> Result:
        """A Checkout session in payment mode (a credit pack): the payment is announced by
        `stripe_payment.updated.v1` once Stripe holds it paid."""

        async def run(key: str) -> Result:
            customer = await self._ensure_customer(organisation, None, None)
            session = await self._api.create_payment_checkout_session(
                organisation,
                customer_id=customer,
                price_id=request.price_id,
                purchase_id=request.purchase_id,
                success_url=str(request.success_url),
                cancel_url=str(request.cancel_url),
                idempotency_key=key,
            )
            await objects.follow_checkout(
                self._pool, session["id"], organisation, self._clock.now()
            )
            return {"checkout_session_id": session["id"], "url": session["url"]}

        return await self._once(
            organisation, "payment_checkout", request_id, fingerprint(request), run
        )

    async def charge(self, organisation: str, request: ChargeRequest) -> Result:
        """Charge off-session, once per purchase (its key is the purchase, whatever command
        carries it); what Stripe then holds is observed and announced at once, a declined card
        included (the webhook reports it too)."""

        async def run(key: str) -> Result:
            customer = await objects.customer_of(self._pool, organisation)
            if customer is None:
                raise CommandRefused("no_customer", f"{organisation} has no Stripe customer")
            intent = await self._api.charge(
                organisation,
                customer_id=customer,
                amount=request.amount,
                currency=request.currency,
                description=request.description,
                purchase_id=request.purchase_id,
                idempotency_key=key,
            )
            ref = ObjectRef(ObjectKind.PAYMENT_INTENT, intent["id"])
            try:
                await self._observer.observe(ref, ObservedBy.COMMAND)
            except Exception as exc:
                log.warning("a charge's payment was not observed", error=repr(exc)[:300])
            return {"payment_intent_id": intent["id"], "status": intent.get("status")}

        return await self._once(
            organisation,
            ChargeRequestedV1.type_name,
            request.purchase_id,
            fingerprint(request),
            run,
        )

    async def portal(self, organisation: str, request_id: str, request: PortalRequest) -> Result:
        """A Billing Portal session for the organisation's customer (R11)."""

        async def run(key: str) -> Result:
            customer = await objects.customer_of(self._pool, organisation)
            if customer is None:
                raise CommandRefused("no_customer", f"{organisation} has no Stripe customer")
            session = await self._api.create_portal_session(
                customer_id=customer, return_url=str(request.return_url), idempotency_key=key
            )
            return {"portal_session_id": session["id"], "url": session["url"]}

        return await self._once(
            organisation, PortalRequestedV1.type_name, request_id, fingerprint(request), run
        )

    async def _once(
        self,
        organisation: str,
        kind: str,
        command_id: str,
        print_: str,
        run: Callable[[str], Awaitable[Result]],
    ) -> Result:
        key = scoped_key(organisation, kind, command_id)
        patience = time.monotonic() + self._claim.total_seconds() + 5
        while True:
            now = self._clock.now()
            claimed = await store.claim(
                self._pool,
                key=key,
                organisation_id=organisation,
                type=kind,
                fingerprint=print_,
                now=now,
                until=now + self._claim,
            )
            match claimed.claim:
                case store.Claim.CLAIMED:
                    break
                case store.Claim.SUCCEEDED:
                    return claimed.result  # type: ignore[return-value]
                case store.Claim.CONFLICT:
                    raise CommandRefused(
                        "idempotency_conflict",
                        f"{command_id} was used for another {kind} request of {organisation}",
                    )
            if time.monotonic() > patience:
                raise CommandRefused("command_in_progress", f"{command_id} is still running")
            await asyncio.sleep(0.05)
        try:
            result = await run(key)
        except (CommandRefused, StripeRefused) as exc:
            await self._record(
                organisation, kind, command_id, key, failure=(exc.reason, exc.detail)
            )
            raise CommandRefused(exc.reason, exc.detail) from exc
        except StripeUnavailable as exc:
            await self._record(
                organisation, kind, command_id, key, failure=("stripe_unavailable", str(exc))
            )
            raise CommandRefused("stripe_unavailable", str(exc)[:500]) from exc
        except BaseException:
            # No outcome (the database failed, the task was cancelled): the next try takes
            # the claim at once; Stripe answers the same key with the same object.
            with contextlib.suppress(Exception):
                await asyncio.shield(store.release(self._pool, key, self._clock.now()))
            raise
        await self._record(organisation, kind, command_id, key, result=result)
        log.info("command executed", organisation_id=organisation, command=kind, key=key)
        return result

    async def _record(
        self,
        organisation: str,
        kind: str,
        command_id: str,
        key: str,
        *,
        result: Result | None = None,
        failure: tuple[str, str] | None = None,
    ) -> None:
        """The outcome and its announcement, in one transaction."""
        now = self._clock.now()
        body: Body
        if failure is None:
            status, recorded = "succeeded", dict(result or {})
            announce: type[Event] = StripeCommandSucceededV1
            body = CommandOutcome(command_id=command_id, command_type=kind, result=recorded)
        else:
            reason, detail = failure[0], failure[1][:500]
            status, recorded = "failed", {"reason": reason, "detail": detail}
            announce = StripeCommandFailedV1
            body = CommandFailure(
                command_id=command_id, command_type=kind, reason=reason, detail=detail
            )
            log.warning("command failed", organisation_id=organisation, command=kind, reason=reason)
        event = announce.new(
            organisation_id=organisation, producer=PRODUCER, occurred_at=now, data=body
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await store.finish(conn, key, status=status, result=recorded, now=now)
            await outbox.enqueue(conn, [event], prefix=self._prefix, clock=self._clock)

    async def _ensure_customer(self, organisation: str, email: str | None, name: str | None) -> str:
        """The organisation's customer; created once (the idempotency key is the organisation,
        so concurrent first requests get the same customer)."""
        existing = await objects.customer_of(self._pool, organisation)
        if existing is not None:
            return existing
        customer = await self._api.create_customer(
            organisation, email=email, name=name, idempotency_key=f"customer:{organisation}"
        )
        return await objects.remember_customer(
            self._pool, organisation, customer["id"], self._clock.now()
        )

    async def _create_customer(
        self, organisation: str, email: str | None, name: str | None
    ) -> Result:
        return {"customer_id": await self._ensure_customer(organisation, email, name)}

    async def _update(self, organisation: str, params: dict[str, Any], key: str) -> Result:
        held = await _live(self._pool, organisation)
        updated = await self._api.update_subscription(
            held.subscription.subscription_id, params, idempotency_key=key
        )
        await self._observer.answered(updated, held.version)
        return {"subscription_id": updated["id"], "status": updated.get("status")}

    async def _change_price(
        self, organisation: str, price_id: str, timing: PriceChangeTiming, key: str
    ) -> Result:
        """An upgrade is prorated and invoiced now; a downgrade (or the withdrawal of one) is
        not prorated, so the next period is the first billed at the new price (R5)."""
        held = await _live(self._pool, organisation)
        params = {
            "items": [{"id": held.subscription.item_id, "price": price_id}],
            "proration_behavior": "always_invoice" if timing is PriceChangeTiming.NOW else "none",
        }
        result = await self._update(organisation, params, key)
        return {**result, "price_id": price_id, "timing": timing.value}


async def _live(pool: asyncpg.Pool, organisation: str) -> Held:
    held = await objects.live_subscription(pool, organisation)
    if held is None or held.subscription.item_id is None:
        raise CommandRefused("no_subscription", f"{organisation} has no live Stripe subscription")
    return held


class Quantities:
    """The seat quantity in Stripe: the newest count asked for (by revision) is kept, and sent
    when Stripe's hourly budget per subscription allows (`domain.quantities`)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        api: StripeApi,
        observer: Observer,
        *,
        budget_per_hour: int,
        burst: int = 5,
        retry_seconds: float = 30.0,
    ) -> None:
        self._burst = burst
        self._pool = pool
        self._clock = clock
        self._api = api
        self._observer = observer
        self._budget = budget_per_hour
        self._retry = timedelta(seconds=retry_seconds)
        self.wake = asyncio.Event()

    async def want(self, organisation: str, quantity: int, revision: int) -> Result:
        newer = await store.want_quantity(
            self._pool, organisation, quantity, revision, self._clock.now()
        )
        if newer:
            self.wake.set()
            return {"quantity": quantity, "revision": revision, "queued": True}
        return {"skipped": True, "revision": revision}

    async def run(self, every_seconds: float, batch: int) -> None:
        """Send what is due, woken by new counts or every `every_seconds`."""
        while True:
            try:
                if await self.send_due(batch) >= batch:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("quantity round failed", error=repr(exc))
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), every_seconds)
            except TimeoutError:
                pass

    async def send_due(self, limit: int) -> int:
        now = self._clock.now()
        due = await store.due_quantities(self._pool, now, limit)
        for wanted in due:
            await self._send(wanted)
        return len(due)

    async def _send(self, wanted: store.Quantity) -> None:
        organisation, now = wanted.organisation_id, self._clock.now()
        held = await objects.live_subscription(self._pool, organisation)
        if held is None or held.subscription.item_id is None:
            await store.postpone_quantity(self._pool, organisation, None, "no_subscription", now)
            return
        if held.subscription.quantity == wanted.wanted:
            await store.postpone_quantity(self._pool, organisation, None, None, now)
            return
        at = next_send_at(wanted.sent_times, now, self._budget, self._burst)
        if at > now:
            await store.postpone_quantity(self._pool, organisation, at, None, now)
            return
        key = scoped_key(organisation, "quantity", f"r{wanted.wanted_revision}s{wanted.sends}")
        try:
            updated = await self._api.update_subscription(
                held.subscription.subscription_id,
                {"items": [{"id": held.subscription.item_id, "quantity": wanted.wanted}]},
                idempotency_key=key,
            )
        except (StripeRefused, StripeUnavailable) as exc:
            await store.postpone_quantity(
                self._pool, organisation, now + self._retry, repr(exc)[:300], now
            )
            log.warning("seat quantity not sent", organisation_id=organisation, error=repr(exc))
            return
        await store.quantity_sent(
            self._pool, organisation, wanted.wanted, wanted.wanted_revision, self._clock.now()
        )
        await self._observer.answered(updated, held.version)
        log.info(
            "seat quantity sent",
            organisation_id=organisation,
            quantity=wanted.wanted,
            revision=wanted.wanted_revision,
        )
