"""Buckets of credits, and the order they are spent in.

Every grant is a bucket: its source, the credits granted and what remains of them, a priority,
when it became effective and when its credits expire. A wallet's balance is the sum of what
remains in its buckets, minus its debt (what usage took beyond every bucket).

Spending order (debits, negative adjustments), deterministic:
1. the bucket that expires soonest (a bucket that never expires comes last);
2. then the lower priority number;
3. then the older bucket.
A bucket is spent only while it is live: something remains and it has not expired. A plan's
buckets (its allotment, upgrade top-ups, rolled-over credits) expire when the next period starts,
whenever that grant arrives; `expires_at` is their period's end, which orders them.

A new positive grant first pays the wallet's debt, then keeps the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from uuid import NAMESPACE_URL, UUID, uuid5

_BUCKET_NAMESPACE = uuid5(NAMESPACE_URL, "https://billing.example/metering/buckets")
_NEVER = datetime.max.replace(tzinfo=UTC)


class Source(StrEnum):
    PLAN = "plan"
    UPGRADE_TOP_UP = "upgrade_top_up"
    ROLLOVER = "rollover"
    PACK = "pack"
    AUTO_RECHARGE = "auto_recharge"
    PROMOTION = "promotion"
    OPERATOR = "operator"

    @property
    def ends_with_period(self) -> bool:
        return self in (Source.PLAN, Source.UPGRADE_TOP_UP, Source.ROLLOVER)


DEFAULT_PRIORITY = {
    Source.ROLLOVER: 0,
    Source.PLAN: 10,
    Source.UPGRADE_TOP_UP: 10,
    Source.PROMOTION: 20,
    Source.PACK: 30,
    Source.AUTO_RECHARGE: 30,
    Source.OPERATOR: 40,
}
"""Among buckets expiring together: rolled-over credits first, then the plan's, promotions, then
what was paid for, and an operator's grants last."""


def bucket_id(organisation_id: str, key: str, source: Source) -> UUID:
    """A bucket's id: stable for (organisation, grant key, source)."""
    return uuid5(_BUCKET_NAMESPACE, f"{organisation_id}\x1f{key}\x1f{source.value}")


@dataclass(frozen=True, slots=True)
class Bucket:
    bucket_id: UUID
    organisation_id: str
    key: str
    """The grant key (period key) that created it."""
    source: Source
    granted: int
    remaining: int
    priority: int
    effective_from: datetime
    expires_at: datetime | None
    seq: int
    """Creation order (older first)."""

    @property
    def ends_with_period(self) -> bool:
        return self.source.ends_with_period

    def live(self, now: datetime) -> bool:
        return self.remaining > 0 and (
            self.ends_with_period or self.expires_at is None or self.expires_at > now
        )

    def due(self, now: datetime) -> bool:
        """Expired with something left: the expiry sweep takes it out."""
        return (
            self.remaining > 0
            and not self.ends_with_period
            and self.expires_at is not None
            and self.expires_at <= now
        )

    @property
    def order(self) -> tuple[datetime, int, int]:
        return (self.expires_at or _NEVER, self.priority, self.seq)


@dataclass(frozen=True, slots=True)
class Burn:
    taken: tuple[tuple[Bucket, int], ...]
    """Each bucket touched, before the burn, with the credits taken from it."""
    uncovered: int
    """What no live bucket covered: it becomes debt."""

    def apply(self, buckets: dict[UUID, Bucket]) -> None:
        for bucket, credits in self.taken:
            current = buckets[bucket.bucket_id]
            buckets[bucket.bucket_id] = replace(current, remaining=current.remaining - credits)


def burn_order(buckets: Iterable[Bucket], now: datetime) -> list[Bucket]:
    return sorted((b for b in buckets if b.live(now)), key=lambda b: b.order)


def burn(buckets: Iterable[Bucket], credits: int, now: datetime) -> Burn:
    """Take `credits` (≥ 0) from the live buckets in spending order."""
    taken = []
    left = credits
    for bucket in burn_order(buckets, now):
        if left == 0:
            break
        take = min(left, bucket.remaining)
        taken.append((bucket, take))
        left -= take
    return Burn(tuple(taken), left)


def spendable(buckets: Sequence[Bucket], debt: int, now: datetime) -> int:
    """What can still be spent: the live buckets' credits, less the debt."""
    return sum(b.remaining for b in buckets if b.live(now)) - debt
