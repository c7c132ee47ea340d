"""Stand-in for the workspace's member directory (another team's system), for development:
publishes the `workspace.members` contract the way that system does.

  billing org-created org_acme --owner member_ada           # an organisation and its owner
  billing member org_acme member_bob joined --role member  # a member joins
  billing member org_acme member_bob deactivated           # ... leaves their seat
  billing identity org_acme member_ada                     # the front proxy's signed identity

`identity` signs with the development key, which services accept on loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

from shared import identity
from shared.events import Event
from shared.events.members import (
    MemberDeactivatedV1,
    MemberJoinedV1,
    MemberReactivatedV1,
    MemberRemovedV1,
    MemberRole,
    MemberRoleChangedV1,
    MemberState,
    MemberStatus,
    OrganisationCreated,
    OrganisationCreatedV1,
)

from .client import PRODUCER, CliSettings, publish, stack_now

CHANGES: dict[str, tuple[type[Event], MemberStatus]] = {
    "joined": (MemberJoinedV1, MemberStatus.ACTIVE),
    "role_changed": (MemberRoleChangedV1, MemberStatus.ACTIVE),
    "deactivated": (MemberDeactivatedV1, MemberStatus.DEACTIVATED),
    "reactivated": (MemberReactivatedV1, MemberStatus.ACTIVE),
    "removed": (MemberRemovedV1, MemberStatus.REMOVED),
}


def _sequence() -> int:
    """Microseconds since the epoch: increases with every command run on one machine."""
    return time.time_ns() // 1000


def member_event(
    organisation: str, member: str, change: str, role: MemberRole, now: datetime
) -> Event:
    kind, status = CHANGES[change]
    return kind.new(
        organisation_id=organisation,
        producer=PRODUCER,
        occurred_at=now,
        data=MemberState(member_id=member, role=role, status=status, sequence=_sequence()),
    )


def org_created(args: argparse.Namespace) -> int:
    now = stack_now()
    events: list[Event] = [
        OrganisationCreatedV1.new(
            organisation_id=args.organisation,
            producer=PRODUCER,
            occurred_at=now,
            data=OrganisationCreated(name=args.name, created_at=now),
        )
    ]
    if args.owner:
        events.append(member_event(args.organisation, args.owner, "joined", MemberRole.OWNER, now))
    asyncio.run(publish(CliSettings(), events))
    print(f"published {', '.join(e.type for e in events)} for {args.organisation}")
    return 0


def member(args: argparse.Namespace) -> int:
    event = member_event(
        args.organisation, args.member, args.change, MemberRole(args.role), stack_now()
    )
    asyncio.run(publish(CliSettings(), [event]))
    print(f"published {event.type} for {args.member} of {args.organisation}")
    return 0


def signed_identity(args: argparse.Namespace) -> int:
    lifetime = timedelta(minutes=args.minutes)
    print(identity.sign(args.organisation, args.member, stack_now(), lifetime=lifetime))
    return 0


def register(commands: Any) -> None:
    p = commands.add_parser(
        "org-created", help="publish an organisation's creation (as the member directory does)"
    )
    p.add_argument("organisation")
    p.add_argument("--name")
    p.add_argument("--owner", help="a first member, the owner")
    p.set_defaults(run=org_created)

    p = commands.add_parser(
        "member", help="publish a member's change (as the member directory does)"
    )
    p.add_argument("organisation")
    p.add_argument("member")
    p.add_argument("change", choices=sorted(CHANGES))
    p.add_argument("--role", choices=[r.value for r in MemberRole], default="member")
    p.set_defaults(run=member)

    p = commands.add_parser(
        "identity",
        help="print a member's signed identity (development key), as the front proxy sends it "
        f"in {identity.IDENTITY_HEADER}",
    )
    p.add_argument("organisation")
    p.add_argument("member")
    p.add_argument("--minutes", type=int, default=60, help="valid for (default 60)")
    p.set_defaults(run=signed_identity)
