"""Use cases of credit metering. Each runs in one database transaction: ledger entries, the
wallet they change and the announcements of the change (outbox) commit together or not at all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

import asyncpg

from shared import outbox
from shared.clock import Clock
from shared.consumer import Decoded
from shared.events import AgentMessageProcessedV1, CreditBalance, CreditGrantRequestedV1, Event
from shared.events.codec import Rejection
from shared.logging import get_logger

from . import PRODUCER, store
from .domain.credits import CreditPolicy, GrantRefused, Wallet, announcements, apply_grant

log = get_logger("metering.service")

_ENTRY_NAMESPACE = uuid5(NAMESPACE_URL, "https://billing.example/metering/ledger")


def grant_entry_id(organisation_id: str, period_key: str, kind: str) -> UUID:
    """The idempotency key of a grant's ledger entry: stable for (organisation, period, kind)."""
    return uuid5(_ENTRY_NAMESPACE, f"{organisation_id}\x1f{period_key}\x1f{kind}")


@dataclass(frozen=True)
class Credits:
    wallet: Wallet
    balance: CreditBalance
    updated_at: datetime


class Metering:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        policy: CreditPolicy,
        *,
        topic_prefix: str,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self.policy = policy
        self._prefix = topic_prefix

    async def record_usage(
        self, items: Sequence[Decoded[AgentMessageProcessedV1]]
    ) -> list[tuple[Decoded[AgentMessageProcessedV1], Rejection]]:
        """Debit every usage event exactly once. Refuses an event whose id was already used
        for a different organisation or amount (`event_id_conflict`)."""
        unique: dict[UUID, Decoded[AgentMessageProcessedV1]] = {}
        refused: list[tuple[Decoded[AgentMessageProcessedV1], Rejection]] = []
        for item in items:
            first = unique.setdefault(item.event.event_id, item)
            if first is not item and _effect(first.event) != _effect(item.event):
                refused.append((item, _conflict(item.event, *_effect(first.event))))
        events = [item.event for item in unique.values()]
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            debited = await store.debit(conn, events, now)
            if sum(d.entries for d in debited) < len(events):
                refused += await self._conflicts(conn, list(unique.values()))
            await self._announce(
                conn,
                [
                    event
                    for d in debited
                    for event in announcements(
                        self.policy.level(d.wallet.balance + d.debited, d.wallet.allotment),
                        d.wallet,
                        self.policy,
                        producer=PRODUCER,
                        now=now,
                    )
                ],
            )
        return refused

    async def _conflicts(
        self, conn: asyncpg.Connection, items: Sequence[Decoded[AgentMessageProcessedV1]]
    ) -> list[tuple[Decoded[AgentMessageProcessedV1], Rejection]]:
        """Among events that were already in the ledger, those whose id was reused for
        another effect. The rest are redeliveries, rightly ignored."""
        stored = await store.debits_by_entry(conn, [i.event.event_id for i in items])
        refused = []
        for item in items:
            organisation, kind, amount = stored[item.event.event_id]
            if kind != "debit" or _effect(item.event) != (organisation, -amount):
                refused.append((item, _conflict(item.event, organisation, -amount)))
        return refused

    async def apply_grants(
        self, items: Sequence[Decoded[CreditGrantRequestedV1]]
    ) -> list[tuple[Decoded[CreditGrantRequestedV1], Rejection]]:
        refused = []
        for item in items:
            try:
                await self.apply_grant(item.event)
            except GrantRefused as exc:
                refused.append((item, Rejection(exc.reason, exc.detail)))
        return refused

    async def apply_grant(self, command: CreditGrantRequestedV1) -> bool:
        """Apply a grant command once per (organisation, period key). False if already applied."""
        grant = command.data
        organisation = command.organisation_id
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            await store.create_wallets(conn, [organisation], now)
            before = await store.lock_wallet(conn, organisation)
            if not await store.record_grant(conn, command, now):
                log.info(
                    "grant already applied",
                    organisation_id=organisation,
                    period_key=grant.period_key,
                )
                return False
            applied = apply_grant(before, grant, grant.period_key)
            await store.append_entries(
                conn,
                organisation,
                [
                    (grant_entry_id(organisation, grant.period_key, e.kind.value), e)
                    for e in applied.entries
                ],
                source_event_id=command.event_id,
                period_key=grant.period_key,
                occurred_at=command.occurred_at,
                now=now,
            )
            after = await store.save_wallet(conn, applied.wallet, now)
            await self._announce(
                conn,
                announcements(
                    self.policy.level(before.balance, before.allotment),
                    after,
                    self.policy,
                    producer=PRODUCER,
                    now=now,
                ),
            )
        log.info(
            "grant applied",
            organisation_id=organisation,
            period_key=grant.period_key,
            reason=grant.reason.value,
            amount=grant.amount,
            balance=after.balance,
        )
        return True

    async def credits(self, organisation_id: str) -> Credits | None:
        found = await store.get_wallet(self._pool, organisation_id)
        if found is None:
            return None
        wallet, updated_at = found
        return Credits(wallet, self.policy.snapshot(wallet), updated_at)

    async def ledger(
        self, organisation_id: str, *, limit: int, before: int | None
    ) -> list[asyncpg.Record]:
        return await store.ledger_page(self._pool, organisation_id, limit=limit, before=before)

    async def _announce(self, conn: asyncpg.Connection, events: Sequence[Event]) -> None:
        await outbox.enqueue(conn, events, prefix=self._prefix, clock=self._clock)


def _effect(event: AgentMessageProcessedV1) -> tuple[str, int]:
    return event.organisation_id, event.data.credits


def _conflict(event: AgentMessageProcessedV1, organisation: str, credits: int) -> Rejection:
    return Rejection(
        "event_id_conflict",
        f"event id {event.event_id} was already used for {organisation} ({credits} credits)",
    )
