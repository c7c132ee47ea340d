"""The seat API: the seat check for the invite flow, and the seats behind the billing page.
Callers are internal (the web app's backend) and send the bearer token."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from shared.access import READERS, Scope, allow
from shared.events.envelope import NO_CONTROL_CHARACTERS, ORGANISATION_ID_PATTERN
from shared.events.members import MemberRole, MemberStatus
from shared.events.subscriptions import Plan
from shared.http import PROBLEM_RESPONSES, Delegate, HotRequest, HotRoute, OrganisationPath, Problem

from ..domain.seats import count
from ..service import Seats, UnknownOrganisation

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)


def _service(request: Request) -> Seats:
    return request.app.state.parts.seats


def _unknown(exc: UnknownOrganisation) -> Problem:
    return Problem(
        404,
        "unknown-organisation",
        "Unknown organisation",
        f"{exc.organisation_id} has no member known to the seat service (yet)",
        reason="unknown_organisation",
    )


class SeatCheckOut(BaseModel):
    allowed: bool
    reason: Literal["seat_limit_reached", "already_seated"] | None
    seats_used: int
    seat_limit: int | None
    """None: unlimited."""
    available: int | None
    over_limit: bool


@router.get(
    "/organisations/{organisation_id}/seat-check",
    dependencies=[allow(Scope.FRONT, *READERS)],
    response_model=SeatCheckOut,
    tags=["seats"],
    responses={404: {"description": "Unknown organisation"}},
)
async def seat_check(
    organisation_id: OrganisationPath,
    request: Request,
    member_id: Annotated[
        str | None, Query(min_length=1, max_length=128, pattern=NO_CONTROL_CHARACTERS)
    ] = None,
) -> dict[str, Any]:
    """May the organisation add one more active member (an invitation, a reactivation)? No
    with `seat_limit_reached` at the limit and while over it; `member_id`, if given and already
    active, takes no new seat. (Served by `HOT_SEAT_CHECK` in front of the framework; this
    route answers what it leaves: malformed input, no token.)"""
    return await _check(request.app.state.parts, organisation_id, member_id)


async def _check(parts: Any, organisation_id: str, member_id: str | None) -> dict[str, Any]:
    try:
        verdict = await parts.seats.check(organisation_id, member_id)
    except UnknownOrganisation as exc:
        raise _unknown(exc) from None
    c = verdict.count
    return {
        "allowed": verdict.allowed,
        "reason": verdict.reason,
        "seats_used": c.seats_used,
        "seat_limit": c.seat_limit,
        "available": c.available,
        "over_limit": c.over_limit,
    }


_MEMBER_ID = re.compile(NO_CONTROL_CHARACTERS)


async def _hot_check(request: HotRequest) -> dict[str, Any]:
    query = request.query
    member = query.get("member_id")
    if set(query) - {"member_id"} or (
        member is not None and not (1 <= len(member) <= 128 and _MEMBER_ID.match(member))
    ):
        raise Delegate
    return await _check(request.state.parts, request.path["organisation_id"], member)


HOT_SEAT_CHECK = HotRoute(
    path=re.compile(
        rf"^/v1/organisations/(?P<organisation_id>{ORGANISATION_ID_PATTERN[1:-1]})/seat-check$"
    ),
    answer=_hot_check,
    scopes=frozenset({Scope.FRONT, *READERS}),
)


class MemberOut(BaseModel):
    member_id: str
    role: MemberRole
    status: MemberStatus
    seated: bool


class SeatsOut(BaseModel):
    organisation_id: str
    plan: Plan | None
    """None until the subscription service has reported a plan (the default limit applies)."""
    seats_used: int
    seat_limit: int | None
    available: int | None
    over_limit: bool
    owners: list[str]
    members: list[MemberOut]
    revision: int


@router.get(
    "/organisations/{organisation_id}/seats",
    dependencies=[allow(*READERS)],
    response_model=SeatsOut,
    tags=["seats"],
    responses={404: {"description": "Unknown organisation"}},
)
async def seats(organisation_id: OrganisationPath, request: Request) -> SeatsOut:
    """Seats used, the limit, what is left, whether over the limit, and every member with role
    and status (the billing page)."""
    service = _service(request)
    try:
        org, members = await service.read(organisation_id)
    except UnknownOrganisation as exc:
        raise _unknown(exc) from None
    c = count(org, service.default_limit)
    return SeatsOut(
        organisation_id=organisation_id,
        plan=c.plan,
        seats_used=c.seats_used,
        seat_limit=c.seat_limit,
        available=c.available,
        over_limit=c.over_limit,
        owners=list(c.owners),
        members=[
            MemberOut(member_id=m.member_id, role=m.role, status=m.status, seated=m.seated)
            for m in members
        ],
        revision=c.revision,
    )
