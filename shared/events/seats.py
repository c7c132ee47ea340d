"""The seat service's announcements (`seats.state`, keyed by organisation): every change of an
organisation's seats (R10), with the whole count. `revision` increases with every change; a
consumer keeps the newest revision per organisation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .envelope import INT32_MAX, Body, Count, Event, Identifier, NonNegativeInt64
from .subscriptions import Plan


class SeatCount(Body):
    plan: Plan | None
    """The plan the limit comes from; None until the subscription service has reported one
    (the default limit, Free's, applies meanwhile)."""
    seats_used: Count
    """Active members: each takes one seat (R10)."""
    seat_limit: Annotated[int, Field(ge=1, le=INT32_MAX)] | None
    """None: unlimited."""
    available: Count | None
    """Seats left before the limit; None when unlimited."""
    over_limit: bool
    """More active members than the limit (after a downgrade): nobody is removed, new members
    are refused until the count is back within the limit."""
    owners: Annotated[tuple[Identifier, ...], Field(max_length=10_000)]
    """Active owners (R3), sorted."""
    revision: NonNegativeInt64


class SeatsChangedV1(Event):
    type: Literal["seats.changed.v1"]
    data: SeatCount
