"""Use cases of the subscription service. Each runs in one transaction that locks the
organisation's subscription row: the new state, the credit grants for metering, the commands
for the Stripe gateway and the announcement of the change commit together (outbox)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import httpx

from shared import outbox
from shared.clock import Clock
from shared.consumer import Decoded
from shared.events import CreditGrantRequested, CreditGrantRequestedV1, Event, GrantReason
from shared.events.codec import Rejection
from shared.events.members import MemberRole, MemberStatus, split_directory
from shared.events.stripe import (
    CancelAtPeriodEnd,
    CancelAtPeriodEndRequestedV1,
    PriceChange,
    PriceChangeRequestedV1,
    PriceChangeTiming,
    StripeCheckoutCompletedV1,
    StripeCommandFailedV1,
    StripeInvoicePaidV1,
    StripeInvoicePaymentFailedV1,
    StripeSubscription,
    StripeSubscriptionDeletedV1,
)
from shared.events.subscriptions import Cycle, Plan, SubscriptionChangedV1, SubscriptionState
from shared.logging import get_logger

from . import PRODUCER, store
from .domain import subscription as machine
from .domain.catalogue import Catalogue, EnterpriseTerms
from .domain.subscription import (
    NeedsCheckout,
    Outcome,
    Refused,
    SetCancelAtPeriodEnd,
    StripeFacts,
    Subscription,
)

log = get_logger("subscriptions.service")


class Denied(Exception):
    """The acting member may not do this (R3)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class NoSubscription(LookupError):
    pass


class GatewayUnavailable(Exception):
    pass


@dataclass(frozen=True)
class Gateway:
    """The Stripe gateway's HTTP API, for what a person waits on (Checkout, Billing Portal)."""

    client: httpx.AsyncClient

    async def session(self, path: str, body: dict[str, object]) -> tuple[str, str]:
        try:
            response = await self.client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(repr(exc)) from exc
        if response.status_code != 200:
            raise GatewayUnavailable(f"{response.status_code}: {response.text[:300]}")
        answer = response.json()
        return answer["id"], answer["url"]


@dataclass(frozen=True)
class Links:
    success_url: str
    cancel_url: str
    portal_return_url: str


@dataclass(frozen=True)
class ChangeResult:
    subscription: Subscription
    checkout_url: str | None = None


class Subscriptions:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        catalogue: Catalogue,
        gateway: Gateway,
        links: Links,
        *,
        topic_prefix: str,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self.catalogue = catalogue
        self._gateway = gateway
        self._links = links
        self._prefix = topic_prefix

    # The member directory ------------------------------------------------------------------

    async def on_directory(
        self, items: Sequence[Decoded[Event]]
    ) -> list[tuple[Decoded[Event], Rejection]]:
        """Project organisations and members; a new organisation starts on Free (with its
        credits). Idempotent: an organisation starts once, a member keeps its newest state."""
        now = self._clock.now()
        created, events = split_directory(i.event for i in items)
        members = [
            store.MemberChange(
                e.organisation_id, e.data.member_id, e.data.role, e.data.status, e.data.sequence
            )
            for e in events
        ]
        async with self._pool.acquire() as conn, conn.transaction():
            await store.apply_members(conn, members, now)
            for event in created:
                organisation, data = event.organisation_id, event.data
                await store.add_organisation(conn, organisation, data.name, data.created_at, now)
                started = machine.start(organisation, data.created_at, now, self.catalogue)
                if await store.add_subscription(conn, started.subscription, now):
                    await self._effects(conn, [started])
        return []

    # Stripe, through the gateway -----------------------------------------------------------

    async def on_stripe(
        self, items: Sequence[Decoded[Event]]
    ) -> list[tuple[Decoded[Event], Rejection]]:
        """Follow what Stripe reports. Each fact applies once: checkouts by session id,
        subscription states by Stripe's version, payments by the standing they set."""
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            for item in items:
                event = item.event
                sub = await store.lock(conn, event.organisation_id)
                if sub is None:
                    log.warning(
                        "stripe event for an unknown organisation",
                        organisation_id=event.organisation_id,
                        type=event.type,
                    )
                    continue
                outcome = await self._stripe_fact(conn, sub, event, now)
                if outcome is not None and outcome.changed:
                    await store.save(conn, [outcome.subscription], now)
                    await self._effects(conn, [outcome])
        return []

    async def _stripe_fact(
        self, conn: asyncpg.Connection, sub: Subscription, event: Event, now: datetime
    ) -> Outcome | None:
        match event:
            case StripeCheckoutCompletedV1():
                data = event.data
                if data.subscription_id is None or not await store.first_time(
                    conn, f"checkout:{data.checkout_session_id}", now
                ):
                    return None
                asked = await store.checkout(conn, data.request_id) if data.request_id else None
                chosen = (
                    (asked.plan, asked.cycle)
                    if asked
                    else self.catalogue.plan_of_price(data.price_id or "")
                )
                if chosen is None:
                    log.error("checkout for an unknown price", price_id=data.price_id)
                    return None
                if asked:
                    await store.checkout_completed(conn, asked.request_id, now)
                return machine.checkout_completed(
                    sub,
                    plan=chosen[0],
                    cycle=chosen[1],
                    stripe_subscription_id=data.subscription_id,
                    at=min(data.stripe_event_created, now),  # Stripe's clock, if not ahead
                    catalogue=self.catalogue,
                )
            case StripeInvoicePaymentFailedV1():
                if event.data.subscription_id != sub.stripe_subscription_id:
                    return None
                return machine.payment_failed(sub)
            case StripeInvoicePaidV1():
                if event.data.subscription_id != sub.stripe_subscription_id:
                    return None
                return machine.invoice_paid(sub)
            case StripeCommandFailedV1():
                log.error(
                    "a stripe command failed",
                    organisation_id=event.organisation_id,
                    command=event.data.command_type,
                    reason=event.data.reason,
                    detail=event.data.detail,
                )
                return None
            case _ if isinstance(event.data, StripeSubscription):
                return machine.stripe_reported(
                    sub,
                    _facts(event.data, deleted=isinstance(event, StripeSubscriptionDeletedV1)),
                    now,
                    self.catalogue,
                )
        return None

    # Owners' requests ----------------------------------------------------------------------

    async def read(self, organisation: str) -> Subscription:
        found = await store.get(self._pool, organisation)
        if found is None:
            raise NoSubscription(organisation)
        return found

    async def change_plan(
        self, organisation: str, member_id: str, plan: Plan, cycle: Cycle | None
    ) -> ChangeResult:
        """R4, R5: a paid plan from Free goes through Checkout (the URL is returned; the plan
        is in force once the gateway reports the completed checkout); between paid plans an
        upgrade is in force at once and a downgrade waits for the period's end."""
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            await self._owner(conn, organisation, member_id)
            sub = await self._lock(conn, organisation)
            decided = machine.request_change(sub, plan, cycle, self.catalogue)
            if isinstance(decided, Outcome):
                await store.save(conn, [decided.subscription], now)
                await self._effects(conn, [decided])
                return ChangeResult(decided.subscription)
            request_id = f"chg_{uuid.uuid4().hex}"
            await store.add_checkout(
                conn,
                store.Checkout(request_id, organisation, decided.plan, decided.cycle),
                member_id,
                now,
            )
            seats = max(1, await store.active_members(conn, organisation))
        session_id, url = await self._checkout(organisation, request_id, decided, seats)
        await store.checkout_opened(self._pool, request_id, session_id, url)
        return ChangeResult(sub, checkout_url=url)

    async def _checkout(
        self, organisation: str, request_id: str, needs: NeedsCheckout, seats: int
    ) -> tuple[str, str]:
        return await self._gateway.session(
            "/v1/checkout-sessions",
            {
                "organisation_id": organisation,
                "request_id": request_id,
                "price_id": needs.price_id,
                "quantity": seats,
                "success_url": self._links.success_url,
                "cancel_url": self._links.cancel_url,
            },
        )

    async def cancel(self, organisation: str, member_id: str) -> Subscription:
        return await self._owner_transition(organisation, member_id, machine.cancel)

    async def reactivate(self, organisation: str, member_id: str) -> Subscription:
        now = self._clock.now()
        return await self._owner_transition(
            organisation, member_id, lambda sub: machine.reactivate(sub, now)
        )

    async def portal(self, organisation: str, member_id: str) -> str:
        """The Stripe Billing Portal for the organisation's customer (R11)."""
        async with self._pool.acquire() as conn:
            await self._owner(conn, organisation, member_id)
        _, url = await self._gateway.session(
            "/v1/portal-sessions",
            {
                "organisation_id": organisation,
                "request_id": f"portal_{uuid.uuid4().hex}",
                "return_url": self._links.portal_return_url,
            },
        )
        return url

    async def set_enterprise(self, organisation: str, terms: EnterpriseTerms) -> Subscription:
        """An operator's command: Enterprise with the organisation's own terms, at once."""
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            sub = await self._lock(conn, organisation)
            outcome = machine.set_enterprise(sub, terms, now, self.catalogue)
            await store.save(conn, [outcome.subscription], now)
            await self._effects(conn, [outcome])
        return outcome.subscription

    async def _owner_transition(
        self, organisation: str, member_id: str, transition
    ) -> Subscription:  # type: ignore[no-untyped-def]
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            await self._owner(conn, organisation, member_id)
            sub = await self._lock(conn, organisation)
            outcome: Outcome = transition(sub)
            await store.save(conn, [outcome.subscription], now)
            await self._effects(conn, [outcome])
        return outcome.subscription

    async def _owner(self, conn: asyncpg.Connection, organisation: str, member_id: str) -> None:
        """Only an active owner may change the plan, cancel or reactivate (R3)."""
        found = await store.member(conn, organisation, member_id)
        if found is None:
            raise Denied("unknown_member", f"{member_id} is not a member of {organisation}")
        if found.status is not MemberStatus.ACTIVE:
            raise Denied("inactive_member", f"{member_id} is {found.status.value}")
        if found.role is not MemberRole.OWNER:
            raise Denied(
                "not_owner", f"only an owner may do this; {member_id} is {found.role.value}"
            )

    async def _lock(self, conn: asyncpg.Connection, organisation: str) -> Subscription:
        sub = await store.lock(conn, organisation)
        if sub is None:
            raise NoSubscription(organisation)
        return sub

    # Renewal -------------------------------------------------------------------------------

    async def renew_due(self, limit: int) -> int:
        """Renew the subscriptions that are due (R8), a batch in one transaction. Returns how
        many were due."""
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            due = await store.lock_due(conn, now, limit)
            outcomes = [machine.renew(sub, now, self.catalogue) for sub in due]
            changed = [o for o in outcomes if o.changed]
            await store.save(conn, [o.subscription for o in changed], now)
            await self._effects(conn, changed)
        if changed:
            log.info("subscriptions renewed", renewed=len(changed))
        return len(due)

    # Effects, mapped to the published contracts -------------------------------------------

    async def _effects(self, conn: asyncpg.Connection, outcomes: Sequence[Outcome]) -> None:
        now = self._clock.now()
        events: list[Event] = []
        for outcome in outcomes:
            sub = outcome.subscription
            organisation = sub.organisation_id
            for grant in outcome.grants:
                events.append(
                    CreditGrantRequestedV1.new(
                        organisation_id=organisation,
                        producer=PRODUCER,
                        occurred_at=now,
                        data=CreditGrantRequested(
                            period_key=grant.period_key,
                            amount=grant.amount,
                            reason=GrantReason(grant.reason),
                            period_start=grant.period_start,
                            period_end=grant.period_end,
                            plan=grant.plan.value,
                        ),
                    )
                )
            for command in outcome.commands:
                if isinstance(command, SetCancelAtPeriodEnd):
                    events.append(
                        CancelAtPeriodEndRequestedV1.new(
                            organisation_id=organisation,
                            producer=PRODUCER,
                            occurred_at=now,
                            data=CancelAtPeriodEnd(cancel_at_period_end=command.cancel),
                        )
                    )
                else:
                    events.append(
                        PriceChangeRequestedV1.new(
                            organisation_id=organisation,
                            producer=PRODUCER,
                            occurred_at=now,
                            data=PriceChange(
                                price_id=command.price_id, timing=PriceChangeTiming(command.timing)
                            ),
                        )
                    )
            if outcome.change is not None:
                events.append(
                    SubscriptionChangedV1.new(
                        organisation_id=organisation,
                        producer=PRODUCER,
                        occurred_at=now,
                        data=self.state(sub, outcome),
                    )
                )
        await outbox.enqueue(conn, events, prefix=self._prefix, clock=self._clock)

    def state(self, sub: Subscription, outcome: Outcome | None = None) -> SubscriptionState:
        terms = self.catalogue.terms(sub.plan, sub.enterprise)
        return SubscriptionState(
            plan=sub.plan,
            cycle=sub.cycle,
            standing=sub.standing,
            monthly_credits=terms.monthly_credits,
            seat_limit=terms.seat_limit,
            features=terms.features,
            credit_period_start=sub.credit_period_start,
            credit_period_end=sub.credit_period_end,
            paid_period_end=sub.paid_period_end,
            cancel_at_period_end=sub.cancel_at_period_end,
            pending_plan=sub.pending_plan,
            pending_cycle=sub.pending_cycle,
            stripe_subscription_id=sub.stripe_subscription_id,
            revision=sub.revision,
            change=outcome.change if outcome and outcome.change else "billing_updated",  # type: ignore[arg-type]
        )


def _facts(data: StripeSubscription, *, deleted: bool) -> StripeFacts:
    return StripeFacts(
        subscription_id=data.subscription_id,
        status=data.status.value,
        price_id=data.price_id,
        period_start=data.current_period_start,
        period_end=data.current_period_end,
        cancel_at_period_end=data.cancel_at_period_end,
        deleted=deleted,
        version=data.stripe_event_created,
    )


__all__ = ["ChangeResult", "Denied", "GatewayUnavailable", "NoSubscription", "Refused"]
