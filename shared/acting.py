"""The acting member of a front-proxy request: the identity it proves (`shared.identity`), a
member active in that organisation by the service's directory (`shared.directory`). Anything
else is refused with problem+json: 401 without a valid identity, 403 for a non-member."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from shared import directory
from shared.events.members import MemberRole
from shared.http import Problem
from shared.identity import IDENTITY_HEADER, IdentityRefused, verify


@dataclass(frozen=True)
class ActingMember:
    organisation_id: str
    member_id: str
    role: MemberRole


async def acting_member(request: Request) -> ActingMember:
    token = request.headers.get(IDENTITY_HEADER)
    if not token:
        raise Problem(
            401,
            "missing-identity",
            "Who acts is unknown",
            f"The front proxy sends the acting member's signed identity in {IDENTITY_HEADER}.",
        )
    return await prove(request, token)


async def prove(request: Request, token: str) -> ActingMember:
    """The active member `token` proves, or a problem (401, 403)."""
    kernel = request.app.state.runtime
    try:
        proven = verify(token, kernel.settings.identity_public_keys, kernel.clock.now())
    except IdentityRefused as exc:
        raise Problem(401, "invalid-identity", "The identity is not accepted", str(exc)) from None
    found = await directory.member(kernel.pool, proven.organisation_id, proven.member_id)
    if found is None or not found.active:
        raise Problem(
            403,
            "not-a-member",
            "Not an active member of this organisation",
            f"{proven.member_id} is not an active member of {proven.organisation_id}.",
            reason="not_a_member",
        )
    request.state.actor = proven.member_id
    return ActingMember(proven.organisation_id, proven.member_id, found.role)


Acting = Annotated[ActingMember, Depends(acting_member)]
