"""Fixtures for the subscription service: it runs with the services it works with, real and
on the same broker and database, each in its own schema: metering (which turns its grants into
credits) and the Stripe gateway with devstripe (Checkout), once per test module. The
subscription service and metering share an injected clock, so that renewals are testable;
every test starts at the same instant."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import httpx
import orjson
import pytest
import pytest_asyncio

from services.metering.app import SERVICE as METERING
from services.metering.settings import MeteringSettings
from services.stripe_gateway.devstripe import Devstripe
from services.stripe_gateway.settings import StripeGatewaySettings
from services.subscriptions.app import SERVICE
from services.subscriptions.service import Subscriptions
from services.subscriptions.settings import SubscriptionSettings
from shared import identity
from shared.clock import FrozenClock
from shared.events import Event
from shared.events.members import (
    MemberJoinedV1,
    MemberRole,
    MemberRoleChangedV1,
    MemberState,
    MemberStatus,
    OrganisationCreated,
    OrganisationCreatedV1,
)
from shared.identity import IDENTITY_HEADER
from shared.service import Kernel
from shared.testing import eventually, read_topic
from shared.testing.plugin import Infrastructure, Isolation
from shared.testing.service import Publishing, running_service
from shared.topics import (
    CREDIT_GRANT_REQUESTS,
    STRIPE_EVENTS,
    SUBSCRIPTION_STATE,
    WORKSPACE_MEMBERS,
)
from tests.stripe_gateway.conftest import GatewayHarness, running_gateway

OWNER, ADMIN, MEMBER = "member_owner", "member_admin", "member_plain"


def settings_of(kind: type, env: dict[str, str]) -> Any:
    with mock.patch.dict(os.environ, env):
        return kind()


@dataclass
class Billing(Publishing):
    """The subscription service, with metering and the Stripe gateway beside it."""

    kernel: Kernel[SubscriptionSettings]
    http: httpx.AsyncClient
    metering: httpx.AsyncClient
    gateway: GatewayHarness
    settings: SubscriptionSettings
    clock: FrozenClock

    @property
    def service(self) -> Subscriptions:
        return self.kernel.parts.subscriptions

    def directory(self, kind: type[Event], organisation: str, data: Any) -> Event:
        return kind.new(
            organisation_id=organisation,
            producer="member-directory",
            occurred_at=self.clock.now(),
            data=data,
        )

    async def organisation(self, organisation: str, created_at: datetime | None = None) -> dict:
        """A new organisation with an owner, an admin and a member; waits for its Free credits."""
        created = created_at or self.clock.now()
        await self.publish(
            WORKSPACE_MEMBERS,
            self.directory(
                OrganisationCreatedV1,
                organisation,
                OrganisationCreated(name="Test", created_at=created),
            ),
            *(
                self.directory(
                    MemberJoinedV1,
                    organisation,
                    MemberState(member_id=m, role=r, status=MemberStatus.ACTIVE, sequence=1),
                )
                for m, r in (
                    (OWNER, MemberRole.OWNER),
                    (ADMIN, MemberRole.ADMIN),
                    (MEMBER, MemberRole.MEMBER),
                )
            ),
        )
        return await self.credits(organisation, balance=1000)

    async def promote(
        self, organisation: str, member: str, role: MemberRole, sequence: int
    ) -> None:
        await self.publish(
            WORKSPACE_MEMBERS,
            self.directory(
                MemberRoleChangedV1,
                organisation,
                MemberState(
                    member_id=member, role=role, status=MemberStatus.ACTIVE, sequence=sequence
                ),
            ),
        )

    def acting(self, organisation: str, member: str | None = OWNER) -> dict[str, str]:
        """The front proxy's header: `member`'s signed identity (none for None)."""
        if member is None:
            return {}
        return {IDENTITY_HEADER: identity.sign(organisation, member, self.clock.now())}

    async def subscription(self, organisation: str, **expected: object) -> dict:
        async def matches() -> dict | None:
            response = await self.http.get(f"/v1/organisations/{organisation}/subscription")
            found = response.json() if response.status_code == 200 else None
            if found and all(found.get(k) == v for k, v in expected.items()):
                return found
            return None

        return await eventually(matches, what=f"{organisation} subscription {expected}")

    async def credits(self, organisation: str, **expected: object) -> dict:
        async def matches() -> dict | None:
            response = await self.metering.get(f"/v1/organisations/{organisation}/credits")
            found = response.json() if response.status_code == 200 else None
            if found and all(found.get(k) == v for k, v in expected.items()):
                return found
            return None

        return await eventually(matches, what=f"{organisation} credits {expected}")

    async def grants(self, organisation: str) -> list[tuple[str, int, str]]:
        """(reason, amount, period key) of the grant requests published for the organisation."""
        records = await read_topic(self.bootstrap, self.topic(CREDIT_GRANT_REQUESTS))
        found = [orjson.loads(r.value) for r in records if r.key == organisation.encode()]
        return [(g["data"]["reason"], g["data"]["amount"], g["data"]["period_key"]) for g in found]

    async def changes(self, organisation: str) -> list[str]:
        records = await read_topic(self.bootstrap, self.topic(SUBSCRIPTION_STATE))
        return [
            orjson.loads(r.value)["data"]["change"]
            for r in records
            if r.key == organisation.encode()
        ]

    async def stripe(self, kind: type[Event], organisation: str, data: Any) -> None:
        """Publish what the gateway would report."""
        await self.publish(
            STRIPE_EVENTS,
            kind.new(
                organisation_id=organisation,
                producer="stripe-gateway",
                occurred_at=datetime.now(UTC),
                data=data,
            ),
        )


START = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture(autouse=True)
def from_the_start(clock: FrozenClock) -> None:
    """Every test starts at `START` (the services run once per module; each test has
    organisations of its own, so another test's later instants change nothing for it)."""
    clock.set(START)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def billing(
    infrastructure: Infrastructure,
    module_isolation: Isolation,
    devstripe: Devstripe,
    clock: FrozenClock,
) -> AsyncIterator[Billing]:
    """The services, once per module; its tests run in the module's event loop
    (`pytestmark = pytest.mark.asyncio(loop_scope="module")`)."""
    isolation = module_isolation
    common = isolation.env(infrastructure, SERVICE.env_prefix)
    gateway_settings = settings_of(
        StripeGatewaySettings,
        {
            **common,
            "STRIPE_GATEWAY_DB_SCHEMA": isolation.schema_for("gateway"),
            "STRIPE_GATEWAY_API_BASE": devstripe.url,
        },
    )
    metering_settings = settings_of(
        MeteringSettings, {**common, "METERING_DB_SCHEMA": isolation.schema_for("metering")}
    )
    async with (
        running_gateway(gateway_settings, devstripe) as gateway,
        running_service(METERING, metering_settings, clock) as (_, metering),
    ):
        settings = settings_of(
            SubscriptionSettings,
            {
                **common,
                "SUBSCRIPTIONS_GATEWAY_URL": gateway.url,
                "SUBSCRIPTIONS_RENEWAL_POLL_SECONDS": "0.2",
            },
        )
        async with running_service(SERVICE, settings, clock) as (kernel, http):
            yield Billing(kernel, http, metering, gateway, settings, clock)
