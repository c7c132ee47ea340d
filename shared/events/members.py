"""The workspace's member directory (another team's system) tells us about organisations and
their members on `workspace.members`, keyed by organisation. This is our contract with it.

Every member event carries the member's whole state after the change (role and status) and a
`sequence` that increases with every change of that member. A consumer keeps, per member, the
state with the highest sequence: redelivered and reordered events converge to the same state.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from .envelope import TEXT_PATTERN, Body, Event, Identifier, NonNegativeInt64, UtcDatetime


class MemberRole(StrEnum):
    OWNER = "owner"
    """May change the plan, cancel and reactivate (R3)."""
    ADMIN = "admin"
    MEMBER = "member"


class MemberStatus(StrEnum):
    ACTIVE = "active"
    """Takes a seat (R10)."""
    DEACTIVATED = "deactivated"
    REMOVED = "removed"


class OrganisationCreated(Body):
    name: Annotated[str, Field(max_length=200, pattern=TEXT_PATTERN)] | None = None
    created_at: UtcDatetime
    """When the organisation was created: Free renews monthly from this day."""


class OrganisationCreatedV1(Event):
    type: Literal["workspace_organisation.created.v1"]
    data: OrganisationCreated


class MemberState(Body):
    member_id: Identifier
    role: MemberRole
    status: MemberStatus
    sequence: NonNegativeInt64
    """Increases with every change of this member; the highest one is the member's state."""


_EXPECTED_STATUS: dict[str, MemberStatus] = {
    "workspace_member.joined.v1": MemberStatus.ACTIVE,
    "workspace_member.reactivated.v1": MemberStatus.ACTIVE,
    "workspace_member.deactivated.v1": MemberStatus.DEACTIVATED,
    "workspace_member.removed.v1": MemberStatus.REMOVED,
}


class MemberEvent(Event):
    """Base of the member events: the member's whole state after the change."""

    data: MemberState

    @model_validator(mode="after")
    def _status_matches_the_event(self) -> Self:
        expected = _EXPECTED_STATUS.get(self.type)
        if expected is not None and self.data.status is not expected:
            raise ValueError(f"{self.type} must carry status {expected.value!r}")
        return self


class MemberJoinedV1(MemberEvent):
    type: Literal["workspace_member.joined.v1"]


class MemberRoleChangedV1(MemberEvent):
    type: Literal["workspace_member.role_changed.v1"]


class MemberDeactivatedV1(MemberEvent):
    type: Literal["workspace_member.deactivated.v1"]


class MemberReactivatedV1(MemberEvent):
    type: Literal["workspace_member.reactivated.v1"]


class MemberRemovedV1(MemberEvent):
    type: Literal["workspace_member.removed.v1"]


MEMBER_EVENTS: tuple[type[MemberEvent], ...] = (
    MemberJoinedV1,
    MemberRoleChangedV1,
    MemberDeactivatedV1,
    MemberReactivatedV1,
    MemberRemovedV1,
)
MEMBER_TYPES = frozenset(kind.type_name for kind in MEMBER_EVENTS)


def split_directory(
    events: Iterable[Event],
) -> tuple[list[OrganisationCreatedV1], list[MemberEvent]]:
    """The directory's events as (organisations created, member events), each in order."""
    created: list[OrganisationCreatedV1] = []
    members: list[MemberEvent] = []
    for event in events:
        if event.type == OrganisationCreatedV1.type_name:
            created.append(event)  # type: ignore[arg-type]
        elif event.type in MEMBER_TYPES:
            members.append(event)  # type: ignore[arg-type]
    return created, members
