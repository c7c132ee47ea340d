"""Pure rules of credit metering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.metering.domain.buckets import Bucket, Source, bucket_id
from services.metering.domain.credits import (
    CreditPolicy,
    EntryKind,
    GrantCommand,
    GrantRefused,
    Wallet,
    announcements,
    apply_grant,
    crossings,
    percent_left,
)
from shared.events import (
    CreditBalanceChangedV1,
    CreditGrantRequested,
    CreditLevel,
    CreditsExhaustedV1,
    CreditsLowV1,
    GrantReason,
    GrantReasonV2,
)

NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)
JAN = datetime(2027, 1, 1, tzinfo=UTC)
policy = CreditPolicy(low_percent=20)


@pytest.mark.parametrize(
    ("balance", "allotment", "percent", "level"),
    [
        (1000, 1000, 100, CreditLevel.NORMAL),
        (201, 1000, 20, CreditLevel.NORMAL),
        (200, 1000, 20, CreditLevel.LOW),
        (1, 1000, 0, CreditLevel.LOW),
        (0, 1000, 0, CreditLevel.EXHAUSTED),
        (-5, 1000, 0, CreditLevel.EXHAUSTED),
        (1500, 1000, 100, CreditLevel.NORMAL),
        (10, 0, 100, CreditLevel.NORMAL),
        (0, 0, 0, CreditLevel.EXHAUSTED),
    ],
)
def test_percent_left_and_level_before_any_use(balance, allotment, percent, level) -> None:
    """Nothing used yet this period: no pace to go by, the fixed share decides."""
    assert percent_left(balance, allotment) == percent
    assert policy.level(Wallet("org_a", balance=balance, allotment=allotment), JAN) is level


def _spent(used: int, balance: int) -> Wallet:
    """A monthly wallet from Jan 1 to Feb 1, `used` of it spent."""
    return Wallet(
        "org_a",
        balance=balance,
        allotment=used + balance,
        used=used,
        period_start=JAN,
        renews_at=datetime(2027, 2, 1, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("used", "balance", "day", "level"),
    [
        (9_000, 11_000, 10, CreditLevel.LOW),  # 1,000 a day: out on Jan 21, before Feb 1
        (3_000, 17_000, 10, CreditLevel.NORMAL),  # 85 % of a month's pace left
        (19_000, 1_000, 31, CreditLevel.NORMAL),  # 5 % left, a day to go at 613 a day: enough
        (500, 19_500, 1, CreditLevel.NORMAL),  # a first-day burst is taken over a whole day
        (20_000, 0, 5, CreditLevel.EXHAUSTED),
    ],
)
def test_low_is_a_run_out_before_the_renewal_at_this_periods_pace(
    used: int, balance: int, day: int, level: CreditLevel
) -> None:
    now = JAN + timedelta(days=day - 1, hours=12)
    assert policy.level(_spent(used, balance), now) is level


@pytest.mark.parametrize(
    ("before", "after", "alerts"),
    [
        (CreditLevel.NORMAL, CreditLevel.LOW, (CreditsLowV1,)),
        (CreditLevel.NORMAL, CreditLevel.EXHAUSTED, (CreditsExhaustedV1,)),
        (CreditLevel.LOW, CreditLevel.EXHAUSTED, (CreditsExhaustedV1,)),
        (CreditLevel.LOW, CreditLevel.LOW, ()),
        (CreditLevel.EXHAUSTED, CreditLevel.EXHAUSTED, ()),
        (CreditLevel.EXHAUSTED, CreditLevel.NORMAL, ()),
        (CreditLevel.EXHAUSTED, CreditLevel.LOW, ()),
        (CreditLevel.NORMAL, CreditLevel.NORMAL, ()),
    ],
)
def test_alerts_once_per_downward_crossing(before, after, alerts) -> None:
    assert crossings(before, after) == alerts


def test_announcements_carry_the_new_state_then_the_alert() -> None:
    wallet = Wallet("org_a", balance=150, allotment=1000, used=850, revision=9)
    events = announcements(CreditLevel.NORMAL, wallet, policy, producer="metering", now=NOV)
    assert [type(e) for e in events] == [CreditBalanceChangedV1, CreditsLowV1]
    assert events[0].data == events[1].data
    assert (events[0].data.balance, events[0].data.percent_left, events[0].data.revision) == (
        150,
        15,
        9,
    )


def renewal(amount: int, start: datetime = DEC, end: datetime = JAN) -> GrantCommand:
    return GrantCommand.of(
        CreditGrantRequested(
            period_key=start.date().isoformat(),
            amount=amount,
            reason=GrantReason.RENEWAL_RESET,
            period_start=start,
            period_end=end,
        )
    )


def holding(plan: int, *, debt: int = 0, **fields) -> tuple[Wallet, list[Bucket]]:
    """A wallet whose plan bucket holds `plan` credits, `debt` beyond it."""
    wallet = Wallet("org_a", balance=plan - debt, debt=debt, **fields)
    bucket = Bucket(
        bucket_id("org_a", "2026-11", Source.PLAN),
        "org_a",
        "2026-11",
        Source.PLAN,
        granted=max(plan, 1),
        remaining=plan,
        priority=10,
        effective_from=NOV,
        expires_at=DEC,
        seq=1,
    )
    return wallet, [bucket]


def test_renewal_expires_a_positive_remainder_and_resets_to_the_allotment() -> None:
    wallet, buckets = holding(300, allotment=1000, used=700, period_start=NOV, renews_at=DEC)
    applied = apply_grant(wallet, buckets, renewal(1200), DEC)
    assert [(e.kind, e.amount, e.reason) for e in applied.entries] == [
        (EntryKind.EXPIRY, -300, "period_ended"),
        (EntryKind.GRANT, 1200, "renewal_reset"),
    ]
    assert (applied.wallet.balance, applied.wallet.allotment, applied.wallet.used) == (
        1200,
        1200,
        0,
    )
    assert (applied.wallet.period_start, applied.wallet.renews_at) == (DEC, JAN)
    assert sum(e.amount for e in applied.entries) == applied.wallet.balance - wallet.balance


def test_renewal_writes_off_a_negative_remainder() -> None:
    wallet, buckets = holding(0, debt=40, allotment=1000, used=1040, period_start=NOV)
    applied = apply_grant(wallet, buckets, renewal(1000), DEC)
    assert [(e.kind, e.amount, e.reason) for e in applied.entries] == [
        (EntryKind.EXPIRY, 40, "negative_remainder_written_off"),
        (EntryKind.GRANT, 1000, "renewal_reset"),
    ]
    assert (applied.wallet.balance, applied.wallet.debt) == (1000, 0)


def test_renewal_to_a_zero_allotment_only_expires() -> None:
    wallet, buckets = holding(10, allotment=10)
    applied = apply_grant(wallet, buckets, renewal(0), DEC)
    assert [(e.kind, e.amount) for e in applied.entries] == [(EntryKind.EXPIRY, -10)]
    assert applied.wallet.balance == 0


def test_a_period_older_than_the_current_one_is_refused() -> None:
    wallet, buckets = holding(10, allotment=10, period_start=DEC)
    with pytest.raises(GrantRefused) as refused:
        apply_grant(wallet, buckets, renewal(100, start=NOV, end=DEC), DEC)
    assert refused.value.reason == "stale_period"


def test_top_up_raises_balance_and_allotment_within_the_period() -> None:
    wallet, buckets = holding(100, allotment=1000, used=900, period_start=NOV, renews_at=DEC)
    grant = GrantCommand("up", GrantReasonV2.UPGRADE_TOP_UP, 4000)
    applied = apply_grant(wallet, buckets, grant, NOV)
    assert (applied.wallet.balance, applied.wallet.allotment, applied.wallet.used) == (
        4100,
        5000,
        900,
    )
    assert applied.wallet.renews_at == DEC
    top_up = next(b for b in applied.buckets if b.source is Source.UPGRADE_TOP_UP)
    assert (top_up.remaining, top_up.expires_at, top_up.ends_with_period) == (4000, DEC, True)


def test_a_manual_adjustment_moves_only_the_balance() -> None:
    wallet, buckets = holding(100, allotment=1000, used=900)
    grant = GrantCommand("fix", GrantReasonV2.MANUAL_ADJUSTMENT, -30)
    applied = apply_grant(wallet, buckets, grant, NOV)
    assert [(e.kind, e.amount) for e in applied.entries] == [(EntryKind.ADJUSTMENT, -30)]
    assert (applied.wallet.balance, applied.wallet.allotment, applied.wallet.used) == (
        70,
        1000,
        900,
    )
    assert applied.entries[0].allocations == ((buckets[0].bucket_id, -30),)
