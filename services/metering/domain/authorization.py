"""Deciding whether an organisation may spend credits on a message (R6, R9).

The cost of a message is known only after the agent processed it, so a decision reserves an
estimate (a hold) instead of checking the balance: concurrent messages cannot overspend what
holds have already reserved.

Rules, for one organisation's requests taken in order of arrival:
- no wallet: denied, `no_wallet`;
- balance at or below zero: denied, `credits_exhausted` (R9: nothing is sent until credits are
  granted, even if some estimate would "fit");
- available credits (balance minus active holds) below the estimate: denied,
  `insufficient_credits`;
- the member's budget (their own, else the organisation's default for members) has less left
  than the estimate: denied, `member_budget_exhausted`;
- the agent's budget has less left than the estimate: denied, `agent_budget_exhausted`;
- otherwise allowed: the estimate is held, and what is left at every level shrinks by it.

The balance given to `decide` leaves out credits in buckets that expire before a hold taken now
would lapse (the store computes it): a hold is never backed by credits gone when its usage
arrives.

Overdraft: the usage event settles the hold with the actual cost, debited in full even when it
exceeds the estimate. Since every hold was covered when granted, the balance can fall below zero
only by the sum of (actual − estimate) over settled messages; while it is at or below zero,
every new request is denied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from .budgets import NO_BUDGETS, Budgets, Scope


class DenialReason(StrEnum):
    NO_WALLET = "no_wallet"
    CREDITS_EXHAUSTED = "credits_exhausted"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    MEMBER_BUDGET_EXHAUSTED = "member_budget_exhausted"
    AGENT_BUDGET_EXHAUSTED = "agent_budget_exhausted"
    ORGANISATION_SUSPENDED = "organisation_suspended"
    """Reserved for the subscription service (payment failure); not produced yet."""


@dataclass(frozen=True, slots=True)
class Request:
    message_id: str
    estimate: int
    member_id: str = ""
    agent_id: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    message_id: str
    allowed: bool
    reason: DenialReason | None
    held: int
    """Credits reserved by this decision: the estimate if allowed, else 0."""


def decide(
    requests: Sequence[Request],
    *,
    wallet_exists: bool,
    balance: int,
    held: int,
    budgets: Budgets = NO_BUDGETS,
) -> list[Verdict]:
    """Verdicts for `requests`, in order. Duplicated message ids must be removed beforehand."""
    available = balance - held
    used = dict(budgets.used)

    def short(scope: Scope, subject: str | None, estimate: int) -> bool:
        cap = None if subject is None else budgets.cap(scope, subject)
        return cap is not None and cap - used.get((scope, subject or ""), 0) < estimate

    verdicts = []
    for request in requests:
        if not wallet_exists:
            reason: DenialReason | None = DenialReason.NO_WALLET
        elif balance <= 0:
            reason = DenialReason.CREDITS_EXHAUSTED
        elif available < request.estimate:
            reason = DenialReason.INSUFFICIENT_CREDITS
        elif short(Scope.MEMBER, request.member_id, request.estimate):
            reason = DenialReason.MEMBER_BUDGET_EXHAUSTED
        elif short(Scope.AGENT, request.agent_id, request.estimate):
            reason = DenialReason.AGENT_BUDGET_EXHAUSTED
        else:
            reason = None
            available -= request.estimate
            if not budgets.empty:
                member = (Scope.MEMBER, request.member_id)
                used[member] = used.get(member, 0) + request.estimate
                if request.agent_id is not None:
                    agent = (Scope.AGENT, request.agent_id)
                    used[agent] = used.get(agent, 0) + request.estimate
        allowed = reason is None
        verdicts.append(
            Verdict(request.message_id, allowed, reason, request.estimate if allowed else 0)
        )
    return verdicts
