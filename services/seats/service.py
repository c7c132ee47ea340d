"""Use cases of the seat service. A batch of member changes, or of subscription states, runs in
one transaction that locks the organisations it touches (ascending): the members, the counts,
the announcements of the changes (outbox) and the quantities wanted in Stripe commit together.
A background task sends the due quantities to the Stripe gateway, coalesced."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import asyncpg

from shared import outbox
from shared.clock import Clock
from shared.consumer import Decoded
from shared.events import Event
from shared.events.codec import Rejection
from shared.events.members import split_directory
from shared.events.seats import SeatCount, SeatsChangedV1
from shared.events.stripe import QuantityChange, QuantityChangeRequestedV1
from shared.events.subscriptions import SubscriptionChangedV1
from shared.logging import get_logger

from . import PRODUCER, store
from .domain.seats import (
    Billing,
    MemberState,
    Organisation,
    QuantitySync,
    Verdict,
    check,
    count,
    follow_plan,
    newest,
    project,
    quantity_changed,
    quantity_due,
)

log = get_logger("seats.service")


class UnknownOrganisation(Exception):
    def __init__(self, organisation_id: str) -> None:
        super().__init__(f"no member or plan of {organisation_id} is known")
        self.organisation_id = organisation_id


class Seats:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        *,
        topic_prefix: str,
        default_limit: int | None,
        coalesce: timedelta,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._prefix = topic_prefix
        self.default_limit = default_limit
        self.coalesce = coalesce

    # Consumers --------------------------------------------------------------------------------

    async def on_directory(
        self, items: Sequence[Decoded[Event]]
    ) -> list[tuple[Decoded[Event], Rejection]]:
        """Project members (per member, the highest sequence wins) and count seats."""
        now = self._clock.now()
        organisations, events = split_directory(i.event for i in items)
        changes = [
            MemberState(
                e.organisation_id, e.data.member_id, e.data.role, e.data.status, e.data.sequence
            )
            for e in events
        ]
        created = [(e.organisation_id, e.data.created_at) for e in organisations]
        async with self._pool.acquire() as conn, conn.transaction():
            before = await store.lock_organisations(
                conn, [c.organisation_id for c in changes] + [o for o, _ in created], now
            )
            await store.mark_created(conn, created)
            latest = newest(changes)
            known = await store.lock_members(conn, sorted(latest))
            projected = project(latest, known, dict(before))
            await store.save_members(conn, projected.members, now)
            changed = [projected.organisations[o] for o in projected.changed]
            await store.save_organisations(conn, changed, now)
            await self._after(conn, before, changed)
        return []

    async def on_subscriptions(
        self, items: Sequence[Decoded[SubscriptionChangedV1]]
    ) -> list[tuple[Decoded[SubscriptionChangedV1], Rejection]]:
        """Follow each organisation's newest subscription state: its plan's seat limit and
        whether it pays per seat in Stripe."""
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            before = await store.lock_organisations(
                conn, [i.event.organisation_id for i in items], now
            )
            after: dict[str, Organisation] = {}
            for item in items:
                state = item.event.data
                organisation_id = item.event.organisation_id
                org = after.get(organisation_id) or before[organisation_id]
                billing = Billing(
                    state.plan, state.seat_limit, state.stripe_subscription_id, state.revision
                )
                followed = follow_plan(org, billing)
                if followed is not None:
                    after[organisation_id] = followed
            saved = [after[o] for o in sorted(after)]
            await store.save_organisations(conn, saved, now)
            changed = [o for o in saved if o.revision != before[o.organisation_id].revision]
            await self._after(conn, before, changed)
            stopped = [
                o.organisation_id
                for o in saved
                if o.billing is not None and not o.billing.per_seat_in_stripe
            ]
            await store.drop_pending(conn, stopped)
        return []

    async def _after(
        self,
        conn: asyncpg.Connection,
        before: dict[str, Organisation],
        changed: Sequence[Organisation],
    ) -> None:
        """Announce the changed counts, and want the new quantities in Stripe (coalesced)."""
        now = self._clock.now()
        events: list[Event] = [
            SeatsChangedV1.new(
                organisation_id=org.organisation_id,
                producer=PRODUCER,
                occurred_at=now,
                data=self.seat_count(org),
            )
            for org in changed
        ]
        await outbox.enqueue(conn, events, prefix=self._prefix, clock=self._clock)
        billed = [o for o in changed if quantity_changed(before.get(o.organisation_id), o)]
        if not billed:
            return
        pending = await store.pending_syncs(conn, [o.organisation_id for o in billed])
        wanted: dict[str, QuantitySync] = {}
        for org in billed:
            due = quantity_due(org, pending.get(org.organisation_id), now, self.coalesce)
            if due is not None:
                wanted[org.organisation_id] = due
        await store.want_quantities(conn, wanted)

    def seat_count(self, org: Organisation) -> SeatCount:
        c = count(org, self.default_limit)
        return SeatCount(
            plan=c.plan,
            seats_used=c.seats_used,
            seat_limit=c.seat_limit,
            available=c.available,
            over_limit=c.over_limit,
            owners=c.owners,
            revision=c.revision,
        )

    # Quantities in Stripe ----------------------------------------------------------------------

    async def send_due_quantities(self, limit: int) -> int:
        """Send the quantities whose coalescing window has ended, one command each (its event
        id is the Stripe idempotency key; its revision keeps an older count from overwriting a
        newer one). Returns how many were sent."""
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            due = await store.take_due_syncs(conn, now, limit)
            await outbox.enqueue(
                conn,
                [
                    QuantityChangeRequestedV1.new(
                        organisation_id=organisation_id,
                        producer=PRODUCER,
                        occurred_at=now,
                        data=QuantityChange(quantity=sync.quantity, revision=sync.revision),
                    )
                    for organisation_id, sync in due
                ],
                prefix=self._prefix,
                clock=self._clock,
            )
        for organisation_id, sync in due:
            log.info(
                "seat quantity sent",
                organisation_id=organisation_id,
                quantity=sync.quantity,
                revision=sync.revision,
            )
        return len(due)

    # Reads ------------------------------------------------------------------------------------

    async def check(self, organisation_id: str, member_id: str | None = None) -> Verdict:
        org, member = await store.organisation_and_member(self._pool, organisation_id, member_id)
        if org is None:
            raise UnknownOrganisation(organisation_id)
        return check(org, self.default_limit, member)

    async def read(self, organisation_id: str) -> tuple[Organisation, list[MemberState]]:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            org = await store.organisation(conn, organisation_id)
            if org is None:
                raise UnknownOrganisation(organisation_id)
            return org, await store.members(conn, organisation_id)


__all__ = ["Seats", "UnknownOrganisation"]
