"""Use cases of the subscription service. Each runs in one transaction that locks the
organisation's subscription row: the new state, the credit grants for metering, the commands
for the Stripe gateway and the announcement of the change commit together (outbox)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared import directory, metrics, outbox
from shared.clock import Clock
from shared.consumer import Decoded
from shared.events import (
    CreditGrantRequested,
    CreditGrantRequestedV1,
    CreditGrantRequestedV2,
    CreditGrantV2,
    Event,
    GrantReason,
    GrantReasonV2,
)
from shared.events.codec import Rejection
from shared.events.members import MemberRole, MemberStatus, split_directory
from shared.events.operations import (
    AlertKind,
    OperatorAlert,
    OperatorAlertRaisedV1,
)
from shared.events.stripe import (
    CancelAtPeriodEnd,
    CancelAtPeriodEndRequestedV1,
    ChargeRequestedV1,
    PriceChange,
    PriceChangeRequestedV1,
    PriceChangeTiming,
    StripeCheckoutCompletedV1,
    StripeCheckoutCompletedV2,
    StripeCommandFailedV1,
    StripeCommandSucceededV1,
    StripeInvoicePaidV1,
    StripeInvoicePaidV2,
    StripeInvoicePaymentFailedV1,
    StripeInvoicePaymentFailedV2,
    StripePaymentUpdatedV1,
    StripeSubscription,
    StripeSubscriptionDeletedV1,
    StripeSubscriptionDeletedV2,
    StripeSubscriptionObserved,
)
from shared.events.subscriptions import Cycle, Plan, SubscriptionChangedV1, SubscriptionState
from shared.logging import get_logger

from . import PRODUCER, store
from .domain import subscription as machine
from .domain.catalogue import Catalogue, EnterpriseTerms
from .domain.subscription import (
    Grant,
    NeedsCheckout,
    Outcome,
    Refused,
    SetCancelAtPeriodEnd,
    StripeFacts,
    Subscription,
    Unappliable,
)
from .gateway import Gateway
from .packs import CreditPacks

log = get_logger("subscriptions.service")


class Denied(Exception):
    """The acting member may not do this (R3)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


async def require_owner(conn: asyncpg.Connection, organisation: str, member_id: str) -> None:
    """Only an active owner may change the plan, cancel, reactivate or buy credits (R3)."""
    found = await directory.member(conn, organisation, member_id)
    if found is None:
        raise Denied("unknown_member", f"{member_id} is not a member of {organisation}")
    if found.status is not MemberStatus.ACTIVE:
        raise Denied("inactive_member", f"{member_id} is {found.status.value}")
    if found.role is not MemberRole.OWNER:
        raise Denied("not_owner", f"only an owner may do this; {member_id} is {found.role.value}")


class NoSubscription(LookupError):
    pass


@dataclass(frozen=True)
class Links:
    success_url: str
    cancel_url: str
    portal_return_url: str


@dataclass(frozen=True)
class ChangeResult:
    subscription: Subscription
    action: str
    """`checkout`, `upgraded`, `downgrade_scheduled` or `downgrade_withdrawn`."""
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
        packs: CreditPacks | None = None,
    ) -> None:
        self._packs = packs
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
        created, _ = split_directory(i.event for i in items)
        members = directory.changes(i.event for i in items)
        async with self._pool.acquire() as conn, conn.transaction():
            await directory.save(conn, members, now)
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
        """Follow what Stripe holds, as the gateway reports it. Each fact applies once:
        checkouts by session id, subscription states by the gateway's version (never by
        Stripe's timestamps). A report that cannot be applied (an organisation or a price we
        do not know, a second paid subscription) is refused: parked on the dead-letter topic
        with its reason, announced to operators, and marked applied only once a replay
        applies it."""
        now = self._clock.now()
        refused: list[tuple[Decoded[Event], Rejection]] = []
        alerts: list[Event] = []
        async with self._pool.acquire() as conn, conn.transaction():
            for item in items:
                event = item.event
                try:
                    outcome = await self._stripe_fact(conn, event, now)
                except Unappliable as exc:
                    refused.append((item, Rejection(exc.reason, exc.detail[:500])))
                    alerts.append(self._parked_alert(event, exc))
                    log.warning(
                        "stripe report parked",
                        organisation_id=event.organisation_id,
                        type=event.type,
                        reason=exc.reason,
                        detail=exc.detail,
                    )
                    continue
                if outcome is not None:
                    await self.record(conn, [outcome], now)
            await outbox.enqueue(conn, alerts, prefix=self._prefix, clock=self._clock)
        return refused

    async def _stripe_fact(
        self, conn: asyncpg.Connection, event: Event, now: datetime
    ) -> Outcome | None:
        if isinstance(event, (StripeCommandSucceededV1, *_INVOICE_REPORTS)):
            return None  # invoices: the subscription's status says what a payment changed
        if isinstance(event, StripePaymentUpdatedV1):
            if self._packs is None:
                raise Unappliable("no_credit_packs", "credit packs are not served here")
            await self._packs.on_payment(conn, event, now)
            return None
        sub = await store.lock(conn, event.organisation_id)
        if isinstance(event, StripeCommandFailedV1):
            log.error(
                "a stripe command failed",
                organisation_id=event.organisation_id,
                command=event.data.command_type,
                reason=event.data.reason,
                detail=event.data.detail,
            )
            if event.data.command_type == ChargeRequestedV1.type_name and self._packs:
                await self._packs.on_charge_refused(
                    conn, event.organisation_id, event.data.command_id, event.data.reason, now
                )
            if sub is None or event.data.command_type not in _SUBSCRIPTION_COMMANDS:
                return None
            return machine.stripe_restored(sub, now, self.catalogue)
        if sub is None:
            raise Unappliable(
                "unknown_organisation",
                f"{event.organisation_id} is not known (yet) to the member directory's feed",
            )
        match event:
            case StripeCheckoutCompletedV2() | StripeCheckoutCompletedV1():
                return await self._checkout_paid(conn, sub, event, now)
            case _ if isinstance(event.data, (StripeSubscriptionObserved, StripeSubscription)):
                return machine.stripe_reported(sub, _facts(event), now, self.catalogue)
        return None

    async def _checkout_paid(
        self, conn: asyncpg.Connection, sub: Subscription, event: Event, now: datetime
    ) -> Outcome | None:
        """The owner paid (R4): the plan Stripe bills is in force at once. Applied once per
        session; marked applied only when it applies."""
        data = event.data
        if data.subscription_id is None:
            return None
        key = f"checkout:{data.checkout_session_id}"
        if await store.applied(conn, key):
            return None
        asked = await store.checkout(conn, data.request_id) if data.request_id else None
        if asked is not None and asked.organisation_id != event.organisation_id:
            raise Unappliable(
                "checkout_mismatch",
                f"checkout {data.checkout_session_id} reported for {event.organisation_id} "
                f"was asked for {asked.organisation_id}",
            )
        billed = self.catalogue.plan_of_price(data.price_id) if data.price_id else None
        if data.price_id is not None and billed is None:
            raise Unappliable(
                "unknown_price",
                f"checkout {data.checkout_session_id}: Stripe bills {data.price_id}; the "
                "catalogue has no plan with that price",
            )
        chosen = billed or ((asked.plan, asked.cycle) if asked else None)
        if chosen is None:
            raise Unappliable("unknown_price", f"checkout {data.checkout_session_id}: no price")
        if isinstance(event, StripeCheckoutCompletedV2):
            at = min(data.started_at or data.observed_at, now)
        else:
            at = min(data.stripe_event_created, now)
        outcome = machine.checkout_completed(
            sub,
            plan=chosen[0],
            cycle=chosen[1],
            stripe_subscription_id=data.subscription_id,
            at=at,
            catalogue=self.catalogue,
        )
        await store.first_time(conn, key, now)
        if asked:
            await store.checkout_completed(conn, asked.request_id, now)
        return outcome

    def _parked_alert(self, event: Event, exc: Unappliable) -> Event:
        return OperatorAlertRaisedV1.new(
            organisation_id=event.organisation_id,
            producer=PRODUCER,
            occurred_at=self._clock.now(),
            data=OperatorAlert(
                service=PRODUCER,
                kind=AlertKind.REPORT_PARKED,
                reason=exc.reason,
                detail=f"{event.type} parked on the dead-letter topic: {exc.detail}"[:1000],
                subject_id=str(event.event_id),
            ),
        )

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
                await self.record(conn, [decided], now)
                return ChangeResult(decided.subscription, machine.action_of(sub, decided))
            request_id = f"chg_{uuid.uuid4().hex}"
            await store.add_checkout(
                conn,
                store.Checkout(request_id, organisation, decided.plan, decided.cycle),
                member_id,
                now,
            )
            seats = max(1, await directory.active_members(conn, organisation))
        session_id, url = await self._checkout(organisation, request_id, decided, seats)
        await store.checkout_opened(self._pool, request_id, session_id, url)
        return ChangeResult(sub, "checkout", checkout_url=url)

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
            await self.record(conn, [outcome], now)
        return outcome.subscription

    async def _owner_transition(
        self, organisation: str, member_id: str, transition
    ) -> Subscription:  # type: ignore[no-untyped-def]
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            await self._owner(conn, organisation, member_id)
            sub = await self._lock(conn, organisation)
            outcome: Outcome = transition(sub)
            await self.record(conn, [outcome], now)
        return outcome.subscription

    async def _owner(self, conn: asyncpg.Connection, organisation: str, member_id: str) -> None:
        await require_owner(conn, organisation, member_id)

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
            await self.record(conn, changed, now)
        metrics.RENEWALS.labels("due").inc(len(due))
        metrics.RENEWALS.labels("renewed").inc(len(changed))
        if changed:
            log.info("subscriptions renewed", renewed=len(changed))
        return len(due)

    # Effects, mapped to the published contracts -------------------------------------------

    async def record(
        self, conn: asyncpg.Connection, outcomes: Sequence[Outcome], now: datetime
    ) -> None:
        """Save what changed, with its grants, commands and announcement (the caller's
        transaction, the subscription rows locked)."""
        changed = [o for o in outcomes if o.changed]
        await store.save(conn, [o.subscription for o in changed], now)
        await self._effects(conn, changed)

    async def _effects(self, conn: asyncpg.Connection, outcomes: Sequence[Outcome]) -> None:
        now = self._clock.now()
        events: list[Event] = []
        for outcome in outcomes:
            sub = outcome.subscription
            organisation = sub.organisation_id
            events += [
                grant_command(grant, self.catalogue, organisation, now) for grant in outcome.grants
            ]
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


def grant_command(grant: Grant, catalogue: Catalogue, organisation: str, now: datetime) -> Event:
    """Metering's grant command for a grant of the subscription: version 2 when the plan rolls
    unused credits over (its `rollover_cap`), else version 1, as before."""
    reason = GrantReason(grant.reason)
    cap = catalogue.plans[grant.plan].rollover_cap if reason.starts_period else None
    if cap is None:
        return CreditGrantRequestedV1.new(
            organisation_id=organisation,
            producer=PRODUCER,
            occurred_at=now,
            data=CreditGrantRequested(
                period_key=grant.period_key,
                amount=grant.amount,
                reason=reason,
                period_start=grant.period_start,
                period_end=grant.period_end,
                plan=grant.plan.value,
            ),
        )
    return CreditGrantRequestedV2.new(
        organisation_id=organisation,
        producer=PRODUCER,
        occurred_at=now,
        data=CreditGrantV2(
            period_key=grant.period_key,
            amount=grant.amount,
            reason=GrantReasonV2(grant.reason),
            period_start=grant.period_start,
            period_end=grant.period_end,
            plan=grant.plan.value,
            rollover_cap=cap,
        ),
    )


_INVOICE_REPORTS = (
    StripeInvoicePaidV1,
    StripeInvoicePaymentFailedV1,
    StripeInvoicePaidV2,
    StripeInvoicePaymentFailedV2,
)
_SUBSCRIPTION_COMMANDS = {
    PriceChangeRequestedV1.type_name,
    CancelAtPeriodEndRequestedV1.type_name,
}
_DELETED = (StripeSubscriptionDeletedV1, StripeSubscriptionDeletedV2)


def _facts(event: Event) -> StripeFacts:
    """A subscription report, mapped at the edge: version 2 carries the gateway's version of
    the state; version 1 only Stripe's event time."""
    data = event.data
    return StripeFacts(
        subscription_id=data.subscription_id,
        status=data.status.value,
        price_id=data.price_id,
        period_start=data.current_period_start,
        period_end=data.current_period_end,
        cancel_at_period_end=data.cancel_at_period_end,
        deleted=isinstance(event, _DELETED),
        version=data.version if isinstance(data, StripeSubscriptionObserved) else None,
        quantity=data.quantity,
        legacy_created=data.stripe_event_created if isinstance(data, StripeSubscription) else None,
    )


__all__ = ["ChangeResult", "Denied", "NoSubscription", "Refused"]
