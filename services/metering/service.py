"""Use cases of credit metering. Each runs in one database transaction: ledger entries, the
wallet they change and the announcements of the change (outbox) commit together or not at all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from uuid import NAMESPACE_URL, UUID, uuid5

import asyncpg

from shared import outbox
from shared.audit import Auditor
from shared.clock import Clock
from shared.consumer import Decoded
from shared.events import (
    AgentMessageProcessedV1,
    AgentMessageProcessedV2,
    CreditBalance,
    CreditGrantRequestedV1,
    CreditGrantRequestedV2,
    Event,
    GrantReason,
)
from shared.events.audit import ActorKind, AuditAction, AuditEntry, Outcome
from shared.events.codec import Rejection
from shared.events.usage import MAX_CREDITS_PER_MESSAGE
from shared.logging import get_logger

from . import PRODUCER
from .domain.buckets import Bucket, burn_order, spendable
from .domain.consumption import Consumption
from .domain.credits import (
    CreditPolicy,
    Entry,
    GrantApplied,
    GrantCommand,
    GrantRefused,
    Wallet,
    admit_grant,
    announcements,
    apply_grant,
    expire,
)
from .domain.pricing import RateCard, RawUsage, Unpriced
from .store import grants as grant_store
from .store import wallets as wallet_store

log = get_logger("metering.service")

Usage = AgentMessageProcessedV1 | AgentMessageProcessedV2

_ENTRY_NAMESPACE = uuid5(NAMESPACE_URL, "https://billing.example/metering/ledger")


def grant_entry_id(organisation_id: str, period_key: str, kind: str) -> UUID:
    """The idempotency key of a grant's ledger entry: stable for (organisation, period, kind)."""
    return uuid5(_ENTRY_NAMESPACE, f"{organisation_id}\x1f{period_key}\x1f{kind}")


@dataclass(frozen=True)
class Credits:
    wallet: Wallet
    balance: CreditBalance
    updated_at: datetime
    buckets: list[Bucket]
    """The live buckets, in spending order."""
    spendable: int
    """The balance without credits past their expiry not yet swept."""


class Metering:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        policy: CreditPolicy,
        *,
        topic_prefix: str,
        max_grant_lead: timedelta = timedelta(days=7),
        auditor: Auditor | None = None,
        rate_card: RateCard | None = None,
    ) -> None:
        self._auditor = auditor
        self.rate_card = rate_card or RateCard.load()
        self._pool = pool
        self._clock = clock
        self.policy = policy
        self._prefix = topic_prefix
        self.max_grant_lead = max_grant_lead

    def consumption(self, event: AgentMessageProcessedV1 | AgentMessageProcessedV2) -> Consumption:
        """The event as metering debits it; raw usage (version 2) priced with the rate card in
        force when it occurred. Raises `Unpriced`, or ValueError for a price beyond what one
        message may cost."""
        data = event.data
        common = (
            event.event_id,
            event.organisation_id,
            data.member_id,
            data.agent_id,
            data.conversation_id,
            data.message_id,
            event.occurred_at,
        )
        if isinstance(event, AgentMessageProcessedV1):
            return Consumption(*common, credits=event.data.credits)
        usage = RawUsage(
            event.data.model,
            event.data.input_tokens,
            event.data.output_tokens,
            event.data.tool_calls,
        )
        priced = self.rate_card.price(usage, event.occurred_at)
        if priced.credits > MAX_CREDITS_PER_MESSAGE:
            raise ValueError(
                f"priced at {priced.credits} credits by rate card {priced.version}, over "
                f"{MAX_CREDITS_PER_MESSAGE} for one message"
            )
        return Consumption(*common, credits=priced.credits, usage=usage, priced=priced)

    async def record_usage(
        self, items: Sequence[Decoded[Usage]]
    ) -> list[tuple[Decoded[Usage], Rejection]]:
        """Debit every usage event exactly once, and every message at most once. Refuses an
        event whose id was already used for another effect (`event_id_conflict`), a second
        event for an already debited message (`duplicate_message`), and raw usage that the rate
        card cannot price (`unpriced_usage`) or prices beyond one message's limit
        (`invalid_amount`); an identical redelivery is ignored."""
        unique: dict[UUID, tuple[Decoded[Usage], Consumption]] = {}
        refused: list[tuple[Decoded[Usage], Rejection]] = []
        for item in items:
            try:
                consumed = self.consumption(item.event)
            except Unpriced as exc:
                refused.append((item, Rejection("unpriced_usage", str(exc))))
                continue
            except ValueError as exc:
                refused.append((item, Rejection("invalid_amount", str(exc))))
                continue
            first, first_consumed = unique.setdefault(consumed.event_id, (item, consumed))
            if first is not item and first_consumed.effect != consumed.effect:
                refused.append((item, _conflict(consumed, *first_consumed.effect)))
        events = [consumed for _, consumed in unique.values()]
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            debited = await wallet_store.debit(conn, events, now)
            if sum(d.entries for d in debited) < len(events):
                refused += await self._not_debited(conn, list(unique.values()))
            await self._announce(
                conn,
                [
                    event
                    for d in debited
                    for event in announcements(
                        self.policy.level(
                            replace(
                                d.wallet,
                                balance=d.wallet.balance + d.debited,
                                used=max(0, d.wallet.used - d.debited),
                            ),
                            now,
                        ),
                        d.wallet,
                        self.policy,
                        producer=PRODUCER,
                        now=now,
                    )
                ],
            )
        return refused

    async def _not_debited(
        self, conn: asyncpg.Connection, items: Sequence[tuple[Decoded[Usage], Consumption]]
    ) -> list[tuple[Decoded[Usage], Rejection]]:
        """Why events were not appended: a redelivery (rightly ignored), an event id reused for
        another effect, or a message already debited under another event id."""
        by_id = await wallet_store.entries_by_id(conn, [c.event_id for _, c in items])
        missing = [c for _, c in items if c.event_id not in by_id]
        by_message = await wallet_store.debits_by_message(
            conn, [(c.organisation_id, c.message_id) for c in missing]
        )
        refused = []
        for item, consumed in items:
            stored = by_id.get(consumed.event_id)
            if stored is not None:
                effect = (stored.organisation_id, stored.credits, stored.message_id)
                if stored.kind != "debit" or effect != consumed.effect:
                    refused.append((item, _conflict(consumed, *effect)))
                continue
            debit = by_message[(consumed.organisation_id, consumed.message_id)]
            refused.append(
                (
                    item,
                    Rejection(
                        "duplicate_message",
                        f"message {consumed.message_id!r} of {consumed.organisation_id} was "
                        f"already debited ({debit.credits} credits, event {debit.entry_id})",
                    ),
                )
            )
        return refused

    async def apply_grants(
        self, items: Sequence[Decoded[CreditGrantRequestedV1 | CreditGrantRequestedV2]]
    ) -> list[tuple[Decoded[CreditGrantRequestedV1 | CreditGrantRequestedV2], Rejection]]:
        """The `BatchConsumer` step for `credits.grant-requests` (see `grant`)."""
        refused = await self.grant([item.event for item in items])
        return [(items[n], rejection) for n, rejection in refused]

    async def grant(
        self, commands: Sequence[CreditGrantRequestedV1 | CreditGrantRequestedV2]
    ) -> list[tuple[int, Rejection]]:
        """Apply grant commands in order, each once per (organisation, period key), a batch in
        one transaction: the batch's wallets are locked (in order), each grant is decided in
        Python against the wallet and buckets as the grants before it left them, and the
        entries, buckets, grants and wallets are written in a few statements. A refused grant
        changes nothing and creates nothing. Each organisation's balance is announced once,
        after the batch. Returns the refused commands' positions, with the reason."""
        now = self._clock.now()
        refused: list[tuple[int, Rejection]] = []
        applied: list[grant_store.AppliedGrant] = []
        async with self._pool.acquire() as conn, conn.transaction():
            organisations = sorted({c.organisation_id for c in commands})
            wallets = await wallet_store.lock_wallets(conn, organisations)
            before = dict(wallets)
            grants = [GrantCommand.of(c.data) for c in commands]
            known = await grant_store.find_grants(
                conn, [(c.organisation_id, g.key) for c, g in zip(commands, grants, strict=True)]
            )
            pockets = Pockets(
                await grant_store.buckets_of(
                    conn,
                    organisations,
                    keys=[
                        (c.organisation_id, g.clawback_of)
                        for c, g in zip(commands, grants, strict=True)
                        if g.clawback_of
                    ],
                )
            )
            entries: list[wallet_store.NewEntry] = []
            for position, (command, grant) in enumerate(zip(commands, grants, strict=True)):
                organisation = command.organisation_id
                wallet = wallets.get(organisation) or Wallet(organisation)
                try:
                    if not admit_grant(
                        grant,
                        applied=known.get((organisation, grant.key)),
                        now=now,
                        max_lead=self.max_grant_lead,
                    ):
                        log.info(
                            "grant already applied",
                            organisation_id=organisation,
                            period_key=grant.key,
                            event_id=str(command.event_id),
                        )
                        continue
                    result = apply_grant(wallet, pockets.of(organisation), grant, now)
                except GrantRefused as exc:
                    refused.append((position, Rejection(exc.reason, exc.detail)))
                    continue
                wallets[organisation] = result.wallet
                pockets.update(organisation, result)
                known[(organisation, grant.key)] = grant
                applied.append(
                    grant_store.AppliedGrant(
                        organisation, command.event_id, grant, command.data.note
                    )
                )
                entries += self._entries(organisation, grant.key, command, result.entries)
            if applied:
                changed = sorted({a.organisation_id for a in applied})
                await wallet_store.create_wallets(
                    conn, [o for o in changed if o not in before], now
                )
                await grant_store.record_grants(conn, applied, now)
                await pockets.save(conn, now)
                await wallet_store.append_grant_entries(conn, entries, now)
                await self._audit_manual(
                    conn, [c for c in commands if _manual(c)], {a.event_id for a in applied}
                )
                await self._save_and_announce(conn, [wallets[o] for o in changed], before, now)
        if applied:
            log.info("grants applied", grants=len(applied), refused=len(refused))
        return refused

    async def expire_buckets(self, limit: int = 500) -> int:
        """Scheduled work: buckets past their expiry lose what is left of them, announced like
        any other change. Wallets busy in another transaction are taken next time (their
        expired credits are already not spent). Returns how many buckets expired."""
        now = self._clock.now()
        due = await grant_store.due_buckets(self._pool, now, limit)
        if not due:
            return 0
        expired = 0
        async with self._pool.acquire() as conn, conn.transaction():
            wallets = await wallet_store.lock_wallets_skip_busy(conn, due)
            before = dict(wallets)
            pockets = Pockets(await grant_store.buckets_of(conn, sorted(wallets)))
            entries: list[wallet_store.NewEntry] = []
            for organisation, wallet in wallets.items():
                result = expire(wallet, pockets.of(organisation), now)
                wallets[organisation] = result.wallet
                pockets.update(organisation, result)
                expired += len(result.entries)
                entries += [
                    wallet_store.NewEntry(
                        grant_entry_id(organisation, "bucket", e.label),
                        organisation,
                        e,
                        e.allocations[0][0],
                        None,
                        now,
                    )
                    for e in result.entries
                ]
            await pockets.save(conn, now)
            await wallet_store.append_grant_entries(conn, entries, now)
            await self._save_and_announce(conn, list(wallets.values()), before, now)
        log.info("buckets expired", buckets=expired, organisations=len(wallets))
        return expired

    def _entries(
        self,
        organisation: str,
        key: str,
        command: Event,
        entries: Sequence[Entry],
    ) -> list[wallet_store.NewEntry]:
        return [
            wallet_store.NewEntry(
                grant_entry_id(organisation, key, e.label),
                organisation,
                e,
                command.event_id,
                key,
                command.occurred_at,
            )
            for e in entries
        ]

    async def _save_and_announce(
        self,
        conn: asyncpg.Connection,
        wallets: Sequence[Wallet],
        before: dict[str, Wallet],
        now: datetime,
    ) -> None:
        saved = await wallet_store.save_wallets(conn, wallets, now)
        await self._announce(
            conn,
            [
                event
                for wallet in saved
                for event in announcements(
                    self.policy.level(
                        before.get(wallet.organisation_id) or Wallet(wallet.organisation_id),
                        now,
                    ),
                    wallet,
                    self.policy,
                    producer=PRODUCER,
                    now=now,
                )
            ],
        )

    async def _audit_manual(
        self,
        conn: asyncpg.Connection,
        grants: Sequence[CreditGrantRequestedV1 | CreditGrantRequestedV2],
        applied: set[UUID],
    ) -> None:
        """An operator's manual grants go into the audit log with the grant itself."""
        manual = [g for g in grants if g.event_id in applied]
        if self._auditor is None or not manual:
            return
        entries = [
            (
                g.organisation_id,
                AuditEntry(
                    service=PRODUCER,
                    actor=f"operator:{g.producer}"[:128],
                    actor_kind=ActorKind.OPERATOR,
                    action=AuditAction.CREDIT_GRANT,
                    target=g.data.period_key,
                    request_id=str(g.event_id),
                    outcome=Outcome.SUCCEEDED,
                    detail=f"{g.data.amount} credits" + (f": {g.data.note}" if g.data.note else ""),
                ),
            )
            for g in manual
        ]
        await self._auditor.add(conn, entries)

    async def credits(self, organisation_id: str) -> Credits | None:
        found = await wallet_store.get_wallet(self._pool, organisation_id)
        if found is None:
            return None
        wallet, updated_at = found
        now = self._clock.now()
        buckets = (await grant_store.buckets_of(self._pool, [organisation_id])).get(
            organisation_id, []
        )
        return Credits(
            wallet,
            self.policy.snapshot(wallet, now),
            updated_at,
            burn_order(buckets, now),
            spendable(buckets, wallet.debt, now),
        )

    async def ledger(
        self, organisation_id: str, *, limit: int, before: int | None
    ) -> list[wallet_store.LedgerEntry]:
        return await wallet_store.ledger_page(
            self._pool, organisation_id, limit=limit, before=before
        )

    async def _announce(self, conn: asyncpg.Connection, events: Sequence[Event]) -> None:
        await outbox.enqueue(conn, events, prefix=self._prefix, clock=self._clock)


class Pockets:
    """The buckets of the organisations a transaction changes, and what to write of them."""

    def __init__(self, found: dict[str, list[Bucket]]) -> None:
        self._buckets = {o: {b.bucket_id: b for b in bs} for o, bs in found.items()}
        self._stored = {b.bucket_id: b for bs in found.values() for b in bs}
        self._created: list[Bucket] = []

    def of(self, organisation: str) -> list[Bucket]:
        return list(self._buckets.get(organisation, {}).values())

    def update(self, organisation: str, result: GrantApplied) -> None:
        mine = self._buckets.setdefault(organisation, {})
        for bucket in result.buckets:
            mine[bucket.bucket_id] = bucket
        self._created += [mine[b] for b in result.created]

    async def save(self, conn: asyncpg.Connection, now: datetime) -> None:
        """New buckets in the order they were made (with what is left of them now), and the
        stored ones whose credits changed."""
        current = {b.bucket_id: b for bs in self._buckets.values() for b in bs.values()}
        created = [current[b.bucket_id] for b in self._created]
        changed = [
            current[i] for i, b in self._stored.items() if current[i].remaining != b.remaining
        ]
        await grant_store.save_buckets(conn, created, changed, now)


def _manual(command: CreditGrantRequestedV1 | CreditGrantRequestedV2) -> bool:
    return command.data.reason.value == GrantReason.MANUAL_ADJUSTMENT.value


def _conflict(
    consumed: Consumption, organisation: str, credits: int, message_id: str | None
) -> Rejection:
    return Rejection(
        "event_id_conflict",
        f"event id {consumed.event_id} was already used for {organisation}, message "
        f"{message_id!r} ({credits} credits)",
    )
