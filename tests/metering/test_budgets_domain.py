"""Nested caps in the pure authorization rule, against a reference that recounts every level
from scratch before each request."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.metering.domain.authorization import DenialReason, Request, Verdict, decide
from services.metering.domain.budgets import Budgets, Scope

MEMBERS = ["ann", "bob", "cat", "dan"]
AGENTS = ["writer", "coder", "finder"]

caps = st.integers(min_value=0, max_value=60)
budgets = st.builds(
    Budgets,
    members=st.dictionaries(st.sampled_from(MEMBERS), caps, max_size=3),
    member_default=st.none() | caps,
    agents=st.dictionaries(st.sampled_from(AGENTS), caps, max_size=2),
    used=st.dictionaries(
        st.tuples(st.sampled_from([Scope.MEMBER, Scope.AGENT]), st.sampled_from(MEMBERS + AGENTS)),
        st.integers(min_value=0, max_value=30),
        max_size=4,
    ),
)
asks = st.lists(
    st.tuples(
        st.sampled_from(MEMBERS),
        st.none() | st.sampled_from(AGENTS),
        st.integers(min_value=1, max_value=15),
    ),
    max_size=30,
)


def reference(
    requests: list[Request], budgets: Budgets, balance: int, held: int
) -> list[tuple[bool, DenialReason | None]]:
    """Before each request, every level's use is recounted from the requests allowed so far."""
    allowed: list[Request] = []
    out: list[tuple[bool, DenialReason | None]] = []
    for r in requests:
        org_used = held + sum(a.estimate for a in allowed)
        member_cap = budgets.members.get(r.member_id, budgets.member_default)
        member_used = budgets.used.get((Scope.MEMBER, r.member_id), 0) + sum(
            a.estimate for a in allowed if a.member_id == r.member_id
        )
        agent_cap = budgets.agents.get(r.agent_id) if r.agent_id else None
        agent_used = budgets.used.get((Scope.AGENT, r.agent_id or ""), 0) + sum(
            a.estimate for a in allowed if r.agent_id and a.agent_id == r.agent_id
        )
        if balance <= 0:
            out.append((False, DenialReason.CREDITS_EXHAUSTED))
        elif balance - org_used < r.estimate:
            out.append((False, DenialReason.INSUFFICIENT_CREDITS))
        elif member_cap is not None and member_cap - member_used < r.estimate:
            out.append((False, DenialReason.MEMBER_BUDGET_EXHAUSTED))
        elif agent_cap is not None and agent_cap - agent_used < r.estimate:
            out.append((False, DenialReason.AGENT_BUDGET_EXHAUSTED))
        else:
            allowed.append(r)
            out.append((True, None))
    return out


@given(asks, budgets, st.integers(min_value=-5, max_value=200), st.integers(0, 40))
def test_every_level_covers_what_is_allowed_and_names_what_is_short(
    found: list[tuple[str, str | None, int]], budgets: Budgets, balance: int, held: int
) -> None:
    requests = [Request(f"m{i}", e, member, agent) for i, (member, agent, e) in enumerate(found)]
    verdicts = decide(requests, wallet_exists=True, balance=balance, held=held, budgets=budgets)
    assert [(v.allowed, v.reason) for v in verdicts] == reference(requests, budgets, balance, held)
    granted = [r for r, v in zip(requests, verdicts, strict=True) if v.allowed]
    assert sum(r.estimate for r in granted) <= max(0, balance - held)
    for member in MEMBERS:
        cap = budgets.members.get(member, budgets.member_default)
        if cap is not None:
            spent = sum(r.estimate for r in granted if r.member_id == member)
            assert spent <= max(0, cap - budgets.used.get((Scope.MEMBER, member), 0))
    for agent, cap in budgets.agents.items():
        spent = sum(r.estimate for r in granted if r.agent_id == agent)
        assert spent <= max(0, cap - budgets.used.get((Scope.AGENT, agent), 0))


def test_a_member_budget_and_an_agent_budget_are_named_when_short() -> None:
    budgets = Budgets(members={"ann": 20}, member_default=5, agents={"coder": 12})
    verdicts = decide(
        [
            Request("1", 10, "ann", "coder"),
            Request("2", 10, "ann", "writer"),
            Request("3", 1, "ann", None),
            Request("4", 5, "bob", "writer"),
            Request("5", 6, "cat", None),
            Request("6", 3, "dan", "coder"),
        ],
        wallet_exists=True,
        balance=1000,
        held=0,
        budgets=budgets,
    )
    assert [(v.allowed, v.reason) for v in verdicts] == [
        (True, None),
        (True, None),
        (False, DenialReason.MEMBER_BUDGET_EXHAUSTED),
        (True, None),
        (False, DenialReason.MEMBER_BUDGET_EXHAUSTED),
        (False, DenialReason.AGENT_BUDGET_EXHAUSTED),
    ]
    assert verdicts[0] == Verdict("1", True, None, 10)


def test_a_zero_cap_stops_the_member_and_no_budget_limits_nobody() -> None:
    stopped = Budgets(members={"ann": 0})
    requests = [Request("1", 1, "ann", None), Request("2", 50, "bob", "coder")]
    verdicts = decide(requests, wallet_exists=True, balance=100, held=0, budgets=stopped)
    assert [v.reason for v in verdicts] == [DenialReason.MEMBER_BUDGET_EXHAUSTED, None]
