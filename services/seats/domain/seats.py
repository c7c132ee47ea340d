"""Seats (R10) and who may act (R3), as pure rules: no I/O, no clock.

Members. The member directory sends each member's whole state with a per-member `sequence`;
the state with the highest sequence wins, whatever the order and however often events come.
An active member takes one seat; a deactivated or removed one takes none.

Limits. The limit is the current plan's (from the subscription service's events, newest
revision wins), None meaning unlimited. Until the subscription service has reported a plan, the
default limit applies (Free's). A downgrade can bring the limit below the count: nobody is
removed, the organisation is *over its limit*, and adding a member is refused until enough
members have left (`check`).

Quantity. An organisation billed through Stripe pays per seat: every change of its count asks
for a quantity update, `max(seats, 1)` (Stripe refuses 0), tagged with the organisation's
revision so that an older count never overwrites a newer one. Requests are coalesced: the first
change opens a window; changes within it only move the wanted quantity; at the window's end
one command goes out with the count of that moment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from shared.events.members import MemberRole, MemberStatus
from shared.events.subscriptions import Plan


@dataclass(frozen=True, slots=True)
class MemberState:
    organisation_id: str
    member_id: str
    role: MemberRole
    status: MemberStatus
    sequence: int

    @property
    def key(self) -> tuple[str, str]:
        return self.organisation_id, self.member_id

    @property
    def seated(self) -> bool:
        return self.status is MemberStatus.ACTIVE

    @property
    def acting_owner(self) -> bool:
        return self.seated and self.role is MemberRole.OWNER


def newest(changes: Iterable[MemberState]) -> dict[tuple[str, str], MemberState]:
    """Per member, the change with the highest sequence (the first of equal ones)."""
    found: dict[tuple[str, str], MemberState] = {}
    for change in changes:
        key = (change.organisation_id, change.member_id)
        known = found.get(key)
        if known is None or change.sequence > known.sequence:
            found[key] = change
    return found


@dataclass(frozen=True, slots=True)
class Billing:
    """What the subscription service last said about the organisation's plan."""

    plan: Plan
    seat_limit: int | None
    stripe_subscription_id: str | None
    revision: int

    @property
    def per_seat_in_stripe(self) -> bool:
        """Paid per seat through a Stripe subscription (Pro, Max; Enterprise if billed so)."""
        return self.plan is not Plan.FREE and self.stripe_subscription_id is not None


@dataclass(frozen=True, slots=True)
class Organisation:
    organisation_id: str
    seats: int = 0
    owners: tuple[str, ...] = ()
    billing: Billing | None = None
    revision: int = 0
    """Increases with every announced change (the seat events' and quantity commands')."""

    def limit(self, default_limit: int | None) -> int | None:
        return self.billing.seat_limit if self.billing is not None else default_limit

    def plan(self) -> Plan | None:
        return self.billing.plan if self.billing is not None else None


@dataclass(frozen=True, slots=True)
class Count:
    """What the billing page and the seat events show."""

    plan: Plan | None
    seats_used: int
    seat_limit: int | None
    available: int | None
    over_limit: bool
    owners: tuple[str, ...]
    revision: int


def count(org: Organisation, default_limit: int | None) -> Count:
    limit = org.limit(default_limit)
    return Count(
        plan=org.plan(),
        seats_used=org.seats,
        seat_limit=limit,
        available=None if limit is None else max(0, limit - org.seats),
        over_limit=limit is not None and org.seats > limit,
        owners=org.owners,
        revision=org.revision,
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str | None
    """`seat_limit_reached` when refused; `already_seated` when the member is active already
    (no new seat is needed)."""
    count: Count


def check(
    org: Organisation, default_limit: int | None, member: MemberState | None = None
) -> Verdict:
    """May one more active member be added (an invitation, a reactivation)? A member who is
    active already takes no new seat. Refused at the limit, and while over it."""
    counted = count(org, default_limit)
    if member is not None and member.seated:
        return Verdict(True, "already_seated", counted)
    if counted.seat_limit is not None and counted.seats_used >= counted.seat_limit:
        return Verdict(False, "seat_limit_reached", counted)
    return Verdict(True, None, counted)


@dataclass(frozen=True, slots=True)
class Projected:
    """A batch of member changes applied to the organisations they touch."""

    members: list[MemberState]
    """The changes that are newer than what was known (to store)."""
    organisations: dict[str, Organisation]
    """Every touched organisation, after the batch."""
    changed: list[str]
    """Organisations whose count or owners changed, or that became known (revision bumped),
    sorted."""


def project(
    latest: dict[tuple[str, str], MemberState],
    known_members: dict[tuple[str, str], MemberState],
    organisations: dict[str, Organisation],
) -> Projected:
    """Apply a batch's newest change per member (`newest`): a change wins over the stored state
    if its sequence is higher. Organisations missing from `organisations` start empty; one
    never announced (revision 0) counts as changed (it becomes known)."""
    winners: list[tuple[MemberState, MemberState | None]] = []
    for key, change in latest.items():
        before = known_members.get(key)
        if before is None or change.sequence > before.sequence:
            winners.append((change, before))
    seats: dict[str, int] = {}
    owners: dict[str, set[str]] = {}
    for change, before in winners:
        org = organisations.get(change.organisation_id)
        if org is None:
            org = organisations[change.organisation_id] = Organisation(change.organisation_id)
        was_seated = before is not None and before.seated
        seats[org.organisation_id] = (
            seats.get(org.organisation_id, org.seats) + change.seated - was_seated
        )
        held = owners.setdefault(org.organisation_id, set(org.owners))
        if change.acting_owner:
            held.add(change.member_id)
        else:
            held.discard(change.member_id)
    after = dict(organisations)
    changed = []
    for organisation_id in sorted(seats):
        org = organisations[organisation_id]
        count, holders = seats[organisation_id], tuple(sorted(owners[organisation_id]))
        if org.revision == 0 or (count, holders) != (org.seats, org.owners):
            after[organisation_id] = Organisation(
                organisation_id, count, holders, org.billing, org.revision + 1
            )
            changed.append(organisation_id)
    return Projected([change for change, _ in winners], after, changed)


def follow_plan(org: Organisation, billing: Billing) -> Organisation | None:
    """The organisation under a newer subscription state; None if `billing` is not newer or
    changes nothing that seats depend on."""
    known = org.billing
    if known is not None and billing.revision <= known.revision:
        return None
    if known is not None and (
        known.plan,
        known.seat_limit,
        known.stripe_subscription_id,
    ) == (billing.plan, billing.seat_limit, billing.stripe_subscription_id):
        return replace(org, billing=billing)
    return replace(org, billing=billing, revision=org.revision + 1)


@dataclass(frozen=True, slots=True)
class QuantitySync:
    """The quantity Stripe should have for the organisation, and when to tell it."""

    quantity: int
    revision: int
    due_at: datetime


def quantity_changed(before: Organisation | None, after: Organisation) -> bool:
    """Whether Stripe's quantity may have to change: the organisation became paid per seat in
    Stripe (a new subscription), or its count changed while it is."""
    if after.billing is None or not after.billing.per_seat_in_stripe:
        return False
    if before is None or before.billing is None or not before.billing.per_seat_in_stripe:
        return True
    return (
        before.seats != after.seats
        or before.billing.stripe_subscription_id != after.billing.stripe_subscription_id
    )


def quantity_due(
    org: Organisation, pending: QuantitySync | None, now: datetime, window: timedelta
) -> QuantitySync | None:
    """After a change of `org`: the quantity to send (coalesced into a pending one, keeping
    its due time), or None if the organisation is not paid per seat in Stripe."""
    if org.billing is None or not org.billing.per_seat_in_stripe:
        return None
    due = pending.due_at if pending is not None else now + window
    return QuantitySync(max(org.seats, 1), org.revision, due)
