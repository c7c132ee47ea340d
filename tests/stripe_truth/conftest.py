"""A stack for what happens at the seams between Stripe and us: devstripe (Stripe, with its
disorder on delivery when asked), the Stripe gateway serving webhooks on a real port, the
subscription service and the seat service, all real, on the real broker and database, started
once per test module and restartable in the middle of a test. Tests tell their data apart by
organisation. Owners act through the subscription service's HTTP API; members join through
the member directory's topic; Stripe is changed behind our back through devstripe."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import httpx
import orjson
import pytest
import pytest_asyncio

from services.seats.app import SERVICE as SEATS
from services.seats.settings import SeatSettings
from services.stripe_gateway.devstripe import Devstripe
from services.stripe_gateway.settings import DEV_WEBHOOK_SECRET
from services.subscriptions.app import SERVICE as SUBSCRIPTIONS
from services.subscriptions.settings import SubscriptionSettings
from shared import identity
from shared.clock import SystemClock
from shared.devstack import free_port
from shared.events import Event
from shared.events.members import (
    MemberDeactivatedV1,
    MemberJoinedV1,
    MemberRole,
    MemberState,
    MemberStatus,
    OrganisationCreated,
    OrganisationCreatedV1,
)
from shared.identity import IDENTITY_HEADER
from shared.testing import eventually, read_topic
from shared.testing.plugin import Infrastructure, Isolation
from shared.testing.service import Publishing, running_service
from shared.topics import BILLING_OPERATIONS, STRIPE_EVENTS, WORKSPACE_MEMBERS, TopicSpec
from tests.stripe_gateway.conftest import GatewayHarness, env_for, running_gateway, settings_from

OWNER = "member_owner"


def settings_of(kind: type, env: dict[str, str]) -> Any:
    with mock.patch.dict(os.environ, env):
        return kind()


@dataclass
class Stack(Publishing):
    """Devstripe, the gateway, subscriptions and seats; `restart_*` stop and start one."""

    devstripe: Devstripe
    infrastructure: Infrastructure
    isolation: Isolation
    exits: contextlib.AsyncExitStack
    gateway_port: int = field(default_factory=free_port)
    endpoint: str = field(default_factory=lambda: f"stack-{uuid.uuid4().hex[:8]}")
    gateway: GatewayHarness | None = None
    subscriptions: httpx.AsyncClient | None = None
    subscriptions_kernel: Any = None
    seats: httpx.AsyncClient | None = None
    seats_kernel: Any = None
    _gateway_cm: Any = None
    _subscriptions_cm: Any = None
    gateway_env: dict[str, str] = field(default_factory=dict)
    subscriptions_env: dict[str, str] = field(default_factory=dict)

    @property
    def settings(self) -> Any:  # for Publishing: the shared broker and topic prefix
        return self.gateway.settings  # type: ignore[union-attr]

    # Starting and restarting -------------------------------------------------------------

    async def start_gateway(self) -> None:
        settings = settings_from(
            {**env_for(self.infrastructure, self.isolation, self.devstripe), **self.gateway_env}
        )
        self._gateway_cm = running_gateway(
            settings, self.devstripe, port=self.gateway_port, name=self.endpoint
        )
        self.gateway = await self._gateway_cm.__aenter__()

    async def stop_gateway(self) -> None:
        cm, self._gateway_cm = self._gateway_cm, None
        if cm is not None:
            await cm.__aexit__(None, None, None)

    async def restart_gateway(self) -> None:
        await self.stop_gateway()
        await self.start_gateway()

    async def start_subscriptions(self, **extra: str) -> None:
        env = {
            **self.isolation.env(self.infrastructure, SUBSCRIPTIONS.env_prefix),
            "SUBSCRIPTIONS_DB_SCHEMA": self.isolation.schema_for("subscriptions"),
            "SUBSCRIPTIONS_GATEWAY_URL": f"http://127.0.0.1:{self.gateway_port}",
            "SUBSCRIPTIONS_RECONCILE_SECONDS": "0",
            "SUBSCRIPTIONS_RECONCILE_GRACE_SECONDS": "0",
            **self.subscriptions_env,
            **extra,
        }
        self._subscriptions_cm = running_service(
            SUBSCRIPTIONS, settings_of(SubscriptionSettings, env), SystemClock()
        )
        self.subscriptions_kernel, self.subscriptions = await self._subscriptions_cm.__aenter__()

    async def stop_subscriptions(self) -> None:
        cm, self._subscriptions_cm = self._subscriptions_cm, None
        if cm is not None:
            await cm.__aexit__(None, None, None)

    async def restart_subscriptions(self, **extra: str) -> None:
        await self.stop_subscriptions()
        await self.start_subscriptions(**extra)

    # Acting as the others do -------------------------------------------------------------

    def directory(self, kind: type[Event], organisation: str, data: Any) -> Event:
        return kind.new(
            organisation_id=organisation,
            producer="member-directory",
            occurred_at=datetime.now(UTC),
            data=data,
        )

    async def organisation(self, members: int = 0) -> str:
        """A new organisation with its owner (and `members` more), on Free."""
        org = f"org_{uuid.uuid4().hex[:12]}"
        await self.publish(
            WORKSPACE_MEMBERS,
            self.directory(
                OrganisationCreatedV1, org, OrganisationCreated(created_at=datetime.now(UTC))
            ),
            *(
                self.member(org, member, MemberRole.OWNER if n == 0 else MemberRole.MEMBER, 1)
                for n, member in enumerate([OWNER] + [f"member_{i}" for i in range(members)])
            ),
        )
        await self.subscription(org, plan="free")
        return org

    def member(
        self, org: str, member: str, role: MemberRole, sequence: int, active: bool = True
    ) -> Event:
        kind = MemberJoinedV1 if active else MemberDeactivatedV1
        return self.directory(
            kind,
            org,
            MemberState(
                member_id=member,
                role=role,
                status=MemberStatus.ACTIVE if active else MemberStatus.DEACTIVATED,
                sequence=sequence,
            ),
        )

    def acting(self, org: str, member: str = OWNER) -> dict[str, str]:
        return {IDENTITY_HEADER: identity.sign(org, member, SystemClock().now())}

    async def owner(self, org: str, action: str, body: dict | None = None) -> httpx.Response:
        """An owner's request: `change`, `cancel` or `reactivate`."""
        return await self.subscriptions.post(  # type: ignore[union-attr]
            f"/v1/subscription/{action}", json=body, headers=self.acting(org)
        )

    async def pay(self, org: str, plan: str, cycle: str = "monthly") -> dict[str, Any]:
        """The owner asks for a paid plan and pays in devstripe's Checkout."""
        answer = await self.owner(org, "change", {"plan": plan, "cycle": cycle})
        assert answer.status_code == 200, answer.text
        session = answer.json()["checkout_url"].rsplit("/", 1)[1]
        await self.stripe("POST", f"/_devstripe/checkout/{session}/complete")
        return await self.subscription(org, plan=plan, cycle=cycle)

    # Reading -----------------------------------------------------------------------------

    async def subscription(self, org: str, timeout: float = 30, **expected: Any) -> dict:
        async def matches() -> dict | None:
            response = await self.subscriptions.get(  # type: ignore[union-attr]
                f"/v1/organisations/{org}/subscription"
            )
            found = response.json() if response.status_code == 200 else None
            if found and all(found.get(k) == v for k, v in expected.items()):
                return found
            return None

        return await eventually(matches, timeout=timeout, what=f"{org} with {expected}")

    async def in_stripe(self, org: str) -> dict[str, Any] | None:
        """The organisation's live subscription as devstripe holds it (found through the
        gateway's record of it, then asked of devstripe)."""
        held = (
            await self.gateway.http.get(f"/v1/organisations/{org}/subscriptions")  # type: ignore[union-attr]
        ).json()
        live = [h for h in held if not h["deleted"]]
        if not live:
            return None
        return await self.stripe("GET", f"/v1/subscriptions/{live[0]['subscription_id']}")

    async def stripe(self, method: str, path: str, **kwargs: Any) -> Any:
        async with httpx.AsyncClient(
            base_url=self.devstripe.url, auth=("sk_test_x", ""), timeout=30
        ) as client:
            response = await client.request(method, path, **kwargs)
            response.raise_for_status()
            return response.json()

    async def events(self, spec: TopicSpec, org: str) -> list[dict[str, Any]]:
        records = await read_topic(self.bootstrap, self.topic(spec))
        return [orjson.loads(r.value) for r in records if r.key == org.encode()]

    async def alerts(self, org: str) -> list[dict[str, Any]]:
        return [e["data"] for e in await self.events(BILLING_OPERATIONS, org)]

    async def reported(self, org: str) -> list[dict[str, Any]]:
        return await self.events(STRIPE_EVENTS, org)

    async def quiet(self, timeout: float = 60) -> None:
        """Until nothing is on its way, for a while: devstripe's deliveries, the gateway's
        pending events and seat quantities, the seat service's quantities, every service's
        outbox (and so what the consumers have yet to read is only what was just published)."""
        calm = 0

        async def settled() -> bool:
            nonlocal calm
            calm = calm + 1 if await self._nothing_on_its_way() else 0
            return calm >= 3

        await eventually(settled, timeout=timeout, interval=0.2, what="nothing on its way")

    async def _nothing_on_its_way(self) -> bool:
        if self.devstripe.deliveries().get(self.endpoint):
            return False
        gateway = self.gateway.kernel.pool  # type: ignore[union-attr]
        pending = await gateway.fetchval(
            "SELECT (SELECT count(*) FROM inbox WHERE status = 'pending')"
            " + (SELECT count(*) FROM quantities WHERE due_at IS NOT NULL)"
            " + (SELECT count(*) FROM outbox)"
        )
        pending += await self.subscriptions_kernel.pool.fetchval("SELECT count(*) FROM outbox")
        pending += await self.seats_kernel.pool.fetchval(
            "SELECT (SELECT count(*) FROM quantity_syncs WHERE pending)"
            " + (SELECT count(*) FROM outbox)"
        )
        return pending == 0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    request: pytest.FixtureRequest,
    infrastructure: Infrastructure,
    module_isolation: Isolation,
    devstripe: Devstripe,
) -> AsyncIterator[Stack]:
    """The module's stack. A module may set `DISORDER` (see `Devstripe.register_webhook`:
    Stripe's duplicates and delays on delivery to the gateway), and `OWN_DEVSTRIPE = True`
    for a devstripe of its own (a full reconciliation sees every subscription in it)."""
    async with contextlib.AsyncExitStack() as exits:
        if getattr(request.module, "OWN_DEVSTRIPE", False):
            devstripe = Devstripe(port=free_port(), retry_seconds=0.2)
            devstripe.start()
            exits.callback(devstripe.stop)
        found = Stack(devstripe, infrastructure, module_isolation, exits)
        devstripe.register_webhook(
            found.endpoint,
            f"http://127.0.0.1:{found.gateway_port}/stripe/webhook",
            DEV_WEBHOOK_SECRET,
            **getattr(request.module, "DISORDER", {}),
        )
        await found.start_gateway()
        await found.start_subscriptions()
        seat_env = {
            **module_isolation.env(infrastructure, SEATS.env_prefix),
            "SEATS_DB_SCHEMA": module_isolation.schema_for("seats"),
            "SEATS_QUANTITY_POLL_SECONDS": "0.1",
            "SEATS_QUANTITY_COALESCE_SECONDS": "0.5",
        }
        found.seats_kernel, found.seats = await exits.enter_async_context(
            running_service(SEATS, settings_of(SeatSettings, seat_env), SystemClock())
        )
        try:
            yield found
        finally:
            await found.stop_subscriptions()
            await found.stop_gateway()
            devstripe.unregister_webhook(found.endpoint)
