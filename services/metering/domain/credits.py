"""Wallets, levels and grants.

Invariants (the store keeps them in one transaction with each ledger entry):
- credits are integers; a wallet's balance is the sum of its ledger entries;
- every positive grant is a bucket (`buckets`); the balance is what remains in the buckets
  minus the debt, and every entry names the buckets it touched;
- `used` is what was debited since the current period started;
- a period-starting grant (plan start, renewal) ends the plan's buckets: what is left of them
  expires (up to the plan's rollover cap carries over), a debt is written off, each with a
  ledger entry; packs, promotions and operator grants keep their own expiry;
- a grant applies once per (organisation, period key): the same terms again are a redelivery
  (ignored), other terms under a used key are refused (`grant_conflict`);
- a period-starting grant older than the wallet's current period is refused (`stale_period`),
  and so is one whose period starts more than the allowed lead ahead of now
  (`period_too_far_ahead`): accepted, it would make every normal renewal look stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

from shared.events import (
    CreditBalance,
    CreditBalanceChangedV1,
    CreditGrantRequested,
    CreditGrantV2,
    CreditLevel,
    CreditsExhaustedV1,
    CreditsLowV1,
    Event,
    GrantReasonV2,
)

from .buckets import DEFAULT_PRIORITY, Bucket, Source, bucket_id, burn


class EntryKind(StrEnum):
    GRANT = "grant"
    DEBIT = "debit"
    EXPIRY = "expiry"
    ADJUSTMENT = "adjustment"


@dataclass(frozen=True, slots=True)
class Wallet:
    organisation_id: str
    balance: int = 0
    allotment: int = 0
    used: int = 0
    revision: int = 0
    held: int = 0
    """Credits reserved by active authorization holds; not part of the balance."""
    debt: int = 0
    """What usage took beyond every bucket: balance = what remains in the buckets − debt."""
    period_key: str | None = None
    period_start: datetime | None = None
    renews_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    kind: EntryKind
    amount: int
    reason: str
    label: str
    """Names the entry among those of its grant: with the grant's key, its idempotency key."""
    bucket_id: UUID | None = None
    """The bucket this entry created."""
    allocations: tuple[tuple[UUID, int], ...] = ()
    """Credits taken from (negative) each bucket it touched."""


@dataclass(frozen=True, slots=True)
class GrantApplied:
    entries: tuple[Entry, ...]
    wallet: Wallet
    buckets: tuple[Bucket, ...] = ()
    """Every bucket after the change (those with nothing left included)."""
    created: tuple[UUID, ...] = ()


class GrantRefused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class CreditPolicy:
    low_percent: int = 20
    """Before anything is used in a period (no pace to go by): at or below this share of the
    allotment left, the level is `low`."""
    pace_window: timedelta = timedelta(days=1)
    """The pace is taken over at least this long (a burst in the first minutes is not a pace)."""

    def level(self, wallet: Wallet, now: datetime) -> CreditLevel:
        """`low` when, at this period's pace, the credits run out before they renew (not at a
        fixed percentage); `exhausted` at zero or below."""
        balance, used = wallet.balance, wallet.used
        if balance <= 0:
            return CreditLevel.EXHAUSTED
        if used > 0 and wallet.period_start is not None and wallet.renews_at is not None:
            elapsed = max(now - wallet.period_start, self.pace_window).total_seconds()
            until_renewal = (wallet.renews_at - now).total_seconds()
            runs_out_first = balance * elapsed < used * until_renewal
            return CreditLevel.LOW if runs_out_first else CreditLevel.NORMAL
        if wallet.allotment > 0 and balance * 100 <= wallet.allotment * self.low_percent:
            return CreditLevel.LOW
        return CreditLevel.NORMAL

    def snapshot(self, wallet: Wallet, now: datetime) -> CreditBalance:
        return CreditBalance(
            balance=wallet.balance,
            allotment=wallet.allotment,
            used=wallet.used,
            percent_left=percent_left(wallet.balance, wallet.allotment),
            level=self.level(wallet, now),
            revision=wallet.revision,
            period_start=wallet.period_start,
            renews_at=wallet.renews_at,
        )


def percent_left(balance: int, allotment: int) -> int:
    """Whole percent of the allotment left, floored, within 0..100."""
    if allotment <= 0:
        return 100 if balance > 0 else 0
    return max(0, min(100, balance * 100 // allotment))


def crossings(before: CreditLevel, after: CreditLevel) -> tuple[type[Event], ...]:
    """Alerts due when the level moves from `before` to `after`: once per crossing, downwards.
    A fall straight from normal to exhausted announces only `exhausted`."""
    if after is CreditLevel.EXHAUSTED and before is not CreditLevel.EXHAUSTED:
        return (CreditsExhaustedV1,)
    if after is CreditLevel.LOW and before is CreditLevel.NORMAL:
        return (CreditsLowV1,)
    return ()


def announcements(
    before: CreditLevel, after: Wallet, policy: CreditPolicy, *, producer: str, now: datetime
) -> list[Event]:
    """What to publish after a change: the new balance, then any crossing alert."""
    body = policy.snapshot(after, now)
    kinds = (CreditBalanceChangedV1, *crossings(before, body.level))
    return [
        kind.new(
            organisation_id=after.organisation_id, data=body, producer=producer, occurred_at=now
        )
        for kind in kinds
    ]


@dataclass(frozen=True, slots=True)
class GrantCommand:
    """A grant command, whatever version of the wire schema carried it. Two commands under the
    same (organisation, period key) must agree on all of it; the event id, producer, version
    and note may differ (a re-issued command)."""

    key: str
    reason: GrantReasonV2
    amount: int
    period_start: datetime | None = None
    period_end: datetime | None = None
    plan: str | None = None
    expires_at: datetime | None = None
    priority: int | None = None
    rollover_cap: int | None = None
    clawback_of: str | None = None

    @classmethod
    def of(cls, grant: CreditGrantRequested | CreditGrantV2) -> GrantCommand:
        version_two = isinstance(grant, CreditGrantV2)
        return cls(
            key=grant.period_key,
            reason=GrantReasonV2(grant.reason.value),
            amount=grant.amount,
            period_start=grant.period_start,
            period_end=grant.period_end,
            plan=grant.plan,
            expires_at=grant.expires_at if version_two else None,
            priority=grant.priority if version_two else None,
            rollover_cap=grant.rollover_cap if version_two else None,
            clawback_of=grant.clawback_of if version_two else None,
        )

    def describe(self) -> str:
        period = (
            f", {self.period_start.isoformat()}..{self.period_end.isoformat()}"
            if self.period_start and self.period_end
            else ""
        )
        extras = [
            f"{name} {value.isoformat() if isinstance(value, datetime) else value}"
            for name, value in (
                ("plan", self.plan),
                ("expires", self.expires_at),
                ("priority", self.priority),
                ("rollover cap", self.rollover_cap),
                ("clawback of", self.clawback_of),
            )
            if value is not None
        ]
        return f"{self.reason.value} of {self.amount}{period}" + "".join(f", {e}" for e in extras)


_SOURCE = {
    GrantReasonV2.PLAN_START: Source.PLAN,
    GrantReasonV2.RENEWAL_RESET: Source.PLAN,
    GrantReasonV2.UPGRADE_TOP_UP: Source.UPGRADE_TOP_UP,
    GrantReasonV2.MANUAL_ADJUSTMENT: Source.OPERATOR,
    GrantReasonV2.PACK_PURCHASE: Source.PACK,
    GrantReasonV2.AUTO_RECHARGE: Source.AUTO_RECHARGE,
    GrantReasonV2.PROMOTION: Source.PROMOTION,
}


def admit_grant(
    grant: GrantCommand,
    *,
    applied: GrantCommand | None,
    now: datetime,
    max_lead: timedelta,
) -> bool:
    """True if the grant is to be applied now; False if it is a redelivery of the grant already
    applied under its key. Raises `GrantRefused` for a conflict or a period too far ahead."""
    if applied is not None:
        if applied == grant:
            return False
        raise GrantRefused(
            "grant_conflict",
            f"period key {grant.key!r} was applied as {applied.describe()}; "
            f"this command asks for {grant.describe()}",
        )
    if grant.period_start is not None and grant.period_start > now + max_lead:
        raise GrantRefused(
            "period_too_far_ahead",
            f"the period starts {grant.period_start.isoformat()}, more than "
            f"{max_lead.days} days after now ({now.isoformat()})",
        )
    if grant.expires_at is not None and grant.expires_at <= now:
        raise GrantRefused(
            "already_expired", f"the credits expire {grant.expires_at.isoformat()}, before now"
        )
    return True


@dataclass(slots=True)
class _Change:
    """A grant being applied: the wallet, its buckets and the entries so far."""

    wallet: Wallet
    buckets: dict[UUID, Bucket]
    now: datetime
    entries: list[Entry] = field(default_factory=list)
    created: list[UUID] = field(default_factory=list)

    def entry(self, kind: EntryKind, amount: int, reason: str, label: str, **kw: Any) -> None:
        self.entries.append(Entry(kind, amount, reason, label, **kw))
        self.wallet = replace(self.wallet, balance=self.wallet.balance + amount)

    def bucket(
        self,
        key: str,
        source: Source,
        credits: int,
        *,
        priority: int | None,
        effective_from: datetime,
        expires_at: datetime | None,
    ) -> tuple[Bucket, tuple[tuple[UUID, int], ...]]:
        """A new bucket; it pays the debt first. Returns it and the allocation of the payment."""
        repaid = min(self.wallet.debt, credits)
        bucket = Bucket(
            bucket_id(self.wallet.organisation_id, key, source),
            self.wallet.organisation_id,
            key,
            source,
            granted=credits,
            remaining=credits - repaid,
            priority=DEFAULT_PRIORITY[source] if priority is None else priority,
            effective_from=effective_from,
            expires_at=expires_at,
            seq=_NEW_SEQ + len(self.created),
        )
        self.buckets[bucket.bucket_id] = bucket
        self.created.append(bucket.bucket_id)
        self.wallet = replace(self.wallet, debt=self.wallet.debt - repaid)
        return bucket, (((bucket.bucket_id, -repaid),) if repaid else ())

    def spend(self, credits: int) -> tuple[tuple[UUID, int], ...]:
        burnt = burn(self.buckets.values(), credits, self.now)
        burnt.apply(self.buckets)
        self.wallet = replace(self.wallet, debt=self.wallet.debt + burnt.uncovered)
        return tuple((b.bucket_id, -taken) for b, taken in burnt.taken)


_NEW_SEQ = 2**62
"""Buckets made by a grant come after every stored one (the store numbers them in order)."""


def apply_grant(
    wallet: Wallet, buckets: Sequence[Bucket], grant: GrantCommand, now: datetime
) -> GrantApplied:
    """The ledger entries, the new wallet and its buckets after one grant command."""
    change = _Change(wallet, {b.bucket_id: b for b in buckets}, now)
    reason = grant.reason
    if reason.starts_period:
        _start_period(change, grant)
    elif reason is GrantReasonV2.REFUND_CLAWBACK:
        _claw_back(change, grant)
    elif reason is GrantReasonV2.MANUAL_ADJUSTMENT and grant.amount < 0:
        allocations = change.spend(-grant.amount)
        change.entry(
            EntryKind.ADJUSTMENT, grant.amount, reason.value, "adjustment", allocations=allocations
        )
    else:
        source = _SOURCE[reason]
        ends = grant.expires_at
        if source is Source.UPGRADE_TOP_UP:
            ends = wallet.renews_at
            change.wallet = replace(change.wallet, allotment=wallet.allotment + grant.amount)
        bucket, repaid = change.bucket(
            grant.key,
            source,
            grant.amount,
            priority=grant.priority,
            effective_from=now,
            expires_at=ends,
        )
        kind = EntryKind.ADJUSTMENT if source is Source.OPERATOR else EntryKind.GRANT
        change.entry(
            kind,
            grant.amount,
            reason.value,
            kind.value,
            bucket_id=bucket.bucket_id,
            allocations=repaid,
        )
    return GrantApplied(
        tuple(change.entries),
        change.wallet,
        tuple(change.buckets.values()),
        tuple(change.created),
    )


def _start_period(change: _Change, grant: GrantCommand) -> None:
    """The plan's buckets end and the new period's begin: what is left expires (up to the
    plan's rollover cap carries over), a debt is written off."""
    assert grant.period_start is not None and grant.period_end is not None
    wallet = change.wallet
    if wallet.period_start is not None and grant.period_start < wallet.period_start:
        raise GrantRefused(
            "stale_period",
            f"period starting {grant.period_start.isoformat()} is older than the current one "
            f"({wallet.period_start.isoformat()})",
        )
    ending = sorted(
        (b for b in change.buckets.values() if b.ends_with_period and b.remaining > 0),
        key=lambda b: b.order,
    )
    left = sum(b.remaining for b in ending)
    if left:
        for b in ending:
            change.buckets[b.bucket_id] = replace(b, remaining=0)
        change.entry(
            EntryKind.EXPIRY,
            -left,
            "period_ended",
            "expiry",
            allocations=tuple((b.bucket_id, -b.remaining) for b in ending),
        )
    if wallet.debt:
        change.wallet = replace(change.wallet, debt=0)
        change.entry(EntryKind.EXPIRY, wallet.debt, "negative_remainder_written_off", "write_off")
    rolled = min(left, grant.rollover_cap or 0)
    if rolled:
        bucket, _ = change.bucket(
            grant.key,
            Source.ROLLOVER,
            rolled,
            priority=None,
            effective_from=grant.period_start,
            expires_at=grant.period_end,
        )
        change.entry(EntryKind.GRANT, rolled, "rollover", "rollover", bucket_id=bucket.bucket_id)
    if grant.amount > 0:
        bucket, _ = change.bucket(
            grant.key,
            Source.PLAN,
            grant.amount,
            priority=grant.priority,
            effective_from=grant.period_start,
            expires_at=grant.period_end,
        )
        change.entry(
            EntryKind.GRANT, grant.amount, grant.reason.value, "grant", bucket_id=bucket.bucket_id
        )
    change.wallet = replace(
        change.wallet,
        allotment=grant.amount + rolled,
        used=0,
        period_key=grant.key,
        period_start=grant.period_start,
        renews_at=grant.period_end,
    )


def _claw_back(change: _Change, grant: GrantCommand) -> None:
    """Take back what is left, up to the amount, of the bucket granted under `clawback_of`."""
    found = [
        b
        for b in change.buckets.values()
        if b.key == grant.clawback_of and b.source is not Source.ROLLOVER
    ]
    if not found:
        raise GrantRefused("unknown_bucket", f"no bucket was granted under {grant.clawback_of!r}")
    bucket = found[0]
    taken = min(grant.amount, bucket.remaining)
    if taken:
        change.buckets[bucket.bucket_id] = replace(bucket, remaining=bucket.remaining - taken)
        change.entry(
            EntryKind.ADJUSTMENT,
            -taken,
            grant.reason.value,
            "adjustment",
            allocations=((bucket.bucket_id, -taken),),
        )


def expire(wallet: Wallet, buckets: Sequence[Bucket], now: datetime) -> GrantApplied:
    """Buckets past their expiry lose what is left (one entry each, labelled by the bucket)."""
    change = _Change(wallet, {b.bucket_id: b for b in buckets}, now)
    for bucket in sorted((b for b in buckets if b.due(now)), key=lambda b: b.order):
        change.buckets[bucket.bucket_id] = replace(bucket, remaining=0)
        change.entry(
            EntryKind.EXPIRY,
            -bucket.remaining,
            "bucket_expired",
            f"expiry:{bucket.bucket_id}",
            allocations=((bucket.bucket_id, -bucket.remaining),),
        )
    return GrantApplied(tuple(change.entries), change.wallet, tuple(change.buckets.values()), ())
