"""Commands from the other services (topic `stripe.commands`, and HTTP for Checkout and the
Billing Portal, where a person waits for the redirect).

Exactly once: a command's id (the command event's id; an HTTP request's `request_id`) makes
its Stripe idempotency key, and its outcome is recorded in `commands` with the announcement of
that outcome (outbox), in one transaction. A command seen again returns the recorded outcome
without calling Stripe; one interrupted between Stripe's answer and that transaction is sent
again with the same key, and Stripe answers with the same object.

A command that fails (Stripe refuses it, stays unavailable through every retry, or there is no
customer or subscription to act on) is recorded as failed, announced as
`stripe_command.failed.v1`, and parked in the command topic's dead-letter topic, from which an
operator may replay it (a failed command may run again; a succeeded one never does).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from shared import outbox
from shared.clock import Clock
from shared.consumer import Decoded
from shared.events import Event
from shared.events.codec import Rejection
from shared.events.stripe import (
    CancelAtPeriodEndRequestedV1,
    CheckoutRequest,
    CheckoutRequestedV1,
    CommandFailure,
    CommandOutcome,
    CreateCustomerRequestedV1,
    PortalRequest,
    PortalRequestedV1,
    PriceChangeRequestedV1,
    PriceChangeTiming,
    QuantityChangeRequestedV1,
    StripeCommandFailedV1,
    StripeCommandSucceededV1,
)
from shared.logging import get_logger

from . import PRODUCER, store
from .domain.stripe_objects import Known
from .stripe_api import StripeApi, StripeRefused, StripeUnavailable

log = get_logger("stripe_gateway.commands")

Result = dict[str, str | int | bool | None]


class CommandRefused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Commands:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, api: StripeApi, *, topic_prefix: str):
        self._pool = pool
        self._clock = clock
        self._api = api
        self._prefix = topic_prefix

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
        organisation, data = command.organisation_id, command.data
        run: Callable[[], Awaitable[Result]]
        match command:
            case CreateCustomerRequestedV1():
                run = lambda: self._create_customer(organisation, data.email, data.name)  # noqa: E731
            case CheckoutRequestedV1():
                return await self.checkout(organisation, str(command.event_id), data)
            case PortalRequestedV1():
                return await self.portal(organisation, str(command.event_id), data)
            case PriceChangeRequestedV1():
                run = lambda: self._change_price(  # noqa: E731
                    organisation, data.price_id, data.timing, _key_of(command)
                )
            case CancelAtPeriodEndRequestedV1():
                run = lambda: self._update(  # noqa: E731
                    organisation,
                    {"cancel_at_period_end": data.cancel_at_period_end},
                    _key_of(command),
                )
            case QuantityChangeRequestedV1():
                run = lambda: self._set_quantity(  # noqa: E731
                    organisation, data.quantity, data.revision, _key_of(command)
                )
            case _:
                raise CommandRefused("unknown_command", command.type)
        return await self._once(command.type, str(command.event_id), organisation, run)

    async def checkout(
        self, organisation: str, request_id: str, request: CheckoutRequest
    ) -> Result:
        """A Checkout session for the organisation (its customer is created if needed)."""
        key = _key(CheckoutRequestedV1.type_name, request_id)

        async def run() -> Result:
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
            return {"checkout_session_id": session["id"], "url": session["url"]}

        return await self._once(CheckoutRequestedV1.type_name, request_id, organisation, run)

    async def portal(self, organisation: str, request_id: str, request: PortalRequest) -> Result:
        """A Billing Portal session for the organisation's customer (R11)."""
        key = _key(PortalRequestedV1.type_name, request_id)

        async def run() -> Result:
            customer = await store.customer_of(self._pool, organisation)
            if customer is None:
                raise CommandRefused("no_customer", f"{organisation} has no Stripe customer")
            session = await self._api.create_portal_session(
                customer_id=customer, return_url=str(request.return_url), idempotency_key=key
            )
            return {"portal_session_id": session["id"], "url": session["url"]}

        return await self._once(PortalRequestedV1.type_name, request_id, organisation, run)

    async def _once(
        self, kind: str, command_id: str, organisation: str, run: Callable[[], Awaitable[Result]]
    ) -> Result:
        key = _key(kind, command_id)
        done = await store.command(self._pool, key)
        if done is not None and done.status == "succeeded":
            return done.result
        try:
            result = await run()
        except (CommandRefused, StripeRefused) as exc:
            await self._record_failure(kind, command_id, organisation, exc.reason, exc.detail)
            raise CommandRefused(exc.reason, exc.detail) from exc
        except StripeUnavailable as exc:
            await self._record_failure(
                kind, command_id, organisation, "stripe_unavailable", str(exc)
            )
            raise CommandRefused("stripe_unavailable", str(exc)[:500]) from exc
        outcome = CommandOutcome(command_id=command_id, command_type=kind, result=result)
        async with self._pool.acquire() as conn, conn.transaction():
            await store.record_command(
                conn,
                command_id=key,
                organisation_id=organisation,
                type=kind,
                status="succeeded",
                result=result,
                now=self._clock.now(),
            )
            await self._announce(conn, StripeCommandSucceededV1, organisation, outcome)
        log.info("command executed", organisation_id=organisation, command=kind, key=key)
        return result

    async def _record_failure(
        self, kind: str, command_id: str, organisation: str, reason: str, detail: str
    ) -> None:
        key = _key(kind, command_id)
        failure = CommandFailure(
            command_id=command_id, command_type=kind, reason=reason, detail=detail[:500]
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await store.record_command(
                conn,
                command_id=key,
                organisation_id=organisation,
                type=kind,
                status="failed",
                result={"reason": reason, "detail": detail[:500]},
                now=self._clock.now(),
            )
            await self._announce(conn, StripeCommandFailedV1, organisation, failure)
        log.warning("command failed", organisation_id=organisation, command=kind, reason=reason)

    async def _announce(
        self, conn: asyncpg.Connection, kind: type[Event], organisation: str, body: Any
    ) -> None:
        event = kind.new(
            organisation_id=organisation,
            producer=PRODUCER,
            occurred_at=self._clock.now(),
            data=body,
        )
        await outbox.enqueue(conn, [event], prefix=self._prefix, clock=self._clock)

    async def _ensure_customer(self, organisation: str, email: str | None, name: str | None) -> str:
        """The organisation's customer; created once (the idempotency key is the organisation,
        so concurrent first requests get the same customer)."""
        existing = await store.customer_of(self._pool, organisation)
        if existing is not None:
            return existing
        customer = await self._api.create_customer(
            organisation, email=email, name=name, idempotency_key=f"customer:{organisation}"
        )
        async with self._pool.acquire() as conn, conn.transaction():
            return await store.remember_customer(
                conn, organisation, customer["id"], self._clock.now()
            )

    async def _create_customer(
        self, organisation: str, email: str | None, name: str | None
    ) -> Result:
        return {"customer_id": await self._ensure_customer(organisation, email, name)}

    async def _subscription(self, organisation: str) -> Known:
        known = await store.live_subscription(self._pool, organisation)
        if known is None or known.subscription.item_id is None:
            raise CommandRefused(
                "no_subscription", f"{organisation} has no live Stripe subscription"
            )
        return known

    async def _update(self, organisation: str, params: dict[str, Any], key: str) -> Result:
        known = await self._subscription(organisation)
        updated = await self._api.update_subscription(
            known.subscription.subscription_id, params, idempotency_key=key
        )
        return {"subscription_id": updated["id"], "status": updated.get("status")}

    async def _change_price(
        self, organisation: str, price_id: str, timing: PriceChangeTiming, key: str
    ) -> Result:
        """An upgrade is prorated and invoiced now; a downgrade is not prorated, so the next
        period is the first billed at the new price (R5)."""
        known = await self._subscription(organisation)
        params = {
            "items": [{"id": known.subscription.item_id, "price": price_id}],
            "proration_behavior": "always_invoice" if timing is PriceChangeTiming.NOW else "none",
        }
        result = await self._update(organisation, params, key)
        return {**result, "price_id": price_id, "timing": timing.value}

    async def _set_quantity(
        self, organisation: str, quantity: int, revision: int, key: str
    ) -> Result:
        """Seats: an older count (lower revision) than one already sent changes nothing."""
        async with self._pool.acquire() as conn, conn.transaction():
            newer = await store.advance_quantity_revision(
                conn, organisation, revision, self._clock.now()
            )
        if not newer:
            return {"skipped": True, "revision": revision}
        known = await self._subscription(organisation)
        result = await self._update(
            organisation,
            {"items": [{"id": known.subscription.item_id, "quantity": quantity}]},
            key,
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await store.set_quantity_revision(conn, organisation, revision, self._clock.now())
        return {**result, "quantity": quantity, "revision": revision}


def _key(kind: str, command_id: str) -> str:
    """The Stripe idempotency key, and the `commands` id, of a command."""
    return f"{kind}:{command_id}"


def _key_of(command: Event) -> str:
    return _key(command.type, str(command.event_id))
