"""Wiring: the seat service on the shared kernel (`shared.service`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from shared.service import Kernel, Service
from shared.topics import SUBSCRIPTION_STATE, WORKSPACE_MEMBERS

from . import PRODUCER
from .handlers import http
from .service import Seats
from .settings import SeatSettings


@dataclass(frozen=True)
class Parts:
    """What the HTTP handlers use (`request.app.state.parts`)."""

    seats: Seats


async def build(kernel: Kernel[SeatSettings]) -> Parts:
    settings = kernel.settings
    seats = Seats(
        kernel.pool,
        kernel.clock,
        topic_prefix=settings.topic_prefix,
        default_limit=settings.default_seat_limit,
        coalesce=timedelta(seconds=settings.quantity_coalesce_seconds),
    )
    kernel.consume(
        WORKSPACE_MEMBERS,
        "directory",
        seats.on_directory,
        lanes=2,
        max_records=5000,
        fetch_bytes=4 * 1024 * 1024,
        description="Members (the newest state of each) and the seat count of each organisation.",
    )
    kernel.consume(
        SUBSCRIPTION_STATE,
        "subscriptions",
        seats.on_subscriptions,
        max_records=1000,
        description="Each organisation's plan: its seat limit, and whether it pays per seat.",
    )
    kernel.periodic(
        "quantity-sync",
        lambda: seats.send_due_quantities(settings.quantity_batch),
        settings.quantity_poll_seconds,
        batch=settings.quantity_batch,
    )
    kernel.due(
        "seat quantities",
        lambda: kernel.pool.fetchval("SELECT min(due_at) FROM quantity_syncs WHERE pending"),
    )
    return Parts(seats)


SERVICE = Service(
    name=PRODUCER,
    module="services.seats",
    title="Seats",
    summary="Active members, seat limits, the seat check and the seat quantity in Stripe.",
    settings=SeatSettings,
    migrations=Path(__file__).parent / "migrations",
    build=build,
    routers=(http.router,),
    hot_routes=(http.HOT_SEAT_CHECK,),
    directory=True,
)
