"""Wallets, levels and grants.

Invariants (the store keeps them in one transaction with each ledger entry):
- credits are integers; a wallet's balance is the sum of its ledger entries;
- `used` is what was debited since the current period started;
- a period-starting grant (plan start, renewal) resets the balance to exactly the new allotment:
  a positive remainder expires, a negative remainder is written off, each with a ledger entry;
- a grant applies once per (organisation, period key): the same terms again are a redelivery
  (ignored), other terms under a used key are refused (`grant_conflict`);
- a period-starting grant older than the wallet's current period is refused (`stale_period`),
  and so is one whose period starts more than the allowed lead ahead of now
  (`period_too_far_ahead`): accepted, it would make every normal renewal look stale.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from shared.events import (
    CreditBalance,
    CreditBalanceChangedV1,
    CreditGrantRequested,
    CreditLevel,
    CreditsExhaustedV1,
    CreditsLowV1,
    Event,
    GrantReason,
)


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
    period_key: str | None = None
    period_start: datetime | None = None
    renews_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    kind: EntryKind
    amount: int
    reason: str


@dataclass(frozen=True, slots=True)
class GrantApplied:
    entries: tuple[Entry, ...]
    wallet: Wallet


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
class GrantTerms:
    """What a grant changes. Two commands under the same (organisation, period key) must agree
    on all of it; the event id, producer and note may differ (a re-issued command)."""

    reason: str
    amount: int
    period_start: datetime | None
    period_end: datetime | None
    plan: str | None

    @classmethod
    def of(cls, grant: CreditGrantRequested) -> GrantTerms:
        return cls(
            grant.reason.value, grant.amount, grant.period_start, grant.period_end, grant.plan
        )

    def describe(self) -> str:
        period = (
            f", {self.period_start.isoformat()}..{self.period_end.isoformat()}"
            if self.period_start and self.period_end
            else ""
        )
        return f"{self.reason} of {self.amount}{period}" + (
            f", plan {self.plan}" if self.plan else ""
        )


def admit_grant(
    grant: CreditGrantRequested,
    period_key: str,
    *,
    applied: GrantTerms | None,
    now: datetime,
    max_lead: timedelta,
) -> bool:
    """True if the grant is to be applied now; False if it is a redelivery of the grant already
    applied under its key. Raises `GrantRefused` for a conflict or a period too far ahead."""
    terms = GrantTerms.of(grant)
    if applied is not None:
        if applied == terms:
            return False
        raise GrantRefused(
            "grant_conflict",
            f"period key {period_key!r} was applied as {applied.describe()}; "
            f"this command asks for {terms.describe()}",
        )
    if grant.period_start is not None and grant.period_start > now + max_lead:
        raise GrantRefused(
            "period_too_far_ahead",
            f"the period starts {grant.period_start.isoformat()}, more than "
            f"{max_lead.days} days after now ({now.isoformat()})",
        )
    return True


def apply_grant(wallet: Wallet, grant: CreditGrantRequested, period_key: str) -> GrantApplied:
    """The ledger entries and the new wallet for one grant command."""
    if grant.reason.starts_period:
        return _start_period(wallet, grant, period_key)
    if grant.reason is GrantReason.UPGRADE_TOP_UP:
        entry = Entry(EntryKind.GRANT, grant.amount, grant.reason.value)
        return GrantApplied(
            (entry,),
            replace(
                wallet,
                balance=wallet.balance + grant.amount,
                allotment=wallet.allotment + grant.amount,
            ),
        )
    entry = Entry(EntryKind.ADJUSTMENT, grant.amount, grant.reason.value)
    return GrantApplied((entry,), replace(wallet, balance=wallet.balance + grant.amount))


def _start_period(wallet: Wallet, grant: CreditGrantRequested, period_key: str) -> GrantApplied:
    assert grant.period_start is not None and grant.period_end is not None
    if wallet.period_start is not None and grant.period_start < wallet.period_start:
        raise GrantRefused(
            "stale_period",
            f"period starting {grant.period_start.isoformat()} is older than the current one "
            f"({wallet.period_start.isoformat()})",
        )
    entries = []
    if wallet.balance > 0:
        entries.append(Entry(EntryKind.EXPIRY, -wallet.balance, "period_ended"))
    elif wallet.balance < 0:
        entries.append(Entry(EntryKind.EXPIRY, -wallet.balance, "negative_remainder_written_off"))
    if grant.amount > 0:
        entries.append(Entry(EntryKind.GRANT, grant.amount, grant.reason.value))
    return GrantApplied(
        tuple(entries),
        replace(
            wallet,
            balance=grant.amount,
            allotment=grant.amount,
            used=0,
            period_key=period_key,
            period_start=grant.period_start,
            renews_at=grant.period_end,
        ),
    )
