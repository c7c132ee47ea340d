"""Fixtures for the metering service. The broker, database and per-test isolation come from
the `shared.testing.plugin` pytest plugin."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from unittest import mock
from uuid import UUID, uuid4

import httpx
import pytest

from services.metering.app import SERVICE, Parts
from services.metering.authorizer import Authorizer
from services.metering.settings import DEV_API_TOKEN, MeteringSettings
from shared.clock import FrozenClock
from shared.events import (
    AgentMessageMetered,
    AgentMessageProcessed,
    AgentMessageProcessedV1,
    AgentMessageProcessedV2,
    CreditGrantRequested,
    CreditGrantRequestedV1,
    GrantReason,
)
from shared.service import Kernel, create_app
from shared.testing import eventually, produce, read_topic
from shared.testing.plugin import Infrastructure, Isolation
from shared.topics import AGENT_USAGE, CREDIT_GRANT_REQUESTS

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def usage_event(
    organisation: str, credits: int, *, event_id: UUID | None = None, message_id: str | None = None
) -> AgentMessageProcessedV1:
    return AgentMessageProcessedV1.new(
        organisation_id=organisation,
        producer="agent-runtime",
        occurred_at=T0,
        event_id=event_id,
        data=AgentMessageProcessed(
            member_id="member_1",
            agent_id="agent_1",
            conversation_id="conv_1",
            message_id=message_id or f"msg_{uuid4().hex[:8]}",
            credits=credits,
        ),
    )


def grant_command(
    organisation: str,
    amount: int,
    *,
    reason: GrantReason = GrantReason.RENEWAL_RESET,
    period_key: str = "2026-11",
    period_start: datetime = T0,
    period_end: datetime = datetime(2026, 12, 1, tzinfo=UTC),
) -> CreditGrantRequestedV1:
    starts = reason.starts_period
    return CreditGrantRequestedV1.new(
        organisation_id=organisation,
        producer="subscriptions",
        occurred_at=period_start,
        data=CreditGrantRequested(
            period_key=period_key,
            amount=amount,
            reason=reason,
            period_start=period_start if starts else None,
            period_end=period_end if starts else None,
        ),
    )


@pytest.fixture
def metering_env(infrastructure: Infrastructure, isolation: Isolation) -> dict[str, str]:
    return isolation.env(infrastructure, SERVICE.env_prefix)


@pytest.fixture
def metering_settings(metering_env: dict[str, str]) -> MeteringSettings:
    with mock.patch.dict(os.environ, metering_env):
        return MeteringSettings()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 11, 15, 12, 0, tzinfo=UTC))


@dataclass
class MeteringHarness:
    """The metering service running in this event loop against the real broker and database,
    with its HTTP API reached through an ASGI transport."""

    kernel: Kernel[MeteringSettings]
    http: httpx.AsyncClient
    settings: MeteringSettings

    @property
    def parts(self) -> Parts:
        return self.kernel.parts

    @property
    def authorizer(self) -> Authorizer:
        return self.parts.authorizer

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap_servers

    def topic(self, spec) -> str:  # type: ignore[no-untyped-def]
        return spec.topic(self.settings.topic_prefix)

    async def publish_usage(self, *events: AgentMessageProcessedV1) -> None:
        await produce(
            self.bootstrap, self.topic(AGENT_USAGE), [(e.key, e.to_bytes()) for e in events]
        )

    async def publish_grants(self, *commands: CreditGrantRequestedV1) -> None:
        await produce(
            self.bootstrap,
            self.topic(CREDIT_GRANT_REQUESTS),
            [(c.key, c.to_bytes()) for c in commands],
        )

    async def credits(self, organisation: str) -> dict | None:
        response = await self.http.get(f"/v1/organisations/{organisation}/credits")
        return response.json() if response.status_code == 200 else None

    async def wait_for(self, organisation: str, **expected: object) -> dict:
        async def matches() -> dict | None:
            found = await self.credits(organisation)
            if found and all(found[k] == v for k, v in expected.items()):
                return found
            return None

        return await eventually(matches, what=f"{organisation} credits {expected}")

    async def parked(self, spec, at_least: int = 1) -> list[tuple[str, bytes]]:  # type: ignore[no-untyped-def]
        """(reason, original value) of what was parked from `spec`'s topic."""
        records = await read_topic(
            self.bootstrap, spec.dead_letter_topic(self.settings.topic_prefix), at_least=at_least
        )
        return [(dict(r.headers)["dlq.reason"].decode(), r.value) for r in records]


@contextlib.asynccontextmanager
async def running_metering(
    settings: MeteringSettings, clock: FrozenClock
) -> AsyncIterator[MeteringHarness]:
    app = create_app(SERVICE, settings, clock)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://metering",
            headers={"Authorization": f"Bearer {DEV_API_TOKEN}"},
        ) as http:
            yield MeteringHarness(app.state.runtime, http, settings)


@contextlib.asynccontextmanager
async def module_metering(
    infrastructure: Infrastructure, isolation: Isolation, clock: FrozenClock, **settings: object
) -> AsyncIterator[MeteringHarness]:
    """Metering for a whole test module (its tests use organisations of their own)."""
    with mock.patch.dict(os.environ, isolation.env(infrastructure, SERVICE.env_prefix)):
        found = MeteringSettings(**settings)  # type: ignore[arg-type]
    async with running_metering(found, clock) as harness:
        yield harness


def raw_usage(
    organisation: str,
    at: datetime,
    *,
    model: str = "claude-sonnet",
    tokens: tuple[int, int, int] = (120_000, 30_000, 3),
    member: str = "member_1",
    agent: str = "agent_1",
    conversation: str = "conv_1",
    message: str | None = None,
) -> AgentMessageProcessedV2:
    """A version 2 usage event: raw usage (input and output tokens, tool calls) of `model`."""
    return AgentMessageProcessedV2.new(
        organisation_id=organisation,
        producer="agent-runtime",
        occurred_at=at,
        data=AgentMessageMetered(
            member_id=member,
            agent_id=agent,
            conversation_id=conversation,
            message_id=message or f"msg_{uuid4().hex[:8]}",
            model=model,
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            tool_calls=tokens[2],
        ),
    )


@pytest.fixture
async def metering(
    metering_settings: MeteringSettings, clock: FrozenClock
) -> AsyncIterator[MeteringHarness]:
    async with running_metering(metering_settings, clock) as harness:
        yield harness
