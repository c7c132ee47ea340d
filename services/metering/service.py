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
    CreditBalance,
    CreditGrantRequestedV1,
    Event,
    GrantReason,
)
from shared.events.audit import ActorKind, AuditAction, AuditEntry, Outcome
from shared.events.codec import Rejection
from shared.logging import get_logger

from . import PRODUCER, store
from .domain.credits import (
    CreditPolicy,
    GrantRefused,
    GrantTerms,
    Wallet,
    admit_grant,
    announcements,
    apply_grant,
)

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
        max_grant_lead: timedelta = timedelta(days=7),
        auditor: Auditor | None = None,
    ) -> None:
        self._auditor = auditor
        self._pool = pool
        self._clock = clock
        self.policy = policy
        self._prefix = topic_prefix
        self.max_grant_lead = max_grant_lead

    async def record_usage(
        self, items: Sequence[Decoded[AgentMessageProcessedV1]]
    ) -> list[tuple[Decoded[AgentMessageProcessedV1], Rejection]]:
        """Debit every usage event exactly once, and every message at most once. Refuses an
        event whose id was already used for another effect (`event_id_conflict`) and a second
        event for an already debited message (`duplicate_message`); an identical redelivery is
        ignored."""
        unique: dict[UUID, Decoded[AgentMessageProcessedV1]] = {}
        refused: list[tuple[Decoded[AgentMessageProcessedV1], Rejection]] = []
        for item in items:
            first = unique.setdefault(item.event.event_id, item)
            if first is not item and _effect(first.event) != _effect(item.event):
                refused.append(
                    (
                        item,
                        _conflict(
                            item.event, first.event.organisation_id, *_effect(first.event)[1:]
                        ),
                    )
                )
        events = [item.event for item in unique.values()]
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            debited = await store.debit(conn, events, now)
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
        self, conn: asyncpg.Connection, items: Sequence[Decoded[AgentMessageProcessedV1]]
    ) -> list[tuple[Decoded[AgentMessageProcessedV1], Rejection]]:
        """Why events were not appended: a redelivery (rightly ignored), an event id reused for
        another effect, or a message already debited under another event id."""
        by_id = await store.entries_by_id(conn, [i.event.event_id for i in items])
        missing = [i for i in items if i.event.event_id not in by_id]
        by_message = await store.debits_by_message(
            conn, [(i.event.organisation_id, i.event.data.message_id) for i in missing]
        )
        refused = []
        for item in items:
            event = item.event
            stored = by_id.get(event.event_id)
            if stored is not None:
                if stored.kind != "debit" or (
                    stored.organisation_id,
                    stored.credits,
                    stored.message_id,
                ) != _effect(event):
                    refused.append(
                        (
                            item,
                            _conflict(
                                event, stored.organisation_id, stored.credits, stored.message_id
                            ),
                        )
                    )
                continue
            debit = by_message[(event.organisation_id, event.data.message_id)]
            refused.append(
                (
                    item,
                    Rejection(
                        "duplicate_message",
                        f"message {event.data.message_id!r} of {event.organisation_id} was "
                        f"already debited ({debit.credits} credits, event {debit.entry_id})",
                    ),
                )
            )
        return refused

    async def apply_grants(
        self, items: Sequence[Decoded[CreditGrantRequestedV1]]
    ) -> list[tuple[Decoded[CreditGrantRequestedV1], Rejection]]:
        """The `BatchConsumer` step for `credits.grant-requests` (see `grant`)."""
        refused = await self.grant([item.event for item in items])
        return [(items[n], rejection) for n, rejection in refused]

    async def grant(
        self, commands: Sequence[CreditGrantRequestedV1]
    ) -> list[tuple[int, Rejection]]:
        """Apply grant commands in order, each once per (organisation, period key), a batch in
        one transaction: the batch's wallets are locked (in order), each grant is decided in
        Python against the wallet as the grants before it left it, and the entries, grants and
        wallets are written in a few statements. A refused grant changes nothing and creates
        nothing. Each organisation's balance is announced once, after the batch. Returns the
        refused commands' positions, with the reason."""
        now = self._clock.now()
        refused: list[tuple[int, Rejection]] = []
        async with self._pool.acquire() as conn, conn.transaction():
            organisations = sorted({c.organisation_id for c in commands})
            wallets = await store.lock_wallets(conn, organisations)
            before = dict(wallets)
            known = await store.find_grants(
                conn, [(c.organisation_id, c.data.period_key) for c in commands]
            )
            grants: list[CreditGrantRequestedV1] = []
            entries: list[store.NewEntry] = []
            for position, command in enumerate(commands):
                grant = command.data
                organisation = command.organisation_id
                wallet = wallets.get(organisation) or Wallet(organisation)
                try:
                    if not admit_grant(
                        grant,
                        grant.period_key,
                        applied=known.get((organisation, grant.period_key)),
                        now=now,
                        max_lead=self.max_grant_lead,
                    ):
                        log.info(
                            "grant already applied",
                            organisation_id=organisation,
                            period_key=grant.period_key,
                            event_id=str(command.event_id),
                        )
                        continue
                    result = apply_grant(wallet, grant, grant.period_key)
                except GrantRefused as exc:
                    refused.append((position, Rejection(exc.reason, exc.detail)))
                    continue
                wallets[organisation] = result.wallet
                known[(organisation, grant.period_key)] = GrantTerms.of(grant)
                grants.append(command)
                entries += [
                    store.NewEntry(
                        grant_entry_id(organisation, grant.period_key, e.kind.value),
                        organisation,
                        e,
                        command.event_id,
                        grant.period_key,
                        command.occurred_at,
                    )
                    for e in result.entries
                ]
            if grants:
                changed = sorted({g.organisation_id for g in grants})
                await store.create_wallets(conn, [o for o in changed if o not in before], now)
                await store.record_grants(conn, grants, now)
                await store.append_grant_entries(conn, entries, now)
                await self._audit_manual(conn, grants)
                saved = await store.save_wallets(conn, [wallets[o] for o in changed], now)
                await self._announce(
                    conn,
                    [
                        event
                        for wallet in saved
                        for event in announcements(
                            self.policy.level(
                                before.get(wallet.organisation_id)
                                or Wallet(wallet.organisation_id),
                                now,
                            ),
                            wallet,
                            self.policy,
                            producer=PRODUCER,
                            now=now,
                        )
                    ],
                )
        if grants:
            log.info("grants applied", grants=len(grants), refused=len(refused))
        return refused

    async def _audit_manual(
        self, conn: asyncpg.Connection, grants: Sequence[CreditGrantRequestedV1]
    ) -> None:
        """An operator's manual grants go into the audit log with the grant itself."""
        manual = [g for g in grants if g.data.reason is GrantReason.MANUAL_ADJUSTMENT]
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
        found = await store.get_wallet(self._pool, organisation_id)
        if found is None:
            return None
        wallet, updated_at = found
        return Credits(wallet, self.policy.snapshot(wallet, self._clock.now()), updated_at)

    async def ledger(
        self, organisation_id: str, *, limit: int, before: int | None
    ) -> list[store.LedgerEntry]:
        return await store.ledger_page(self._pool, organisation_id, limit=limit, before=before)

    async def _announce(self, conn: asyncpg.Connection, events: Sequence[Event]) -> None:
        await outbox.enqueue(conn, events, prefix=self._prefix, clock=self._clock)


def _effect(event: AgentMessageProcessedV1) -> tuple[str, int, str]:
    return event.organisation_id, event.data.credits, event.data.message_id


def _conflict(
    event: AgentMessageProcessedV1, organisation: str, credits: int, message_id: str | None
) -> Rejection:
    return Rejection(
        "event_id_conflict",
        f"event id {event.event_id} was already used for {organisation}, message "
        f"{message_id!r} ({credits} credits)",
    )
