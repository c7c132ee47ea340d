"""A year in the life of an organisation, on the stack's movable clock (`billing clock`), through
the public APIs only: metering's credits, the subscription and seat APIs, devstripe (Stripe).

Created on Jan 31 on Free; Checkout to Pro annual; usage every month; credits renewed on the
anchor's day clamped to the month's end (Feb 28 or 29, Mar 31, Apr 30, …); an upgrade to Max
mid-period (topped up); a downgrade to Pro monthly, applied at the annual period's end, which
puts the seats over the limit; a renewal payment that fails (past due) and then recovers; a
cancellation, withdrawn, then again, that ends in Free at the period's end. Run in a non-leap
year (2027, whose story ends in leap 2028) and in a leap year (2032).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import httpx
import pytest
import pytest_asyncio

from services.metering.app import SERVICE as METERING
from services.metering.settings import MeteringSettings
from services.seats.app import SERVICE as SEATS
from services.seats.settings import SeatSettings
from services.stripe_gateway.devstripe import Devstripe
from services.subscriptions.app import SERVICE as SUBSCRIPTIONS
from services.subscriptions.settings import SubscriptionSettings
from shared import cli, identity
from shared.clock import FrozenClock
from shared.devstack import free_port
from shared.events import AgentMessageProcessed, AgentMessageProcessedV1
from shared.events.members import (
    MemberJoinedV1,
    MemberRole,
    MemberState,
    MemberStatus,
    OrganisationCreated,
    OrganisationCreatedV1,
)
from shared.identity import IDENTITY_HEADER
from shared.settings import DEV_API_TOKEN
from shared.testing import eventually
from shared.testing.plugin import Infrastructure, Isolation
from shared.testing.service import Publishing, serving_service
from shared.topics import AGENT_USAGE, WORKSPACE_MEMBERS
from tests.stripe_gateway.conftest import env_for, running_gateway, settings_from

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

OWNER = "member_owner"
PRO, MAX, FREE = 20_000, 100_000, 1_000


def settings_of(kind: type, env: dict[str, str]) -> Any:
    with mock.patch.dict(os.environ, env):
        return kind()


@dataclass
class Year(Publishing):
    """The stack, every service on a movable clock, served on ports: what `make run` runs."""

    settings: Any
    devstripe: Devstripe
    urls: dict[str, str]
    http: httpx.AsyncClient

    async def clock(self, *words: str) -> None:
        """`billing clock …`, as a person types it (in a thread: the services run here)."""
        code = await asyncio.to_thread(cli.main, ["clock", *words, "--timeout", "60"])
        assert code == 0, f"billing clock {' '.join(words)} failed"

    async def get(self, service: str, path: str) -> dict[str, Any]:
        response = await self.http.get(f"{self.urls[service]}{path}")
        assert response.status_code == 200, response.text
        return response.json()

    async def subscription(self, org: str, **expected: Any) -> dict[str, Any]:
        async def matches() -> dict[str, Any] | None:
            found = await self.get("subscriptions", f"/v1/organisations/{org}/subscription")
            return found if all(found.get(k) == v for k, v in expected.items()) else None

        return await eventually(matches, what=f"{org} subscription {expected}")

    async def credits(self, org: str, **expected: Any) -> dict[str, Any]:
        async def matches() -> dict[str, Any] | None:
            response = await self.http.get(
                f"{self.urls['metering']}/v1/organisations/{org}/credits"
            )
            found = response.json() if response.status_code == 200 else None
            return found if found and all(found[k] == v for k, v in expected.items()) else None

        return await eventually(matches, what=f"{org} credits {expected}")

    async def stripe(self, org: str) -> dict[str, Any]:
        """The organisation's newest subscription in devstripe (Stripe)."""
        held = await self.get("stripe-gateway", f"/v1/organisations/{org}/subscriptions")
        async with httpx.AsyncClient(base_url=self.devstripe.url, auth=("sk", "")) as client:
            return (await client.get(f"/v1/subscriptions/{held[0]['subscription_id']}")).json()

    async def card(self, customer: str, payment_method: str) -> None:
        async with httpx.AsyncClient(base_url=self.devstripe.url, auth=("sk", "")) as client:
            response = await client.post(
                f"/v1/customers/{customer}",
                data={"invoice_settings[default_payment_method]": payment_method},
            )
            response.raise_for_status()

    async def now(self) -> datetime:
        return datetime.fromisoformat((await self.get("metering", "/v1/clock"))["now"])

    async def owner(self, org: str, action: str, body: dict | None = None) -> dict[str, Any]:
        response = await self.http.post(
            f"{self.urls['subscriptions']}/v1/subscription/{action}",
            json=body,
            headers={IDENTITY_HEADER: identity.sign(org, OWNER, await self.now())},
        )
        assert response.status_code == 200, response.text
        return response.json()

    async def members(self, org: str, names: list[str], at: datetime) -> None:
        await self.publish(
            WORKSPACE_MEMBERS,
            *(
                MemberJoinedV1.new(
                    organisation_id=org,
                    producer="member-directory",
                    occurred_at=at,
                    data=MemberState(
                        member_id=name,
                        role=MemberRole.OWNER if name == OWNER else MemberRole.MEMBER,
                        status=MemberStatus.ACTIVE,
                        sequence=1,
                    ),
                )
                for name in names
            ),
        )

    async def usage(self, org: str, credits: int) -> None:
        at = await self.now()
        await self.publish(
            AGENT_USAGE,
            AgentMessageProcessedV1.new(
                organisation_id=org,
                producer="agent-runtime",
                occurred_at=at,
                data=AgentMessageProcessed(
                    member_id=OWNER,
                    agent_id="agent_research",
                    conversation_id="conv_year",
                    message_id=f"msg_{uuid.uuid4().hex[:12]}",
                    credits=credits,
                ),
            ),
        )


@pytest_asyncio.fixture(loop_scope="module")
async def year(infrastructure: Infrastructure, isolation: Isolation) -> AsyncIterator[Year]:
    """A stack per story (the clock only moves forward: each story starts in its own year)."""
    module_isolation = isolation
    devstripe = Devstripe(port=free_port(), retry_seconds=0.2, frozen_clock=True)
    frozen = FrozenClock(datetime.now(UTC))  # time moves only when told, for every service
    devstripe.start()
    common = {"CLOCK_CONTROL": "true", "SEATS_QUANTITY_COALESCE_SECONDS": "1"}
    env = lambda prefix, name: {  # noqa: E731
        **module_isolation.env(infrastructure, prefix),
        f"{prefix}DB_SCHEMA": module_isolation.schema_for(name),
        **common,
    }
    try:
        async with contextlib.AsyncExitStack() as stack:
            gateway = await stack.enter_async_context(
                running_gateway(
                    settings_from(
                        {**env_for(infrastructure, module_isolation, devstripe), **common}
                    ),
                    devstripe,
                    clock=frozen,
                )
            )
            urls = {"stripe-gateway": gateway.url}
            for service, kind, name, extra in (
                (METERING, MeteringSettings, "metering", {}),
                (SEATS, SeatSettings, "seats", {}),
                (
                    SUBSCRIPTIONS,
                    SubscriptionSettings,
                    "subscriptions",
                    {
                        "SUBSCRIPTIONS_GATEWAY_URL": gateway.url,
                        "SUBSCRIPTIONS_RECONCILE_SECONDS": "0",
                    },
                ),
            ):
                settings = settings_of(kind, {**env(service.env_prefix, name), **extra})
                _, urls[service.name] = await stack.enter_async_context(
                    serving_service(service, settings, frozen)
                )
            stack.enter_context(
                mock.patch.dict(
                    os.environ,
                    {
                        "BILLING_SERVICES": ",".join(urls),
                        "DEVSTRIPE_URL": devstripe.url,
                        **{f"{n.upper().replace('-', '_')}_URL": u for n, u in urls.items()},
                    },
                )
            )
            http = await stack.enter_async_context(
                httpx.AsyncClient(headers={"Authorization": f"Bearer {DEV_API_TOKEN}"}, timeout=30)
            )
            yield Year(gateway.settings, devstripe, urls, http)
    finally:
        devstripe.stop()


@pytest.mark.parametrize("y", [2027, 2032], ids=["2027, then leap 2028", "leap 2032"])
async def test_a_year_in_the_life(year: Year, y: int) -> None:
    leap_next = y + 1 == 2028
    feb = 29 if y % 4 == 0 else 28
    feb_next = 29 if leap_next else 28
    org = f"org_year{y}_{uuid.uuid4().hex[:6]}"

    # Jan 31: created on Free; Checkout to Pro annual, in force at once.
    await year.clock("set", f"{y}-01-31T09:00:00Z")
    created = await year.now()
    await year.publish(
        WORKSPACE_MEMBERS,
        OrganisationCreatedV1.new(
            organisation_id=org,
            producer="member-directory",
            occurred_at=created,
            data=OrganisationCreated(name="A year", created_at=created),
        ),
    )
    await year.members(org, [OWNER, "member_1", "member_2"], created)
    await year.credits(org, balance=FREE)
    answer = await year.owner(org, "change", {"plan": "pro", "cycle": "annual"})
    session = answer["checkout_url"].rsplit("/", 1)[1]
    async with httpx.AsyncClient(base_url=year.devstripe.url) as client:
        await client.post(f"/_devstripe/checkout/{session}/complete")
    await year.subscription(org, plan="pro", cycle="annual")
    await year.credits(org, balance=PRO)
    stripe = await year.stripe(org)
    assert (stripe["plan"]["id"], stripe["status"]) == ("price_pro_annual", "active")
    assert stripe["current_period_end"] == int(datetime(y + 1, 1, 31, 9, tzinfo=UTC).timestamp())

    # Usage every month; credits renew on the 31st, clamped: Feb 28 (29), Mar 31, Apr 30.
    await year.usage(org, 300)
    await year.credits(org, balance=PRO - 300)
    await year.clock("advance", "1mo")
    credits = await year.credits(org, balance=PRO, renews_at=f"{y}-03-31T09:00:00Z")
    assert credits["period_start"] == f"{y}-02-{feb}T09:00:00Z"
    for month, day, next_renewal in ((3, 31, f"{y}-04-30"), (4, 30, f"{y}-05-31")):
        await year.usage(org, 400)
        await year.credits(org, balance=PRO - 400)
        await year.clock("set", f"{y}-{month:02}-{day}T09:00:00Z")
        await year.credits(org, balance=PRO, renews_at=f"{next_renewal}T09:00:00Z")

    # May 15: an upgrade to Max mid-period: in force at once, topped up by the difference.
    await year.usage(org, 500)
    await year.clock("set", f"{y}-05-15T12:00:00Z")
    upgraded = await year.owner(org, "change", {"plan": "max", "cycle": "annual"})
    assert upgraded["action"] == "upgraded"
    await year.credits(org, balance=PRO - 500 + (MAX - PRO))
    await year.members(org, [f"member_{n}" for n in range(3, 30)], await year.now())
    seats = await eventually(lambda: _seats(year, org, 30), what="30 seats on Max, over no limit")
    assert (seats["seat_limit"], seats["over_limit"]) == (None, False)
    await year.clock("set", f"{y}-05-31T09:00:00Z")
    await year.credits(org, balance=MAX, renews_at=f"{y}-06-30T09:00:00Z")
    assert (await year.stripe(org))["plan"]["id"] == "price_max_annual"

    # October: a downgrade to Pro monthly waits for the annual period's end (Jan 31).
    await year.clock("set", f"{y}-10-05T09:00:00Z")
    scheduled = await year.owner(org, "change", {"plan": "pro", "cycle": "monthly"})
    assert scheduled["action"] == "downgrade_scheduled"
    await year.clock("set", f"{y + 1}-01-30T09:00:00Z")
    await year.subscription(org, plan="max", pending_plan="pro")
    await year.credits(org, balance=MAX)
    await year.clock("set", f"{y + 1}-01-31T09:00:00Z")
    sub = await year.subscription(org, plan="pro", cycle="monthly", pending_plan=None)
    assert sub["paid_period_end"] == f"{y + 1}-02-{feb_next}T09:00:00Z"
    await year.credits(org, balance=PRO, allotment=PRO)
    stripe = await year.stripe(org)
    assert (stripe["plan"]["id"], stripe["quantity"]) == ("price_pro_monthly", 30)
    seats = await eventually(lambda: _seats(year, org, 30), what="30 seats on Pro")
    assert (seats["seat_limit"], seats["over_limit"], seats["available"]) == (25, True, 0)

    # The February renewal's payment fails: past due; the card is fixed; the retry pays.
    await year.card(stripe["customer"], "pm_card_chargeDeclined")
    await year.clock("set", f"{y + 1}-02-{feb_next}T09:00:00Z")
    await year.subscription(org, standing="past_due", plan="pro")
    await year.credits(org, balance=PRO)  # the plan and its credits continue meanwhile
    await year.card(stripe["customer"], "pm_card_visa")
    await year.clock("advance", "3d")
    await year.subscription(org, standing="active")
    assert (await year.stripe(org))["status"] == "active"

    # March: a cancellation, withdrawn, then again: it ends in Free at the period's end.
    assert (await year.owner(org, "cancel"))["cancel_at_period_end"] is True
    assert (await year.owner(org, "reactivate"))["cancel_at_period_end"] is False
    assert (await year.owner(org, "cancel"))["cancel_at_period_end"] is True
    await year.clock("set", f"{y + 1}-03-30T09:00:00Z")
    sub = await year.subscription(org, plan="pro", cancel_at_period_end=True)
    assert sub["credit_period_start"] == f"{y + 1}-02-{feb_next}T09:00:00Z"  # not Mar 28/29
    await year.clock("set", f"{y + 1}-03-31T09:00:00Z")
    free = await year.subscription(org, plan="free")
    assert free["credit_period_start"] == f"{y + 1}-03-31T09:00:00Z"
    await year.credits(org, balance=FREE, allotment=FREE)
    assert (await year.stripe(org))["status"] == "canceled"


async def _seats(year: Year, org: str, used: int) -> dict[str, Any] | None:
    found = await year.get("seats", f"/v1/organisations/{org}/seats")
    return found if found["seats_used"] == used else None
