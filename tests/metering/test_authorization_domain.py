"""The pure authorization rule."""

from __future__ import annotations

from services.metering.domain.authorization import DenialReason, Request, decide


def requests(*estimates: int) -> list[Request]:
    return [Request(f"m{i}", e) for i, e in enumerate(estimates)]


def test_holds_are_granted_in_order_until_the_available_credits_run_out() -> None:
    verdicts = decide(requests(40, 40, 40, 15, 5), wallet_exists=True, balance=100, held=0)
    assert [(v.allowed, v.reason, v.held) for v in verdicts] == [
        (True, None, 40),
        (True, None, 40),
        (False, DenialReason.INSUFFICIENT_CREDITS, 0),
        (True, None, 15),
        (True, None, 5),
    ]


def test_active_holds_reduce_what_is_available() -> None:
    verdicts = decide(requests(30, 10), wallet_exists=True, balance=100, held=80)
    assert [v.allowed for v in verdicts] == [False, True]


def test_at_or_below_zero_everything_is_denied_as_exhausted() -> None:
    for balance in (0, -7):
        verdicts = decide(requests(1), wallet_exists=True, balance=balance, held=0)
        assert verdicts[0].reason is DenialReason.CREDITS_EXHAUSTED


def test_without_a_wallet_everything_is_denied() -> None:
    verdicts = decide(requests(1, 2), wallet_exists=False, balance=0, held=0)
    assert {v.reason for v in verdicts} == {DenialReason.NO_WALLET}


def test_exactly_covered_estimates_are_all_allowed() -> None:
    verdicts = decide(requests(*[10] * 10), wallet_exists=True, balance=100, held=0)
    assert all(v.allowed for v in verdicts)
    assert sum(v.held for v in verdicts) == 100
