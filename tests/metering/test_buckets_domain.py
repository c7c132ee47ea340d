"""Credits as buckets, pure: the spending order against a small reference model, and the
invariants of every grant, debit and expiry on generated histories."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from hypothesis import given, settings
from hypothesis import strategies as st

from services.metering.domain.buckets import Bucket, Source, burn, spendable
from services.metering.domain.credits import (
    EntryKind,
    GrantCommand,
    GrantRefused,
    Wallet,
    apply_grant,
    expire,
)
from shared.events import GrantReasonV2

T0 = datetime(2027, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def reference_burn(buckets: list[Bucket], credits: int, now: datetime) -> tuple[dict, int]:
    """One credit at a time, from the live bucket that expires soonest (never: last), then the
    lowest priority number, then the oldest."""
    left = {b.bucket_id: b.remaining for b in buckets}
    taken: dict = {}
    for _ in range(credits):
        live = [
            b
            for b in buckets
            if left[b.bucket_id] > 0
            and (b.ends_with_period or b.expires_at is None or b.expires_at > now)
        ]
        if not live:
            return taken, credits - sum(taken.values())
        first = min(
            live,
            key=lambda b: (b.expires_at is None, b.expires_at or T0, b.priority, b.seq),
        )
        left[first.bucket_id] -= 1
        taken[first.bucket_id] = taken.get(first.bucket_id, 0) + 1
    return taken, 0


sources = st.sampled_from(list(Source))
expiries = st.one_of(st.none(), st.integers(-3, 6).map(lambda h: T0 + h * HOUR))


@st.composite
def bucket_sets(draw: st.DrawFn) -> list[Bucket]:
    count = draw(st.integers(0, 6))
    found = []
    for seq in range(count):
        granted = draw(st.integers(1, 40))
        found.append(
            Bucket(
                uuid4(),
                "org_a",
                f"k{seq}",
                draw(sources),
                granted=granted,
                remaining=draw(st.integers(0, granted)),
                priority=draw(st.integers(0, 3)),
                effective_from=T0 - 10 * HOUR,
                expires_at=draw(expiries),
                seq=seq,
            )
        )
    return found


@given(buckets=bucket_sets(), credits=st.integers(0, 200))
def test_burn_down_follows_the_reference_model(buckets: list[Bucket], credits: int) -> None:
    burnt = burn(buckets, credits, T0)
    expected, uncovered = reference_burn(buckets, credits, T0)
    assert {b.bucket_id: taken for b, taken in burnt.taken} == expected
    assert burnt.uncovered == uncovered
    assert all(0 < taken <= b.remaining for b, taken in burnt.taken)


def test_soonest_expiry_first_then_priority_then_age() -> None:
    def bucket(seq: int, expires: datetime | None, priority: int, source=Source.PACK) -> Bucket:
        return Bucket(uuid4(), "o", f"k{seq}", source, 10, 10, priority, T0, expires, seq)

    never = bucket(0, None, 0, Source.OPERATOR)
    late_low = bucket(1, T0 + 5 * HOUR, 0)
    soon_high = bucket(2, T0 + 2 * HOUR, 9)
    soon_low_young = bucket(4, T0 + 2 * HOUR, 1)
    soon_low_old = bucket(3, T0 + 2 * HOUR, 1)
    expired = bucket(5, T0 - HOUR, 0)
    burnt = burn([never, late_low, soon_high, soon_low_young, soon_low_old, expired], 55, T0)
    assert [(b.seq, taken) for b, taken in burnt.taken] == [
        (3, 10),
        (4, 10),
        (2, 10),
        (1, 10),
        (0, 10),
    ]
    assert burnt.uncovered == 5


grants = st.one_of(
    st.builds(
        lambda n, amount, h, p: GrantCommand(
            f"pack{n}", GrantReasonV2.PACK_PURCHASE, amount, expires_at=T0 + h * HOUR, priority=p
        ),
        st.integers(0, 10**6),
        st.integers(1, 50),
        st.integers(1, 8),
        st.one_of(st.none(), st.integers(0, 100)),
    ),
    st.builds(
        lambda n, amount: GrantCommand(f"promo{n}", GrantReasonV2.PROMOTION, amount),
        st.integers(0, 10**6),
        st.integers(1, 50),
    ),
    st.builds(
        lambda n, amount: GrantCommand(f"adj{n}", GrantReasonV2.MANUAL_ADJUSTMENT, amount),
        st.integers(0, 10**6),
        st.integers(-60, 60).filter(bool),
    ),
    st.builds(
        lambda n, amount: GrantCommand(f"up{n}", GrantReasonV2.UPGRADE_TOP_UP, amount),
        st.integers(0, 10**6),
        st.integers(1, 50),
    ),
    st.builds(
        lambda amount, cap: ("period", amount, cap),
        st.integers(0, 80),
        st.one_of(st.none(), st.integers(0, 30)),
    ),
    st.builds(lambda credits: ("debit", credits), st.integers(1, 70)),
    st.builds(lambda hours: ("wait", hours), st.integers(1, 3)),
    st.builds(lambda n, amount: ("claw", n, amount), st.integers(0, 5), st.integers(1, 60)),
)


@settings(max_examples=300)
@given(steps=st.lists(grants, max_size=25))
def test_every_history_keeps_the_wallet_equal_to_its_ledger_and_its_buckets(steps) -> None:
    """Balance = Σ entries = Σ remaining − debt; each bucket's remaining = granted + Σ of its
    allocations, never below zero; nothing is ever taken from a bucket past its expiry."""
    now = T0
    wallet = Wallet("org_a")
    buckets: dict = {}
    entries = []
    allocated: dict = {}
    period = 0
    for step in steps:
        if isinstance(step, tuple) and step[0] == "wait":
            now += step[1] * HOUR
            result = expire(wallet, list(buckets.values()), now)
        elif isinstance(step, tuple) and step[0] == "debit":
            burnt = burn(buckets.values(), step[1], now)
            for b, taken in burnt.taken:
                assert b.live(now)
                buckets[b.bucket_id] = replace(b, remaining=b.remaining - taken)
                allocated[b.bucket_id] = allocated.get(b.bucket_id, 0) - taken
            wallet = replace(
                wallet, balance=wallet.balance - step[1], debt=wallet.debt + burnt.uncovered
            )
            entries.append(-step[1])
            _check(wallet, buckets, entries, allocated, now)
            continue
        else:
            if isinstance(step, tuple) and step[0] == "period":
                period += 1
                grant = GrantCommand(
                    f"p{period}",
                    GrantReasonV2.RENEWAL_RESET,
                    step[1],
                    period_start=now,
                    period_end=now + 24 * HOUR,
                    rollover_cap=step[2],
                )
            elif isinstance(step, tuple) and step[0] == "claw":
                keys = sorted({b.key for b in buckets.values() if b.source is Source.PACK})
                if not keys:
                    continue
                grant = GrantCommand(
                    f"claw{len(entries)}",
                    GrantReasonV2.REFUND_CLAWBACK,
                    step[2],
                    clawback_of=keys[step[1] % len(keys)],
                )
            else:
                grant = step
                if any(b.key == grant.key for b in buckets.values()) or (
                    grant.expires_at is not None and grant.expires_at <= now
                ):
                    continue
            try:
                result = apply_grant(wallet, list(buckets.values()), grant, now)
            except GrantRefused:
                continue
        wallet = result.wallet
        for b in result.buckets:
            buckets[b.bucket_id] = b
        for entry in result.entries:
            entries.append(entry.amount)
            for bucket_id, amount in entry.allocations:
                allocated[bucket_id] = allocated.get(bucket_id, 0) + amount
            if entry.kind is EntryKind.EXPIRY and entry.reason == "bucket_expired":
                assert all(buckets[b].expires_at <= now for b, _ in entry.allocations)
        _check(wallet, buckets, entries, allocated, now)


def _check(wallet: Wallet, buckets: dict, entries: list[int], allocated: dict, now) -> None:
    assert wallet.balance == sum(entries)
    assert wallet.debt >= 0
    assert wallet.balance == sum(b.remaining for b in buckets.values()) - wallet.debt
    for b in buckets.values():
        assert 0 <= b.remaining <= b.granted
        assert b.remaining == b.granted + allocated.get(b.bucket_id, 0)
    if wallet.debt:
        assert spendable(list(buckets.values()), 0, now) == 0
