"""The seat service against the real broker and database, with an injected clock. The member
directory and the subscription service are played by publishing their events (their contracts,
`workspace.members` and `subscriptions.state`)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import httpx
import orjson
import pytest_asyncio

from services.seats.app import SERVICE
from services.seats.service import Seats
from services.seats.settings import SeatSettings
from shared.clock import FrozenClock
from shared.events import Event
from shared.events.members import (
    MemberJoinedV1,
    MemberRole,
    MemberState,
    MemberStatus,
)
from shared.events.subscriptions import (
    Plan,
    SubscriptionChange,
    SubscriptionChangedV1,
    SubscriptionState,
)
from shared.service import Kernel
from shared.testing import eventually, read_topic
from shared.testing.plugin import Infrastructure, Isolation
from shared.testing.service import Publishing, running_service
from shared.topics import (
    SEATS_STATE,
    STRIPE_COMMANDS,
    SUBSCRIPTION_STATE,
    WORKSPACE_MEMBERS,
)

START = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)


@dataclass
class SeatHarness(Publishing):
    kernel: Kernel[SeatSettings]
    http: httpx.AsyncClient
    settings: SeatSettings
    clock: FrozenClock

    @property
    def service(self) -> Seats:
        return self.kernel.parts.seats

    def member_event(
        self,
        kind: type[Event],
        organisation: str,
        member: str,
        sequence: int,
        *,
        role: MemberRole = MemberRole.MEMBER,
        status: MemberStatus = MemberStatus.ACTIVE,
    ) -> Event:
        return kind.new(
            organisation_id=organisation,
            producer="member-directory",
            occurred_at=self.clock.now(),
            data=MemberState(member_id=member, role=role, status=status, sequence=sequence),
        )

    async def join(
        self, organisation: str, *members: str, role: MemberRole = MemberRole.MEMBER
    ) -> None:
        await self.publish(
            WORKSPACE_MEMBERS,
            *(self.member_event(MemberJoinedV1, organisation, m, 1, role=role) for m in members),
        )

    async def plan(
        self,
        organisation: str,
        plan: Plan,
        seat_limit: int | None,
        revision: int,
        stripe_subscription_id: str | None = None,
    ) -> None:
        """What the subscription service announces."""
        await self.publish(
            SUBSCRIPTION_STATE,
            SubscriptionChangedV1.new(
                organisation_id=organisation,
                producer="subscriptions",
                occurred_at=self.clock.now(),
                data=SubscriptionState(
                    plan=plan,
                    cycle=None if plan is Plan.FREE else "monthly",
                    standing="active",
                    monthly_credits=1000,
                    seat_limit=seat_limit,
                    features=(),
                    credit_period_start=START,
                    credit_period_end=datetime(2026, 12, 15, 12, 0, tzinfo=UTC),
                    paid_period_end=None,
                    cancel_at_period_end=False,
                    pending_plan=None,
                    pending_cycle=None,
                    stripe_subscription_id=stripe_subscription_id,
                    revision=revision,
                    change=SubscriptionChange.PLAN_CHANGED,
                ),
            ),
        )

    async def seats(self, organisation: str, **expected: object) -> dict:
        async def matches() -> dict | None:
            response = await self.http.get(f"/v1/organisations/{organisation}/seats")
            found = response.json() if response.status_code == 200 else None
            if found and all(found.get(k) == v for k, v in expected.items()):
                return found
            return None

        return await eventually(matches, what=f"{organisation} seats {expected}")

    async def check(self, organisation: str, member: str | None = None) -> dict:
        params = {"member_id": member} if member else None
        response = await self.http.get(
            f"/v1/organisations/{organisation}/seat-check", params=params
        )
        assert response.status_code == 200, response.text
        return response.json()

    async def announced(self, organisation: str) -> list[dict]:
        records = await read_topic(self.bootstrap, self.topic(SEATS_STATE))
        return [orjson.loads(r.value)["data"] for r in records if r.key == organisation.encode()]

    async def quantity_commands(self, organisation: str) -> list[dict]:
        records = await read_topic(self.bootstrap, self.topic(STRIPE_COMMANDS))
        return [orjson.loads(r.value) for r in records if r.key == organisation.encode()]


def settings_of(env: dict[str, str]) -> Any:
    with mock.patch.dict(os.environ, env):
        return SeatSettings()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def seats(
    infrastructure: Infrastructure, module_isolation: Isolation
) -> AsyncIterator[SeatHarness]:
    """The seat service, once per module (its tests use organisations of their own; the clock
    only moves forward)."""
    clock = FrozenClock(START)
    settings = settings_of(
        {
            **module_isolation.env(infrastructure, SERVICE.env_prefix),
            "SEATS_QUANTITY_POLL_SECONDS": "0.1",
        }
    )
    async with running_service(SERVICE, settings, clock) as (kernel, http):
        yield SeatHarness(kernel, http, settings, clock)
