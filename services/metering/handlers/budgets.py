"""Budgets over HTTP: owners set monthly caps per member, per agent and a default per member
(the front proxy's signed identity says who acts); a member sees their own; readers see any
organisation's."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from shared.access import READERS, Scope, allow
from shared.acting import Acting
from shared.audit import audited
from shared.events.audit import AuditActionV2
from shared.events.members import MemberRole
from shared.http import PROBLEM_RESPONSES, IdentifierPath, OrganisationPath, Problem

from ..budgets import BudgetBook, BudgetUse, BudgetView
from ..domain.budgets import MAX_CAP
from ..domain.budgets import Scope as BudgetScope

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)


def _budgets(request: Request) -> BudgetBook:
    return request.app.state.parts.budgets


class BudgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    monthly_cap: Annotated[int, Field(strict=True, ge=0, le=MAX_CAP)] | None
    """Credits per credit period; null removes the budget."""


class BudgetUseOut(BaseModel):
    subject_id: str
    """The member's or agent's id."""
    cap: int | None
    """The cap in force (for a member without one of their own: the members' default)."""
    own: bool
    spent: int
    """Debited this credit period."""
    held: int
    """Reserved by messages not yet settled."""
    left: int | None


class BudgetsOut(BaseModel):
    organisation_id: str
    period_key: str | None
    renews_at: datetime | None
    """Budgets restart with the credit period."""
    member_default: int | None
    members: list[BudgetUseOut]
    agents: list[BudgetUseOut]
    editable: bool
    """The viewer may set budgets (owners)."""


def _use(use: BudgetUse) -> BudgetUseOut:
    return BudgetUseOut(
        subject_id=use.subject_id,
        cap=use.cap,
        own=use.own,
        spent=use.spent,
        held=use.held,
        left=use.left,
    )


def _budgets_out(organisation_id: str, view: BudgetView, *, editable: bool) -> BudgetsOut:
    return BudgetsOut(
        organisation_id=organisation_id,
        period_key=view.period_key,
        renews_at=view.renews_at,
        member_default=view.member_default,
        members=[_use(m) for m in view.members],
        agents=[_use(a) for a in view.agents],
        editable=editable,
    )


@router.get(
    "/budgets", dependencies=[allow(Scope.FRONT)], response_model=BudgetsOut, tags=["budgets"]
)
async def my_budgets(acting: Acting, request: Request) -> BudgetsOut:
    """The organisation's budgets and their use this credit period: all of them for an owner;
    for anyone else, their own (their cap, or the members' default, and what they used)."""
    book = _budgets(request)
    view = await book.view(acting.organisation_id)
    if acting.role is MemberRole.OWNER:
        return _budgets_out(acting.organisation_id, view, editable=True)
    return _budgets_out(acting.organisation_id, view.of_member(acting.member_id), editable=False)


async def _set(
    acting: Acting, request: Request, scope: BudgetScope, subject: str, body: BudgetIn
) -> BudgetsOut:
    book = _budgets(request)
    async with audited(request, acting.organisation_id, AuditActionV2.BUDGET) as entry:
        entry.target = f"{scope.value}:{subject}" if subject else scope.value
        if acting.role is not MemberRole.OWNER:
            raise Problem(
                403,
                "not-owner",
                "Not allowed",
                f"only an owner may set budgets; {acting.member_id} is {acting.role.value}",
                reason="not_owner",
            )
        await book.set(
            acting.organisation_id, scope, subject, body.monthly_cap, by=acting.member_id
        )
        entry.detail = "removed" if body.monthly_cap is None else f"monthly cap {body.monthly_cap}"
    return _budgets_out(
        acting.organisation_id, await book.view(acting.organisation_id), editable=True
    )


@router.put(
    "/budgets/members/{member_id}",
    dependencies=[allow(Scope.FRONT)],
    response_model=BudgetsOut,
    tags=["budgets"],
)
async def set_member_budget(
    member_id: IdentifierPath, body: BudgetIn, acting: Acting, request: Request
) -> BudgetsOut:
    """Set (or remove) one member's monthly cap (owners only); it replaces the default."""
    return await _set(acting, request, BudgetScope.MEMBER, member_id, body)


@router.put(
    "/budgets/agents/{agent_id}",
    dependencies=[allow(Scope.FRONT)],
    response_model=BudgetsOut,
    tags=["budgets"],
)
async def set_agent_budget(
    agent_id: IdentifierPath, body: BudgetIn, acting: Acting, request: Request
) -> BudgetsOut:
    """Set (or remove) one agent's monthly cap, whoever sends to it (owners only)."""
    return await _set(acting, request, BudgetScope.AGENT, agent_id, body)


@router.put(
    "/budgets/member-default",
    dependencies=[allow(Scope.FRONT)],
    response_model=BudgetsOut,
    tags=["budgets"],
)
async def set_member_default(body: BudgetIn, acting: Acting, request: Request) -> BudgetsOut:
    """Set (or remove) the cap of every member without one of their own (owners only)."""
    return await _set(acting, request, BudgetScope.MEMBER_DEFAULT, "", body)


@router.get(
    "/organisations/{organisation_id}/budgets",
    dependencies=[allow(*READERS)],
    response_model=BudgetsOut,
    tags=["budgets"],
)
async def budgets_of(organisation_id: OrganisationPath, request: Request) -> BudgetsOut:
    """Any organisation's budgets and their use, for readers and operators."""
    view = await _budgets(request).view(organisation_id)
    return _budgets_out(organisation_id, view, editable=False)
