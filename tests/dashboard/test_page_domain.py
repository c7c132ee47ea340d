"""The Billing page's pure rules: the pricing modal's choices, the credit runway, where the
credits are, and what the owner is told of auto-recharge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.dashboard.domain import notices
from services.dashboard.domain.pricing import choices
from services.dashboard.domain.view import runway
from services.dashboard.handlers.page import _buckets, _recharge_state

CATALOGUE = {
    "currency": "usd",
    "plans": [
        {
            "plan": "free",
            "name": "Free",
            "monthly_credits": 1000,
            "seat_limit": 3,
            "features": ["agents"],
            "prices": [],
        },
        {
            "plan": "pro",
            "name": "Pro",
            "monthly_credits": 20000,
            "seat_limit": 25,
            "features": ["agents"],
            "prices": [
                {"cycle": "monthly", "per_seat": 2000},
                {"cycle": "annual", "per_seat": 20000},
            ],
        },
        {
            "plan": "max",
            "name": "Max",
            "monthly_credits": 100000,
            "seat_limit": None,
            "features": ["agents", "audit_log"],
            "prices": [
                {"cycle": "monthly", "per_seat": 5000},
                {"cycle": "annual", "per_seat": 50000},
            ],
        },
        {
            "plan": "enterprise",
            "name": "Enterprise",
            "monthly_credits": 500000,
            "seat_limit": None,
            "features": [],
            "prices": [],
        },
    ],
}
END = "31 Dec 2027"


def kinds(sub: dict | None) -> dict[str, str]:
    return {c.value: c.kind for c in choices(sub, CATALOGUE, END)}


def test_from_free_every_paid_plan_goes_through_checkout() -> None:
    assert kinds({"plan": "free", "cycle": None}) == {
        "free": "current",
        "pro:monthly": "checkout",
        "pro:annual": "checkout",
        "max:monthly": "checkout",
        "max:annual": "checkout",
        "enterprise": "contact_sales",
    }


def test_on_a_paid_plan_up_is_at_once_down_at_the_period_end_and_free_by_cancelling() -> None:
    sub = {"plan": "pro", "cycle": "annual", "stripe_subscription_id": "sub_1"}
    found = {c.value: c for c in choices(sub, CATALOGUE, END)}
    assert {v: c.kind for v, c in found.items()} == {
        "free": "cancel_instead",
        "pro:monthly": "downgrade",
        "pro:annual": "current",
        "max:monthly": "upgrade",
        "max:annual": "upgrade",
        "enterprise": "contact_sales",
    }
    assert found["pro:monthly"].consequence == f"From {END}: until then you keep Pro."
    assert found["pro:annual"].current and not found["pro:annual"].selectable
    assert found["pro:annual"].annual_saving_percent == 17  # 200 a year against 12 × 20


def test_staying_withdraws_a_pending_downgrade_and_a_cancelled_plan_must_be_reactivated() -> None:
    pending = {
        "plan": "max",
        "cycle": "monthly",
        "stripe_subscription_id": "sub_1",
        "pending_plan": "pro",
        "pending_cycle": "monthly",
    }
    assert kinds(pending)["max:monthly"] == "withdraw"
    cancelled = {
        "plan": "max",
        "cycle": "monthly",
        "stripe_subscription_id": "sub_1",
        "cancel_at_period_end": True,
    }
    assert kinds(cancelled)["pro:monthly"] == "refused"


NOW = datetime(2027, 3, 10, 12, tzinfo=UTC)


def credits(used: int, balance: int, started_days_ago: float, renews_in_days: float) -> dict:
    return {
        "used": used,
        "balance": balance,
        "period_start": (NOW - timedelta(days=started_days_ago)).isoformat(),
        "renews_at": (NOW + timedelta(days=renews_in_days)).isoformat(),
    }


def test_the_runway_warns_when_the_pace_runs_out_before_the_renewal() -> None:
    fast = runway(credits(used=9000, balance=11000, started_days_ago=9, renews_in_days=21), NOW)
    assert fast is not None and fast.per_day == 1000
    assert fast.runs_out_at == NOW + timedelta(days=11) and fast.before_renewal
    slow = runway(credits(used=900, balance=19100, started_days_ago=9, renews_in_days=21), NOW)
    assert slow is not None and not slow.before_renewal  # 45 % left is fine at this pace
    idle = runway(credits(used=0, balance=20000, started_days_ago=1, renews_in_days=29), NOW)
    assert idle is not None and idle.runs_out_at is None and not idle.before_renewal


@given(
    used=st.integers(0, 10**12),
    balance=st.integers(-(10**12), 10**12),
    started=st.floats(0, 400),
    renews=st.floats(0, 400),
)
def test_the_runway_never_fails_and_agrees_with_its_warning(
    used: int, balance: int, started: float, renews: float
) -> None:
    found = runway(credits(used, balance, started, renews), NOW)
    assert found is not None
    if found.runs_out_at is not None:
        assert found.before_renewal == (found.runs_out_at < found.renews_at)
    if balance > 0 and used > 0:
        assert found.runs_out_at is not None and found.runs_out_at >= NOW


def test_a_link_cannot_make_the_page_say_anything_but_its_own_sentences() -> None:
    forged = notices.from_address("refused:<script>call +1 555</script>", "", "")
    assert forged is not None and forged.text == notices.GENERIC_REFUSAL
    assert notices.from_address("", "success", "").code == "checkout_success"
    assert notices.from_address("", "", "returned").code == "portal_returned"
    assert notices.from_address("anything else", "", "") is None


PACKS = [
    {"pack": "pack_5k", "name": "5,000 credits", "credits": 5000, "price": 1000, "valid_days": 365}
]


def test_the_owner_is_told_when_auto_recharge_failed_or_turned_itself_off() -> None:
    on = {
        "enabled": True,
        "recharged_this_month": 5000,
        "monthly_cap": 10000,
        "last_failure": None,
        "disabled_reason": None,
    }
    assert "id='recharge-state'" in _recharge_state(on, PACKS)
    failed = _recharge_state({**on, "last_failure": "card_declined"}, PACKS)
    assert "id='recharge-failed'" in failed and "card declined" in failed
    capped = _recharge_state({**on, "last_failure": "monthly_cap_reached"}, PACKS)
    assert "id='recharge-capped'" in capped
    off = _recharge_state(
        {**on, "enabled": False, "disabled_reason": "payment_failed_repeatedly"}, PACKS
    )
    assert "id='recharge-off'" in off


def test_buckets_are_listed_with_what_is_left_and_when_they_end() -> None:
    listed = _buckets(
        [
            {
                "source": "plan",
                "remaining": 700,
                "granted": 1000,
                "ends_with_period": True,
                "expires_at": "2027-01-01T00:00:00Z",
            },
            {
                "source": "pack",
                "remaining": 5000,
                "granted": 5000,
                "ends_with_period": False,
                "expires_at": "2027-12-01T00:00:00Z",
            },
            {
                "source": "operator",
                "remaining": 50,
                "granted": 50,
                "ends_with_period": False,
                "expires_at": None,
            },
        ]
    )
    assert listed.count("<li") == 3
    assert "700 of 1,000 left · ends with the period (01 Jan 2027, 00:00 UTC)" in listed
    assert "expires 01 Dec 2027, 00:00 UTC" in listed and "does not expire" in listed
    assert _buckets([]) == "" and _buckets(None) == ""
