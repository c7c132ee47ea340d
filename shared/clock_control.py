"""Moving the stack's clock (`billing clock`), for development and tests only.

A service started with `CLOCK_CONTROL=true` (refused unless it listens on loopback) runs on a
`MovableClock`, whose offset it keeps in its own schema (table `clock`: a restart keeps the
stack's now). Its kernel then answers `GET /v1/clock` (now, when its next scheduled work falls
due, whether it is idle) and `POST /v1/clock {"to": …}` (forward only), and wakes its
scheduled tasks when moved. Without it, `GET /v1/clock` answers `movable: false` and
`POST /v1/clock` 409 `clock-not-movable`.

Idle means: nothing it announces waits in its outbox, its consumers have read what their
partitions hold, and none of its scheduled work is due at the clock's now.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Protocol

import asyncpg
from fastapi import APIRouter, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict

from shared.access import EVERY_SCOPE, Scope, allow
from shared.clock import Clock, MovableClock
from shared.db import Migrations
from shared.http import PROBLEM_RESPONSES, Problem


class Runtime(Protocol):
    """What the clock routes need of a running service (`shared.service.Kernel`)."""

    clock: Clock

    async def due_and_waiting(self, now: datetime) -> tuple[datetime | None, list[str]]: ...

    async def move_clock(self, to: datetime) -> None: ...


MIGRATIONS = Migrations("clock", Path(__file__).parent / "migrations" / "clock")


async def load(db: asyncpg.Pool | asyncpg.Connection) -> timedelta:
    found = await db.fetchval("SELECT offset_us FROM clock")
    return timedelta(microseconds=found or 0)


async def save(db: asyncpg.Pool | asyncpg.Connection, offset: timedelta, now: datetime) -> None:
    await db.execute(
        """INSERT INTO clock (one, offset_us, moved_at) VALUES (true, $1, $2)
           ON CONFLICT (one) DO UPDATE SET offset_us = greatest(clock.offset_us, $1),
                                          moved_at = excluded.moved_at""",
        offset // timedelta(microseconds=1),
        now,
    )


class ClockOut(BaseModel):
    now: datetime
    movable: bool
    offset_seconds: float
    next_due: datetime | None
    """When this service's next scheduled work falls due (renewals, expiries, retries)."""
    idle: bool
    waiting: list[str]
    """What keeps it from being idle."""


class MoveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: AwareDatetime
    """The new now: later than the clock's now."""


router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)


def _kernel(request: Request) -> Runtime:
    return request.app.state.runtime


async def _state(kernel: Runtime) -> ClockOut:
    clock = kernel.clock
    now = clock.now()
    next_due, waiting = await kernel.due_and_waiting(now)
    return ClockOut(
        now=now,
        movable=isinstance(clock, MovableClock),
        offset_seconds=clock.offset.total_seconds() if isinstance(clock, MovableClock) else 0.0,
        next_due=next_due,
        idle=not waiting,
        waiting=waiting,
    )


@router.get("/clock", dependencies=[allow(*EVERY_SCOPE)], response_model=ClockOut, tags=["clock"])
async def read_clock(request: Request) -> ClockOut:
    """The service's now, its next scheduled work, and whether it is idle."""
    return await _state(_kernel(request))


@router.post(
    "/clock",
    dependencies=[allow(Scope.OPERATOR)],
    response_model=ClockOut,
    tags=["clock"],
    responses={409: {"description": "The clock cannot be moved here, or not backwards"}},
)
async def move_clock(body: Annotated[MoveIn, ...], request: Request) -> ClockOut:
    """Move the service's clock forward (development and tests: `CLOCK_CONTROL`). Its
    scheduled work wakes at once; answer `idle` once it has run (poll `GET /v1/clock`)."""
    kernel = _kernel(request)
    if not isinstance(kernel.clock, MovableClock):
        raise Problem(
            409,
            "clock-not-movable",
            "This service's clock cannot be moved",
            "Start it with CLOCK_CONTROL=true (development and tests only; on loopback).",
        )
    try:
        await kernel.move_clock(body.to)
    except ValueError as exc:
        raise Problem(409, "clock-backwards", "The clock only moves forward", str(exc)) from None
    return await _state(kernel)
